"""A PJSIP phone as a test peer: pjsua2 in a subprocess (tests/sipphone_peer.py).

A real SIP client that no one here wrote (the ``pjsua2-python`` wheel): it
publishes its presence and watches buddies the way SIP phones do.  Each
:class:`SipPhone` is one process (pjsua2 allows one Endpoint per process),
driven over JSON lines; what it reports is kept in order in ``events`` and
waited on with a timeout, never a fixed sleep.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from tests.linepeer import Event, LinePeer

PEER = Path(__file__).resolve().parent / "sipphone_peer.py"


class SipPhone(LinePeer):
    """One pjsua2 account ``uri`` whose requests all go to ``proxy`` (a ``sip:host:port``)."""

    def __init__(self, uri: str, proxy: str, log_path: Path | None = None) -> None:
        self.uri = uri
        self.title = f"phone {uri}"
        self.events: list[Event] = []
        # pjsua2's own log (every SIP message) goes to a file: a pipe nobody
        # reads would fill up and stall the phone.
        self.log_path = log_path or Path(tempfile.mkstemp(prefix="sipphone-", suffix=".log")[1])
        self._log_file = self.log_path.open("w")
        super().__init__([sys.executable, str(PEER), uri, proxy], stderr=self._log_file)
        self.wait_for(lambda e: e["event"] == "ready", what="ready")

    # -- commands -----------------------------------------------------------

    def publish(self, status: str = "online", activity: str = "unknown", note: str = "") -> None:
        """Publish ``status`` (online/offline), an RPID ``activity`` (busy/away/unknown), a note.

        Returns once the presence server answered the PUBLISH with a 2xx.
        """
        mark = self.mark()
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
        def ready() -> Event | None:
            return next((e for e in self.events[since:] if predicate(e)), None)

        event: Event = self._wait(ready, timeout, what)
        return event

    # -- process ------------------------------------------------------------------

    def _on_event(self, event: Event) -> None:
        if event.get("event") == "error":
            self.errors.append(str(event.get("error")))
        self.events.append(event)

    def _received(self) -> object:
        return self.events

    def _log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except FileNotFoundError:
            return "(no log)"

    def _finish(self) -> None:
        """Quit: the phone un-SUBSCRIBEs and un-PUBLISHes first."""
        self._send({"cmd": "quit"})

    def stop(self) -> None:
        super().stop()
        self._log_file.close()
