"""The floor under bench/notify_cost.py: the least a process can do per NOTIFY→Bayeux.

    notify_floor.py HTTP_PORT SIP_SERVER_PORT APPS

Run by notify_cost.py (``--floor``), not by hand.  The same transports as the
adapter — uvicorn with uvloop and httptools, its websocket implementation
without compression, one UDP socket — and as little as can be done between
them: at start, a SUBSCRIBE per application ``app<i>`` (watcher ``w<i>``,
presentity ``p<i>``) to the peer; per NOTIFY, a 200 echoing Via, From, To,
Call-ID and CSeq, the note's stamp picked out of the body with a regular
expression, and one websocket frame carrying a ``statusChanged`` with it to the
application's held ``/meta/connect`` (the message and the connect's reply in
one JSON array, as the adapter sends them).  Bayeux is answered only as far
as the CometD client of notify_latency_clients.mjs needs: handshake,
subscribe, connect held until a message; no acknowledgement extension, no
SIP transaction, no PIDF, no store.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import sys
from collections import deque
from typing import Any

import uvicorn

DOMAIN = "bench.example.com"
STAMP = re.compile(rb"s=(\d+) t=(\d+)")
ADVICE = {"reconnect": "retry", "interval": 0, "timeout": 30000}


class Floor:
    def __init__(self, sip_server: int, apps: int) -> None:
        self.server = ("127.0.0.1", sip_server)
        self.apps = apps
        self.by_call: dict[bytes, int] = {}  # Call-ID -> application
        self.waiting: dict[int, asyncio.Future[bytes]] = {}  # held connects
        self.queued: dict[int, deque[bytes]] = {}
        self.udp: asyncio.DatagramTransport | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.udp, _ = await loop.create_datagram_endpoint(
            lambda: _Protocol(self), local_addr=("127.0.0.1", 0)
        )
        port = self.udp.get_extra_info("sockname")[1]
        for i in range(self.apps):
            call_id = secrets.token_hex(8).encode()
            self.by_call[call_id] = i
            self.udp.sendto(
                b"SUBSCRIBE sip:p%d@%s SIP/2.0\r\n"
                b"Via: SIP/2.0/UDP 127.0.0.1:%d;branch=z9hG4bK%s\r\n"
                b"From: <sip:w%d@%s>;tag=%s\r\nTo: <sip:p%d@%s>\r\n"
                b"Call-ID: %s\r\nCSeq: 1 SUBSCRIBE\r\nMax-Forwards: 70\r\n"
                b"Contact: <sip:w%d@127.0.0.1:%d>\r\nEvent: presence\r\nExpires: 3600\r\n"
                b"Accept: application/pidf+xml\r\nContent-Length: 0\r\n\r\n"
                % (i, DOMAIN.encode(), port, secrets.token_hex(8).encode(), i, DOMAIN.encode(),
                   secrets.token_hex(4).encode(), i, DOMAIN.encode(), call_id, i, port),
                self.server,
            )

    def datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        if not data.startswith(b"NOTIFY "):
            return
        head, _, body = data.partition(b"\r\n\r\n")
        lines = [b"SIP/2.0 200 OK"]
        call_id = b""
        for line in head.split(b"\r\n")[1:]:
            name = line[: line.find(b":")].lower()
            if name in (b"via", b"from", b"to", b"cseq"):
                lines.append(line)
            elif name == b"call-id":
                lines.append(line)
                call_id = line[8:].strip()
        lines.append(b"Content-Length: 0\r\n\r\n")
        assert self.udp is not None
        self.udp.sendto(b"\r\n".join(lines), addr)
        app = self.by_call.get(call_id)
        stamp = STAMP.search(body)
        if app is None or stamp is None:
            return
        message = (
            b'{"channel":"/bayeux/app%d/notify","id":"%s","data":{"statusChanged":'
            b'{"correlator":"n%d","presentity":"sip:p%d@%s","changedAttributes":[{"typeAndValue":'
            b'{"unionElement":"Activity","activity":"Busy"},"note":"s=%s t=%s"}]}}}'
            % (app, stamp.group(1), app, app, DOMAIN.encode(), stamp.group(1), stamp.group(2))
        )
        waiting = self.waiting.pop(app, None)
        if waiting is not None and not waiting.done():
            waiting.set_result(message)
        else:
            self.queued.setdefault(app, deque()).append(message)

    async def websocket(self, receive: Any, send: Any) -> None:
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        app = -1
        client_id = secrets.token_hex(16)
        while True:
            frame = await receive()
            if frame["type"] != "websocket.receive":
                return
            replies: list[bytes] = []
            for message in json.loads(frame.get("text") or frame.get("bytes") or "[]"):
                channel = message.get("channel")
                reply: dict[str, Any] = {"channel": channel, "successful": True,
                                         "id": message.get("id"), "clientId": client_id}
                if channel == "/meta/handshake":
                    user = message.get("ext", {}).get("authentication", {}).get("user", "")
                    app = int(user[3:])
                    reply.update(version="1.0", supportedConnectionTypes=["websocket"],
                                 advice=ADVICE)
                elif channel == "/meta/subscribe":
                    reply["subscription"] = message.get("subscription")
                elif channel == "/meta/connect":
                    reply["advice"] = ADVICE
                    queued = self.queued.get(app)
                    if queued:
                        replies.extend(queued)
                        queued.clear()
                    elif message.get("advice", {}).get("timeout") != 0:
                        future = asyncio.get_running_loop().create_future()
                        self.waiting[app] = future
                        replies.append(await future)
                replies.append(json.dumps(reply).encode())
            await send({"type": "websocket.send", "text": (b"[" + b",".join(replies) + b"]")
                        .decode()})

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await self.start()
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        elif scope["type"] == "websocket":
            await self.websocket(receive, send)
        else:  # the bench's readiness probe
            await receive()
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, floor: Floor) -> None:
        self.floor = floor

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.floor.datagram(data, addr)


def main() -> int:
    http_port, sip_server, apps = (int(a) for a in sys.argv[1:4])
    # uvicorn's choices as `presence-adapter serve` leaves them (auto: uvloop,
    # httptools, its websockets implementation), compression off as there.
    uvicorn.run(Floor(sip_server, apps), host="127.0.0.1", port=http_port,
                ws_per_message_deflate=False, lifespan="on", log_level="warning",
                access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
