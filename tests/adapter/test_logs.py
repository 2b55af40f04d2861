"""The json log format: one object a line, with what the record is about."""

import asyncio
import json
import logging
import sys

from adapter.logs import JsonFormatter, RequestContext, bind


def record(message: str, *args: object, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            exc_info = sys.exc_info()
    return logging.LogRecord("adapter.test", logging.WARNING, __file__, 1, message, args,
                             exc_info)


def test_a_record_is_one_json_object_on_one_line() -> None:
    line = JsonFormatter().format(record("two\nlines %s", "here", exc=True))
    assert "\n" not in line
    out = json.loads(line)
    assert out["level"] == "warning" and out["logger"] == "adapter.test"
    assert out["message"] == "two\nlines here"
    assert out["time"].endswith("+00:00")
    assert "ValueError: boom" in out["exception"]
    assert "request" not in out and "correlator" not in out and "presentity" not in out


def test_bound_fields_are_seen_by_that_task_only() -> None:
    formatter = JsonFormatter()
    seen: dict[str, dict[str, object]] = {}

    async def request() -> None:
        async def app(scope: object, receive: object, send: object) -> None:
            bind(correlator="c-1", presentity="sip:alice@example.com")
            seen["inside"] = json.loads(formatter.format(record("in")))

        scope = {"type": "http", "method": "POST", "path": "/rest/presence/notification"}
        await RequestContext(app)(scope, None, None)  # type: ignore[arg-type]

    async def main() -> None:
        await asyncio.create_task(request())
        seen["outside"] = json.loads(formatter.format(record("out")))

    asyncio.run(main())
    inside = seen["inside"]
    assert inside["request"] == "POST /rest/presence/notification"
    assert inside["request_id"] == 1
    assert inside["correlator"] == "c-1" and inside["presentity"] == "sip:alice@example.com"
    assert "correlator" not in seen["outside"] and "request" not in seen["outside"]
