"""The adapter as its users run it: ``presence-adapter serve --config PATH``, in a subprocess.

For tests that need a real process — killed with SIGKILL, started again with
the same configuration and store, or expected to exit.  Each instance owns a
directory (configuration, store, log) and HTTP/SIP ports chosen free at run
time; ``start()`` returns once the HTTP server answers.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import httpx

from tests.presence_server import free_port


class AdapterProcessError(Exception):
    """The adapter did not start, or did not stop."""


class AdapterProcess:
    """One adapter process at a time, on fixed ports, restartable with the same store.

    ``config`` is the TOML text with ``{http_port}``, ``{sip_port}`` and
    ``{store}`` placeholders, plus any given as ``values`` (filled once:
    restarts reuse ports and store).
    """

    def __init__(
        self, directory: Path, config: str, host: str = "127.0.0.1", **values: object
    ) -> None:
        self.directory = directory
        self.host = host
        self.http_port = free_port(host)
        self.sip_port = free_port(host)
        self.store_path = directory / "adapter.sqlite"
        self.config_path = directory / "adapter.toml"
        self.log_path = directory / "adapter.log"
        self.config_path.write_text(
            config.format(
                http_port=self.http_port, sip_port=self.sip_port, store=self.store_path, **values
            )
        )
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "adapter", "serve",
            "--config", str(self.config_path), "--log-level", "info",
        ]

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def start(self, timeout: float = 15.0) -> None:
        """Spawn the adapter; return once HTTP answers (any status: /health is 503
        while the presence server is down, and that is a state tests want)."""
        if self.process is not None:
            raise AdapterProcessError("already running")
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.command(), cwd=self.directory, stdout=self._log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                httpx.get(self.url + "/health", timeout=3)
                return
            except httpx.HTTPError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self._reap()
                raise AdapterProcessError(f"adapter did not start:\n{self.log_tail()}")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as in a crash or an OOM kill."""
        if self.process is None:
            raise AdapterProcessError("not running")
        self.process.send_signal(signal.SIGKILL)
        self._reap()

    def restart(self, timeout: float = 15.0) -> None:
        """Start again after :meth:`kill` or :meth:`stop`: same config, ports and store."""
        self.start(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM and wait (SIGKILL after ``timeout``); safe to call when not running."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self._reap()

    def _reap(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            if process.poll() is None:
                process.kill()
            process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def run_to_exit(self, timeout: float = 15.0) -> subprocess.CompletedProcess[str]:
        """Run the command in the foreground and return its exit status and output
        (for start-ups that must fail)."""
        if self.process is not None:
            raise AdapterProcessError("already running")
        return subprocess.run(
            self.command(), cwd=self.directory, capture_output=True, text=True,
            timeout=timeout, check=False,
        )
