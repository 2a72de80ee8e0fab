"""siamese-serve: the web service (JSON API and pages) over one gallery or several, served by
gunicorn.

Each worker process loads each model and opens each gallery once; all workers serve the same
galleries, and changes made by another process (siamese-index, another worker) show up at the next
request without a restart. Flags override the SIAMESE_* environment variables, which override the
defaults. Gallery changes (POST, PATCH and DELETE /api/gallery) need the write key in the X-API-Key
header when one is set (--api-key or SIAMESE_API_KEY), and searches and reads need a key when a
read key is set (--read-key or SIAMESE_READ_KEY); a gallery's own keys go in SIAMESE_API_KEY_<NAME>
and SIAMESE_READ_KEY_<NAME> (NAME upper-case, - as _). Prefer the variables: flags show in `ps`.
"""
from __future__ import annotations

import argparse
import dataclasses
import errno
import socket
from pathlib import Path

from scripts.common import run
from scripts.gallery_cli import add_gallery_arguments, quiet_faiss


def add_server_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", help="address to listen on (SIAMESE_HOST; default 127.0.0.1; "
                                  "0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, help="port (SIAMESE_PORT; default 8000)")
    p.add_argument("--workers", type=int,
                   help="worker processes, each with its own copy of the model (SIAMESE_WORKERS; "
                        "default 2)")
    p.add_argument("--threads", type=int, help="requests a worker runs at once, each on a thread "
                                               "(SIAMESE_THREADS; default 2)")
    p.add_argument("--api-key", help="write key: required in X-API-Key for gallery changes "
                                     "(SIAMESE_API_KEY; default: none, changes are open)")
    p.add_argument("--read-key", help="read key: required in X-API-Key (or the write key) for "
                                      "searches and reads (SIAMESE_READ_KEY; default: none, open)")
    p.add_argument("--max-image-mb", type=float,
                   help="largest accepted image upload in MB (SIAMESE_MAX_IMAGE_MB; default 20)")
    p.add_argument("--allowed-host", action="append", metavar="NAME",
                   help="a host name the server answers to besides its address's own (again for "
                        "more; * for any; SIAMESE_ALLOWED_HOSTS, comma-separated): requests for "
                        "other names get 400, so a page that rebinds its name to this address "
                        "reads nothing")
    p.add_argument("--trusted-proxies", type=int, metavar="N",
                   help="proxies in front whose X-Forwarded-For and X-Forwarded-Proto to believe "
                        "(SIAMESE_TRUSTED_PROXIES; default 0)")
    p.add_argument("--secret-file", type=Path, metavar="PATH",
                   help="the file with the secret that signs sign-in cookies and form tokens, "
                        "made if missing; every server of one deployment needs the same "
                        "(SIAMESE_SECRET_FILE; default: server-secret in the gallery's folder)")
    p.add_argument("--access-log", action="store_true", help="log every request to stderr")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="siamese-serve", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  siamese-serve --gallery galleries/shop --model models/fashion-mnist "
               "--port 8000\n  SIAMESE_API_KEY=$(openssl rand -hex 16) siamese-serve --gallery "
               "galleries/shop\n  siamese-serve --gallery shop=galleries/shop --gallery "
               "staff=galleries/faces")
    add_gallery_arguments(p, served=True)
    add_server_arguments(p)
    return p


def settings_from(args: argparse.Namespace, environ=None, **defaults):
    """Settings: flags, else the SIAMESE_* environment, else `defaults`, else the built-in ones.
    Several --gallery flags (or one NAME=PATH) make `Settings.galleries`."""
    import os

    from webapp.settings import MB, Settings

    environ = os.environ if environ is None else environ
    given = getattr(args, "gallery", None)
    given = [given] if isinstance(given, str) else given or []
    flags = {"model": getattr(args, "model", None),
             "db_url": getattr(args, "db_url", None), "host": args.host, "port": args.port,
             "workers": args.workers, "threads": args.threads, "api_key": args.api_key,
             "read_key": getattr(args, "read_key", None),
             "max_image_bytes": None if args.max_image_mb is None else int(args.max_image_mb * MB),
             "allowed_hosts": tuple(args.allowed_host) if getattr(args, "allowed_host", None)
             else None, "trusted_proxies": getattr(args, "trusted_proxies", None),
             "secret_file": getattr(args, "secret_file", None)}
    settings = Settings.from_env(environ, **defaults).replace(**flags)
    if not given:
        return settings
    entries = tuple(gallery_entry(text, settings, first=i == 0, environ=environ)
                    for i, text in enumerate(given))
    return settings.replace(gallery=entries[0].path, galleries=entries)


