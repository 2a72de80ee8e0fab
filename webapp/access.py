"""Who may read and change a gallery: its keys, given by programs in `X-API-Key` and by people
through the pages' sign-in (a signed session cookie), and the same-site rule for changes.

Each gallery may have a write key (`api_key`: changes, and reads too) and a read key (`read_key`:
searches and reads). Without a write key, changes are open; without a read key, reads are.

The session cookie says which galleries this browser signed in to and at which level, never the
key itself. It is signed with the server's random secret (`server_secret`), kept in a file that
every worker and every server of one deployment reads, and it lasts `SESSION_HOURS` at most.
"""
from __future__ import annotations

import datetime as dt
import hmac
import logging
import os
import secrets
from pathlib import Path
from typing import Optional
from urllib.parse import urlsplit

from flask import Flask, current_app, g, request, session
from flask.sessions import SecureCookieSessionInterface
from werkzeug.exceptions import Forbidden, Unauthorized

from encoder.errors import ConfigError

from .service import current, get_service
from .settings import GalleryEntry, Settings

READ, WRITE = "read", "write"
SESSION_KEY = "access"  # {gallery name: READ or WRITE}
SESSION_HOURS = 12  # how long a sign-in lasts
SESSION_ID = "sid"  # a random id per signed-in session, for revocation
log = logging.getLogger(__name__)


def server_secret(settings: Settings) -> bytes:
    """The random secret that signs session cookies and form tokens: `settings.secret`, else the
    one in `settings.secret_path`, made there (64 hex digits, mode 600) by the first process to
    need it. Where no file can be made (a read-only gallery folder, no --secret-file), a random
    one for this process and its workers: sign-ins then end when the server restarts. Never
    derived from the keys: a cookie would otherwise be a hash an attacker can test guessed keys
    against, offline."""
    if settings.secret is not None:
        return settings.secret
    path = settings.secret_path
    try:
        return _read_secret(path)
    except FileNotFoundError:
        pass
    try:
        _create_secret(path)
        return _read_secret(path)
    except OSError as exc:
        log.warning("could not keep the server secret in %s (%s): sign-ins last until the server "
                    "restarts; give --secret-file a path it can write", path, exc.strerror or exc)
        return secrets.token_hex(32).encode()


def _read_secret(path: Path) -> bytes:
    try:
        secret = path.read_bytes().strip()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise ConfigError(f"cannot read the server secret {path}: {exc.strerror or exc}") from None
    if len(secret) < 32:
        raise ConfigError(f"the server secret {path} is {len(secret)} bytes: it must be at least "
                          "32 random ones (delete it and a new one is made)")
    return secret


