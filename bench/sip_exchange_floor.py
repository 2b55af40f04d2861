"""The floor under idle CPU: the least a process can spend per SIP exchange.

    .venv/bin/python bench/sip_exchange_floor.py                 # 1,000/s for 20 s, each side
    .venv/bin/python bench/sip_exchange_floor.py --rate 500 --seconds 30

Holding subscriptions costs the adapter exchanges: each refresh is a SUBSCRIBE
and its 200, and Kamailio's NOTIFY and our 200; each PUBLISH refresh the same
pair, and a NOTIFY to every watcher of the presentity (docs/kamailio.md).
Whatever the adapter does per exchange, the process must at least take one
datagram in and send one out.  This measures that floor on this machine, with
nothing between the two (no transaction, no dialog, no PIDF): a peer process
sends NOTIFY-sized requests over loopback UDP at ``--rate`` per second, and the
measured process answers each with a 200 that echoes Via, From, To, Call-ID
and CSeq.  Two measured processes, one after the other, in the same run:

* ``syscalls``: a blocking socket, ``recvfrom`` and ``sendto`` in a loop and
  the answer made by slicing bytes — the kernel's share and Python's least;
* ``asyncio``: the adapter's transport (uvloop, a ``DatagramProtocol``), the
  headers found by splitting lines — what an event-loop gateway cannot go under.

Printed: CPU (user + system, from /proc) per exchange of each, their ratio,
and the budget per exchange that issue 20's 3 % of a core leaves at a given
exchange rate (``--budget-rate``, default the 100,000 + 10,000 benchmark at
600 s: 110,000 refreshes and 200,000 NOTIFYs per 600 s).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
NOTIFY = (
    "NOTIFY sip:w1@127.0.0.1:5070 SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK{branch};rport\r\n"
    "To: <sip:w1@bench.example.com>;tag=0123456789abcdef\r\n"
    "From: <sip:p1@bench.example.com>;tag=a6c85cf-{branch}\r\n"
    "CSeq: {cseq} NOTIFY\r\n"
    "Call-ID: {call_id}\r\n"
    "Max-Forwards: 70\r\n"
    "Content-Length: {length}\r\n"
    "User-Agent: kamailio (5.6.3 (x86_64/linux))\r\n"
    "Event: presence\r\n"
    "Contact: <sip:127.0.0.1:5060>\r\n"
    "Subscription-State: active;expires=599\r\n"
    "Content-Type: application/pidf+xml\r\n"
    "\r\n"
)
BODY = (
    '<?xml version="1.0"?>\n<presence xmlns="urn:ietf:params:xml:ns:pidf" '
    'xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid" entity="sip:p1@bench.example.com">'
    '<tuple id="t1"><status><basic>open</basic></status></tuple>'
    '<dm:person xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model" id="p1">'
    "<rpid:activities><rpid:busy/></rpid:activities></dm:person>" + " " * 600 + "</presence>"
)
STOP = b"stop"
ECHOED = (b"via", b"from", b"to", b"call-id", b"cseq")


def answer_by_lines(data: bytes) -> bytes:
    """A 200 echoing the fields RFC 3261 §8.2.6.2 asks for, found line by line."""
    head = data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    lines = [b"SIP/2.0 200 OK"]
    for line in head[1:]:
        name = line.split(b":", 1)[0].strip().lower()
        if name in ECHOED:
            lines.append(line)
    lines.append(b"Content-Length: 0\r\n\r\n")
    return b"\r\n".join(lines)


def run_syscalls(sock: socket.socket) -> None:
    """Answer every datagram until STOP, with the fewest steps Python allows."""
    while True:
        data, source = sock.recvfrom(65535)
        if data == STOP:
            return
        # Via to CSeq are the first lines of the request above: one slice.
        start = data.index(b"\r\n") + 2
        end = data.index(b"\r\nMax-Forwards")
        sock.sendto(b"SIP/2.0 200 OK\r\n" + data[start:end] + b"\r\nContent-Length: 0\r\n\r\n",
                    source)


class Answerer(asyncio.DatagramProtocol):
    def __init__(self, done: asyncio.Future[None]) -> None:
        self.done = done
        self.transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # uvloop's UDPTransport is no asyncio.DatagramTransport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if data == STOP:
            if not self.done.done():
                self.done.set_result(None)
            return
        self.transport.sendto(answer_by_lines(data), addr)


async def run_asyncio(sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    transport, _ = await loop.create_datagram_endpoint(lambda: Answerer(done), sock=sock)
    await done
    transport.close()


def measured(kind: str) -> int:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    sock.bind((HOST, 0))
    print(sock.getsockname()[1], flush=True)
    if kind == "syscalls":
        run_syscalls(sock)
    else:
        try:
            import uvloop
        except ImportError:
            asyncio.run(run_asyncio(sock))
        else:
            uvloop.run(run_asyncio(sock))
    return 0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def drive(kind: str, rate: int, seconds: float, readers: int) -> tuple[float, int, int]:
    """Start a measured process of ``kind``, send it ``rate`` NOTIFYs a second for
    ``seconds``; its CPU over them, NOTIFYs sent, answers received.

    The answers come back to a socket that ``readers`` processes wait on in
    ``recv``, as Kamailio's UDP workers do (``children`` in its configuration):
    on loopback the sender's ``sendto`` runs the delivery, the waking of a
    waiting reader included; with 0 the sending process reads them itself
    between its sends, and no reader is ever asleep on the socket.
    """
    child = subprocess.Popen([sys.executable, __file__, "--role", kind],
                             stdout=subprocess.PIPE, text=True)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    sock.bind((HOST, 0))
    context = multiprocessing.get_context("fork")
    counts = context.Queue()
    workers = [context.Process(target=_reader, args=(sock, counts)) for _ in range(readers)]
    for worker in workers:
        worker.start()
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        if not readers:
            # O_NONBLOCK belongs to the socket the readers share: only without them.
            sock.setblocking(False)
        body = BODY.encode()
        before = cpu_seconds(child.pid)
        sent = answered = 0
        start = time.monotonic()
        total = int(rate * seconds)
        tick = 0.005
        while sent < total:
            due = min(total, int((time.monotonic() - start) * rate))
            while sent < due:
                sent += 1
                head = NOTIFY.format(branch=f"{sent:016x}", cseq=sent, call_id=f"c{sent}",
                                     length=len(body))
                sock.sendto(head.encode() + body, (HOST, port))
            if not readers:
                answered += _drain(sock)
            time.sleep(tick)
        time.sleep(1.0)
        if not readers:
            answered += _drain(sock)
        used = cpu_seconds(child.pid) - before
        sock.sendto(STOP, (HOST, port))
        child.wait(10)
        for _ in workers:
            sock.sendto(STOP, sock.getsockname())
        answered += sum(counts.get(timeout=10) for _ in workers)
        return used, sent, answered
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        for worker in workers:
            worker.join(5)
            if worker.is_alive():
                worker.kill()


def _reader(sock: socket.socket, counts: Any) -> None:
    count = 0
    while sock.recv(65535) != STOP:
        count += 1
    counts.put(count)


def _drain(sock: socket.socket) -> int:
    count = 0
    while True:
        try:
            sock.recv(65535)
        except BlockingIOError:
            return count
        count += 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=int, default=1000, help="NOTIFYs a second")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--readers", type=int, default=4,
                        help="processes waiting on the answers' socket (Kamailio's children; "
                             "0: the sender reads them between sends)")
    parser.add_argument("--budget-rate", type=float, default=(110_000 + 200_000) / 600,
                        help="exchanges a second the 3 %% budget is shared by")
    parser.add_argument("--role", choices=("syscalls", "asyncio"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role:
        return measured(args.role)
    print(f"{args.rate:,} NOTIFYs/s for {args.seconds:g} s to each measured process, "
          f"answers read by {args.readers} waiting process(es); "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    figures = {}
    for kind in ("syscalls", "asyncio"):
        used, sent, answered = drive(kind, args.rate, args.seconds, args.readers)
        figures[kind] = used / sent * 1e6
        print(f"  {kind:9s} {figures[kind]:6.1f} µs of CPU per exchange "
              f"({answered:,} of {sent:,} answered)")
    budget = 0.03 / args.budget_rate * 1e6
    print(f"asyncio / syscalls: {figures['asyncio'] / figures['syscalls']:.2f}×")
    print(f"issue 20's budget: 3 % of a core over {args.budget_rate:,.0f} exchanges/s = "
          f"{budget:.1f} µs per exchange; the asyncio floor uses "
          f"{figures['asyncio'] / budget:.2f}× of it, the syscalls floor "
          f"{figures['syscalls'] / budget:.2f}×")
    return 0


if __name__ == "__main__":
    sys.exit(main())
