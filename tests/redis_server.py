"""A private Redis: ``redis-server`` on a free loopback port, with no persistence.

:class:`RedisServer` starts Debian's ``redis-server`` with its whole
configuration on the command line (no file, nothing shared with a system
Redis): loopback only, no Unix socket, no snapshots and no append-only file,
its working directory a temporary one removed by ``stop()``.  It is ready
when it answers ``PING``.  :meth:`RedisServer.restart` stops it and starts it
again on the same port: a Redis restart, every key and subscription gone.
Needs the Debian package ``redis-server`` (scripts/setup installs it for the
tests).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import IO

from tests.presence_server import free_port
from tests.processes import end

__all__ = ["RedisServer", "RedisServerError"]


class RedisServerError(Exception):
    """The private Redis could not be started."""


class RedisServer:
    """One redis-server process on a free loopback port."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self.directory: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        """The URL of database 0, as Redis clients take it."""
        return f"redis://{self.host}:{self.port}/0"

    @property
    def log_path(self) -> Path:
        assert self.directory is not None
        return self.directory / "redis.log"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self, timeout: float = 15.0) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RedisServerError(
                "redis-server is not installed: run scripts/setup, or apt-get install redis-server"
            )
        if self.directory is None:
            self.directory = Path(tempfile.mkdtemp(prefix="redis-private-"))
        if not self.port:
            self.port = free_port(self.host)
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                binary,
                "--bind", self.host,
                "--port", str(self.port),
                "--unixsocket", "",
                "--dir", str(self.directory),
                # No persistence: a restart starts empty, and nothing is written
                # to the disk while the tests run.
                "--save", "",
                "--appendonly", "no",
                "--daemonize", "no",
                "--logfile", "",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while not self._answers_ping():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self._reap()
                raise RedisServerError(
                    f"redis-server did not start on {self.host}:{self.port}:\n"
                    + self.log_path.read_text(errors="replace")[-2000:]
                )
            time.sleep(0.02)

    def _answers_ping(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def restart(self, timeout: float = 15.0) -> None:
        """Stop (SIGTERM) and start again on the same port, with nothing kept."""
        self._reap(grace=10)
        self.start(timeout)

    def _reap(self, grace: float = 0.0) -> None:
        end(self.process, self._log, grace)
        self.process, self._log = None, None

    def stop(self) -> None:
        """Stop the server and remove its directory; safe to repeat."""
        self._reap(grace=10)
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
