"""Starlette endpoints for the Bayeux transports: long-polling and WebSocket.

Thin on purpose: read (capped) → `parse_batch` → `Hub.receive` → write. All
protocol decisions are in `server.py`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from adapter.bayeux.errors import RemoteProtocolError
from adapter.bayeux.hub import Hub
from adapter.bayeux.message import Message, encode_batch, parse_batch
from adapter.bayeux.server import LONG_POLLING, WEBSOCKET, Credentials

JSON_TYPE = "application/json;charset=UTF-8"

# RFC 6455 §7.4.1: 1009 "message that is too big for it to process".
_WS_TOO_BIG = 1009

#: Passes a long-polling request on to the node holding its session; None:
#: answer it here (adapter.cluster.forward).
Forward = Callable[[Request, bytes, Sequence[Message]], Awaitable[Response | None]]


def bayeux_routes(
    hub: Hub, path: str = "/cometd", *, forward: Forward | None = None
) -> list[BaseRoute]:
    """Routes serving the Bayeux server at `path`.

    Long-polling clients POST to the base URL and to suffixes the CometD
    client appends (`/handshake`, `/connect`, `/disconnect`, `/`); each is
    routed explicitly because a slash redirect breaks the CometD client.
    """
    long_polling = _LongPolling(hub, forward)
    websocket = _WebSocketEndpoint(hub)
    return [
        Route(path, long_polling.handle, methods=["POST"]),
        Route(path + "/", long_polling.handle, methods=["POST"]),
        Route(path + "/{kind:str}", long_polling.handle, methods=["POST"]),
        WebSocketRoute(path, websocket.handle),
        WebSocketRoute(path + "/", websocket.handle),
    ]


def basic_credentials(header: str | None) -> Credentials | None:
    """RFC 7617 Basic credentials from an Authorization header, if well-formed."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, colon, password = decoded.partition(":")
    return (user, password) if colon else None


def _error_body(text: str) -> str:
    return json.dumps([{"successful": False, "error": f"400::{text}"}])


class _LongPolling:
    def __init__(self, hub: Hub, forward: Forward | None = None) -> None:
        self._hub = hub
        self._forward = forward

    async def handle(self, request: Request) -> Response:
        limit = self._hub.limits.max_body
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            return Response(_error_body("body too large"), 413, media_type=JSON_TYPE)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                return Response(_error_body("body too large"), 413, media_type=JSON_TYPE)
        try:
            messages = parse_batch(bytes(body))
        except RemoteProtocolError as exc:
            return Response(_error_body(str(exc)), 400, media_type=JSON_TYPE)
        if not messages:
            return Response(_error_body("empty batch"), 400, media_type=JSON_TYPE)
        if self._forward is not None:
            answer = await self._forward(request, bytes(body), messages)
            if answer is not None:
                return answer
        credentials = basic_credentials(request.headers.get("authorization"))
        await self._hub.prepare(messages, credentials)
        received = self._hub.receive(messages, transport=LONG_POLLING, credentials=credentials)
        replies = received.replies
        if received.held is not None:
            try:
                replies = replies + await self._hub.wait(received.held)
            except asyncio.CancelledError:
                self._hub.abandon(received.held)
                raise
        return Response(encode_batch(replies), media_type=JSON_TYPE)


class _WebSocketEndpoint:
    def __init__(self, hub: Hub) -> None:
        self._hub = hub

    async def handle(self, websocket: WebSocket) -> None:
        # No subprotocol: the CometD, Faye and aiocometd clients all connect
        # without one.
        await websocket.accept()
        hub = self._hub
        credentials = basic_credentials(websocket.headers.get("authorization"))
        send_lock = asyncio.Lock()
        waiting: dict[int, asyncio.Task[None]] = {}

        async def send(replies: list[Mapping[str, Any]]) -> None:
            async with send_lock:
                await websocket.send_text(encode_batch(replies))

        async def answer_when_released(token: int) -> None:
            replies = await hub.wait(token)
            waiting.pop(token, None)
            with contextlib.suppress(WebSocketDisconnect, RuntimeError):
                await send(replies)

        try:
            while True:
                frame = await websocket.receive()
                if frame["type"] == "websocket.disconnect":
                    break
                payload = frame.get("text")
                if payload is None:
                    payload = frame.get("bytes") or b""
                if len(payload) > hub.limits.max_body:
                    await websocket.close(_WS_TOO_BIG)
                    break
                try:
                    messages = parse_batch(payload)
                except RemoteProtocolError as exc:
                    await send([{"successful": False, "error": f"400::{exc}"}])
                    continue
                if not messages:
                    continue  # Faye's keep-alive ping is an empty array
                await hub.prepare(messages, credentials)
                received = hub.receive(messages, transport=WEBSOCKET, credentials=credentials)
                if received.replies:
                    await send(received.replies)
                if received.held is not None:
                    waiting[received.held] = asyncio.create_task(
                        answer_when_released(received.held)
                    )
        except WebSocketDisconnect:
            pass
        finally:
            for token, task in list(waiting.items()):
                task.cancel()
                hub.abandon(token)
