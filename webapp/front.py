"""The front of each worker: an event loop that receives whole requests, then hands each to the
Flask app on a thread (`Front`, the ASGI app a uvicorn worker serves; `server.py`).

gunicorn's threaded workers gave each connection a thread while its request arrived: 32 clients
sending one header line a second left none for anyone else (0 of 20 health checks answered in
2 s). Here the headers are parsed and the body received by the worker's event loop (uvicorn,
httptools), where a slow client costs a socket and a little memory; the app's threads only ever
see a request that is all there, and a slow reader of an answer holds no thread either.

A body must arrive within `Settings.body_timeout` seconds, and after its first `BODY_GRACE`
seconds at `MIN_BODY_RATE` bytes a second on average; one that does not, or that is larger than
the request limit, is not read further, and the app answers it (408, 413: its own messages, as
JSON or a page) on a connection that then closes, after a moment of reading and dropping what
still comes (`server.Protocol`: otherwise a reset can destroy the answer). Bodies over
`LARGE_BODY` are received a few at a time (as many as the worker has threads): each may be up to
the request limit (42 MB), and a few dozen clients uploading at once would otherwise all be held
in memory together. A search's upload is far smaller and never waits.
"""
from __future__ import annotations

import asyncio
import contextlib
import io
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Optional
from urllib.parse import unquote_to_bytes

from encoder.images import DECODE_SLOT_COUNT, stepping_aside

BODY_GRACE = 5.0  # seconds a body may take to get going ...
MIN_BODY_RATE = 4_000  # ... after which it must have come at this many bytes per second
SLOW_BODY = "siamese.slow_body"  # environ: why the body was not received (uploads.read_body)
LARGE_BODY = 1_000_000  # bytes: a body over this (or of no declared length) takes a large slot


class Front:
    """ASGI to WSGI, buffered: `Front(flask_app, settings)`. The app runs `settings.threads`
    requests at a time; everything that waits on a client runs on the event loop.

    A request decoding an image of over a megapixel steps aside while it waits for a decode
    slot and decodes (`encoder.images.stepping_aside`), and the pool has a thread more for each
    slot, so such requests never hold every turn: with 2 threads and no stepping aside, 8
    clients sending worst-case images pushed a normal search's p99 to 1.25 s; with 4 threads
    running at once, 0.15 s, but the mixed load's p99 doubled (docs/deployment.md)."""

    def __init__(self, app, settings) -> None:
        self.app = app
        self.limit = settings.max_request_bytes
        self.body_timeout = settings.body_timeout
        self.threads = settings.threads
        self._turns = threading.BoundedSemaphore(self.threads)
        self._pool: Optional[ThreadPoolExecutor] = None
        self._large: Optional[asyncio.Semaphore] = None

    @property
    def pool(self) -> ThreadPoolExecutor:
        if self._pool is None:  # made in the worker, after the fork
            self._pool = ThreadPoolExecutor(self.threads + DECODE_SLOT_COUNT,
                                            thread_name_prefix="request")
        return self._pool

    @contextlib.contextmanager
    def _aside(self):
        """A request's turn given up while it decodes a large image, taken again after."""
        self._turns.release()
        try:
            yield
        finally:
            self._turns.acquire()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":  # no lifespan (the worker runs with it off), no websockets
            return
        body, slow, whole = await self._body(scope, receive)
        if body is None:
            return  # the client went away
        environ = wsgi_environ(scope, body)
        if slow:
            environ[SLOW_BODY] = slow
        status, headers, chunks = await asyncio.get_running_loop().run_in_executor(
            self.pool, self._run, environ)
        if not whole:  # what is left of the body is never read: the connection cannot go on
            headers = [(k, v) for k, v in headers if k.lower() != b"connection"]
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"".join(chunks)})

    async def _body(self, scope, receive) -> tuple[Optional[bytes], str, bool]:
        """(the body, why it is incomplete or "", whether it was all received); None for the
        body when the client disconnected. A declared length over the limit is not read at all
        (the app answers 413 from the header); a body without one is read to one byte past it."""
        declared = _content_length(scope)
        if declared is not None and declared > self.limit:
            return b"", "", False
        chunked = any(name == b"transfer-encoding" for name, _ in scope["headers"])
        if (declared is not None and declared <= LARGE_BODY) or (declared is None and not chunked):
            return await self._receive(receive)
        if self._large is None:  # made on the worker's event loop
            self._large = asyncio.Semaphore(self.threads)
        async with self._large:
            return await self._receive(receive)

    async def _receive(self, receive) -> tuple[Optional[bytes], str, bool]:
        chunks, received, start = [], 0, time.monotonic()
        while True:
            elapsed = time.monotonic() - start
            if elapsed >= self.body_timeout:
                return b"".join(chunks), f"it took over {self.body_timeout:g} s", False
            if elapsed >= BODY_GRACE and received < MIN_BODY_RATE * elapsed:
                return b"".join(chunks), f"it came at under {MIN_BODY_RATE / 1000:g} KB/s", False
            try:  # woken at least every half second to look at the clock
                message = await _within(receive, min(0.5, self.body_timeout - elapsed))
            except asyncio.TimeoutError:
                continue
            if message["type"] == "http.disconnect":
                return None, "", False
            data = message.get("body", b"")
            chunks.append(data)
            received += len(data)
            if received > self.limit:
                return b"".join(chunks)[:self.limit + 1], "", False
            if not message.get("more_body", False):
                return b"".join(chunks), "", True

    def _run(self, environ: dict) -> tuple[int, list, list[bytes]]:
        """The Flask app on one request, on a thread: (status, headers, body)."""
        answer: dict[str, Any] = {}

        def start_response(status: str, headers, exc_info=None):
            answer["status"] = int(status.split(" ", 1)[0])
            answer["headers"] = [(k.lower().encode("latin-1"), v.encode("latin-1"))
                                 for k, v in headers]

        with self._turns, stepping_aside(self._aside):
            result = self.app(environ, start_response)
            try:
                chunks = [bytes(c) for c in result]
            finally:
                if hasattr(result, "close"):
                    result.close()
        return answer["status"], answer["headers"], chunks


