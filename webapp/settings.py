"""The web service's settings: one object, built from command-line flags and the environment.

`Settings.from_env()` reads the `SIAMESE_*` variables below; `replace(**flags)` lays flags given on
the command line over them (flags win over the environment, which wins over the defaults).
Nothing here is global: `create_app(settings)` gets its own copy, so two apps with different
settings can live side by side (the tests build several).

| variable               | field            | default                                     |
|------------------------|------------------|---------------------------------------------|
| SIAMESE_GALLERY        | gallery          | (required)                                  |
| SIAMESE_MODEL          | model            | the gallery's own, else the bundled model   |
| SIAMESE_DB_URL         | db_url           | the gallery's own gallery.db                |
| SIAMESE_API_KEY        | api_key          | none: gallery changes are open              |
| SIAMESE_READ_KEY       | read_key         | none: searches and reads are open           |
| SIAMESE_MAX_IMAGE_MB   | max_image_bytes  | 20 (MB per uploaded image)                  |
| SIAMESE_HOST           | host             | 127.0.0.1                                   |
| SIAMESE_PORT           | port             | 8000                                        |
| SIAMESE_WORKERS        | workers          | 2 (processes, each with the model loaded)   |
| SIAMESE_THREADS        | threads          | 2 (requests a worker runs at once)          |
| SIAMESE_BODY_TIMEOUT   | body_timeout     | 30 (seconds to receive an upload; then 408) |
| SIAMESE_ALLOWED_HOSTS  | allowed_hosts    | the bound address's names (comma-separated) |
| SIAMESE_TRUSTED_PROXIES| trusted_proxies  | 0 (proxies whose X-Forwarded-* to believe)  |
| SIAMESE_SECRET_FILE    | secret_file      | the default gallery's folder/server-secret  |

A server of one gallery says so with `gallery`, `model`, `db_url` and the keys; a server of several
lists them in `galleries` (`siamese-serve --gallery NAME=PATH ...`), each a `GalleryEntry` with its
own model, database and keys. `gallery_entries` is the list either way; the first is the default,
the one that the routes without a gallery name address.
"""
from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

from encoder.errors import ConfigError
from encoder.images import MAX_IMAGE_BYTES, MB
from encoder.params import Range, check_fields, param

DEFAULT_MODEL = "models/fashion-mnist"
# The bundled model, found from this package (an editable install from the repository), so that
# commands find it from any folder.
BUNDLED_MODEL = Path(__file__).resolve().parents[1] / DEFAULT_MODEL

# environment variable -> (field, parser)
ENVIRONMENT = {
    "SIAMESE_GALLERY": ("gallery", Path),
    "SIAMESE_MODEL": ("model", Path),
    "SIAMESE_DB_URL": ("db_url", str),
    "SIAMESE_API_KEY": ("api_key", str),
    "SIAMESE_READ_KEY": ("read_key", str),
    "SIAMESE_MAX_IMAGE_MB": ("max_image_bytes", lambda v: int(float(v) * MB)),
    "SIAMESE_HOST": ("host", str),
    "SIAMESE_PORT": ("port", int),
    "SIAMESE_WORKERS": ("workers", int),
    "SIAMESE_THREADS": ("threads", int),
    "SIAMESE_BODY_TIMEOUT": ("body_timeout", int),
    "SIAMESE_ALLOWED_HOSTS": ("allowed_hosts", lambda v: tuple(h.strip() for h in v.split(",")
                                                               if h.strip())),
    "SIAMESE_TRUSTED_PROXIES": ("trusted_proxies", int),
    "SIAMESE_SECRET_FILE": ("secret_file", Path),
}
SECRET_FILE = "server-secret"  # in the default gallery's folder, unless secret_file says


GALLERY_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}\Z")


def gallery_name(text: str) -> str:
    """A gallery's name in URLs (`/api/galleries/NAME/...`): lower-case letters, digits, - and _."""
    if not GALLERY_NAME.match(text):
        raise ConfigError(f"gallery name {text!r}: use 1-63 lower-case letters, digits, - and _, "
                          "starting with a letter or digit")
    return text


