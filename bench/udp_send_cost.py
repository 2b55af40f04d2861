"""CPU of sending one UDP datagram, by the forms a SIP endpoint can send it in.

    .venv/bin/python bench/udp_send_cost.py                  # 2,000/s, 3 x 8 s per form
    .venv/bin/python bench/udp_send_cost.py --rate 500 --readers 0

The adapter answers each NOTIFY and sends each refresh with one datagram to the
presence server.  A profile that samples stacks puts much of its time in that
send (uvloop's ``UDPTransport.sendto(data, (host, port))``), but a sampler sees
a thread that the kernel has preempted as running: on loopback the sender's
``sendto`` delivers the datagram and wakes the server's worker that waits in
``recv``, and that worker may take the sender's core on the spot.  This
measures the send's CPU apart from its wall time.

A receiving peer: ``--readers`` processes wait in ``recv`` on one socket, as
Kamailio's UDP workers do.  Each form runs in a fresh process that sends a
SIP-answer-sized datagram ``--rate`` times a second for ``--seconds``, paced
by its loop (or ``time.sleep``) every 4 ms, and times the send call alone:

* ``socket``            — a blocking ``socket.sendto(data, addr)`` (the floor);
* ``socket-connected``  — ``connect()`` once, then ``send(data)``;
* ``uvloop``            — uvloop's transport, unconnected, ``sendto(data, addr)``
  (what ``sip.aio.SipEndpoint`` does);
* ``uvloop-connected``  — uvloop's transport made with ``remote_addr``, ``sendto(data)``;
* ``asyncio``, ``asyncio-connected`` — the same on asyncio's own event loop.

Printed per form, µs per datagram: CPU in the send call
(``time.thread_time``, the clock reads' own cost taken off), wall time in it
(``time.perf_counter``: CPU plus time spent preempted), and the whole
process's user and system CPU over the sending phase (``getrusage``: the send,
the pacing and the loop), with each form's CPU as a ratio to ``uvloop``'s.  The forms run in turn,
``--repeat`` times; each one's run with the least send CPU is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import resource
import socket
import subprocess
import sys
import time
from typing import Any

HOST = "127.0.0.1"
STOP = b"stop"
#: Seconds between two wake-ups of a sender (uvloop's timers have a resolution
#: of a millisecond: a shorter delay would make it spin).
TICK = 0.004
FORMS = ("uvloop", "uvloop-connected", "asyncio", "asyncio-connected", "socket",
         "socket-connected")
#: A 200 to a NOTIFY as the adapter sends it (the size is what matters).
DATAGRAM = (
    b"SIP/2.0 200 OK\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1f2.791dad16000000000000000000000000.0\r\n"
    b"From: <sip:p1@bench.example.com>;tag=a6c85cf1e2d3c4b5a6978812-1a4fac60\r\n"
    b"To: <sip:w1@bench.example.com>;tag=3b2f1e0d9c8b7a6f\r\n"
    b"Call-ID: 0123456789abcdef0123456789abcdef@127.0.0.1\r\n"
    b"CSeq: 3 NOTIFY\r\n"
    b"Server: presence-adapter\r\n"
    b"Content-Length: 0\r\n\r\n"
)


class Timed:
    """CPU and wall seconds inside the timed calls, less the clocks' own cost."""

    def __init__(self) -> None:
        self.cpu = 0.0
        self.wall = 0.0
        self.count = 0
        self.cpu_overhead, self.wall_overhead = _clock_overhead()

    def send(self, call: Any, *args: Any) -> None:
        c0 = time.thread_time()
        w0 = time.perf_counter()
        call(*args)
        w1 = time.perf_counter()
        c1 = time.thread_time()
        self.cpu += c1 - c0
        self.wall += w1 - w0
        self.count += 1

    def figures(self) -> tuple[float, float]:
        """(CPU, wall) µs per call."""
        return ((self.cpu / self.count - self.cpu_overhead) * 1e6,
                (self.wall / self.count - self.wall_overhead) * 1e6)


def _clock_overhead() -> tuple[float, float]:
    """Seconds a timed empty call measures, CPU and wall (the least of some rounds)."""
    best_cpu = best_wall = float("inf")
    for _ in range(5):
        cpu = wall = 0.0
        for _ in range(2000):
            c0 = time.thread_time()
            w0 = time.perf_counter()
            w1 = time.perf_counter()
            c1 = time.thread_time()
            cpu += c1 - c0
            wall += w1 - w0
        best_cpu = min(best_cpu, cpu / 2000)
        best_wall = min(best_wall, wall / 2000)
    return best_cpu, best_wall


