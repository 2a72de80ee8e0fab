"""A private PostgreSQL server for the tests and benchmarks: a throwaway cluster in a temporary
folder, on a free port of 127.0.0.1, from the PostgreSQL binaries on this machine (Debian's
`postgresql` package; `.ci/run` installs it). Nothing else on the machine is touched.

    with PrivateCluster() as pg:
        url = pg.create_database("g1")  # postgresql+psycopg://postgres@127.0.0.1:PORT/g1

Also a command, for a shell that wants one running: `python -m benchmarks.postgres` prints the
server's URL and keeps it up until interrupted.
"""
from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Optional

USER = "postgres"  # the cluster's superuser (trust authentication on 127.0.0.1 only)


def binaries() -> Optional[Path]:
    """The folder holding initdb and pg_ctl: on PATH, else Debian's /usr/lib/postgresql/N/bin."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                      key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    return Path(versions[-1]).parent if versions else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateCluster:
    """`initdb` + `pg_ctl start` in a temporary folder; `stop()` (or leaving the `with`) stops the
    server and removes the folder. As root, the server runs as the `postgres` system user, since
    PostgreSQL refuses to run as root."""

    def __init__(self, settings: Optional[dict[str, str]] = None):
        bin_dir = binaries()
        if bin_dir is None:
            raise RuntimeError("PostgreSQL is not installed (no initdb/pg_ctl on PATH or under "
                               "/usr/lib/postgresql); on Debian: apt-get install postgresql")
        self.bin = bin_dir
        self.folder = Path(tempfile.mkdtemp(prefix="siamese-pg-"))
        self.data = self.folder / "data"
        self.port = _free_port()
        self.settings = {"listen_addresses": "127.0.0.1", "port": str(self.port),
                         "unix_socket_directories": str(self.folder), "max_connections": "200",
                         # a throwaway cluster: durability against power loss is not under test
                         "fsync": "off", "full_page_writes": "off", **(settings or {})}
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.folder, USER)
            self._as_user = ["runuser", "-u", USER, "--"]
        self._run("initdb", "-D", str(self.data), "-U", USER, "-A", "trust", "-E", "UTF8",
                  "--no-sync")
        self.start()

    def _run(self, program: str, *args: str) -> None:
        done = subprocess.run([*self._as_user, str(self.bin / program), *args],
                              capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"{program} failed ({done.returncode}): {done.stderr.strip()}")

    def start(self) -> None:
        options = " ".join(f"-c {k}={v}" for k, v in self.settings.items())
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.folder / "server.log"),
                  "-o", options, "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (`mode`: smart, fast or immediate); the data stays until `remove`."""
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def remove(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.folder, ignore_errors=True)

    def url(self, database: str = "postgres", driver: str = "psycopg") -> str:
        return f"postgresql+{driver}://{USER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str, template: Optional[str] = None) -> str:
        """A new, empty database (or a copy of `template`); its SQLAlchemy URL."""
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={self.port} user={USER} dbname=postgres",
                             autocommit=True) as conn:
            copy = f' TEMPLATE "{template}"' if template else ""
            conn.execute(f'CREATE DATABASE "{name}"{copy}')
        return self.url(name)

    def __enter__(self) -> "PrivateCluster":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


if __name__ == "__main__":
    with PrivateCluster() as cluster:
        print(cluster.url(), flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
