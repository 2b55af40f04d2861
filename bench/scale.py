"""Scale benchmark: many live SIP subscriptions and publications held by one process.

    .venv/bin/python bench/scale.py                        # ~3 minutes
    .venv/bin/python bench/scale.py --subscriptions 20000 --observe 60
    .venv/bin/python bench/scale.py --expires 400 --observe 420   # see the spread

One run starts a private bundled presence server (tests/presence_server.py,
with a larger shared memory pool, see bench/sip_publish.py's server_shm) and
two *holder* processes, each a fresh Python running this file with
``--role``:

* ``ua``  — the product's SIP stack: one ``sip.aio.SipEndpoint`` (the sans-IO
  ``UserAgent`` with its transactions, dialogs, publications and timer heap)
  that creates ``--subscriptions`` presence subscriptions and
  ``--publications`` publications and then keeps them alive (refreshes,
  answers every NOTIFY);
* ``raw`` — a floor for memory and CPU: one asyncio DatagramProtocol that
  formats SUBSCRIBE/PUBLISH text with f-strings, keeps per dialog a Call-ID,
  two tags, a CSeq and a due time, answers NOTIFYs statelessly and refreshes
  on the same schedule as the product (RefreshPolicy: 75–90 % of the
  interval, never later than 32 s before expiry).  No retransmissions, no
  parser, no transactions.

Both hold the same counts against the same server at the same time (their
setups interleave, so the noise of a shared machine falls on both).  The
controller reads each holder's RSS and CPU time from /proc: after imports
and binding (the process floor), when everything is held, and over the idle
window that follows (``--observe`` seconds, where the only traffic is
refreshes and the NOTIFYs they cause).  Each holder counts, per second of the
run, the SUBSCRIBE and PUBLISH requests it sends and the NOTIFYs it gets:
after the setup those are refreshes, and their histogram shows whether they
are spread or come as a storm.

Watchers and presentities: subscription i is from sip:w{i % 1000}@… to
sip:p{i % publications}@…, so every published presentity has
subscriptions / publications watchers.  No presence rules are written, so
the server keeps every watcher *pending* (RFC 6665 §4.1.3, empty NOTIFY).

``--expires`` sets both intervals (default 120 s, so refreshes show up within
the run).  RefreshPolicy puts each refresh at a point fixed per object in
75–90 % of the interval, the window moved earlier when its end is closer than
32 s to expiry (Expires 120: 70–88 s; 300: 223–268 s; 3600: 2,700–3,240 s).
With ``--expires 300 --observe 300`` a setup shorter than 220 s ends before
the first refresh and the idle window holds a whole refresh cycle.

The ua holder runs with the adapter's garbage-collector settings
(``presence-adapter serve`` freezes what exists at start and raises the
thresholds, adapter/cli.py); ``--gc default`` keeps CPython's.

``--baseline DIR`` adds a third holder, ``base``: the ua holder of another
source tree (``git archive REV | tar -x -C DIR``), for the stack's before and
after side by side in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import heapq
import itertools
import json
import os
import re
import secrets
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # tests.presence_server is not an installed package

HOST = "127.0.0.1"
DOMAIN = "bench.example.com"
WATCHERS = 1000
PIDF = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    '<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="{aor}">'
    '<tuple id="t1"><status><basic>open</basic></status>'
    "<note>scale</note></tuple></presence>"
)


def subscriber(i: int) -> str:
    return f"sip:w{i % WATCHERS}@{DOMAIN}"


def presentity(i: int, publications: int) -> str:
    return f"sip:p{i % max(publications, 1)}@{DOMAIN}"


def refresh_delay(expires: int, spread: float) -> float:
    """RefreshPolicy.refresh_delay, restated for the raw holder (sip/publication.py).

    75–90 % of the interval, the window moved earlier (not narrowed) when its
    end is closer than 32 s to expiry, never before half the interval.
    """
    low, high, guard = 0.75, 0.90, 32.0
    width = expires * (high - low)
    latest = min(expires * high, expires - guard)
    if latest <= expires / 2:
        earliest, latest = expires / 2, max(expires * low, expires / 2)
    else:
        earliest = max(min(expires * low, latest - width), expires / 2)
    return earliest + (latest - earliest) * spread


# ---------------------------------------------------------------- holders


@dataclass
class Tally:
    """What a holder saw, per whole second since it was told to go."""

    started: float = 0.0
    per_second: dict[str, Counter[int]] = field(default_factory=dict)
    totals: Counter[str] = field(default_factory=Counter)

    def count(self, kind: str, now: float) -> None:
        self.per_second.setdefault(kind, Counter())[int(now - self.started)] += 1
        self.totals[kind] += 1

    def report(self, **extra: Any) -> dict[str, Any]:
        return {
            "per_second": {k: dict(v) for k, v in self.per_second.items()},
            "totals": dict(self.totals),
            **extra,
        }


def emit(**message: Any) -> None:
    print(json.dumps(message), flush=True)


async def read_line() -> str:
    return await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


async def bounded(items: range, window: int, start: Callable[[int], Any]) -> None:
    """Run ``start(i)`` for every item with at most ``window`` outstanding."""
    it = iter(items)

    async def worker() -> None:
        for i in it:
            await start(i)

    await asyncio.gather(*(worker() for _ in range(window)))


async def ua_holder(args: argparse.Namespace) -> None:
    from sip.aio.endpoint import RequestFailed, SipEndpoint
    from sip.aio.handles import SubscriptionEvent
    from sip.subscription import NotifyReceived, SubscriptionTerminated
    from sip.uri import SipURI
    from sip.useragent import Destination

    host, port = args.server.rsplit(":", 1)
    endpoint = SipEndpoint(
        host=HOST,
        port=0,
        server=SipURI.parse(f"sip:{host}:{port}"),
        transport="udp",
        publication_expires=args.expires,
        subscription_expires=args.expires,
    )
    await endpoint.start()
    tally = Tally()
    loop = asyncio.get_running_loop()
    send = endpoint._send  # counted on the way out, one prefix test per datagram

    def counting_send(data: bytes, destination: Destination) -> None:
        if data.startswith(b"SUBSCRIBE "):
            tally.count("SUBSCRIBE", loop.time())
        elif data.startswith(b"PUBLISH "):
            tally.count("PUBLISH", loop.time())
        send(data, destination)

    endpoint._send = counting_send  # type: ignore[method-assign]

    # CPU spent inside the sans-IO core (UserAgent.receive and handle_timer,
    # everything the driver calls per datagram and per timer), to tell it
    # from the driver, the event loop and the system calls around it.
    core_cpu = [0.0]
    ua = endpoint.ua
    for name in ("receive", "handle_timer"):
        method = getattr(ua, name)

        def timed(*a: Any, _method: Callable[..., None] = method) -> None:
            started = time.process_time()
            try:
                _method(*a)
            finally:
                core_cpu[0] += time.process_time() - started

        setattr(ua, name, timed)

    def listener(event: SubscriptionEvent) -> None:
        if isinstance(event, NotifyReceived):
            tally.count("NOTIFY", loop.time())
        elif isinstance(event, SubscriptionTerminated):
            tally.count(f"terminated:{event.reason}:{event.status}", loop.time())

    emit(event="ready", pid=os.getpid())
    await read_line()  # "go"
    tally.started = loop.time()
    failures: Counter[str] = Counter()

    async def publish(i: int) -> None:
        aor = presentity(i, args.publications)
        try:
            await endpoint.publish(SipURI.parse(aor), PIDF.format(aor=aor).encode()).outcome
        except RequestFailed as exc:
            failures[f"PUBLISH {exc.status}"] += 1

    async def subscribe(i: int) -> None:
        try:
            await endpoint.subscribe(
                SipURI.parse(subscriber(i)), SipURI.parse(presentity(i, args.publications)),
                on_event=listener,
            ).accepted
        except RequestFailed as exc:
            failures[f"SUBSCRIBE {exc.status}"] += 1

    await bounded(range(args.publications), args.window, publish)
    await bounded(range(args.subscriptions), args.window, subscribe)
    emit(event="held", seconds=loop.time() - tally.started, failures=dict(failures),
         subscriptions=endpoint.ua.subscription_count)
    core_at_held = core_cpu[0]
    profiler = None
    if args.profile_idle:
        import cProfile

        # CPU time, not wall time: the idle window is mostly waiting.
        profiler = cProfile.Profile(time.process_time)
        profiler.enable()
    await read_line()  # "stop"
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(args.profile_idle)
    emit(event="report", **tally.report(failures=dict(failures),
                                        subscriptions=endpoint.ua.subscription_count,
                                        gc=[g["collections"] for g in gc.get_stats()],
                                        core_cpu_idle=core_cpu[0] - core_at_held))
    await endpoint.close()


_CALL_ID = re.compile(rb"\r\n(?:Call-ID|i)[ \t]*:[ \t]*([^\r\n]+)", re.IGNORECASE)
_TO_TAG = re.compile(rb"\r\n(?:To|t)[ \t]*:[^\r\n]*;tag=([^;\r\n>, ]+)", re.IGNORECASE)
_FROM_TAG = re.compile(rb"\r\n(?:From|f)[ \t]*:[^\r\n]*;tag=([^;\r\n>, ]+)", re.IGNORECASE)
_ETAG = re.compile(rb"\r\nSIP-ETag[ \t]*:[ \t]*([^\r\n]+)", re.IGNORECASE)
_ECHOED = {b"via", b"v", b"from", b"f", b"to", b"t", b"call-id", b"i", b"cseq"}


class RawHolder(asyncio.DatagramProtocol):
    """The leanest subscriber and publisher that keeps its state alive."""

    def __init__(self, server: tuple[str, int], expires: int, tally: Tally) -> None:
        self.server = server
        self.expires = expires
        self.tally = tally
        self.transport: asyncio.DatagramTransport | None = None
        self.local = ""
        self.rng = secrets.SystemRandom()
        # Call-ID -> [kind, from aor, to aor, local tag, remote tag|etag, cseq, future]
        self.dialogs: dict[bytes, list[Any]] = {}
        self.due: list[tuple[float, bytes]] = []
        self.serial = itertools.count()
        self.prefix = secrets.token_hex(4)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)
        self.local = "{}:{}".format(*transport.get_extra_info("sockname")[:2])

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        now = asyncio.get_running_loop().time()
        if data.startswith(b"NOTIFY "):
            self.tally.count("NOTIFY", now)
            head = data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
            echoed = [line for line in head[1:]
                      if line.split(b":", 1)[0].strip().lower() in _ECHOED]
            answer = b"SIP/2.0 200 OK\r\n" + b"\r\n".join(echoed) + b"\r\nContent-Length: 0\r\n\r\n"
            self.transport.sendto(answer, addr)
            call_id = _CALL_ID.search(data)
            entry = self.dialogs.get(call_id.group(1).strip()) if call_id else None
            if entry is not None and entry[4] is None:
                tag = _FROM_TAG.search(data)
                entry[4] = tag.group(1) if tag else None
            return
        if not data.startswith(b"SIP/2.0 ") or int(data[8:11]) < 200:
            return
        call_id = _CALL_ID.search(data)
        entry = self.dialogs.get(call_id.group(1).strip()) if call_id else None
        if entry is None:
            return
        status = int(data[8:11])
        if entry[0] == "u" and entry[4] is None:
            tag = _TO_TAG.search(data)
            entry[4] = tag.group(1) if tag else None
        if entry[0] == "p" and status < 300:
            etag = _ETAG.search(data)
            entry[4] = etag.group(1).strip() if etag else None
        future = entry[6]
        entry[6] = None
        if status < 300:
            heapq.heappush(self.due, (now + refresh_delay(self.expires, self.rng.random()),
                                      call_id.group(1).strip() if call_id else b""))
        if future is not None and not future.done():
            future.set_result(status)

    def send(self, call_id: bytes, body: bytes = b"") -> None:
        assert self.transport is not None
        kind, source, target, tag, remote, cseq, _ = entry = self.dialogs[call_id]
        entry[5] = cseq = cseq + 1
        method = "SUBSCRIBE" if kind == "u" else "PUBLISH"
        self.tally.count(method, asyncio.get_running_loop().time())
        branch = f"z9hG4bK{self.prefix}{next(self.serial):x}"
        if kind == "u":
            to_tag = f";tag={remote.decode()}" if remote else ""
            extra = (f"Contact: <sip:{source[4:].split('@')[0]}@{self.local}>\r\n"
                     f"Accept: application/pidf+xml\r\n")
        else:
            to_tag = ""
            extra = f"SIP-If-Match: {remote.decode()}\r\n" if remote else ""
            if body:
                extra += "Content-Type: application/pidf+xml\r\n"
        head = (
            f"{method} {target} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {self.local};branch={branch};rport\r\n"
            f"Max-Forwards: 70\r\n"
            f"From: <{source}>;tag={tag}\r\n"
            f"To: <{target}>{to_tag}\r\n"
            f"Call-ID: {call_id.decode()}\r\n"
            f"CSeq: {cseq} {method}\r\n"
            f"Event: presence\r\n"
            f"Expires: {self.expires}\r\n"
            f"{extra}"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        self.transport.sendto(head.encode() + body, self.server)

    async def start(self, kind: str, source: str, target: str, body: bytes = b"") -> int:
        call_id = secrets.token_hex(8).encode()
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.dialogs[call_id] = [kind, source, target, secrets.token_hex(8), None, 0, future]
        # No transactions here: a lost request is sent again, like Timer E
        # would, a few times before it counts as failed.
        for _attempt in range(4):
            self.send(call_id, body)
            try:
                return await asyncio.wait_for(asyncio.shield(future), 1.0)
            except TimeoutError:
                continue
        return 408

    async def refresh_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(0.05)
            now = loop.time()
            while self.due and self.due[0][0] <= now:
                _, call_id = heapq.heappop(self.due)
                self.send(call_id)


async def raw_holder(args: argparse.Namespace) -> None:
    host, port = args.server.rsplit(":", 1)
    loop = asyncio.get_running_loop()
    tally = Tally()
    transport, holder = await loop.create_datagram_endpoint(
        lambda: RawHolder((host, int(port)), args.expires, tally), local_addr=(HOST, 0)
    )
    emit(event="ready", pid=os.getpid())
    await read_line()
    tally.started = loop.time()
    refresher = asyncio.ensure_future(holder.refresh_forever())
    failures: Counter[str] = Counter()

    async def publish(i: int) -> None:
        aor = presentity(i, args.publications)
        status = await holder.start("p", aor, aor, PIDF.format(aor=aor).encode())
        if status >= 300:
            failures[f"PUBLISH {status}"] += 1

    async def subscribe(i: int) -> None:
        status = await holder.start("u", subscriber(i), presentity(i, args.publications))
        if status >= 300:
            failures[f"SUBSCRIBE {status}"] += 1

    await bounded(range(args.publications), args.window, publish)
    await bounded(range(args.subscriptions), args.window, subscribe)
    held = args.subscriptions - sum(v for k, v in failures.items() if k.startswith("SUB"))
    emit(event="held", seconds=loop.time() - tally.started, failures=dict(failures),
         subscriptions=held)
    await read_line()
    emit(event="report", **tally.report(failures=dict(failures), subscriptions=held))
    refresher.cancel()
    transport.close()


# ------------------------------------------------- the adapter's own state


async def watch_state(count: int, window: int) -> None:
    """What the adapter keeps per watch beside the SIP subscription, measured in-process.

    ``count`` Subscribe Presence calls go through the real ``WatcherService``
    and a real ``SqliteStore`` (in a temporary folder); the SIP side is a
    stub that accepts every subscription at once, so what is measured is the
    adapter's Watch, its entries in the service's tables, and its store row —
    not the SIP stack (measured by the holders above).  Distinct
    (watcher, presentity) pairs: w{i} watches p{i % 10,000}.
    """
    import tempfile
    import tracemalloc

    from adapter.store import SqliteStore
    from adapter.watcher import Reference, WatcherService
    from pidf import AttributeType

    class StubHandle:
        """A subscription handle whose SUBSCRIBE is accepted at once."""

        def __init__(self, subscription_id: int) -> None:
            self.id = subscription_id
            self.accepted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self.accepted.set_result(None)

    class StubEndpoint:
        """The calls WatcherService makes on SipEndpoint for Subscribe Presence."""

        def __init__(self) -> None:
            self.ids = itertools.count(1)

        def subscribe(self, subscriber: Any, target: Any, **_: Any) -> StubHandle:
            return StubHandle(next(self.ids))

    attributes = frozenset({AttributeType.ACTIVITY, AttributeType.PLACE})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "store.sqlite"
        store = SqliteStore(path)
        service = WatcherService(StubEndpoint(), None, None, store=store)  # type: ignore[arg-type]

        async def subscribe(i: int) -> None:
            await service.subscribe(
                f"app{i % 100}", f"sip:w{i}@{DOMAIN}", f"sip:p{i % 10_000}@{DOMAIN}",
                application=f"application {i % 100}", attributes=attributes,
                reference=Reference(f"corr-{i}", f"http://127.0.0.1:8080/apps/{i % 100}/notify"),
            )

        await bounded(range(100), window, subscribe)  # warm-up: imports, caches
        gc.collect()
        pid = os.getpid()
        before = sample(pid)
        tracemalloc.start()
        traced0 = tracemalloc.get_traced_memory()[0]
        await bounded(range(100, 100 + count), window, subscribe)
        gc.collect()
        traced = tracemalloc.get_traced_memory()[0] - traced0
        tracemalloc.stop()
        after = sample(pid)
        await store.close()
        disk = sum(f.stat().st_size for f in Path(tmp).iterdir())
    print(f"adapter state for {count:,} watches (WatcherService + SqliteStore, SIP stubbed):")
    print(f"  Python heap (tracemalloc): {traced / count:,.0f} B per watch, "
          f"{traced / 2**20:,.1f} MiB in all")
    print(f"  RSS growth (tracing included): {(after.rss_kib - before.rss_kib) * 1024 / count:,.0f}"
          f" B per watch")
    print(f"  store file (SQLite, after close): {disk / (count + 100):,.0f} B per watch, "
          f"{disk / 2**20:,.1f} MiB")


# ---------------------------------------------------------------- controller


@dataclass
class Sample:
    rss_kib: int
    peak_kib: int  # VmHWM: the highest RSS so far
    cpu_s: float
    at: float


def sample(pid: int) -> Sample:
    with open(f"/proc/{pid}/status") as status:
        fields = dict(line.split(":", 1) for line in status)
    rss, peak = (int(fields[k].split()[0]) for k in ("VmRSS", "VmHWM"))
    with open(f"/proc/{pid}/stat") as stat:
        stat_fields = stat.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    # utime and stime are fields 14 and 15 of proc(5); index 11/12 after "(comm)".
    return Sample(rss, peak, (int(stat_fields[11]) + int(stat_fields[12])) / ticks,
                  time.monotonic())


class Holder:
    """One holder subprocess, spoken to by lines on stdin/stdout."""

    def __init__(self, role: str, args: argparse.Namespace, server: str) -> None:
        self.role = role
        # "base" is the ua holder of another source tree (--baseline): its own
        # copy of this file puts that tree first on sys.path, so it holds the
        # subscriptions with that tree's sip/.
        tree = Path(args.baseline).resolve() if role == "base" else REPO
        command = [
            sys.executable, str(tree / "bench" / "scale.py"),
            "--role", "ua" if role == "base" else role, "--server", server,
            "--subscriptions", str(args.subscriptions), "--publications", str(args.publications),
            "--expires", str(args.expires), "--window", str(args.window),
        ]
        if role == "ua":
            command += ["--gc", args.gc]
        if role == "ua" and args.profile_idle:
            command += ["--profile-idle", str(Path(args.profile_idle).resolve())]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True, cwd=tree)
        self.messages: dict[str, dict[str, Any]] = {}
        self.samples: dict[str, Sample] = {}

    def expect(self, event: str) -> dict[str, Any]:
        stdout = cast(IO[str], self.process.stdout)
        while True:
            line = stdout.readline()
            if not line:
                raise RuntimeError(f"{self.role} holder exited ({self.process.wait()})")
            message = json.loads(line)
            if message.get("event") == event:
                self.messages[event] = message
                return message

    def tell(self, word: str) -> None:
        stdin = cast(IO[str], self.process.stdin)
        stdin.write(word + "\n")
        stdin.flush()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


def histogram(per_second: dict[str, int], start: int, end: int) -> list[int]:
    return [int(per_second.get(str(s), 0)) for s in range(start, end)]


def report(args: argparse.Namespace, holders: list[Holder]) -> None:
    print()
    print(f"{args.subscriptions:,} subscriptions + {args.publications:,} publications per "
          f"holder, Expires {args.expires} s, idle window {args.observe:.0f} s")
    header = (f"{'holder':<6} {'floor MiB':>9} {'held MiB':>8} {'end MiB':>7} {'peak MiB':>8} "
              f"{'per sub B':>9} "
              f"{'setup s':>7} {'setup CPU s':>11} {'idle CPU %':>10} {'refresh/s':>9} "
              f"{'CPU us/refresh':>14} {'failures':>8}")
    print(header)
    print("-" * len(header))
    rows: dict[str, dict[str, float]] = {}
    core_cpu: dict[str, float] = {}
    for h in holders:
        ready, held, end = h.samples["ready"], h.samples["held"], h.samples["end"]
        idle0 = h.samples["idle"]
        rep = h.messages["report"]
        idle_from = args.idle_from
        idle_to = idle_from + int(args.observe) - 1
        subs = histogram(rep["per_second"].get("SUBSCRIBE", {}), idle_from, idle_to)
        pubs = histogram(rep["per_second"].get("PUBLISH", {}), idle_from, idle_to)
        refreshes = (sum(subs) + sum(pubs)) / max(len(subs), 1)
        idle_cpu = (end.cpu_s - idle0.cpu_s) / (end.at - idle0.at)
        per_refresh = idle_cpu / refreshes * 1e6 if refreshes else float("nan")
        per_sub = (held.rss_kib - ready.rss_kib) * 1024 / max(args.subscriptions, 1)
        failures = sum(rep["failures"].values()) + sum(
            v for k, v in rep["totals"].items() if k.startswith("terminated"))
        rows[h.role] = {"held": held.rss_kib, "peak": end.peak_kib, "cpu": idle_cpu,
                        "per_refresh": per_refresh}
        if "core_cpu_idle" in rep and refreshes:
            core_cpu[h.role] = rep["core_cpu_idle"] / (end.at - idle0.at) / refreshes * 1e6
        print(f"{h.role:<6} {ready.rss_kib / 1024:>9.1f} {held.rss_kib / 1024:>8.1f} "
              f"{end.rss_kib / 1024:>7.1f} {end.peak_kib / 1024:>8.1f} "
              f"{per_sub:>9.0f} {h.messages['held']['seconds']:>7.1f} "
              f"{held.cpu_s - ready.cpu_s:>11.1f} {idle_cpu * 100:>10.1f} {refreshes:>9.0f} "
              f"{per_refresh:>14.0f} {failures:>8}")
    for role, per_refresh in core_cpu.items():
        print(f"{role}: of the CPU per refresh, {per_refresh:.0f} µs in the sans-IO UserAgent "
              f"(receive, handle_timer), {rows[role]['per_refresh'] - per_refresh:.0f} µs "
              f"around it (driver, event loop, system calls, the benchmark's counting)")
    for side, floor in (("ua", "raw"), ("base", "raw"), ("ua", "base")):
        if side in rows and floor in rows:
            a, b = rows[side], rows[floor]
            print(f"\nratios {side}/{floor}: "
                  + ", ".join(f"{what} {a[k] / b[k]:.2f}" if b[k] else f"{what} -"
                              for what, k in (("RSS held", "held"), ("peak", "peak"),
                                              ("idle CPU", "cpu"),
                                              ("CPU per refresh", "per_refresh"))))
    for h in holders:
        rep = h.messages["report"]
        print(f"\n{h.role}: failures {rep['failures'] or 0}; events "
              f"{ {k: v for k, v in rep['totals'].items()} }; still held {rep['subscriptions']}"
              + (f"; gc collections by generation {rep['gc']}" if "gc" in rep else ""))
        idle_from = args.idle_from
        last = idle_from + int(args.observe) - 1
        subs = histogram(rep["per_second"].get("SUBSCRIBE", {}), 0, last)
        pubs = histogram(rep["per_second"].get("PUBLISH", {}), 0, last)
        both = [a + b for a, b in zip(subs, pubs, strict=True)]
        idle = both[idle_from:]
        if idle:
            busy = [v for v in idle if v]
            print(f"  refreshes in the idle window: max {max(idle)}/s, "
                  f"mean {sum(idle) / len(idle):.0f}/s over {len(idle)} s, "
                  f"mean {sum(busy) / max(len(busy), 1):.0f}/s over the {len(busy)} s that "
                  f"had any; setup sent {sum(both[:idle_from]) / idle_from:.0f}/s")
        print("  SUBSCRIBE+PUBLISH sent per second, 5-second bins (setup | idle):")
        scale = max(max(both, default=1), 1)
        for start in range(0, len(both), 5):
            chunk = both[start:start + 5]
            mark = "|" if start <= idle_from < start + 5 else " "
            bar = "#" * round(40 * max(chunk) / scale)
            mean = sum(chunk) / len(chunk)
            print(f"   {start:>4}s{mark} max {max(chunk):>6}/s  mean {mean:>7.0f}/s  {bar}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--subscriptions", type=int, default=100_000)
    parser.add_argument("--publications", type=int, default=10_000)
    parser.add_argument("--expires", type=int, default=120,
                        help="Expires of every SUBSCRIBE and PUBLISH (s)")
    parser.add_argument("--observe", type=float, default=100.0,
                        help="idle seconds measured after everything is held")
    parser.add_argument("--window", type=int, default=64,
                        help="initial requests outstanding at once per holder during setup")
    parser.add_argument("--sides", default="ua,raw",
                        help="holders to run, of ua, raw and base (needs --baseline)")
    parser.add_argument("--baseline", metavar="DIR",
                        help="another source tree (e.g. `git archive REV | tar -x -C DIR`) "
                             "whose SIP stack the 'base' holder runs, for before/after "
                             "figures side by side")
    parser.add_argument("--server-shm", type=int, default=2048,
                        help="the presence server's shared memory in MB")
    parser.add_argument("--gc", choices=("adapter", "default"), default="adapter",
                        help="garbage-collector settings of the ua holder: the adapter's "
                             "(gc.freeze, adapter.cli.GC_THRESHOLDS) or CPython's; the raw "
                             "and --baseline holders always run CPython's")
    parser.add_argument("--watch-state", type=int, metavar="N",
                        help="instead: measure the adapter's own state per watch "
                             "(WatcherService + SqliteStore, SIP stubbed) over N watches")
    parser.add_argument("--profile-idle", metavar="FILE",
                        help="cProfile (CPU time) the ua holder over the idle window into FILE "
                             "(slows it down: not for recorded figures)")
    parser.add_argument("--role", choices=("ua", "raw"), help=argparse.SUPPRESS)
    parser.add_argument("--server", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.watch_state:
        asyncio.run(watch_state(args.watch_state, args.window))
        return 0
    if args.role is not None:
        if args.role == "ua" and args.gc == "adapter":
            # What `presence-adapter serve` does before it serves (adapter/cli.py).
            from adapter.cli import GC_THRESHOLDS

            gc.freeze()
            gc.set_threshold(*GC_THRESHOLDS)
        asyncio.run(ua_holder(args) if args.role == "ua" else raw_holder(args))
        return 0
    from bench.pg_presence_server import pg_presence_server

    with pg_presence_server(HOST, args.server_shm) as server:
        print(f"presence server {server.sip_uri} (pid {server.pid}, shm {args.server_shm} MB)",
              flush=True)
        roles = args.sides.split(",")
        if args.baseline and "base" not in roles:
            roles.append("base")
        if "base" in roles and not args.baseline:
            raise SystemExit("the base holder needs --baseline DIR")
        holders = [Holder(role, args, f"{HOST}:{server.port}") for role in roles]
        try:
            for h in holders:
                h.samples["ready"] = sample(int(h.expect("ready")["pid"]))
            go = time.monotonic()
            for h in holders:
                h.tell("go")
            for h in holders:
                h.expect("held")
                h.samples["held"] = sample(h.process.pid)
                print(f"  {h.role}: held after {h.messages['held']['seconds']:.1f} s, "
                      f"failures {h.messages['held']['failures'] or 0}", flush=True)
            idle_start = time.monotonic()
            # The histograms' idle window, in the holders' seconds since "go".
            args.idle_from = int(idle_start - go) + 1
            for h in holders:
                h.samples["idle"] = sample(h.process.pid)
            # Everyone idles for the same wall-clock window, measured from the
            # last holder's end of setup.
            time.sleep(max(0.0, args.observe - (time.monotonic() - idle_start)))
            for h in holders:
                h.samples["end"] = sample(h.process.pid)
                h.tell("stop")
                h.expect("report")
        finally:
            for h in holders:
                h.stop()
    report(args, holders)
    return 0


if __name__ == "__main__":
    sys.exit(main())
