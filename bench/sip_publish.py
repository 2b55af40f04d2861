"""SIP PUBLISH benchmark: the product's user agent vs a raw-socket sender.

    .venv/bin/python bench/sip_publish.py                    # ~45 s
    .venv/bin/python bench/sip_publish.py --duration 2 --concurrency 1

One run starts a private bundled presence server (tests/presence_server.py:
Kamailio on a free loopback port, its own temporary directory) and drives it,
over UDP, from two senders in turn at the same concurrency:

* ``ua``  — the product: ``sip.aio.SipEndpoint.publish`` / ``modify`` (the
  sans-IO ``UserAgent`` with its transactions, publications and timer heap);
* ``raw`` — a floor for per-request overhead: one asyncio DatagramProtocol
  that formats PUBLISH text with an f-string and matches responses by Via
  branch and Call-ID, nothing else (no retransmission, no parser).

Both sides publish distinct presentities the same way: each worker owns a
slice of ``--aors`` addresses (fresh ones for every phase) and goes round
them — the first visit is an initial PUBLISH, later visits modify it with
SIP-If-Match and the alternate body (RFC 3903 §4.4).  A 412 is followed at
once by a fresh PUBLISH, as the user agent does (RFC 3903 §6).  Only 2xx
count as throughput; other final responses and timeouts are errors.

Phases are timed after a warm-up (at least ``--warmup`` seconds *and* every
address published once, so the window measures modifies), and the sides
alternate (raw, ua, raw, ua, ...; ``--rounds``) to spread the noise of a
shared machine over both.

With the bundled sqlite database the server answers ~60 % of *concurrent*
PUBLISHes with 500 "database is locked" (docs/kamailio.md).  Concurrency 1 is the
headline; 4 and 32 are reported with their errors.  After a 5xx the user
agent backs off and retries by itself (RefreshPolicy); its workers skip an
address whose publication is busy that way, and the retries' outcomes are
counted with the rest (shown apart in the details).  Load benchmarks
against a PostgreSQL-backed server belong to a later performance issue.

The server runs with a larger shared memory pool than conf/kamailio/run
gives it (``--server-shm``, see :func:`server_shm`): with the bundled 64 MB,
Kamailio itself runs out of memory past ~1,000 PUBLISH/s and answers 500.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import re
import secrets
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # tests.presence_server is not an installed package

from sip.aio.endpoint import RequestFailed, SipEndpoint  # noqa: E402
from sip.aio.handles import PublicationHandle  # noqa: E402
from sip.publication import (  # noqa: E402
    PublicationConfirmed,
    PublicationEvent,
    PublicationFailed,
    PublicationState,
)
from sip.uri import SipURI  # noqa: E402
from tests.presence_server import PresenceServer  # noqa: E402

HOST = "127.0.0.1"
EXPIRES = 3600  # long: the server's expiry clean-up is one more sqlite writer
RAW_TIMEOUT = 5.0  # the raw side does not retransmit; a lost datagram is an error

PIDF = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    '<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="{aor}">'
    '<tuple id="t1"><status><basic>{basic}</basic></status>'
    "<note>bench</note></tuple></presence>"
)


def bodies(aor: str) -> tuple[bytes, bytes]:
    """Two states of one presentity: every modify really changes it."""
    return (
        PIDF.format(aor=aor, basic="open").encode(),
        PIDF.format(aor=aor, basic="closed").encode(),
    )


# ---------------------------------------------------------------- measuring


@dataclass
class Window:
    """Counts outcomes that complete inside the measured window.

    The window opens once the warm-up time is over and every address has had
    its first PUBLISH; it closes after ``duration`` seconds, or after
    ``requests`` counted outcomes when that is given.
    """

    warmup: float
    duration: float
    requests: int | None
    first_pass_left: int
    started: float = field(default_factory=time.perf_counter)
    opened: float | None = None
    closed_at: float | None = None
    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    background: int = 0
    latencies: list[float] = field(default_factory=list)

    @property
    def closed(self) -> bool:
        return self.closed_at is not None

    def tick(self, now: float) -> None:
        if self.closed_at is not None:
            return
        if self.opened is None:
            if self.first_pass_left <= 0 and now - self.started >= self.warmup:
                self.opened = now
            return
        if self.requests is None and now - self.opened >= self.duration:
            self.closed_at = self.opened + self.duration

    def outcome(self, status: int | None, now: float, *, background: bool = False) -> None:
        """One PUBLISH outcome (None = timed out); background: nobody awaited it."""
        self.tick(now)
        if self.opened is None or self.closed_at is not None:
            return
        self.background += background
        if status is not None and 200 <= status < 300:
            self.ok += 1
        else:
            self.errors["timeout" if status is None else str(status)] += 1
        if self.requests is not None and self.ok + sum(self.errors.values()) >= self.requests:
            self.closed_at = now

    def latency(self, seconds: float, finished: float) -> None:
        if self.opened is None or finished < self.opened:
            return
        if self.closed_at is None or finished <= self.closed_at:
            self.latencies.append(seconds)

    @property
    def elapsed(self) -> float:
        if self.opened is None or self.closed_at is None:
            return 0.0
        return self.closed_at - self.opened


async def run_window(window: Window, workers: list[Awaitable[None]]) -> None:
    """Run the workers until the window closes, then let them finish."""
    tasks = [asyncio.ensure_future(worker) for worker in workers]
    try:
        while not window.closed:
            done = [task for task in tasks if task.done()]
            for task in done:
                task.result()  # a crashed worker ends the benchmark
            await asyncio.sleep(0.01)
            window.tick(time.perf_counter())
        await asyncio.wait(tasks, timeout=RAW_TIMEOUT + 1)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# ---------------------------------------------------------------- raw sender


_ETAG = re.compile(rb"\r\n(?:SIP-ETag)[ \t]*:[ \t]*([^\r\n]+)", re.IGNORECASE)
_BRANCH = re.compile(rb"branch=([^;,\s]+)")


class RawSender(asyncio.DatagramProtocol):
    """The leanest PUBLISH client that still does the protocol's work."""

    def __init__(self, server: tuple[str, int]) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None
        self.local = ""
        self.pending: dict[bytes, tuple[asyncio.Future[tuple[int, bytes | None]], bytes]] = {}
        self.prefix = "z9hG4bK" + secrets.token_hex(4) + "-"
        self.serial = itertools.count()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The selector event loop's UDP transport does not subclass
        # DatagramTransport, so no isinstance check here.
        self.transport = cast(asyncio.DatagramTransport, transport)
        self.local = "{}:{}".format(*transport.get_extra_info("sockname")[:2])

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if not data.startswith(b"SIP/2.0 "):
            return  # no subscriptions here, so no requests worth answering
        branch = _BRANCH.search(data)
        if branch is None:
            return
        entry = self.pending.get(branch.group(1))
        if entry is None:
            return
        future, call_id = entry
        status = int(data[8:11])
        if status < 200 or call_id not in data:
            return
        del self.pending[branch.group(1)]
        etag = _ETAG.search(data)
        if not future.done():
            future.set_result((status, etag.group(1).strip() if etag else None))

    async def publish(
        self, presentity: RawPresentity, body: bytes
    ) -> tuple[int | None, bytes | None]:
        assert self.transport is not None
        branch = f"{self.prefix}{next(self.serial):x}"
        presentity.cseq += 1
        aor = presentity.aor
        if_match = f"SIP-If-Match: {presentity.etag.decode()}\r\n" if presentity.etag else ""
        head = (
            f"PUBLISH {aor} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {self.local};branch={branch};rport\r\n"
            f"Max-Forwards: 70\r\n"
            f"From: <{aor}>;tag={presentity.tag}\r\n"
            f"To: <{aor}>\r\n"
            f"Call-ID: {presentity.call_id}\r\n"
            f"CSeq: {presentity.cseq} PUBLISH\r\n"
            f"Event: presence\r\n"
            f"Expires: {EXPIRES}\r\n"
            f"{if_match}"
            f"Content-Type: application/pidf+xml\r\n"
            f"User-Agent: presence-adapter\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        future: asyncio.Future[tuple[int, bytes | None]] = (
            asyncio.get_running_loop().create_future()
        )
        key = branch.encode()
        self.pending[key] = (future, presentity.call_id.encode())
        self.transport.sendto(head.encode() + body, self.server)
        try:
            return await asyncio.wait_for(future, RAW_TIMEOUT)
        except TimeoutError:
            self.pending.pop(key, None)
            return None, None