def _create_secret(path: Path) -> None:
    """Write a new secret to `path` unless another process has just done so: written whole to a
    private temporary file, then linked into place, which fails if `path` exists."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass
    finally:
        temporary.unlink(missing_ok=True)


class _SessionInterface(SecureCookieSessionInterface):
    """Flask's signed-cookie session, its cookie `Secure` whenever the request came over TLS
    (directly, or through a trusted proxy's X-Forwarded-Proto: `Settings.trusted_proxies`)."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return request.is_secure

    def open_session(self, app: Flask, request):
        # An API client sends no cookie: its empty session needs no signing serializer, which
        # Flask builds afresh for every request (~15 us, a seventh of a health check's time).
        if app.secret_key and not request.cookies.get(self.get_cookie_name(app)):
            return self.session_class()
        return super().open_session(app, request)


def configure(app: Flask, settings: Settings) -> None:
    app.secret_key = server_secret(settings)
    app.session_interface = _SessionInterface()
    # A copied cookie is good for this long after sign-in, at most (Flask checks the signature's
    # age on every request), even if the browser is never closed.
    app.config.update(SESSION_COOKIE_NAME="siamese_session", SESSION_COOKIE_HTTPONLY=True,
                      # Lax, not Strict: a visitor who follows a link here from another site
                      # arrives without a Strict cookie, and the form token made for that page
                      # would replace their session (and sign them out). Cross-site POSTs carry
                      # no Lax cookie; forms need their token and a same-site Origin besides.
                      SESSION_COOKIE_SAMESITE="Lax",
                      PERMANENT_SESSION_LIFETIME=dt.timedelta(hours=SESSION_HOURS))


def level_of(entry: GalleryEntry, key: Optional[str]) -> Optional[str]:
    """What `key` opens in the gallery: WRITE, READ, or None (wrong key, or none given)."""
    if not key:
        return None
    given = key.encode("utf-8")
    if entry.api_key is not None and hmac.compare_digest(given, entry.api_key.encode("utf-8")):
        return WRITE
    if entry.read_key is not None and hmac.compare_digest(given, entry.read_key.encode("utf-8")):
        return READ
    return None


def header_key() -> Optional[str]:
    """X-API-Key as the client sent its bytes: WSGI hands header bytes over as Latin-1 text, and
    clients send a non-ASCII key as UTF-8."""
    given = request.headers.get("X-API-Key")
    if given is None:
        return None
    try:
        return given.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return given


def granted(entry: GalleryEntry) -> set[str]:
    """What this request may do in the gallery: by its X-API-Key, its session, or openness."""
    can = set()
    if entry.read_key is None:
        can.add(READ)
    if entry.api_key is None:
        can.add(WRITE)
    level = level_of(entry, header_key())
    if level is None and request.cookies.get("siamese_session"):
        level = _session_level(entry)
    if level == WRITE:
        can |= {READ, WRITE}
    elif level == READ:
        can.add(READ)
    return can


def require_read() -> None:
    entry = current().entry
    if READ not in granted(entry):
        raise _refusal(entry, "searching and reading this gallery")


def require_write() -> None:
    """A change: from this site (`same_origin`), and with the write key when there is one."""
    same_origin()
    entry = current().entry
    if WRITE not in granted(entry):
        raise _refusal(entry, "changing this gallery")


def _refusal(entry: GalleryEntry, what: str) -> Exception:
    key = header_key()
    if key and level_of(entry, key) is None:
        return Forbidden(f"wrong API key for gallery {entry.name!r}")
    if key:  # a read key, for a change
        return Forbidden(f"{what} needs the gallery's write key; this is its read key")
    return Unauthorized(f"{what} needs {'its write key' if what.startswith('changing') else 'a key'}"
                        " in the X-API-Key header")


def sign_in(entry: GalleryEntry, key: str) -> Optional[str]:
    """Remember in the session what `key` opens in the gallery; the level, or None."""
    level = level_of(entry, key)
    if level is not None:
        session[SESSION_KEY] = {**session.get(SESSION_KEY, {}),
                                entry.name: [level, _key_tag(entry, level)]}
        session.setdefault(SESSION_ID, secrets.token_urlsafe(24))  # what a sign-out revokes
        session.permanent = False  # gone when the browser closes
    return level


def _key_tag(entry: GalleryEntry, level: str) -> str:
    """A short tag of the key a sign-in used (keyed by the server secret: it says nothing of
    the key): when the key changes, sign-ins made with the old one stop counting."""
    key = entry.api_key if level == WRITE else entry.read_key
    return hmac.new(current_app.secret_key, f"{entry.name}\0{level}\0{key}".encode(),
                    "sha256").hexdigest()[:16]


def _session_level(entry: GalleryEntry) -> Optional[str]:
    signed = session.get(SESSION_KEY, {}).get(entry.name)
    if not isinstance(signed, list) or len(signed) != 2 or signed[0] not in (READ, WRITE):
        return None
    level, tag = signed
    if not hmac.compare_digest(str(tag), _key_tag(entry, level)) or _revoked():
        return None
    return level


def _revoked() -> bool:
    """Whether this session signed out (a copy of its cookie kept from before is refused): the
    default gallery's database keeps the sign-outs, for every worker and server that shares it.
    Asked once a request."""
    if "session_revoked" not in g:
        sid = session.get(SESSION_ID)
        g.session_revoked = not isinstance(sid, str) or \
            get_service().default.gallery.session_revoked(sid)
    return g.session_revoked


def sign_out() -> None:
    """Forget the sign-ins in this browser, and refuse the session's cookie from anywhere else
    until it would have expired. A gallery that cannot record it (read-only) still forgets."""
    sid = session.get(SESSION_ID)
    if isinstance(sid, str):
        until = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=SESSION_HOURS)
        try:
            get_service().default.gallery.revoke_session(sid, until)
        except OSError as exc:  # a read-only folder
            log.warning("sign-out not recorded (%s): the old cookie stays valid until it "
                        "expires", exc.strerror or exc)
    session.pop(SESSION_KEY, None)
    session.pop(SESSION_ID, None)


def same_origin() -> None:
    """Refuse a write sent by a page of another site. A browser names the page's origin in
    `Origin` (or at least `Referer`) on a cross-site POST or DELETE, and a multipart POST needs
    no CORS preflight, so without this any web page could add to a server with no API key.
    Clients that are not browsers (curl, scripts) send neither header and are not affected."""
    source = request.headers.get("Origin") or request.headers.get("Referer")
    if source is None:
        return
    # The host alone: behind a proxy that ends TLS the page is https and the request http.
    # An opaque origin ("null": a sandboxed frame, a file) has none, and is refused.
    if urlsplit(source).netloc.lower() != request.host.lower():
        raise Forbidden(f"gallery changes are refused from pages of other sites ({source})")