def gallery_entry(text: str, settings, first: bool, environ):
    """The entry of one --gallery [NAME=]PATH: the first takes --model and --db-url; each takes
    its own SIAMESE_DB_URL_<NAME>, SIAMESE_API_KEY_<NAME> and SIAMESE_READ_KEY_<NAME>, else the
    server's keys."""
    from webapp.settings import GALLERY_NAME, GalleryEntry

    name, _, path = text.partition("=")
    if not path or not GALLERY_NAME.match(name):  # a bare PATH (which may hold a "=")
        entry = GalleryEntry.named_after(Path(text))
    else:
        entry = GalleryEntry(name=name, path=Path(path))
    own = lambda variable: environ.get(f"{variable}_{entry.name.upper().replace('-', '_')}") or None
    return dataclasses.replace(
        entry, model=settings.model if first else None,
        db_url=own("SIAMESE_DB_URL") or (settings.db_url if first else None),
        api_key=own("SIAMESE_API_KEY") or settings.api_key,
        read_key=own("SIAMESE_READ_KEY") or settings.read_key)


def check(settings) -> None:
    """What can be checked before the workers start, without loading TensorFlow, so that it is
    said once and not by every worker: each model card, each gallery folder, that each gallery
    was built with its model, and that the address is free to listen on."""
    for entry in settings.gallery_entries:
        check_gallery(entry, several=len(settings.gallery_entries) > 1)
    check_address(settings.host, settings.port)


def check_gallery(entry, several: bool) -> None:
    from encoder import load_card
    from encoder.errors import NotFoundError, SiameseSearchError
    from indexer.errors import GalleryError
    from indexer.folder import GALLERY_FILE, check_model, gallery_model_id

    gallery = entry.path
    try:
        if entry.model is not None:
            load_card(entry.model)  # a model named but missing: said first
        # With a database URL, an absent or empty folder is made for the database's gallery
        # (`indexer.folder.attach`): a second server's own folder.
        if entry.db_url is None and not gallery.exists():
            raise NotFoundError(f"{gallery}: no such gallery; make one with siamese-index FOLDER "
                                f"--gallery {gallery}")
        if gallery.exists() and not (gallery / GALLERY_FILE).is_file() and (
                entry.db_url is None or any(gallery.iterdir())):
            raise GalleryError(f"{gallery}: not a gallery (no {GALLERY_FILE}); make one with "
                               f"siamese-index FOLDER --gallery {gallery}")
        card = load_card(entry.model_dir())
        check_model(gallery, gallery_model_id(gallery, entry.db_url), card.model_id)
    except SiameseSearchError as exc:
        if several:  # say which of the galleries
            exc.args = (f"gallery {entry.name}: {exc}",)
        raise


def check_address(host: str, port: int) -> None:
    """Whether `host:port` can be listened on (gunicorn would retry for 5 s, then exit 1)."""
    from encoder.errors import ConfigError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn binds
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror.lower()}"
                              + (" (another server? choose another --port)"
                                 if exc.errno == errno.EADDRINUSE else "")) from None


def announce(settings, command: str = "siamese-serve") -> None:
    """Where the service is, and how to protect gallery changes (printed once a worker is ready)."""
    import sys

    entries = settings.gallery_entries
    if len(entries) == 1:
        lines = [f"siamese-search: serving gallery {entries[0].path} on {settings.url}"]
    else:
        lines = [f"siamese-search: serving {len(entries)} galleries on {settings.url}"] + [
            f"  {e.name}: {e.path}, at {settings.url}api/galleries/{e.name}/"
            + (" (also the default, at /api/...)" if e is entries[0] else "")
            + ("" if e.api_key else "; changes open") + ("; reads need a key" if e.read_key else "")
            for e in entries]
    if all(e.api_key is None for e in entries):
        lines += ["  gallery changes (POST, PATCH and DELETE /api/gallery) are open to anyone who "
                  "can reach this address; to require a key in the X-API-Key header, start it with",
                  f"    SIAMESE_API_KEY=$(python3 -c 'import secrets; print(secrets.token_hex(16))') "
                  f"{command}"]
        if settings.host not in ("127.0.0.1", "localhost", "::1"):
            lines.append(f"  WARNING: listening on {settings.host} without an API key")
    else:
        lines.append("  gallery changes need the API key in the X-API-Key header")
    lines.append(f"\n  Open {settings.url} in a browser. Stop with Ctrl-C.\n")
    print("\n".join(lines), file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    quiet_faiss()
    from webapp.server import serve

    settings = settings_from(args)
    check(settings)
    return serve(settings, announce=announce, access_log=args.access_log)


def entry() -> None:
    run(main)


if __name__ == "__main__":
    entry()