@dataclass
class RawPresentity:
    aor: str
    bodies: tuple[bytes, bytes]
    call_id: str = field(default_factory=lambda: secrets.token_hex(8))
    tag: str = field(default_factory=lambda: secrets.token_hex(8))
    cseq: int = 0
    etag: bytes | None = None
    visits: int = 0


async def raw_visit(sender: RawSender, presentity: RawPresentity, window: Window) -> None:
    """One raw PUBLISH (initial, then modifies) for ``presentity``, counted in ``window``."""
    body = presentity.bodies[presentity.visits % 2]
    presentity.visits += 1
    started = time.perf_counter()
    status, etag = await sender.publish(presentity, body)
    if status == 412:
        # RFC 3903 §6: the ESC forgot our entity tag; publish anew.
        presentity.etag = None
        status, etag = await sender.publish(presentity, body)
    finished = time.perf_counter()
    if status is not None and 200 <= status < 300:
        presentity.etag = etag
    if presentity.visits == 1:
        window.first_pass_left -= 1
    window.outcome(status, finished)
    window.latency(finished - started, finished)


async def raw_phase(
    server: tuple[str, int], aors: list[str], concurrency: int, window: Window
) -> dict[str, int]:
    loop = asyncio.get_running_loop()
    transport, sender = await loop.create_datagram_endpoint(
        lambda: RawSender(server), local_addr=(HOST, 0)
    )
    presentities = [RawPresentity(aor, bodies(aor)) for aor in aors]

    async def worker(mine: list[RawPresentity]) -> None:
        for presentity in itertools.cycle(mine):
            if window.closed:
                return
            await raw_visit(sender, presentity, window)

    try:
        await run_window(window, [worker(presentities[w::concurrency]) for w in range(concurrency)])
    finally:
        transport.close()
    return {}


