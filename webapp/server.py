"""Serving the app with gunicorn: `Server(settings).run()`.

The master process binds the socket and watches the workers; it never loads TensorFlow (a
TensorFlow runtime does not survive a fork). Each worker builds its own app after the fork, so the
model and the gallery load once per worker, and the workers share the gallery through its files
(one writer at a time, by its lock; readers catch up by its generation counter).

Each worker is an event loop (uvicorn's gunicorn worker, with httptools) in front of a few
threads (`front.Front`): the loop reads each request whole, however slowly a client sends its
headers or body, and the threads run the app on complete requests, overlapping the parts that
release the GIL (TensorFlow, FAISS, SQLite, Pillow). The workers take turns accepting
connections by how many each holds (`Balance`), and a connection closed on a body left unread
lingers a moment (`Protocol`).
"""
from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import signal
import time
from typing import Optional

from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from gunicorn.errors import AppImportError, HaltServer
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn_worker import UvicornWorker

from encoder.errors import SiameseSearchError

from indexer.errors import storage_failure

from .service import EXTENSION
from .settings import Settings

log = logging.getLogger(__name__)

LINGER = 5.0  # seconds an answer's connection goes on reading a body it did not want
SLACK = 1  # a worker accepts while it holds at most this many connections more than the fewest
PATIENCE = 0.02  # seconds a worker leaves a waiting connection to the others before taking it


class Server(BaseApplication):
    def __init__(self, settings: Settings, announce=None, access_log: bool = False):
        self.settings = settings
        self.announce = announce  # called once, by the first worker ready to answer
        self.access_log = access_log
        self._announced = multiprocessing.Value("b", 0)  # shared with the forked workers
        self.balance = Balance(settings.workers)
        super().__init__()

    def load_config(self) -> None:
        s = self.settings
        host = f"[{s.host}]" if ":" in s.host else s.host
        for key, value in {
            "bind": [f"{host}:{s.port}"], "workers": s.workers,
            "worker_class": "webapp.server.Worker", "threads": s.threads, "timeout": s.timeout, "graceful_timeout": 10, "keepalive": 5,
            "backlog": 2048, "preload_app": False, "proc_name": "siamese-serve",
            "accesslog": "-" if self.access_log else None, "errorlog": "-", "loglevel": "info",
            "post_worker_init": self._worker_ready, "worker_exit": self._worker_exit,
            "child_exit": self._child_exit,
        }.items():
            self.cfg.set(key, value)
        if "control_socket_disable" in self.cfg.settings:  # gunicorn >= 24: no ~/.gunicorn socket
            self.cfg.set("control_socket_disable", True)

    def load(self):
        """In each worker, after the fork: the app, with its own model and gallery, behind the
        worker's front."""
        from . import create_app
        from .front import Front

        try:
            return Front(create_app(self.settings), self.settings)
        except SiameseSearchError as exc:
            # gunicorn prints this message and stops (no traceback, no endless restarts).
            raise AppImportError(f"error: {exc}") from None
        except Exception as exc:
            storage = storage_failure(exc)
            if storage is None:
                raise
            raise AppImportError(f"error: {self.settings.gallery}: {storage.detail}") from None

    def _worker_ready(self, worker) -> None:
        """In a worker, its app loaded: log it; the first worker tells the user where to go."""
        service = worker.wsgi.app.extensions[EXTENSION]
        default, more = service.default, len(service.galleries) - 1
        worker.log.info("worker %s ready: gallery of %d items, model %s%s", worker.pid,
                        len(default.gallery), default.embedder.model_id,
                        f" (and {more} more {'gallery' if more == 1 else 'galleries'})" if more else "")
        with self._announced.get_lock():
            first = not self._announced.value
            self._announced.value = 1
        if first and self.announce is not None:
            self.announce(self.settings)

    def _child_exit(self, server, worker) -> None:
        """In the master, a worker gone (however it ended): its connections no longer count."""
        self.balance.leave(worker.pid)

    @staticmethod
    def _worker_exit(server, worker) -> None:
        """In a worker on its way out: close its gallery (index saved, connections closed)."""
        app = getattr(getattr(worker, "wsgi", None), "app", None)
        service = app.extensions.get(EXTENSION) if app is not None else None
        if service is not None:
            service.close()
            worker.log.info("worker %s closed its gallery", worker.pid)


