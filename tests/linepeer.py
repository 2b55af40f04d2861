"""A third-party test peer in a subprocess that reports one JSON object per line.

The shape shared by the CometD client (tests/integration/conftest.py,
``BayeuxListener``) and the PJSIP phone (tests/sipphone.py): a reader thread
takes each line, a subclass files it under a condition, and tests wait on
that condition with a timeout — never a fixed sleep.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

Event = dict[str, Any]


class LinePeer:
    """``command`` in a subprocess; its stdout lines become :meth:`_on_event` calls."""

    #: Names the peer in failure messages.
    title = "peer"

    def __init__(
        self, command: list[str], *, cwd: Path | None = None, stderr: IO[str] | None = None
    ) -> None:
        self.errors: list[str] = []
        self._changed = threading.Condition()
        self._process = subprocess.Popen(
            command,
            cwd=cwd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr if stderr is not None else subprocess.PIPE,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _on_event(self, event: Event) -> None:
        """File one reported event (called with the condition held)."""
        raise NotImplementedError

    def _received(self) -> object:
        """What arrived so far, for a failure message."""
        raise NotImplementedError

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                event = {"event": "error", "error": f"unreadable line: {line!r}"}
            with self._changed:
                self._on_event(event)
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def _wait(self, ready: Callable[[], Any], timeout: float, what: str) -> Any:
        """``ready()``'s first true result, checked after every event, within ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                result = ready()
                if result:
                    return result
                if self.errors:
                    raise AssertionError(f"{self.title}: {self.errors}")
                left = deadline - time.monotonic()
                if left <= 0 or not self._reader.is_alive():
                    raise AssertionError(
                        f"{self.title}: no {what} within {timeout} s; received: "
                        f"{self._received()}; log: {self._log()}"
                    )
                self._changed.wait(left)

    def _send(self, command: Event) -> None:
        assert self._process.stdin is not None
        self._process.stdin.write(json.dumps(command) + "\n")
        self._process.stdin.flush()

    def _log(self) -> str:
        if self._process.poll() is None or self._process.stderr is None:
            return "(running)"
        return self._process.stderr.read()[-2000:]

    def _finish(self) -> None:
        """Ask the peer to end (it is waited for 5 s, then killed)."""
        self._process.terminate()

    def stop(self) -> None:
        if self._process.poll() is None:
            try:
                self._finish()
                self._process.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                self._process.kill()
                self._process.wait()
        self._reader.join(timeout=5)
        for stream in (self._process.stdin, self._process.stdout, self._process.stderr):
            if stream is not None:
                stream.close()