# ---------------------------------------------------------------- user agent


_BUSY = (PublicationState.SENDING, PublicationState.RETRY_WAIT, PublicationState.REMOVING)


async def ua_phase(
    server: tuple[str, int], aors: list[str], concurrency: int, window: Window
) -> dict[str, int]:
    endpoint = SipEndpoint(
        host=HOST,
        port=0,
        server=SipURI.parse(f"sip:{server[0]}:{server[1]}"),
        transport="udp",
        publication_expires=EXPIRES,
    )
    await endpoint.start()
    ids: dict[SipURI, int] = {}
    handles: dict[SipURI, PublicationHandle] = {}
    in_flight: set[SipURI] = set()  # addresses a worker awaits an outcome for

    def listener(aor: SipURI) -> Callable[[PublicationEvent], None]:
        def outcome(event: PublicationEvent) -> None:
            # Every outcome of a PUBLISH of the publication: the workers', and
            # the retries the user agent makes on its own after a failure
            # (background).
            if not isinstance(event, PublicationConfirmed | PublicationFailed):
                return
            status = 200 if isinstance(event, PublicationConfirmed) else event.status
            window.outcome(status, time.perf_counter(), background=aor not in in_flight)

        return outcome

    targets = [(SipURI.parse(aor), bodies(aor)) for aor in aors]

    async def worker(mine: list[tuple[SipURI, tuple[bytes, bytes]]]) -> None:
        visits = [0] * len(mine)
        skipped = 0
        for index in itertools.cycle(range(len(mine))):
            if window.closed:
                return
            aor, states = mine[index]
            publication_id = ids.get(aor)
            if publication_id is not None:
                publication = endpoint.ua.publication(publication_id)
                if publication is not None and publication.state in _BUSY:
                    # The user agent retries this one itself (backoff).
                    skipped += 1
                    if skipped >= len(mine):
                        skipped = 0
                        await asyncio.sleep(0.001)
                    continue
            skipped = 0
            body = states[visits[index] % 2]
            visits[index] += 1
            started = time.perf_counter()
            in_flight.add(aor)
            try:
                if publication_id is None:
                    # The handle is ours even when the PUBLISH fails (the user
                    # agent keeps retrying that publication, RFC 3903 state is
                    # not dropped).
                    handle = handles[aor] = endpoint.publish(aor, body, on_event=listener(aor))
                    ids[aor] = handle.id
                    await handle.outcome
                else:
                    await handles[aor].modify(body)
            except RequestFailed:
                pass  # counted by its listener
            finally:
                in_flight.discard(aor)
            finished = time.perf_counter()
            if visits[index] == 1:
                window.first_pass_left -= 1
            window.latency(finished - started, finished)

    try:
        await run_window(window, [worker(targets[w::concurrency]) for w in range(concurrency)])
    finally:
        await endpoint.close()
    return {"dropped": endpoint.dropped}


# ---------------------------------------------------------------- the run


