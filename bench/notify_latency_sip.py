"""SIP side of bench/notify_latency.py: a raw publisher and raw watchers, one process.

    notify_latency_sip.py HOST PORT PRESENTITY COUNT WATCHER RAW_WATCHERS CONC [SHARE PUBLISHERS]

PRESENTITY and WATCHER are addresses with ``{}`` where the index goes.  With
SHARE and PUBLISHERS, one of several such processes: it takes the presentities
whose index is SHARE modulo PUBLISHERS (and their raw watchers).

Deliberately independent of the product's SIP stack, like tests/rawsip.py
(and bench/sip_publish.py's raw sender): it is the baseline the adapter is
measured against.  Over one UDP socket it

* subscribes raw watcher ``WATCHER.format(i)`` to presentity
  ``PRESENTITY.format(i)`` for the first RAW_WATCHERS presentities, and
  answers every NOTIFY with 200 at once (the server deletes a subscription
  whose NOTIFYs go unanswered), stamping each NOTIFY's arrival;
* publishes every presentity once (no SIP-If-Match), then, on command,
  modifies them round-robin with SIP-If-Match (RFC 3903 §4.4) at a paced
  rate, CONC requests outstanding at most.  Each body's note carries
  ``s=<sequence> t=<send time, µs since the epoch>``: the stamp every later
  receiver (the raw watcher here, the Bayeux clients) is matched by.

Protocol on stdin/stdout, one line each: prints ``READY`` when set up; reads
``RUN <name> <rate/s, 0 = as fast as it goes> <seconds> <first sequence>``
and prints one JSON line with what was sent and what its watchers received;
``QUIT`` ends it.  Run by the benchmark, not by hand.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import sys
import time
from dataclasses import dataclass, field

EXPIRES = 3600
TIMEOUT = 2.0
NOTE = re.compile(rb"<note>s=(\d+) t=(\d+)</note>")


def pidf(aor: str, seq: int, sent_us: int) -> bytes:
    instant = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sent_us // 1_000_000))
    instant += f".{sent_us % 1_000_000:06d}Z"
    note = f"s={seq} t={sent_us}"
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<presence xmlns="urn:ietf:params:xml:ns:pidf" '
        'xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model" '
        f'xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid" entity="{aor}">'
        f'<tuple id="bench-s"><status><basic>open</basic></status><note>{note}</note>'
        f"<timestamp>{instant}</timestamp></tuple>"
        f'<dm:person id="bench-p"><rpid:activities from="{instant}">'
        f"<rpid:note>{note}</rpid:note><rpid:busy/></rpid:activities></dm:person>"
        "</presence>"
    ).encode()


def header(data: bytes, name: bytes) -> bytes | None:
    """First value of a header field (full name, case-insensitive; enough for Kamailio)."""
    start = data.lower().find(b"\r\n" + name.lower() + b":")
    if start < 0:
        return None
    start += len(name) + 3
    end = data.find(b"\r\n", start)
    return data[start:end].strip()


@dataclass
class Presentity:
    aor: str
    call_id: str = field(default_factory=lambda: secrets.token_hex(8))
    tag: str = field(default_factory=lambda: secrets.token_hex(8))
    cseq: int = 0
    etag: str | None = None


class Peer(asyncio.DatagramProtocol):
    def __init__(self, server: tuple[str, int]) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None
        self.local = ""
        self.pending: dict[bytes, asyncio.Future[tuple[int, bytes | None]]] = {}
        self.serial = 0
        self.prefix = "z9hG4bK" + secrets.token_hex(4)
        #: (sequence, send µs, arrival µs) of every NOTIFY with a stamp.
        self.notified: list[tuple[int, int, int]] = []
        self.notifies = 0  # every NOTIFY, stamped or not

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a datagram endpoint's
        host, port = transport.get_extra_info("sockname")[:2]
        self.local = f"{host}:{port}"

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        arrived = time.time_ns() // 1000
        assert self.transport is not None
        if data.startswith(b"SIP/2.0 "):
            branch = re.search(rb"branch=([^;\s,]+)", data)
            future = self.pending.pop(branch.group(1), None) if branch else None
            if future is not None and not future.done():
                future.set_result((int(data[8:11]), header(data, b"SIP-ETag")))
            return
        if data.startswith(b"NOTIFY "):
            self.notifies += 1
            head = data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
            # RFC 3261 §8.2.6.2: the response copies Via, From, To (with our
            # tag, already there), Call-ID and CSeq.
            copied = [
                line for line in head[1:]
                if line.split(b":", 1)[0].strip().lower()
                in (b"via", b"v", b"from", b"f", b"to", b"t", b"call-id", b"i", b"cseq")
            ]
            reply = b"SIP/2.0 200 OK\r\n" + b"\r\n".join(copied) + b"\r\nContent-Length: 0\r\n\r\n"
            self.transport.sendto(reply, addr)
            stamp = NOTE.search(data)
            if stamp:
                self.notified.append((int(stamp.group(1)), int(stamp.group(2)), arrived))

    def request(self, head: str, body: bytes = b"") -> asyncio.Future[tuple[int, bytes | None]]:
        assert self.transport is not None
        self.serial += 1
        branch = f"{self.prefix}{self.serial:x}"
        text = head.replace("{branch}", branch).replace("{local}", self.local)
        data = (text + f"Content-Length: {len(body)}\r\n\r\n").encode() + body
        future: asyncio.Future[tuple[int, bytes | None]] = (
            asyncio.get_running_loop().create_future()
        )
        self.pending[branch.encode()] = future
        self.transport.sendto(data, self.server)
        return future

    async def call(self, head: str, body: bytes = b"") -> tuple[int | None, bytes | None]:
        future = self.request(head, body)
        try:
            return await asyncio.wait_for(future, TIMEOUT)
        except TimeoutError:
            return None, None

    async def subscribe(self, watcher: str, presentity: str) -> int | None:
        head = (
            f"SUBSCRIBE {presentity} SIP/2.0\r\n"
            "Via: SIP/2.0/UDP {local};branch={branch};rport\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <{watcher}>;tag={secrets.token_hex(8)}\r\n"
            f"To: <{presentity}>\r\n"
            f"Call-ID: {secrets.token_hex(8)}\r\n"
            "CSeq: 1 SUBSCRIBE\r\n"
            f"Contact: <sip:{watcher.split(':', 1)[1].split('@')[0]}@{{local}}>\r\n"
            "Event: presence\r\n"
            "Accept: application/pidf+xml\r\n"
            f"Expires: {EXPIRES}\r\n"
        )
        status, _ = await self.call(head)
        return status

    async def publish(self, presentity: Presentity, body: bytes) -> int | None:
        for _attempt in range(2):
            presentity.cseq += 1
            aor = presentity.aor
            if_match = f"SIP-If-Match: {presentity.etag}\r\n" if presentity.etag else ""
            head = (
                f"PUBLISH {aor} SIP/2.0\r\n"
                "Via: SIP/2.0/UDP {local};branch={branch};rport\r\n"
                "Max-Forwards: 70\r\n"
                f"From: <{aor}>;tag={presentity.tag}\r\n"
                f"To: <{aor}>\r\n"
                f"Call-ID: {presentity.call_id}\r\n"
                f"CSeq: {presentity.cseq} PUBLISH\r\n"
                "Event: presence\r\n"
                f"Expires: {EXPIRES}\r\n"
                f"{if_match}"
                "Content-Type: application/pidf+xml\r\n"
            )
            status, etag = await self.call(head, body)
            if status == 412 and presentity.etag:
                # RFC 3903 §6: the ESC forgot our entity tag; publish anew.
                presentity.etag = None
                continue
            if status is not None and 200 <= status < 300 and etag:
                presentity.etag = etag.decode()
            return status
        return None


async def run_phase(
    peer: Peer, presentities: list[Presentity], concurrency: int,
    rate: float, seconds: float, first: int,
) -> dict[str, object]:
    loop = asyncio.get_running_loop()
    total = int(rate * seconds) if rate else None
    sent: list[tuple[int, int, int, int | None]] = []  # seq, presentity, sent µs, status
    counter = iter(range(first, 10**12))
    started = loop.time()
    notified_before = len(peer.notified)
    notifies_before = peer.notifies

    async def worker() -> None:
        while True:
            seq = next(counter)
            k = seq - first
            if total is not None and k >= total:
                return
            if total is None and loop.time() - started >= seconds:
                return
            if rate:
                delay = started + k / rate - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            index = seq % len(presentities)
            sent_us = time.time_ns() // 1000
            status = await peer.publish(
                presentities[index], pidf(presentities[index].aor, seq, sent_us)
            )
            sent.append((seq, index, sent_us, status))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = loop.time() - started
    await asyncio.sleep(0.5)  # the last NOTIFYs
    return {
        "elapsed": elapsed,
        "sent": sent,
        "notified": peer.notified[notified_before:],
        "notifies": peer.notifies - notifies_before,
    }


async def main(argv: list[str]) -> None:
    host, port, prefix, count, watcher_prefix, raw_watchers, concurrency = argv[:7]
    # SHARE of PUBLISHERS: this process takes presentities SHARE, SHARE +
    # PUBLISHERS, ... (and their raw watchers); indexes reported are global.
    share, publishers = (int(a) for a in argv[7:9]) if len(argv) > 7 else (0, 1)
    loop = asyncio.get_running_loop()
    transport, peer = await loop.create_datagram_endpoint(
        lambda: Peer((host, int(port))), local_addr=("127.0.0.1", 0)
    )
    mine = range(share, int(count), publishers)
    presentities = [Presentity(prefix.format(i)) for i in mine]
    bad: list[int | None] = []
    for i in mine:  # one at a time: sqlite locks on concurrent writers
        if i >= int(raw_watchers):
            break
        status = await peer.subscribe(watcher_prefix.format(i), prefix.format(i))
        if status is None or not 200 <= status < 300:
            bad.append(status)
    for presentity in presentities:
        status = await peer.publish(presentity, pidf(presentity.aor, -1, time.time_ns() // 1000))
        if status is None or not 200 <= status < 300:
            bad.append(status)
    print(json.dumps({"ready": True, "failed": bad}), flush=True)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := (await reader.readline()).decode().split():
        if line[0] == "QUIT":
            break
        _run, name, rate, seconds, first = line
        result = await run_phase(
            peer, presentities, int(concurrency), float(rate), float(seconds), int(first)
        )
        sent = result["sent"]
        assert isinstance(sent, list)
        result["sent"] = [(seq, mine[index], at, status) for seq, index, at, status in sent]
        print(json.dumps({"phase": name, **result}), flush=True)
    transport.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