def _is_address(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _no_blank(key: Optional[str]) -> Optional[str]:
    return None if key is None or not key.strip() else key  # SIAMESE_API_KEY= means no key


@dataclass(frozen=True)
class GalleryEntry:
    """One gallery a server serves: its name in URLs, its folder, and what is its own."""

    name: str
    path: Path
    model: Optional[Path] = None  # None: the model the gallery remembers, else the bundled one
    db_url: Optional[str] = None  # None: the folder's own gallery.db
    api_key: Optional[str] = None  # needed for changes (and for reads, when read_key is set)
    read_key: Optional[str] = None  # needed for searches and reads, when set

    def __post_init__(self) -> None:
        gallery_name(self.name)
        object.__setattr__(self, "path", Path(self.path))
        if self.model is not None:
            object.__setattr__(self, "model", Path(self.model))
        object.__setattr__(self, "api_key", _no_blank(self.api_key))
        object.__setattr__(self, "read_key", _no_blank(self.read_key))

    @classmethod
    def named_after(cls, path: Path, **fields: Any) -> "GalleryEntry":
        """The entry of a gallery given by its path alone: named after its folder, made fit for
        a URL (`Shop Photos` -> `shop-photos`)."""
        name = re.sub(r"[^a-z0-9_-]+", "-", Path(path).resolve().name.lower()).strip("-_")[:63]
        return cls(name=name or "gallery", path=Path(path), **fields)

    def model_dir(self) -> Path:
        """The model to serve this gallery with (see `model`)."""
        from indexer.folder import model_dir

        return model_dir(self.path, self.model, BUNDLED_MODEL)


@dataclass(frozen=True)
class Settings:
    gallery: Optional[Path] = None  # the gallery folder (siamese-index or Gallery.create made it)
    # The model directory; None: the one the gallery was embedded with, else the bundled one
    # (`model_dir`).
    model: Optional[Path] = None
    db_url: Optional[str] = None  # SQLAlchemy URL of the gallery's metadata, if not in its folder
    api_key: Optional[str] = None  # required in X-API-Key for gallery changes, when set
    read_key: Optional[str] = None  # required in X-API-Key for searches and reads, when set
    galleries: tuple[GalleryEntry, ...] = ()  # several galleries (then gallery, model, db_url unused)
    # per uploaded image; larger: 413
    max_image_bytes: int = param(MAX_IMAGE_BYTES, check=Range(1, MAX_IMAGE_BYTES, integer=True))
    # matches per search when the request does not say (at most max_k)
    default_k: int = param(8, check=Range(1, 10_000, integer=True))
    max_k: int = param(100, check=Range(1, 10_000, integer=True))  # the most one search may ask for
    # images (or pairs) in one batch request
    max_batch: int = param(100, check=Range(1, 1000, integer=True))
    # gallery browser: items per page (also the API's default limit)
    page_size: int = param(48, check=Range(1, 1000, integer=True))
    # TensorFlow threads per worker: one image per request needs no more
    tf_threads: int = param(1, check=Range(1, 256, integer=True))
    host: str = "127.0.0.1"
    port: int = param(8000, check=Range(0, 65535, integer=True))
    # gunicorn worker processes; each loads the model once, after the fork
    workers: int = param(2, check=Range(1, 64, integer=True))
    # requests a worker runs at once (on as many threads, and one more for each decode slot,
    # which a request decoding a huge image steps aside to: `front.Front`): 2 kept the tail
    # shortest (docs/deployment.md)
    threads: int = param(2, check=Range(1, 256, integer=True))
    # gunicorn: seconds before a silent worker is restarted (loading included)
    timeout: int = param(120, check=Range(1, 3600, integer=True))
    # seconds to receive a request body, in all and of silence (then 408): slow clients
    body_timeout: int = param(30, check=Range(1, 3600, integer=True))
    # host names the server answers to besides its bound address's ("*": any); others get 400
    # before any view runs (a page on another domain that rebinds its name to this address)
    allowed_hosts: tuple[str, ...] = ()
    # proxies in front whose X-Forwarded-For and -Proto to believe (Werkzeug's ProxyFix): with
    # TLS ended at the proxy, cookies are then marked Secure
    trusted_proxies: int = param(0, check=Range(0, 10, integer=True))
    # the file that holds the random secret signing session cookies and form tokens; every
    # worker and every server of one deployment must read the same one
    secret_file: Optional[Path] = None
    # the secret itself, once read (`access.server_secret`): `serve` reads it in the master so
    # that every worker forked from it has the same, even when it could not be kept in a file
    secret: Optional[bytes] = dataclasses.field(default=None, repr=False)

    def __post_init__(self) -> None:
        for name in ("gallery", "model", "secret_file"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))
        object.__setattr__(self, "api_key", _no_blank(self.api_key))
        object.__setattr__(self, "read_key", _no_blank(self.read_key))
        object.__setattr__(self, "galleries", tuple(self.galleries))
        object.__setattr__(self, "allowed_hosts", tuple(h.lower() for h in self.allowed_hosts))
        names = [g.name for g in self.galleries]
        if len(set(names)) < len(names):
            raise ConfigError("two galleries have the same name: "
                              + ", ".join(sorted({n for n in names if names.count(n) > 1})))
        check_fields(self)
        if self.default_k > self.max_k:
            raise ConfigError(f"default_k must be at most max_k ({self.max_k}), not {self.default_k}")

    @property
    def max_request_bytes(self) -> int:
        """The largest request body: two images (verify) as base64 (4/3 of their bytes), and
        room for the fields around them. A batch must fit in it too."""
        return 2 * self.max_image_bytes * 4 // 3 + 1_048_576

    @property
    def secret_path(self) -> Path:
        return self.secret_file or self.gallery_entries[0].path / SECRET_FILE

    def host_allowed(self, host: str) -> bool:
        """Whether a request's Host (name or address, without its port) is this server's: an
        `allowed_hosts` name, or a name of the address it binds (`localhost` for a loopback
        one); bound to every interface, any IP address and this machine's names. A rebinding
        attack comes with its own domain name, never an address."""
        host = host.lower().strip("[]")
        if "*" in self.allowed_hosts or host in self.allowed_hosts:
            return True
        bound = self.host.lower().strip("[]")
        if host == bound:
            return True
        if _loopback(bound):
            return host == "localhost" or _loopback(host)
        if bound in ("0.0.0.0", "::", ""):
            import socket

            return _is_address(host) or host in ("localhost", socket.gethostname().lower(),
                                                 socket.getfqdn().lower())
        return False

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    @classmethod
    def from_env(cls, environ: Optional[Mapping[str, str]] = None, **defaults: Any) -> "Settings":
        """Settings from `SIAMESE_*` variables (default: `os.environ`); `defaults` for fields
        that no variable sets. Lay command-line flags over the result with `replace`."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {k: v for k, v in defaults.items() if v is not None}
        for variable, (name, parse) in ENVIRONMENT.items():
            text = environ.get(variable)
            if text is None or text == "":
                continue
            try:
                values[name] = parse(text)
            except ValueError:
                raise ConfigError(f"{variable}={text!r} is not a valid {name}") from None
        return cls(**values)

    def replace(self, **values: Any) -> "Settings":
        """A copy with the given fields changed; None leaves a field as it is (a flag not given)."""
        return dataclasses.replace(self, **{k: v for k, v in values.items() if v is not None})

    @property
    def gallery_entries(self) -> tuple[GalleryEntry, ...]:
        """Every gallery served, the default first (at least one, or ConfigError)."""
        if self.galleries:
            return self.galleries
        if self.gallery is None:
            raise ConfigError("no gallery: give --gallery PATH or set SIAMESE_GALLERY")
        return (GalleryEntry.named_after(self.gallery, model=self.model, db_url=self.db_url,
                                         api_key=self.api_key, read_key=self.read_key),)
