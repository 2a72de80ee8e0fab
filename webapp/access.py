"""Who may read and change a gallery: its keys, given by programs in `X-API-Key` and by people
through the pages' sign-in (a signed session cookie), and the same-site rule for changes.

Each gallery may have a write key (`api_key`: changes, and reads too) and a read key (`read_key`:
searches and reads). Without a write key, changes are open; without a read key, reads are.

The session cookie says which galleries this browser signed in to and at which level, never the
key itself. It is signed with a secret derived from the configured keys, so every worker of every
server with the same keys accepts it, with nothing more to configure, and changing a key signs
everyone out.
"""
from __future__ import annotations

import hashlib
import hmac
from typing import Optional
from urllib.parse import urlsplit

from flask import Flask, request, session
from werkzeug.exceptions import Forbidden, Unauthorized

from .service import current
from .settings import GalleryEntry, Settings

READ, WRITE = "read", "write"
SESSION_KEY = "access"  # {gallery name: READ or WRITE}


def session_secret(settings: Settings) -> Optional[bytes]:
    """The session cookie's signing secret: a hash of every key, or None when no gallery has one
    (then there is nothing to sign in to)."""
    keys = [k for e in settings.gallery_entries for k in (e.api_key, e.read_key) if k]
    if not keys:
        return None
    material = "\0".join(f"{e.name}\0{e.api_key or ''}\0{e.read_key or ''}"
                         for e in settings.gallery_entries)
    return hashlib.sha256(b"siamese-search session\0" + material.encode()).digest()


def configure(app: Flask, settings: Settings) -> None:
    secret = session_secret(settings)
    if secret is not None:
        app.secret_key = secret
    app.config.update(SESSION_COOKIE_NAME="siamese_session", SESSION_COOKIE_HTTPONLY=True,
                      SESSION_COOKIE_SAMESITE="Strict")


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
        level = session.get(SESSION_KEY, {}).get(entry.name)
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
        session[SESSION_KEY] = {**session.get(SESSION_KEY, {}), entry.name: level}
        session.permanent = False  # gone when the browser closes
    return level


def sign_out() -> None:
    session.pop(SESSION_KEY, None)


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
