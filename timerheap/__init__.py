"""A keyed heap of absolute deadlines, shared by the sans-IO cores (stdlib only)."""

from timerheap.heap import TimerHeap

__all__ = ["TimerHeap"]