async def _within(receive, seconds: float):
    """`await receive()`, or asyncio.TimeoutError after `seconds`. `asyncio.timeout` (3.11)
    costs 7 us where `wait_for`, which makes a task of each call, costs 19 us, on every request."""
    if _timeout is None:
        return await asyncio.wait_for(receive(), timeout=seconds)
    async with _timeout(seconds):
        return await receive()


_timeout = getattr(asyncio, "timeout", None)


def _content_length(scope) -> Optional[int]:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def wsgi_environ(scope, body: bytes) -> dict:
    """The WSGI environ of an ASGI HTTP request whose body has been received (PEP 3333: text is
    the bytes as Latin-1, the path undecoded as a WSGI server gives it)."""
    raw_path = scope.get("raw_path") or scope["path"].encode("utf-8")
    root = scope.get("root_path", "")
    server = scope.get("server") or ("localhost", 80)
    client = scope.get("client")
    environ = {
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": root,
        "PATH_INFO": unquote_to_bytes(raw_path.split(b"?", 1)[0]).decode("latin-1")[len(root):],
        "QUERY_STRING": scope.get("query_string", b"").decode("latin-1"),
        "SERVER_NAME": str(server[0]), "SERVER_PORT": str(server[1] or 80),
        "SERVER_PROTOCOL": f"HTTP/{scope.get('http_version', '1.1')}",
        "REMOTE_ADDR": client[0] if client else "", "REMOTE_PORT": str(client[1]) if client else "",
        "wsgi.version": (1, 0), "wsgi.url_scheme": scope.get("scheme", "http"),
        "wsgi.input": io.BytesIO(body), "wsgi.input_terminated": True,
        "wsgi.errors": sys.stderr, "wsgi.multithread": True, "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    for name, value in scope["headers"]:
        key = name.decode("latin-1").upper().replace("-", "_")
        text = value.decode("latin-1")
        if key == "CONTENT_TYPE" or key == "CONTENT_LENGTH":
            environ[key] = text
            continue
        key = f"HTTP_{key}"
        environ[key] = f"{environ[key]},{text}" if key in environ else text
    if "CONTENT_LENGTH" not in environ and environ["REQUEST_METHOD"] in ("POST", "PUT", "PATCH"):
        environ["CONTENT_LENGTH"] = str(len(body))
    return environ
