"""sip.timers.TimerHeap: the shared heap with the SIP layer's error (the rest: tests/timerheap)."""

import pytest

from sip.errors import LocalProtocolError
from sip.timers import TimerHeap


def test_nan_deadline_is_a_local_protocol_error() -> None:
    heap: TimerHeap[str] = TimerHeap()
    heap.schedule(2.0, "b")
    with pytest.raises(LocalProtocolError):
        heap.schedule(float("nan"), "a")
    assert heap.next_deadline() == 2.0
    assert heap.pop_expired(2.0) == ["b"]
