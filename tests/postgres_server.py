"""A private PostgreSQL: a throw-away cluster for one test session (or one benchmark).

:class:`PostgresCluster` runs ``initdb`` in a temporary directory and ``pg_ctl
start`` on a free loopback port — TCP only, no Unix socket, so it never meets a
system cluster — as the ``postgres`` user when we are root (initdb and
postgres refuse to run as root); ``stop()`` stops it and removes the
directory.  :meth:`PostgresCluster.create_database` makes a fresh database,
one per test.  Needs the Debian package ``postgresql`` (scripts/setup installs
it for the tests).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import psycopg
from psycopg import sql

from tests.presence_server import free_port

__all__ = ["PostgresCluster", "PostgresError", "postgres_bin"]

SUPERUSER = "postgres"
OS_USER = "postgres"  # initdb and postgres refuse to run as root

#: A throw-away cluster for tests: nothing is synced to the disk (a crash of
#: the machine loses it, which no test survives anyway), so making a
#: database per test costs milliseconds.
TEST_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


class PostgresError(Exception):
    """The private PostgreSQL could not be started or used."""


def postgres_bin() -> Path | None:
    """The folder of initdb/pg_ctl (Debian keeps them out of PATH)."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return versions[-1].parent if versions else None


class PostgresCluster:
    """One PostgreSQL cluster in a temporary directory, on a free loopback port.

    ``settings`` are server parameters (``-c name=value``) beyond the listening
    address, port and ``max_connections``.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        settings: Mapping[str, str] | None = None,
        max_connections: int = 200,
    ) -> None:
        self.host = host
        self.port = 0
        self.settings = dict(settings or {})
        self.max_connections = max_connections
        self.directory: Path | None = None
        self._bin: Path | None = None
        self._running = False
        self._names = itertools.count(1)

    @property
    def data(self) -> Path:
        assert self.directory is not None
        return self.directory / "data"

    @property
    def log_path(self) -> Path:
        assert self.directory is not None
        return self.directory / "postgres.log"

    @property
    def pid(self) -> int | None:
        """The postmaster's PID while running."""
        if not self._running:
            return None
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def url(self, database: str = "postgres", scheme: str = "postgresql") -> str:
        """A URL of ``database`` for the superuser (no password: trust on loopback)."""
        return f"{scheme}://{SUPERUSER}@{self.host}:{self.port}/{database}"

    def _as_owner(self, argv: list[str]) -> list[str]:
        """Run the PostgreSQL tools as the ``postgres`` user when we are root."""
        if os.geteuid() == 0:
            return ["runuser", "-u", OS_USER, "--", *argv]
        return argv

    def _run(self, argv: list[str], what: str) -> None:
        done = subprocess.run(
            self._as_owner(argv), capture_output=True, text=True, check=False,
            stdin=subprocess.DEVNULL,
        )
        if done.returncode != 0:
            raise PostgresError(
                f"PostgreSQL: {what} failed (exit {done.returncode}):\n"
                f"{done.stdout[-2000:]}{done.stderr[-2000:]}"
            )

    def psql(self, database: str, *args: str, what: str = "psql") -> None:
        """Run ``psql`` on ``database`` (stops at the first error)."""
        assert self._bin is not None
        psql = shutil.which("psql") or str(self._bin / "psql")
        self._run(
            [psql, "-h", self.host, "-p", str(self.port), "-U", SUPERUSER, "-d", database,
             "-q", "-v", "ON_ERROR_STOP=1", *args],
            what,
        )

    def create_database(self, name: str | None = None) -> str:
        """A new, empty database (named ``name``, else ``db<n>``); returns its name."""
        name = name or f"db{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as db:
            db.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return name

    def start(self, timeout: float = 30.0) -> None:
        self._bin = postgres_bin()
        if self._bin is None:
            raise PostgresError(
                "PostgreSQL is not installed (initdb not found): run scripts/setup, "
                "or apt-get install postgresql"
            )
        self.directory = Path(tempfile.mkdtemp(prefix="pg-private-"))
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise

    def _start(self, timeout: float) -> None:
        assert self._bin is not None and self.directory is not None
        if os.geteuid() == 0:
            shutil.chown(self.directory, OS_USER, OS_USER)
        # trust on loopback only: a throw-away cluster for one run, no password.
        self._run(
            [
                str(self._bin / "initdb"), "-D", str(self.data), "-U", SUPERUSER,
                "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync",
            ],
            "initdb",
        )
        for _attempt in range(3):
            self.port = free_port(self.host)
            done = self._pg_ctl_start(timeout)
            if done.returncode == 0:
                self._running = True
                return
            log = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
            if "could not bind" not in log and "in use" not in log:
                raise PostgresError(
                    f"PostgreSQL did not start (exit {done.returncode}):\n"
                    f"{done.stderr[-2000:]}\n{log[-2000:]}"
                )
        raise PostgresError("PostgreSQL: no free port after 3 attempts")

    def _pg_ctl_start(self, timeout: float) -> subprocess.CompletedProcess[str]:
        assert self._bin is not None
        options = " ".join(
            [
                f"-c listen_addresses={self.host}",
                f"-p {self.port}",
                # No Unix socket: nothing shared with a system cluster.
                "-c unix_socket_directories=''",
                f"-c max_connections={self.max_connections}",
                *(f"-c {name}={value}" for name, value in self.settings.items()),
            ]
        )
        return subprocess.run(
            self._as_owner(
                [
                    str(self._bin / "pg_ctl"), "start", "-D", str(self.data),
                    "-l", str(self.log_path), "-w", "-t", str(int(timeout)),
                    "-o", options,
                ]
            ),
            capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL,
        )

    def halt(self) -> None:
        """Stop the server (fast shutdown: every connection is closed), keeping its data
        and its port for :meth:`resume` — a server restart, in two steps."""
        assert self._bin is not None and self._running
        self._run(
            [str(self._bin / "pg_ctl"), "stop", "-D", str(self.data), "-m", "fast", "-w"],
            "pg_ctl stop",
        )
        self._running = False

    def resume(self, timeout: float = 30.0) -> None:
        """Start the halted server again, on the same port with the same data."""
        done = self._pg_ctl_start(timeout)
        if done.returncode != 0:
            raise PostgresError(f"PostgreSQL did not start again (exit {done.returncode})")
        self._running = True

    def stop(self) -> None:
        """Stop the server (fast shutdown) and remove the directory; safe to repeat."""
        if self._running and self._bin is not None:
            self._running = False
            done = subprocess.run(
                self._as_owner(
                    [str(self._bin / "pg_ctl"), "stop", "-D", str(self.data), "-m", "fast",
                     "-w", "-t", "20"]
                ),
                capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL,
            )
            if done.returncode != 0:
                self._kill_postmaster()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    def _kill_postmaster(self) -> None:
        """pg_ctl could not stop it: end the postmaster we started by its PID."""
        try:
            pid = int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)
        time.sleep(0.2)

    def __enter__(self) -> PostgresCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
