"""A PJSIP phone as a test peer: pjsua2 in a subprocess (tests/sipphone_peer.py).

A real SIP client that no one here wrote (the ``pjsua2-python`` wheel): it
publishes its presence and watches buddies the way SIP phones do.  Each
:class:`SipPhone` is one process (pjsua2 allows one Endpoint per process),
driven over JSON lines; what it reports is kept in order in ``events`` and
waited on with a timeout, never a fixed sleep.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

PEER = Path(__file__).resolve().parent / "sipphone_peer.py"

Event = dict[str, Any]


class SipPhoneError(AssertionError):
    """The phone did not report what was waited for, or failed."""


class SipPhone:
    """One pjsua2 account ``uri`` whose requests all go to ``proxy`` (a ``sip:host:port``)."""

    def __init__(self, uri: str, proxy: str, log_path: Path | None = None) -> None:
        self.uri = uri
        # pjsua2's own log (every SIP message) goes to a file: a pipe nobody
        # reads would fill up and stall the phone.
        self.log_path = log_path or Path(tempfile.mkstemp(prefix="sipphone-", suffix=".log")[1])
        self._log = self.log_path.open("w")
        self.events: list[Event] = []
        self.errors: list[str] = []
        self._changed = threading.Condition()
        self._process = subprocess.Popen(
            [sys.executable, str(PEER), uri, proxy],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.wait_for(lambda e: e["event"] == "ready", what="ready")

    # -- commands -----------------------------------------------------------

    def publish(self, status: str = "online", activity: str = "unknown", note: str = "") -> None:
        """Publish ``status`` (online/offline), an RPID ``activity`` (busy/away/unknown), a note.

        Returns once the presence server answered the PUBLISH with a 2xx.
        """
        mark = len(self.events)
        self._send({"cmd": "publish", "status": status, "activity": activity, "note": note})
        self.wait_for(
            lambda e: e["event"] == "response" and e["method"] == "PUBLISH" and e["code"] < 300,
            since=mark,
            what="2xx to PUBLISH",
        )

    def subscribe(self, buddy: str) -> None:
        """Watch ``buddy`` (SUBSCRIBE Event: presence); its states arrive as "buddy" events."""
        self._send({"cmd": "subscribe", "buddy": buddy})

    def unsubscribe(self, buddy: str) -> None:
        self._send({"cmd": "unsubscribe", "buddy": buddy})

    # -- what it saw -----------------------------------------------------------

    def buddy_states(self, buddy: str, since: int = 0) -> list[Event]:
        """Every state change of ``buddy`` seen so far (pjsua2's BuddyInfo, as reported)."""
        return self.matching(lambda e: e["event"] == "buddy" and e["buddy"] == buddy, since)

    def notifies(self, buddy: str, since: int = 0) -> list[Event]:
        """Every NOTIFY received for ``buddy``: ``state`` (Subscription-State) and ``body``."""
        return self.matching(lambda e: e["event"] == "notify" and e["buddy"] == buddy, since)

    def wait_buddy(
        self,
        buddy: str,
        predicate: Callable[[Event], bool],
        *,
        since: int = 0,
        timeout: float = 10,
    ) -> Event:
        """The first state of ``buddy`` (from event ``since`` on) that satisfies ``predicate``."""
        return self.wait_for(
            lambda e: e["event"] == "buddy" and e["buddy"] == buddy and predicate(e),
            since=since,
            timeout=timeout,
            what=f"matching state of {buddy}",
        )

    def mark(self) -> int:
        """An index into ``events``: pass it as ``since`` to look only at what comes later."""
        with self._changed:
            return len(self.events)

    def matching(self, predicate: Callable[[Event], bool], since: int = 0) -> list[Event]:
        with self._changed:
            return [e for e in self.events[since:] if predicate(e)]

    def wait_for(
        self,
        predicate: Callable[[Event], bool],
        *,
        since: int = 0,
        timeout: float = 10,
        what: str = "event",
    ) -> Event:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for event in self.events[since:]:
                    if predicate(event):
                        return event
                if self.errors:
                    raise SipPhoneError(f"phone {self.uri}: {self.errors}")
                left = deadline - time.monotonic()
                if left <= 0 or not self._reader.is_alive():
                    raise SipPhoneError(
                        f"phone {self.uri}: no {what} within {timeout} s; events: "
                        f"{self.events[since:]}; log: {self._stderr()}"
                    )
                self._changed.wait(left)

    # -- process ------------------------------------------------------------------

    def _send(self, command: Event) -> None:
        assert self._process.stdin is not None
        self._process.stdin.write(json.dumps(command) + "\n")
        self._process.stdin.flush()

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                event = {"event": "error", "error": f"unreadable line: {line!r}"}
            with self._changed:
                if event.get("event") == "error":
                    self.errors.append(str(event.get("error")))
                self.events.append(event)
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def _stderr(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except FileNotFoundError:
            return "(no log)"

    def stop(self) -> None:
        """Quit (un-SUBSCRIBE, un-PUBLISH), or kill if it does not go within 5 s."""
        if self._process.poll() is None:
            try:
                self._send({"cmd": "quit"})
                self._process.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                self._process.kill()
                self._process.wait()
        self._reader.join(timeout=5)
        for stream in (self._process.stdin, self._process.stdout):
            if stream is not None:
                stream.close()
        self._log.close()
