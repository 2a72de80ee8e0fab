"""Helpers the tests share, imported as `from tests.support import ...` (pyproject puts the
repository root on pytest's `pythonpath`). Plain functions and classes; fixtures live in the
conftest files. No package imports this; the server helpers are the benchmarks' own."""
from __future__ import annotations

import http.client
import io
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional

import pytest
from PIL import Image
from werkzeug.datastructures import Headers

from benchmarks.bench_web import free_port, stop

REPO = Path(__file__).resolve().parents[1]
DATASETS = REPO / "datasets"
SAMPLES = REPO / "samples" / "fashion-mnist"
PER_LABEL = 5  # sample PNGs per label in the web tests' gallery: 50 in all


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a child Python process: quiet TensorFlow, the repository importable."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **extra)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


# --- the two database back ends ------------------------------------------------------------------

BACKENDS = ("sqlite", "postgresql")
_database_names = itertools.count(1)


def new_database(request, backend: str, template: Optional[str] = None) -> Optional[str]:
    """The metadata URL for a new gallery on `backend`: None (the gallery's own SQLite file) or a
    new PostgreSQL database, empty or a copy of `template`."""
    if backend == "sqlite":
        return None
    return request.getfixturevalue("postgres").create_database(
        f"t{next(_database_names)}", template)


def copy_gallery(request, backend: str, folder: Path) -> tuple[Path, Optional[str]]:
    """A copy of the web tests' gallery (`template_gallery`, `postgres_template` in
    tests/webapp/conftest.py) on `backend` at `folder`/gallery: (its folder, and its database URL
    or None)."""
    path = folder / "gallery"
    if backend == "sqlite":
        shutil.copytree(request.getfixturevalue("template_gallery"), path)
        return path, None
    template, database = request.getfixturevalue("postgres_template")
    shutil.copytree(template, path)
    return path, new_database(request, backend, template=database)


# --- the pages' CSRF token ------------------------------------------------------------------------

TOKEN_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')


def page_form(client, fields: dict) -> dict:
    """A page form's fields with the CSRF token a browser would send from the page: the one a
    page gave this test client (its session), fetched once."""
    token = getattr(client, "csrf_token", None)
    for page in ("/signin", "/"):  # a server with no keys has no sign-in form
        if token is None:
            found = TOKEN_FIELD.search(client.get(page).get_data(as_text=True))
            token = client.csrf_token = found.group(1) if found else None
    return {**fields, "csrf_token": token}


# --- commands, in-process ------------------------------------------------------------------------

def cli(command, argv, capsys) -> tuple[int, str, str]:
    """Run `command.main` (a module or object with `main(argv)`) as its console script does, through
    `scripts.common.run`: (exit status, stdout, stderr)."""
    from scripts.common import run

    with pytest.raises(SystemExit) as exit_info:
        run(lambda: command.main([str(a) for a in argv]))
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def error_line(err: str) -> str:
    """The one `error: ...` line a failed command printed."""
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


# --- image files -----------------------------------------------------------------------------------

def write_fashion_pngs(folder: Path, fashion, indices) -> list[Path]:
    """Fashion-MNIST images as PNG files in class sub-folders (`Ankle boot/00009.png`)."""
    paths = []
    for i in indices:
        label = fashion.class_names[fashion.labels[i]].replace("/", "-")
        path = folder / label / f"{i:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(fashion.images[i, :, :, 0], "L").save(path)
        paths.append(path)
    return paths


# --- a real siamese-serve (gunicorn) on 127.0.0.1 --------------------------------------------------


class LiveServer:
    """A running `siamese-serve` child process: its URL, its log and a tiny HTTP client."""

    def __init__(self, process: subprocess.Popen, port: int, log: Path, gallery: Path):
        self.process, self.port, self.log, self.gallery = process, port, log, gallery
        self.url = f"http://127.0.0.1:{port}"

    def request(self, method: str, path: str, fields: dict | None = None,
                headers: dict | None = None, json_body=None) -> tuple[int, Headers, bytes]:
        """(status, headers, body). `fields`: {name: str or (filename, bytes)}, sent multipart;
        or `json_body`, sent as JSON."""
        body, all_headers = None, dict(headers or {})
        if fields is not None:
            body, content_type = multipart(fields)
            all_headers["Content-Type"] = content_type
        elif json_body is not None:
            body = json.dumps(json_body).encode()
            all_headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=all_headers)
        # Header names are case-insensitive (the server sends them in lower case).
        try:
            with urllib.request.urlopen(req, timeout=30) as response:
                return response.status, Headers(response.headers.items()), response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, Headers(exc.headers.items()), exc.read()

    def page_session(self) -> tuple[str, str]:
        """(Cookie header, CSRF token) of a browser that has opened one of this server's pages."""
        _, headers, body = self.request("GET", "/")
        cookie = headers["Set-Cookie"].split(";", 1)[0]
        return cookie, TOKEN_FIELD.search(body.decode()).group(1)

    def json(self, method: str, path: str, **kw) -> tuple[int, dict]:
        status, _, body = self.request(method, path, **kw)
        return status, (json.loads(body) if body else {})

    def stop(self) -> None:
        """SIGTERM (gunicorn's graceful stop), then SIGKILL if it has not exited in 30 s."""
        stop(self.process)


def start_serve(gallery: Path, model: Path, log: Path, *args: str, workers: int = 2,
                env: dict | None = None, timeout: float = 300) -> LiveServer:
    """`siamese-serve` (`python -m scripts.serve`) in a child process, returned once each of its
    `workers` has logged that it loaded the gallery and `/healthz` answers."""
    port = free_port()
    command = [sys.executable, "-m", "scripts.serve", "--gallery", str(gallery), "--model",
               str(model), "--port", str(port), "--workers", str(workers), *args]
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                   env=child_env(**(env or {})), cwd=REPO)
    server = LiveServer(process, port, log, gallery)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"siamese-serve exited ({process.returncode}):\n"
                               f"{log.read_text(errors='replace')[-3000:]}")
        if (log.read_text(errors="replace").count("ready: gallery of") >= workers
                and _answers(port)):
            return server
        time.sleep(0.5)
    server.stop()
    raise RuntimeError(f"siamese-serve did not start in {timeout:g} s:\n"
                       f"{log.read_text(errors='replace')[-3000:]}")


def _answers(port: int) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            conn.request("GET", "/healthz")
            return conn.getresponse().status == 200
        finally:
            conn.close()
    except OSError:
        return False


def multipart(fields: dict) -> tuple[bytes, str]:
    """(body, content type) of a multipart/form-data request, as curl writes it.
    `fields`: {name: text or (filename, bytes)}."""
    boundary = "----siamese-test-boundary-7c1f"
    out = io.BytesIO()
    for name, value in fields.items():
        out.write(f"--{boundary}\r\n".encode())
        if isinstance(value, tuple):
            filename, data = value
            out.write(f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                      "Content-Type: application/octet-stream\r\n\r\n".encode())
            out.write(data)
        else:
            out.write(f'Content-Disposition: form-data; name="{name}"\r\n\r\n{value}'.encode())
        out.write(b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"
