"""The adapter's log lines as JSON (``[log] format = "json"``), with what they are about.

Each record becomes one JSON object on one line: ``time`` (UTC, ISO 8601),
``level``, ``logger``, ``message``, plus — when the record was made while
serving a request or acting for one — ``request`` (``"POST /rest/presence"``)
with ``request_id``, ``correlator`` and ``presentity``.  Those three come
from context variables: the request's task (and the tasks it starts) sees
what was bound in it, nothing else does.
"""

from __future__ import annotations

import itertools
import json
import logging
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["JsonFormatter", "RequestContext", "bind"]

_request: ContextVar[tuple[int, str] | None] = ContextVar("request", default=None)
_correlator: ContextVar[str | None] = ContextVar("correlator", default=None)
_presentity: ContextVar[str | None] = ContextVar("presentity", default=None)


def bind(*, correlator: str | None = None, presentity: str | None = None) -> None:
    """Name what the current task is acting on, for its later log lines."""
    if correlator is not None:
        _correlator.set(correlator)
    if presentity is not None:
        _presentity.set(presentity)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request = _request.get()
        if request is not None:
            out["request_id"], out["request"] = request
        correlator = _correlator.get()
        if correlator is not None:
            out["correlator"] = correlator
        presentity = _presentity.get()
        if presentity is not None:
            out["presentity"] = presentity
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        # One line whatever the message holds: json.dumps escapes newlines.
        return json.dumps(out, ensure_ascii=False, default=str)


class RequestContext:
    """Binds ``request`` (method and path, and a number) for the request's log lines."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._ids = itertools.count(1)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            _request.set((next(self._ids), f"{scope['method']} {scope['path']}"))
        elif scope["type"] == "websocket":
            _request.set((next(self._ids), f"WEBSOCKET {scope['path']}"))
        await self.app(scope, receive, send)