class Balance:
    """How many connections each worker holds, in memory the workers share (made by the master
    before it forks them), so that a worker leaves a new connection to one that holds fewer.

    Every worker is woken by each connection waiting on the socket they share, and asyncio's
    accept loop takes every connection waiting when it wakes: 16 clients connecting at once went
    16 to one worker and none to the other in most rounds, and a proxy's keep-alive connections
    stay where they land. The busier worker's requests then queue for its threads while the
    other's idle (16 clients split 13/3: p99 38 ms; split 8/8: 28-29 ms)."""

    RETIRED = 2 ** 62  # the count of a worker that no longer listens: never the fewest

    def __init__(self, workers: int) -> None:
        # (pid, connections) for each worker; room for replacements while old workers leave
        # (a reload starts new workers before the old ones go). A worker that finds no room
        # always accepts.
        self.table = multiprocessing.RawArray("q", 8 * max(workers, 1))
        self.lock = multiprocessing.Lock()
        self.slot: Optional[int] = None  # this worker's pair (in the worker)
        self._waiting: Optional[float] = None  # since when a connection is left to the others
        self._declined = 0.0  # when one last was

    def join(self, pid: int) -> None:
        """In a worker after the fork: take a free pair."""
        with self.lock:
            for i in range(0, len(self.table), 2):
                if self.table[i] == 0:
                    self.table[i], self.table[i + 1] = pid, 0
                    self.slot = i
                    return

    def leave(self, pid: int) -> None:
        """In the master, a worker gone. A worker killed inside `join` would hold the lock for
        ever: past a second, the pair is cleared without it (pids are unique among the living)."""
        locked = self.lock.acquire(timeout=1)
        try:
            for i in range(0, len(self.table), 2):
                if self.table[i] == pid:
                    self.table[i] = self.table[i + 1] = 0
        finally:
            if locked:
                self.lock.release()

    def opened(self) -> None:  # only this worker's event loop writes its count
        if self.slot is not None and self.table[self.slot + 1] < self.RETIRED:
            self.table[self.slot + 1] += 1

    def closed(self) -> None:
        if self.slot is not None and self.table[self.slot + 1] < self.RETIRED:
            self.table[self.slot + 1] -= 1

    def retire(self) -> None:
        """This worker has stopped listening (a graceful stop): the others stop waiting for it
        to take connections, though it lives on a while to finish its requests."""
        if self.slot is not None:
            self.table[self.slot + 1] = self.RETIRED

    def turn(self) -> tuple[bool, bool]:
        """(accept a waiting connection now, whether one has been left to the others for a
        while): this worker holds no more than `SLACK` over the fewest any worker holds, or a
        connection has waited `PATIENCE` for the others, who may be too busy to take it; then
        the next waits its own `PATIENCE`, so a late worker costs one connection in each."""
        if self.slot is None:
            return True, False
        mine = self.table[self.slot + 1]
        fewest = min(self.table[i + 1] for i in range(0, len(self.table), 2) if self.table[i])
        now = time.monotonic()
        if mine <= fewest + SLACK:
            self._waiting = None
            return True, False
        # A gap of 0.1 s between refusals: the one before was taken by another worker, and
        # this is another connection (while one waits, the loop comes back within milliseconds).
        if self._waiting is None or now - self._declined > 0.1:
            self._waiting = now
        recent = now - self._declined < 0.002
        self._declined = now
        if now - self._waiting >= PATIENCE:
            self._waiting = now
            return True, False
        return False, recent


class _Listener:
    """The listening socket as a worker's event loop sees it: it accepts a connection only in
    this worker's turn (`Balance`), and counts it."""

    def __init__(self, sock, balance: Balance) -> None:
        self._sock = sock
        self._balance = balance

    def accept(self):
        accept, spinning = self._balance.turn()
        if not accept:
            # Left to another worker: the socket stays readable until that one takes it, so
            # this loop comes straight back. Every worker is woken by each connection, so the
            # first refusal costs nothing; while one keeps waiting, a short sleep gives the
            # CPU to the worker whose turn it is.
            if spinning:
                time.sleep(0.0002)
            raise BlockingIOError
        accepted = self._sock.accept()
        self._balance.opened()  # at once: the loop may accept more before any protocol starts
        return accepted

    def close(self) -> None:  # asyncio's server stops listening: a graceful stop
        self._balance.retire()
        self._sock.close()

    def __getattr__(self, name):
        return getattr(self._sock, name)


class Protocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with a lingering close (as nginx and Apache do). An answer
    sent before its request's body was all read (413, 408) closed a socket with the client's
    bytes still unread, and the kernel answers that with a reset, which can destroy the answer
    before the client reads it (a client still uploading got ConnectionResetError instead of its
    413). Here such a connection sends its answer and its end of the stream, then reads and drops
    whatever still comes, until the client closes or `LINGER` seconds pass."""

    lingering = False
    balance: Optional[Balance] = None  # the worker's (`Worker._serve`); counted from accept on

    def connection_lost(self, exc) -> None:
        super().connection_lost(exc)
        if self.balance is not None:
            self.balance.closed()

    def _unsupported_upgrade_warning(self) -> None:
        """A WebSocket upgrade is answered by the app as a plain request (400); uvicorn's
        warning would tell the operator to install a WebSocket library the app has no use for."""

    def on_response_complete(self) -> None:
        if not self.lingering:  # a lingering connection starts no pipelined request, no timer
            super().on_response_complete()

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        if self.cycle is not None:
            self.cycle.transport = _LingeringTransport(self, self.cycle)

    def data_received(self, data: bytes) -> None:
        if not self.lingering:
            super().data_received(data)

    def linger(self, cycle) -> None:
        """In place of closing after `cycle`'s answer: linger where more may still come (its
        body, or requests sent after it), else close."""
        transport = self.transport
        if transport.is_closing():
            return
        if self.lingering or (not cycle.more_body and self.cycle is cycle):
            transport.close()
            return
        self.lingering = True
        self.pipeline.clear()  # requests sent after this one are not answered
        transport.write_eof()  # after what is buffered: the answer
        self.flow.resume_reading()
        self.loop.call_later(LINGER, transport.close)  # a no-op once closed


class _LingeringTransport:
    """The connection as a request's cycle sees it: closing it lingers (`Protocol.linger`)."""

    def __init__(self, protocol: Protocol, cycle) -> None:
        self._protocol = protocol
        self._cycle = cycle
        self._transport = protocol.transport

    def __getattr__(self, name):
        return getattr(self._transport, name)

    def close(self) -> None:
        self._protocol.linger(self._cycle)


class Worker(UvicornWorker):
    """uvicorn's gunicorn worker: httptools parses requests on the event loop. X-Forwarded-*
    headers are the app's to believe or not (`Settings.trusted_proxies`), not uvicorn's (which
    believes any from 127.0.0.1 by default). No WebSockets: the app has none, and an upgraded
    connection left the count of connections (`Balance`) one too high for good."""

    CONFIG_KWARGS = {"loop": "asyncio", "http": Protocol, "ws": "none", "proxy_headers": False,
                     "lifespan": "off", "server_header": False}

    stopping = False

    def init_signals(self) -> None:
        """uvicorn handles SIGTERM and SIGINT while it serves, then raises them again once it has
        stopped, which under the default handler killed the worker before gunicorn's
        `worker_exit` closed its galleries (index saved, database log folded back). Here such a
        signal only notes that the worker is to stop: raised again, it does nothing more, and
        the worker exits as gunicorn expects; received while the app still loads, the worker
        stops instead of starting to serve."""
        super().init_signals()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._stop)

    def _stop(self, *_) -> None:
        self.stopping = True

    async def _serve(self) -> None:
        if not self.stopping:
            balance = self.app.balance
            balance.join(os.getpid())
            Protocol.balance = balance
            self.sockets = [_Listener(sock, balance) for sock in self.sockets]
            await super()._serve()


def serve(settings: Settings, announce=None, access_log: bool = False) -> int:
    """Run gunicorn until it is stopped (Ctrl-C, SIGTERM). Returns its exit status: 0, or 2 when
    the app could not load in the workers (gunicorn's 4; the workers printed why, one line)."""
    from .access import server_secret

    master = os.getpid()
    # Read (or made) once, here: every worker forked from this process signs with the same one.
    settings = dataclasses.replace(settings, secret=server_secret(settings))
    try:
        Server(settings, announce, access_log).run()
    except SystemExit as exc:
        if os.getpid() != master:
            raise  # a worker's exit, on its way out of the forked copy of this call
        code = int(exc.code or 0)
    except HaltServer as exc:  # gunicorn 27 re-raises it when two workers fail at once
        code = exc.exit_status
    else:
        code = 0
    return 2 if code == Arbiter.APP_LOAD_ERROR else code