@dataclass
class Totals:
    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    extra: Counter[str] = field(default_factory=Counter)

    def add(self, window: Window, extra: dict[str, int]) -> None:
        self.ok += window.ok
        self.errors.update(window.errors)
        self.seconds += window.elapsed
        self.latencies.extend(window.latencies)
        self.extra.update(extra)
        self.extra["background"] += window.background

    @property
    def ok_rate(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    @property
    def error_rate(self) -> float:
        return sum(self.errors.values()) / self.seconds if self.seconds else 0.0

    @property
    def busy(self) -> float:
        """Mean number of workers waiting for an answer (Little's law)."""
        return sum(self.latencies) / self.seconds if self.seconds else 0.0

    def percentile(self, q: int) -> float:
        if len(self.latencies) < 2:
            return self.latencies[0] * 1000 if self.latencies else float("nan")
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[q - 1] * 1000


Phase = Callable[[tuple[str, int], list[str], int, Window], Awaitable[dict[str, int]]]
SIDES: dict[str, Phase] = {"raw": raw_phase, "ua": ua_phase}


async def bench(
    args: argparse.Namespace, server: tuple[str, int]
) -> list[tuple[int, Totals, Totals]]:
    rows = []
    phase_no = itertools.count(1)
    run_id = secrets.token_hex(3)
    per_round = args.duration / args.rounds
    per_round_requests = -(-args.requests // args.rounds) if args.requests else None
    for concurrency in args.concurrency:
        totals = {"raw": Totals(), "ua": Totals()}
        for _round in range(args.rounds):
            for side in ("raw", "ua"):
                number = next(phase_no)
                # Fresh presentities per phase: no phase inherits another's
                # publications (or the server's bookkeeping of them).
                aors = [f"sip:b{run_id}p{number}-{i}@bench.example.com" for i in range(args.aors)]
                window = Window(args.warmup, per_round, per_round_requests, len(aors))
                extra = await SIDES[side](server, aors, concurrency, window)
                totals[side].add(window, extra)
                print(
                    f"  c={concurrency:<3} {side:<3} round {_round + 1}: "
                    f"{window.ok / window.elapsed if window.elapsed else 0:8.0f} ok/s  "
                    f"errors {dict(window.errors) or 0}",
                    flush=True,
                )
        rows.append((concurrency, totals["raw"], totals["ua"]))
    return rows


def report(rows: list[tuple[int, Totals, Totals]], args: argparse.Namespace) -> None:
    shm = f"shm {args.server_shm} MB" if args.server_shm else "shm 64 MB (as bundled)"
    print()
    print(f"SIP PUBLISH over UDP, bundled Kamailio (sqlite, {shm}); {args.aors} presentities")
    print("ok/s counts 2xx only; err/s every other final response or timeout; latency in ms")
    header = (
        f"{'conc':>4}  {'raw ok/s':>9}  {'ua ok/s':>8}  {'ua/raw':>6}  "
        f"{'raw err/s':>9}  {'ua err/s':>8}  {'raw p50':>7}  {'raw p99':>7}  "
        f"{'ua p50':>6}  {'ua p99':>6}"
    )
    print(header)
    print("-" * len(header))
    for concurrency, raw, ua in rows:
        ratio = ua.ok_rate / raw.ok_rate if raw.ok_rate else float("nan")
        print(
            f"{concurrency:>4}  {raw.ok_rate:>9.0f}  {ua.ok_rate:>8.0f}  {ratio:>6.2f}  "
            f"{raw.error_rate:>9.0f}  {ua.error_rate:>8.0f}  {raw.percentile(50):>7.2f}  "
            f"{raw.percentile(99):>7.2f}  {ua.percentile(50):>6.2f}  {ua.percentile(99):>6.2f}"
        )
    print()
    for concurrency, raw, ua in rows:
        print(
            f"c={concurrency}: measured {raw.seconds:.1f} s raw, {ua.seconds:.1f} s ua; "
            f"errors by status raw {dict(raw.errors) or 0}, ua {dict(ua.errors) or 0}; "
            f"ua outcomes of its own retries (counted above) {ua.extra['background']}; "
            f"workers awaiting an answer on average raw {raw.busy:.1f}, ua {ua.busy:.1f}"
        )
    print()
    if not args.server_shm:
        print("With the bundled 64 MB of shared memory, 500s past ~1,000 PUBLISH/s are Kamailio")
        print('out of memory ("out of mem" in its log), not sqlite; see --server-shm.')
    print('With sqlite, concurrent PUBLISHes get 500s ("database is locked" in the server')
    print("log); load figures against a PostgreSQL-backed server belong to a later")
    print("performance issue.  After a 5xx the user agent backs off (1 s, doubling) and")
    print("retries on its own; its workers skip publications in backoff, so fewer of them")
    print("wait on the server than the concurrency says (the averages above).")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--duration",
        type=float,
        default=5.0,
        help="measured seconds per side per concurrency, split over the rounds",
    )
    parser.add_argument(
        "--requests",
        type=int,
        default=None,
        help="measure this many outcomes per side per concurrency instead",
    )
    parser.add_argument(
        "--warmup", type=float, default=1.0, help="unmeasured seconds at the start of every phase"
    )
    parser.add_argument(
        "--rounds", type=int, default=2, help="alternations raw, ua per concurrency"
    )
    parser.add_argument(
        "--server-shm",
        type=int,
        default=1024,
        help="the presence server's shared memory in MB (0 = the bundled 64 MB)",
    )
    parser.add_argument("--aors", type=int, default=1000, help="presentities per phase")
    parser.add_argument(
        "--concurrency",
        type=lambda s: [int(c) for c in s.split(",")],
        default=[1, 4, 32],
        help="comma-separated, e.g. 1,4,32",
    )
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.aors < max(args.concurrency) or min(args.concurrency) < 1:
        parser.error("need rounds >= 1, concurrency >= 1 and aors >= the largest concurrency")
    return args


@contextlib.contextmanager
def server_shm(megabytes: int) -> Iterator[None]:
    """Run the presence server with a ``megabytes`` shared memory pool.

    conf/kamailio/run starts Kamailio with ``-m 64``.  tm keeps every
    finished non-INVITE transaction for its wait timer (5 s), in shared
    memory, and 64 MB hold only about 5,000 of them: past ~1,000 PUBLISH/s
    sustained, t_newtran fails with "out of mem" and the server answers
    500 "No error (2/SL)" until the pool drains (measured).  The run script
    takes the binary from $KAMAILIO, so a two-line wrapper in a temporary
    directory appends a larger ``-m`` (Kamailio's last ``-m`` wins).
    """
    if not megabytes:
        yield
        return
    script = f'#!/bin/sh\nexec {shlex.quote(kamailio_binary())} "$@" -m {int(megabytes)}\n'
    with tempfile.TemporaryDirectory(prefix="sip-publish-bench-") as directory:
        with kamailio_wrapper(Path(directory), script):
            yield


def kamailio_binary() -> str:
    """The Kamailio that conf/kamailio/run would start ($KAMAILIO, else from PATH)."""
    return os.environ.get("KAMAILIO") or shutil.which("kamailio") or "/usr/sbin/kamailio"


@contextlib.contextmanager
def kamailio_wrapper(directory: Path, script: str) -> Iterator[None]:
    """$KAMAILIO pointed, while inside, at ``script`` written to ``directory``
    (conf/kamailio/run takes the binary from it)."""
    wrapper = directory / "kamailio"
    wrapper.write_text(script)
    wrapper.chmod(0o755)
    previous = os.environ.get("KAMAILIO")
    os.environ["KAMAILIO"] = str(wrapper)
    try:
        yield
    finally:
        if previous is None:
            del os.environ["KAMAILIO"]
        else:
            os.environ["KAMAILIO"] = previous


@contextlib.contextmanager
def kamailio_config(text: str) -> Iterator[None]:
    """Run Kamailio, while inside, with the configuration ``text`` instead of
    the file conf/kamailio/run passes as ``-f CFG`` (a wrapper in $KAMAILIO)."""
    real = kamailio_binary()
    with tempfile.TemporaryDirectory(prefix="bench-kamailio-") as directory:
        cfg = Path(directory) / "kamailio.cfg"
        cfg.write_text(text)
        script = (
            "#!/bin/bash\nargs=()\nprev=\n"
            'for a in "$@"; do\n'
            f'  if [ "$prev" = "-f" ]; then a={shlex.quote(str(cfg))}; fi\n'
            '  args+=("$a"); prev="$a"\n'
            "done\n"
            f'exec {shlex.quote(real)} "${{args[@]}}"\n'
        )
        with kamailio_wrapper(Path(directory), script):
            yield


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with server_shm(args.server_shm), PresenceServer(HOST) as server:
        shm = f"{args.server_shm} MB" if args.server_shm else "64 MB (bundled)"
        print(
            f"presence server {server.sip_uri} (pid {server.pid}, shm {shm}); "
            f"{args.aors} presentities per phase, warm-up {args.warmup} s, "
            f"{args.rounds} rounds",
            flush=True,
        )
        rows = asyncio.run(bench(args, server.sip_address))
    report(rows, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