def run_socket(form: str, addr: tuple[str, int], rate: int, seconds: float) -> Timed:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((HOST, 0))
    timed = Timed()
    connected = form.endswith("-connected")
    if connected:
        sock.connect(addr)
    start = time.monotonic()
    total = int(rate * seconds)
    sent = 0
    while sent < total:
        due = min(total, int((time.monotonic() - start) * rate) + 1)
        while sent < due:
            sent += 1
            if connected:
                timed.send(sock.send, DATAGRAM)
            else:
                timed.send(sock.sendto, DATAGRAM, addr)
        time.sleep(TICK)
    sock.close()
    return timed


async def run_loop(form: str, addr: tuple[str, int], rate: int, seconds: float) -> Timed:
    loop = asyncio.get_running_loop()
    connected = form.endswith("-connected")
    if connected:
        transport, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=(HOST, 0), remote_addr=addr)
    else:
        transport, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=(HOST, 0))
    timed = Timed()
    done = loop.create_future()
    total = int(rate * seconds)
    start = loop.time()
    sent = 0

    def tick() -> None:
        nonlocal sent
        due = min(total, int((loop.time() - start) * rate) + 1)
        while sent < due:
            sent += 1
            if connected:
                timed.send(transport.sendto, DATAGRAM)
            else:
                # A fresh tuple each time, as the endpoint makes one per send.
                timed.send(transport.sendto, DATAGRAM, (addr[0], addr[1]))
        if sent < total:
            loop.call_later(TICK, tick)
        else:
            done.set_result(None)

    tick()
    await done
    transport.close()
    return timed


def measured(form: str, port: int, rate: int, seconds: float) -> None:
    """One form in this (fresh) process; prints its figures as one line."""
    addr = (HOST, port)
    before = resource.getrusage(resource.RUSAGE_SELF)
    if form.startswith("socket"):
        timed = run_socket(form, addr, rate, seconds)
    elif form.startswith("uvloop"):
        import uvloop

        timed = uvloop.run(run_loop(form, addr, rate, seconds))
    else:
        timed = asyncio.run(run_loop(form, addr, rate, seconds))
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu, wall = timed.figures()
    user = (after.ru_utime - before.ru_utime) / timed.count * 1e6
    system = (after.ru_stime - before.ru_stime) / timed.count * 1e6
    print(f"{cpu} {wall} {user} {system} {timed.count}", flush=True)


def _reader(sock: socket.socket, counts: Any) -> None:
    count = 0
    while sock.recv(65535) != STOP:
        count += 1
    counts.put(count)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rate", type=int, default=2000, help="datagrams a second")
    parser.add_argument("--seconds", type=float, default=8.0, help="per form")
    parser.add_argument("--readers", type=int, default=4,
                        help="processes waiting in recv on the receiving socket")
    parser.add_argument("--forms", default=",".join(FORMS))
    parser.add_argument("--repeat", type=int, default=3, help="runs per form (least kept)")
    parser.add_argument("--role", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role:
        measured(args.role, args.port, args.rate, args.seconds)
        return 0
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    sock.bind((HOST, 0))
    port = sock.getsockname()[1]
    context = multiprocessing.get_context("fork")
    counts = context.Queue()
    readers = [context.Process(target=_reader, args=(sock, counts))
               for _ in range(max(args.readers, 1))]
    for reader in readers:
        reader.start()
    print(f"{args.rate:,} datagrams/s of {len(DATAGRAM)} bytes for {args.seconds:g} s per "
          f"form, best of {args.repeat}, to {len(readers)} process(es) waiting in recv; "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"  {'form':<18} {'send CPU':>9} {'send wall':>10} {'user':>7} {'system':>7}"
          "   (µs per datagram; user/system: the whole sender)")
    # Forms interleaved, so that the machine's noise falls on all; each
    # form's run with the least send CPU is kept.
    best: dict[str, tuple[float, float, float, float]] = {}
    sent = 0
    try:
        for _ in range(args.repeat):
            for form in args.forms.split(","):
                out = subprocess.run(
                    [sys.executable, __file__, "--role", form, "--port", str(port),
                     "--rate", str(args.rate), "--seconds", str(args.seconds)],
                    check=True, capture_output=True, text=True,
                ).stdout.split()
                row = (float(out[0]), float(out[1]), float(out[2]), float(out[3]))
                sent += int(out[4])
                if form not in best or row[0] < best[form][0]:
                    best[form] = row
        for form, (cpu, wall, user, system) in best.items():
            ratio = f"  {cpu / best['uvloop'][0]:5.2f}x uvloop" if "uvloop" in best else ""
            print(f"  {form:<18} {cpu:9.2f} {wall:10.2f} {user:7.1f} {system:7.1f}{ratio}")
    finally:
        for _ in readers:
            sock.sendto(STOP, (HOST, port))
        received = sum(counts.get(timeout=10) for _ in readers)
        for reader in readers:
            reader.join(5)
    print(f"received {received:,} of {sent:,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
