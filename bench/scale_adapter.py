"""Scale of the whole adapter: 100,000 subscriptions and 10,000 publications made over REST.

    .venv/bin/python bench/scale_adapter.py                    # 1,000 x 100 + 10,000; 10-20 min
    .venv/bin/python bench/scale_adapter.py --watchers 200 --observe 60 --server-expires 120

Issue #8's benchmark 4 for the adapter as its users run it, where bench/scale.py
drives only its SIP stack.  One run starts, on free loopback ports:

* a PostgreSQL-backed presence server (bench/pg_presence_server.py, 2 GB of
  shared memory), its configuration copied with one change: the longest
  lifetime it grants a PUBLISH or SUBSCRIBE, ``--server-expires`` (300 s;
  0 keeps the bundled 86,400).  The adapter asks for 3,600 s (sip.UserAgent's
  default; ``presence-adapter serve`` has no setting for it) and refreshes
  within what the server grants (RFC 6665 §4.2.1.1, RFC 3903 §6): at
  3,600 s 110,000 objects refresh about 37 times a second, 2,700–3,240 s
  after each answer, too late for a run of minutes; at 300 s, 223–268 s after
  each answer (about 440/s), so the idle window holds a whole refresh cycle —
  but a set-up longer than 223 s (100,000 Subscribe Presence calls take
  about 250 s here) runs into the first refreshes; at 600 s (450–540 s) it
  does not (``--server-expires 600 --observe 600``);
* a counting UDP relay (``--role relay``, its own process): the adapter's
  ``sip.server``, forwarding every datagram unchanged to the presence server
  and its answers back.  It counts per second the SUBSCRIBE and PUBLISH the
  adapter sends (initial, refresh, end; retransmissions apart) and the
  answers, and keeps per dialog when the server's last 2xx lets it expire:
  what is alive at the end is read off the wire, not off the adapter;
* the adapter (``presence-adapter serve``, tests/adapter_process.py) with
  ``--apps`` application accounts; account ``a<j>`` may act as the watchers
  ``sip:w<i>@…`` and the presentities ``sip:p<q>@…`` with i, q ≡ j (mod apps).

Set-up, all through the REST API but the presence rules: pres-rules granting
every presentity's watchers every attribute are written over XCAP straight
to the server (``--no-rules`` leaves the watchers pending: empty NOTIFYs,
no pres-rules reads); then Publish for each of ``--publications``
presentities; then Subscribe Presence for each of ``--watchers`` x
``--per-watcher`` (watcher i watches presentities i·per … i·per+per-1 modulo
the publications, so each has watchers·per/publications watchers), from a
minimal keep-alive HTTP/1.1 client (bench/rest_publish.py's
LeanHttpConnection), ``--concurrency`` requests at once.  Once the pres-rules reads the set-up
left queued are done (``--settle``, at most 120 s), nothing but the
refreshes (and the adapter's own keepalive probes) for ``--observe``
seconds.

Printed: REST calls/s and answers of each set-up phase; the adapter's RSS
(after start-up, after the publications, when everything is held, at the
end, and its peak VmHWM) and store size; its CPU in the set-up and in the
idle window (% of a core), with the presence server's, PostgreSQL's and the
relay's, and the adapter's per 30-s slice of the window and over its refresh
wave alone (from the first slice with refreshes: what the set-up left queued
has drained by then), in µs per refresh and per exchange (a refresh or a
NOTIFY answered: Kamailio NOTIFYs every watcher on each PUBLISH refresh);
the SUBSCRIBE+PUBLISH the adapter sent per second (5-second bins, set-up |
idle, with retransmissions); the answers; what is alive at the end
(dialogs and publications whose last 2xx has not expired, by pair of
watcher and presentity; pairs that needed a second dialog); a sample of
Get User Presence calls; and the adapter log's warnings and errors.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import itertools
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, cast

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for folder in (str(REPO), str(HERE)):
    if folder not in sys.path:
        sys.path.insert(0, folder)  # tests.* and the sibling benchmarks are not installed

HOST = "127.0.0.1"
DOMAIN = "bench.example.com"
PASSWORD = "scale-secret"
#: Longer than the adapter's own bound on a SIP outcome ([sip] request_timeout, 10 s).
HTTP_TIMEOUT = 15.0
KAMAILIO_CFG = REPO / "conf" / "kamailio" / "kamailio.cfg"
MAX_EXPIRES_LINE = re.compile(r"^#!define PRESENCE_MAX_EXPIRES \d+$", re.MULTILINE)


def watcher(i: int) -> str:
    return f"sip:w{i}@{DOMAIN}"


def presentity(q: int) -> str:
    return f"sip:p{q}@{DOMAIN}"


def pairs(args: argparse.Namespace) -> Iterator[tuple[int, int]]:
    """(watcher, presentity) indices of every Subscribe Presence."""
    for i in range(args.watchers):
        for k in range(args.per_watcher):
            yield i, (i * args.per_watcher + k) % args.publications


# ---------------------------------------------------------------- the relay

_CALL_ID = re.compile(rb"\r\n(?:Call-ID|i)[ \t]*:[ \t]*([^\r\n]+)", re.IGNORECASE)
_CSEQ = re.compile(rb"\r\nCSeq[ \t]*:[ \t]*\d+[ \t]+([A-Za-z]+)", re.IGNORECASE)
_EXPIRES = re.compile(rb"\r\nExpires[ \t]*:[ \t]*(\d+)", re.IGNORECASE)
_FROM = re.compile(rb"\r\n(?:From|f)[ \t]*:[^\r\n]*?(sips?:[^>;\s]+)", re.IGNORECASE)
_TO = re.compile(rb"\r\n(?:To|t)[ \t]*:([^\r\n]*)", re.IGNORECASE)
_URI = re.compile(rb"(sips?:[^>;\s]+)")
_BRANCH = re.compile(rb"\r\n(?:Via|v)[ \t]*:[^\r\n]*?branch=([^;,\r\n ]+)", re.IGNORECASE)
_IF_MATCH = re.compile(rb"\r\nSIP-If-Match[ \t]*:", re.IGNORECASE)
_LENGTH = re.compile(rb"\r\n(?:Content-Length|l)[ \t]*:[ \t]*(\d+)", re.IGNORECASE)
CANARY = b"presence-adapter-canary"  # adapter/liveness.py's CANARY_USER


class Relay(asyncio.DatagramProtocol):
    """Forwards the adapter's datagrams to the server and back, counting on the way.

    The adapter's Via carries ``rport`` (RFC 3581), so the server answers the
    relay's socket; whatever comes from the server goes to the last address
    the adapter sent from.  Counted per whole second of wall-clock time.
    """

    def __init__(self, server: tuple[str, int]) -> None:
        self.server = server
        self.client: tuple[str, int] | None = None
        self.transport: asyncio.DatagramTransport | None = None
        self.per_second: dict[str, Counter[int]] = defaultdict(Counter)
        self.answers: Counter[str] = Counter()
        # Branches seen lately, in two generations swapped every 40 s (more
        # than Timer F's 32 s): a branch seen again is a retransmission.
        self.branches: tuple[set[bytes], set[bytes]] = (set(), set())
        self.swapped = time.time()
        # Call-ID -> [(watcher, presentity), expires_at]; presentity -> expires_at
        self.dialogs: dict[bytes, list[Any]] = {}
        self.publications: dict[bytes, float] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        now = time.time()
        if addr == self.server:
            if self.client is not None:
                self.transport.sendto(data, self.client)
            if data.startswith(b"SIP/2.0 "):
                self.response(data, now)
            return
        self.client = addr
        self.transport.sendto(data, self.server)
        if not data.startswith(b"SIP/2.0 "):
            self.request(data, now)

    def count(self, kind: str, now: float) -> None:
        self.per_second[kind][int(now)] += 1

    def request(self, data: bytes, now: float) -> None:
        method = data[: data.find(b" ")]
        if method not in (b"SUBSCRIBE", b"PUBLISH", b"OPTIONS"):
            return
        if now - self.swapped > 40.0:
            self.branches = (set(), self.branches[0])
            self.swapped = now
        branch_match = _BRANCH.search(data)
        branch = branch_match.group(1) if branch_match else b""
        if branch in self.branches[0] or branch in self.branches[1]:
            self.count(f"{method.decode()} retransmitted", now)
            return
        self.branches[0].add(branch)
        if method == b"OPTIONS":
            self.count("OPTIONS", now)
            return
        to_match = _TO.search(data)
        to_text = to_match.group(1) if to_match else b""
        to_uri = _URI.search(to_text)
        target = to_uri.group(1) if to_uri else b""
        if method == b"PUBLISH":
            if _IF_MATCH.search(data) is None:
                kind = "PUBLISH initial"
            else:
                length = _LENGTH.search(data)
                kind = "PUBLISH modify" if length and int(length.group(1)) else "PUBLISH refresh"
            self.count(kind, now)
            return
        from_match = _FROM.search(data)
        source = from_match.group(1) if from_match else b""
        if CANARY in source:
            self.count("SUBSCRIBE canary", now)
            return
        expires = _EXPIRES.search(data)
        if expires is not None and int(expires.group(1)) == 0:
            kind = "SUBSCRIBE end"
        elif b";tag=" in to_text:
            kind = "SUBSCRIBE refresh"
        else:
            kind = "SUBSCRIBE initial"
            call_id = _CALL_ID.search(data)
            if call_id is not None:
                self.dialogs[call_id.group(1).strip()] = [(source, target), 0.0]
        self.count(kind, now)

    def response(self, data: bytes, now: float) -> None:
        status = int(data[8:11])
        if status < 200:
            return
        cseq = _CSEQ.search(data)
        method = cseq.group(1).decode() if cseq else "?"
        self.answers[f"{method} {status}"] += 1
        if method not in ("SUBSCRIBE", "PUBLISH"):
            return
        self.count(f"{method} {'2xx' if status < 300 else 'failed'}", now)
        expires = _EXPIRES.search(data)
        until = now + int(expires.group(1)) if status < 300 and expires else 0.0
        if method == "SUBSCRIBE":
            call_id = _CALL_ID.search(data)
            entry = self.dialogs.get(call_id.group(1).strip()) if call_id else None
            if entry is not None:
                entry[1] = until
        else:
            to_match = _TO.search(data)
            to_uri = _URI.search(to_match.group(1)) if to_match else None
            if to_uri is not None and (until or status != 412):
                # 412: the adapter publishes afresh at once (RFC 3903 §6).
                self.publications[to_uri.group(1)] = until

    def report(self) -> dict[str, Any]:
        now = time.time()
        alive: Counter[tuple[bytes, bytes]] = Counter()
        dialogs_per_pair: Counter[tuple[bytes, bytes]] = Counter()
        for pair, until in self.dialogs.values():
            dialogs_per_pair[pair] += 1
            if until > now:
                alive[pair] += 1
        return {
            "per_second": {k: dict(v) for k, v in self.per_second.items()},
            "answers": dict(self.answers),
            "dialogs": len(self.dialogs),
            "pairs": len(dialogs_per_pair),
            "pairs_alive": len(alive),
            "pairs_with_two_alive": sum(1 for n in alive.values() if n > 1),
            "pairs_redone": sum(1 for n in dialogs_per_pair.values() if n > 1),
            "publications": len(self.publications),
            "publications_alive": sum(1 for until in self.publications.values() if until > now),
        }


async def relay_role(server: str) -> None:
    host, port = server.rsplit(":", 1)
    loop = asyncio.get_running_loop()
    transport, relay = await loop.create_datagram_endpoint(
        lambda: Relay((host, int(port))), local_addr=(HOST, 0)
    )
    sock = transport.get_extra_info("socket")
    with contextlib.suppress(OSError):
        import socket

        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
    print(json.dumps({"port": transport.get_extra_info("sockname")[1], "pid": os.getpid()}),
          flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)  # "report"
    print(json.dumps(relay.report()), flush=True)
    transport.close()


# ---------------------------------------------------------------- set-up


@contextlib.contextmanager
def server_max_expires(seconds: int) -> Iterator[None]:
    """Point $KAMAILIO at a wrapper that runs the bundled configuration with
    PRESENCE_MAX_EXPIRES = ``seconds`` (conf/kamailio/run passes ``-f CFG``)."""
    if not seconds:
        yield
        return
    from sip_publish import kamailio_config

    text, found = MAX_EXPIRES_LINE.subn(
        f"#!define PRESENCE_MAX_EXPIRES {int(seconds)}", KAMAILIO_CFG.read_text()
    )
    if found != 1:
        raise SystemExit(f"{KAMAILIO_CFG}: no PRESENCE_MAX_EXPIRES define to change")
    with kamailio_config(text):
        yield


async def write_rules(xcap_root: str, args: argparse.Namespace) -> float:
    """Pres-rules granting each presentity's watchers everything, over XCAP; seconds taken."""
    import httpx

    from pidf import AttributeType, PresRules

    everything = {kind: True for kind in AttributeType}
    watchers: dict[int, list[int]] = defaultdict(list)
    for i, q in pairs(args):
        watchers[q].append(i)
    started = time.monotonic()
    # Kamailio's xhttp closes after every reply without saying so
    # (adapter/xcap.py): no connection is kept.
    limits = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(limits=limits, timeout=HTTP_TIMEOUT) as client:
        todo = iter(sorted(watchers))

        async def worker() -> None:
            for q in todo:
                rules = PresRules.build({watcher(i): everything for i in watchers[q]})
                reply = await client.put(
                    f"{xcap_root}/pres-rules/users/{presentity(q)}/index",
                    content=rules.to_xml(),
                    headers={"Content-Type": "application/auth-policy+xml"},
                )
                reply.raise_for_status()

        await asyncio.gather(*(worker() for _ in range(8)))
    return time.monotonic() - started


class Phase:
    """One set-up phase's outcome: answers by status, latencies, wall time."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.statuses: Counter[int | str | None] = Counter()
        self.latencies: list[float] = []
        self.seconds = 0.0
        #: 503s with Retry-After, each followed by the same call again after it.
        self.busy = 0
        #: Calls not answered (no answer within HTTP_TIMEOUT, or the connection
        #: closed under them): (wall-clock time sent, the
        #: connection's local port, the request line and identity), to find
        #: them in the adapter's log (its access lines name the client's port).
        self.unanswered: list[tuple[float, int, str]] = []

    def line(self) -> str:
        lat = sorted(self.latencies)
        p50 = lat[len(lat) // 2] * 1000 if lat else float("nan")
        p99 = lat[int(len(lat) * 0.99)] * 1000 if lat else float("nan")
        calls = sum(self.statuses.values())
        return (f"{self.name}: {calls:,} calls in {self.seconds:.1f} s = "
                f"{calls / self.seconds if self.seconds else 0:,.0f}/s, p50 {p50:.1f} ms, "
                f"p99 {p99:.1f} ms, answers {dict(self.statuses)}, 503 + Retry-After "
                f"then retried {self.busy:,}")


async def drive(adapter: Any, phase: Phase, requests: Iterator[bytes], concurrency: int,
                deadline: float) -> None:
    """Send every request over ``concurrency`` keep-alive connections, one at a time each."""
    from rest_publish import LeanHttpConnection

    loop = asyncio.get_running_loop()
    started = time.monotonic()

    async def connect() -> LeanHttpConnection:
        _, connection = await loop.create_connection(
            LeanHttpConnection, adapter.host, adapter.http_port
        )
        return connection

    async def worker() -> None:
        connection = await connect()
        try:
            for request in requests:
                while True:
                    if time.monotonic() > deadline:
                        phase.statuses["deadline"] += 1
                        return
                    sent = time.perf_counter()
                    sent_at = time.time()
                    try:
                        status: int | str | None = await asyncio.wait_for(
                            connection.send(request), HTTP_TIMEOUT)
                    except (TimeoutError, ConnectionError) as exc:
                        # None: no answer within HTTP_TIMEOUT; "closed": the
                        # adapter closed the connection under the call.
                        status = "closed" if isinstance(exc, ConnectionError) else None
                        phase.unanswered.append((sent_at, local_port(connection),
                                                 f"{status or 'timeout'}: {describe(request)}"))
                    phase.latencies.append(time.perf_counter() - sent)
                    if status == 503 and connection.retry_after is not None:
                        # Back-pressure: the adapter asks the caller to come back.
                        phase.busy += 1
                        await asyncio.sleep(connection.retry_after)
                        continue
                    break
                phase.statuses[status] += 1
                if status is None or status == "closed":
                    # The answer may still come: this connection's framing is lost.
                    if connection.transport is not None:
                        connection.transport.close()
                    connection = await connect()
        finally:
            if connection.transport is not None:
                connection.transport.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    phase.seconds = time.monotonic() - started


def local_port(connection: Any) -> int:
    transport = connection.transport
    sockname = transport.get_extra_info("sockname") if transport is not None else None
    return int(sockname[1]) if sockname else 0


def describe(request: bytes) -> str:
    """A request's line and its X-Presence-Identity, for the unanswered calls' list."""
    head = request.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    identity = next((line for line in head if line.startswith("X-Presence-Identity")), "")
    body = request.split(b"\r\n\r\n", 1)[1][:160].decode("latin-1", "replace")
    return f"{head[0]} {identity} {body}"


def rest_request(adapter: Any, account: str, identity: str, method: str, path: str,
                 body: dict[str, Any] | None = None) -> bytes:
    token = base64.b64encode(f"{account}:{PASSWORD}".encode()).decode()
    payload = json.dumps(body).encode() if body is not None else b""
    head = (
        f"{method} {path} HTTP/1.1\r\n"
        f"Host: {adapter.host}:{adapter.http_port}\r\n"
        f"Authorization: Basic {token}\r\n"
        f"X-Presence-Identity: {identity}\r\n"
        + ("Content-Type: application/json\r\n" if body is not None else "")
        + f"Content-Length: {len(payload)}\r\n\r\n"
    )
    return head.encode() + payload


def publish_requests(adapter: Any, args: argparse.Namespace) -> Iterator[bytes]:
    for q in range(args.publications):
        body = {"presence": [
            {"typeAndValue": {"unionElement": "Activity", "activity": "Available"},
             "note": f"scale {q}"},
            {"typeAndValue": {"unionElement": "Place", "place": "Office"}},
        ]}
        yield rest_request(adapter, f"a{q % args.apps}", presentity(q), "POST",
                           "/rest/presence", body)


def subscribe_requests(adapter: Any, args: argparse.Namespace) -> Iterator[bytes]:
    for i, q in pairs(args):
        app = f"a{i % args.apps}"
        body = {
            "application": "scale bench",
            "presentity": presentity(q),
            "attributes": ["Activity", "Place"],
            "reference": {"correlator": f"s{i}.{q}", "endpoint": f"/bayeux/{app}/scale",
                          "interfaceName": "scale"},
        }
        yield rest_request(adapter, app, watcher(i), "POST", "/rest/presence/subscription",
                           body)


def presence_requests(adapter: Any, args: argparse.Namespace,
                      chosen: list[tuple[int, int]]) -> Iterator[bytes]:
    for i, q in chosen:
        yield rest_request(adapter, f"a{i % args.apps}", watcher(i), "GET",
                           f"/rest/presence?presentity={presentity(q)}&attributes=Activity")


# ---------------------------------------------------------------- measures


def tree_pids(pid: int) -> list[int]:
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        with contextlib.suppress(OSError):
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
            pending.extend(int(child) for child in children)
    return found


#: Seconds between two looks at the pres-rules reads while the set-up settles.
SETTLE_POLL = 5.0
#: Seconds per slice of the idle window's CPU table.
SLICE = 30.0


def cpu_seconds(pids: list[int]) -> float:
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def wakeups(pid: int) -> int:
    """The times the adapter's event-loop thread went to sleep and was woken:
    its voluntary context switches (each a wait in epoll that something ended)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                return int(line.split()[1])
    return 0


def py_spy(output: str | None, pid: int) -> subprocess.Popen[bytes] | None:
    """py-spy recording ``pid`` into ``output`` (.svg: flame graph, else collapsed stacks)."""
    if not output:
        return None
    return subprocess.Popen(
        [str(REPO / ".venv" / "bin" / "py-spy"), "record", "-o", output, "--pid", str(pid),
         "--rate", "100", *(["--format", "raw"] if not output.endswith(".svg") else [])],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_py_spy(profiler: subprocess.Popen[bytes] | None) -> None:
    if profiler is not None:
        profiler.send_signal(signal.SIGINT)
        try:
            profiler.wait(60)
        except subprocess.TimeoutExpired:
            profiler.kill()
            profiler.wait()


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


class Meter:
    """CPU seconds of the adapter, the presence server tree, PostgreSQL and the relay."""

    def __init__(self, roots: dict[str, int]) -> None:
        self.roots = roots

    def read(self) -> dict[str, float]:
        return {name: cpu_seconds(tree_pids(pid)) for name, pid in self.roots.items()}


def histogram(per_second: dict[str, dict[str, int]], kinds: list[str], start: int,
              end: int) -> list[int]:
    return [sum(int(per_second.get(k, {}).get(str(s), 0)) for k in kinds)
            for s in range(start, end)]


# ---------------------------------------------------------------- the run


def run(args: argparse.Namespace, directory: Path) -> int:
    from pg_presence_server import pg_presence_server
    from procfs import udp_drops
    from scale import sample

    from tests.adapter_process import AdapterProcess, AppAccount

    total = args.watchers * args.per_watcher
    accounts = []
    for j in range(args.apps):
        addresses = tuple(watcher(i) for i in range(j, args.watchers, args.apps)) + tuple(
            presentity(q) for q in range(j, args.publications, args.apps))
        accounts.append(AppAccount(f"a{j}", PASSWORD, addresses))
    print(f"{total:,} subscriptions ({args.watchers:,} watchers x {args.per_watcher}) + "
          f"{args.publications:,} publications over {args.apps} accounts; server grants "
          f"{args.server_expires or 'the bundled 86,400'} s; observe {args.observe:g} s; "
          f"load average {load_average()} at {time.strftime('%H:%M:%S', time.gmtime())} UTC; "
          f"adapter from {args.source or 'the working tree'} on {args.python}",
          flush=True)
    with server_max_expires(args.server_expires), \
            pg_presence_server(HOST, args.server_shm) as server:
        relay = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--role", "relay",
             "--server", f"{server.host}:{server.port}"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        adapter: AdapterProcess | None = None
        try:
            ready = json.loads(cast(IO[str], relay.stdout).readline())
            print(f"presence server {server.sip_uri} (pid {server.pid}); relay "
                  f"127.0.0.1:{ready['port']} (pid {ready['pid']})", flush=True)
            if args.rules:
                seconds = asyncio.run(write_rules(server.xcap_root, args))
                print(f"pres-rules of {args.publications:,} presentities over XCAP: "
                      f"{seconds:.1f} s", flush=True)
            adapter = AdapterProcess.for_server(
                directory, server, accounts, sip_server=f"sip:{HOST}:{ready['port']}")
            # env execs Python in place: the pid measured is the adapter's.
            source = ["env", f"PYTHONPATH={args.source.resolve()}"] if args.source else []
            entry = (["-m", "adapter"] if not args.cpu_profile else
                     [str(HERE / "cpu_sampler.py"), str(args.cpu_profile.resolve()), "--"])
            adapter.command = lambda: [  # type: ignore[method-assign]
                *source, args.python, *entry, "serve", "--config",
                str(adapter.config_path), "--log-level", args.adapter_log_level]
            adapter.start(timeout=60, healthy=True)
            assert adapter.process is not None and server.pid is not None
            pid = adapter.process.pid
            roots = {"adapter": pid, "kamailio": server.pid, "relay": ready["pid"]}
            cluster = getattr(server, "cluster", None)
            postmaster = cluster.pid if cluster is not None else None
            if postmaster is not None:
                roots["postgres"] = postmaster
            meter = Meter(roots)
            time.sleep(2.0)
            samples = {"start": sample(pid)}
            cpu = {"start": meter.read()}
            wall = {"start": time.time()}
            sockets = {"adapter": adapter.sip_port, "relay": ready["port"], "server": server.port}
            drops = {"start": {k: udp_drops(v) for k, v in sockets.items()}}
            deadline = time.monotonic() + args.deadline
            phases = []
            reads = {"start": scrape_counts(adapter)}
            for name, requests in (
                ("Publish", publish_requests(adapter, args)),
                ("Subscribe Presence", subscribe_requests(adapter, args)),
            ):
                phase = Phase(name)
                setup_profiler = py_spy(args.profile_setup, pid) if name != "Publish" else None
                asyncio.run(drive(adapter, phase, requests, args.concurrency, deadline))
                stop_py_spy(setup_profiler)
                phases.append(phase)
                print("  " + phase.line(), flush=True)
                key = "published" if name == "Publish" else "held"
                samples[key] = sample(pid)
                cpu[key] = meter.read()
                wall[key] = time.time()
                reads[key] = scrape_counts(adapter)
            settle(adapter, args.settle)
            samples["held"] = sample(pid)
            cpu["held"] = meter.read()
            wall["held"] = time.time()
            reads["held"] = scrape_counts(adapter)
            print(f"  held: RSS {samples['held'].rss_kib / 1024:.1f} MiB; idle window of "
                  f"{args.observe:g} s begins, load average {load_average()}", flush=True)
            profiler = py_spy(args.profile, pid)
            if args.cpu_profile:
                os.kill(pid, signal.SIGUSR1)
            peak_in_idle = 0
            window_end = time.monotonic() + args.observe
            adapter_pids = tree_pids(pid)
            # (wall clock, adapter CPU s, (pres-rules reads, NOTIFYs answered), RSS KiB,
            # wake-ups of the loop's thread) every SLICE s
            slices = [(wall["held"], cpu["held"]["adapter"], reads["held"],
                       float(samples["held"].rss_kib), wakeups(pid))]
            while time.monotonic() < window_end:
                time.sleep(min(1.0, max(0.0, window_end - time.monotonic())))
                rss = sample(pid).rss_kib
                peak_in_idle = max(peak_in_idle, rss)
                if time.time() - slices[-1][0] >= SLICE:
                    slices.append((time.time(), cpu_seconds(adapter_pids),
                                   scrape_counts(adapter), float(rss), wakeups(pid)))
            samples["end"] = sample(pid)
            cpu["end"] = meter.read()
            reads["end"] = scrape_counts(adapter)
            stop_py_spy(profiler)
            if args.cpu_profile:
                os.kill(pid, signal.SIGUSR2)
            wall["end"] = time.time()
            slices.append((wall["end"], cpu["end"]["adapter"], reads["end"],
                           float(samples["end"].rss_kib), wakeups(pid)))
            drops["end"] = {k: udp_drops(v) for k, v in sockets.items()}
            print(f"  idle window over, load average {load_average()}", flush=True)
            rng = random.Random(8)
            every = list(pairs(args))
            chosen = rng.sample(every, min(args.check, len(every)))
            check = Phase("Get User Presence (sample)")
            asyncio.run(drive(adapter, check, presence_requests(adapter, args, chosen),
                              min(args.concurrency, 8), time.monotonic() + 120))
            metrics = sip_metrics(adapter)
            stdin = cast(IO[str], relay.stdin)
            stdin.write("report\n")
            stdin.flush()
            wire = json.loads(cast(IO[str], relay.stdout).readline())
            store_bytes = sum(f.stat().st_size for f in directory.glob("adapter.sqlite*"))
            log = adapter.log_tail(10_000_000).splitlines()
            if args.keep_log:
                args.keep_log.write_text("\n".join(log) + "\n")
        finally:
            if adapter is not None:
                adapter.stop(timeout=30)
            if relay.poll() is None:
                relay.kill()
            relay.wait()
    report(args, phases, check, samples, cpu, wall, drops, wire, store_bytes, log,
           peak_in_idle, total)
    report_slices(slices, wire["per_second"])
    for phase in phases:
        trace_unanswered(phase, log)
    print("adapter /metrics, its SIP window: " + "; ".join(metrics))
    print(f"pres-rules reads (XCAP GET) by the adapter: set-up "
          f"{reads['held'][0] - reads['start'][0]:,.0f}, "
          f"idle window {reads['end'][0] - reads['held'][0]:,.0f}")
    return 0


def report_slices(slices: list[tuple[float, float, tuple[float, float], float, int]],
                  per_second: dict[str, dict[str, int]]) -> None:
    """The idle window's adapter CPU per slice against the refreshes sent in it, and
    over the refresh wave alone: from the first slice with refreshes to the end.

    The window's whole figure also holds what the set-up left queued (its
    pres-rules reads, retried after they waited too long); the wave's is what
    holding the subscriptions costs once that has drained.  Kamailio answers a
    PUBLISH refresh with a NOTIFY to each of the presentity's watchers
    (docs/kamailio.md), so the NOTIFYs are counted beside the refreshes, and
    the cost is also given per exchange: a refresh or a NOTIFY, each a
    request and its answer.  Each exchange brings the adapter one datagram (a
    2xx or a NOTIFY); the loop's wake-ups per exchange say how many of them
    found it asleep, each costing a wake-up's switch on top of the datagram's.
    """
    kinds = ["SUBSCRIBE refresh", "PUBLISH refresh"]
    rows = []
    for (t0, c0, (r0, n0), _, w0), (t1, c1, (r1, n1), rss, w1) in itertools.pairwise(slices):
        refreshes = sum(histogram(per_second, kinds, int(t0), int(t1)))
        rows.append((t0 - slices[0][0], t1 - t0, c1 - c0, refreshes, r1 - r0, n1 - n0, rss,
                     w1 - w0))
    print()
    print(f"| idle window, {SLICE:g}-s slices | adapter CPU, % of a core | refreshes/s | "
          "NOTIFYs/s | µs per refresh | µs per exchange | wake-ups per exchange | "
          "pres-rules reads | RSS at the end, MiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for start, span, used, refreshes, reads, notifies, rss, woken in rows:
        per = f"{used / refreshes * 1e6:,.0f}" if refreshes else "—"
        exchanges = refreshes + notifies
        per_exchange = f"{used / exchanges * 1e6:,.0f}" if exchanges else "—"
        woken_per = f"{woken / exchanges:.2f}" if exchanges else f"{woken:,} in all"
        print(f"| {start:.0f}–{start + span:.0f} s | {used / span * 100:.2f} | "
              f"{refreshes / span:.0f} | {notifies / span:.0f} | {per} | {per_exchange} | "
              f"{woken_per} | {reads:,.0f} | {rss / 1024:.1f} |")
    first = next((i for i, row in enumerate(rows) if row[3]), None)
    if first is None:
        return
    wave = rows[first:]
    span = sum(r[1] for r in wave)
    used = sum(r[2] for r in wave)
    refreshes = sum(r[3] for r in wave)
    notifies = sum(r[5] for r in wave)
    woken = sum(r[7] for r in wave)
    print(f"refresh wave ({wave[0][0]:.0f} s to the end of the window): {refreshes:,} "
          f"refreshes and {notifies:,.0f} NOTIFYs in {span:.0f} s, "
          f"{used / span * 100:.2f} % of a core, {used / refreshes * 1e6:,.0f} µs per "
          f"refresh, {used / (refreshes + notifies) * 1e6:,.0f} µs per exchange, "
          f"{woken / (refreshes + notifies):.2f} wake-ups of the loop per exchange, "
          f"{sum(r[4] for r in wave):,.0f} pres-rules reads")


def trace_unanswered(phase: Phase, log: list[str]) -> None:
    """Each call not answered within HTTP_TIMEOUT, with what the adapter's log says
    of its connection (the access line names the client's port) from 1 s before it
    was sent to 60 s after."""
    if not phase.unanswered:
        return
    print(f"\n{phase.name}: {len(phase.unanswered)} calls not answered (within "
          f"{HTTP_TIMEOUT:g} s, or their connection closed); the adapter log's lines for "
          f"their connections:")
    stamped = []
    for line in log:
        try:
            at = time.mktime(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S"))  # local time
        except ValueError:
            continue
        stamped.append((at + int(line[20:23]) / 1000 if line[19:20] == "," else at, line))
    for sent_at, port, request in phase.unanswered[:20]:
        print(f"  sent {time.strftime('%H:%M:%S', time.gmtime(sent_at))}"
              f".{int(sent_at % 1 * 1000):03d} from port {port}: {request[:200]}")
        needle = f"127.0.0.1:{port} "
        for at, line in stamped:
            if sent_at - 1 <= at <= sent_at + 60 and needle in line:
                print("    " + line[:200])
    if len(phase.unanswered) > 20:
        print(f"  … {len(phase.unanswered) - 20} more")


def metrics_text(adapter: Any) -> str | None:
    """The adapter's /metrics, or None when it gave none within 120 s: a busy
    adapter on a loaded machine must not cost the run its figures."""
    import httpx

    try:
        return httpx.get(f"http://{adapter.host}:{adapter.http_port}/metrics",
                         timeout=120).text
    except httpx.HTTPError as exc:
        print(f"  /metrics: no answer ({exc!r})", flush=True)
        return None


def settle(adapter: Any, most: float) -> None:
    """Wait, at most ``most`` seconds, until the pres-rules reads the set-up
    left queued are done: until a poll finds the count unchanged since the
    last.  The idle window then measures holding, not the set-up's tail."""

    began = time.monotonic()
    last = scrape_counts(adapter)[0]
    while time.monotonic() - began < most:
        time.sleep(SETTLE_POLL)
        now = scrape_counts(adapter)[0]
        if now == last:
            break
        last = now
    print(f"  set-up settled: pres-rules reads {last:,.0f}, after "
          f"{time.monotonic() - began:.0f} s", flush=True)


def scrape_counts(adapter: Any) -> tuple[float, float]:
    """The pres-rules reads the adapter made so far and the NOTIFYs it answered
    (one scrape of its /metrics: each costs the adapter some CPU)."""

    text = metrics_text(adapter)
    if text is None:
        return math.nan, math.nan
    reads = notifies = 0.0
    for line in text.splitlines():
        if (line.startswith("presence_adapter_xcap_requests_total")
                and 'document="pres-rules"' in line and 'method="GET"' in line):
            reads += float(line.rsplit(" ", 1)[1])
        elif (line.startswith("presence_adapter_sip_server_transactions_total")
                and 'method="NOTIFY"' in line):
            notifies += float(line.rsplit(" ", 1)[1])
    return reads, notifies


def sip_metrics(adapter: Any) -> list[str]:
    """The lines of the adapter's /metrics about its window of SIP requests."""

    text = metrics_text(adapter)
    if text is None:
        return ["(no /metrics answer)"]
    wanted = ("presence_adapter_sip_requests_", "presence_adapter_sip_retransmissions_total")
    return [line for line in text.splitlines() if line.startswith(wanted)
            or (line.startswith("presence_adapter_sip_client_transactions_total")
                and 'status="busy"' in line)]


def report(args: argparse.Namespace, phases: list[Phase], check: Phase,
           samples: dict[str, Any], cpu: dict[str, dict[str, float]],
           wall: dict[str, float], drops: dict[str, dict[str, int | None]], wire: dict[str, Any],
           store_bytes: int, log: list[str], peak_in_idle: int, total: int) -> None:
    mib = 1024.0
    print()
    print("| adapter RSS (MiB) | after start-up | after the publications | all held | "
          "end | peak (VmHWM) | highest in the idle window |")
    print("|---|---|---|---|---|---|---|")
    print(f"| | {samples['start'].rss_kib / mib:.1f} | {samples['published'].rss_kib / mib:.1f} "
          f"| {samples['held'].rss_kib / mib:.1f} | {samples['end'].rss_kib / mib:.1f} | "
          f"{samples['end'].peak_kib / mib:.1f} | {peak_in_idle / mib:.1f} |")
    per_sub = (samples["held"].rss_kib - samples["published"].rss_kib) * 1024 / max(total, 1)
    print(f"RSS per subscription held (held - after the publications): {per_sub:,.0f} B; "
          f"store files {store_bytes / 2**20:.1f} MiB")
    setup_s = wall["held"] - wall["start"]
    idle_s = wall["end"] - wall["held"]
    print()
    print("| CPU, % of one core | set-up | idle window |")
    print("|---|---|---|")
    for name in cpu["start"]:
        setup = (cpu["held"][name] - cpu["start"][name]) / setup_s * 100
        idle = (cpu["end"][name] - cpu["held"][name]) / idle_s * 100
        print(f"| {name} | {setup:.1f} | {idle:.1f} |")
    print(f"set-up {setup_s:.1f} s, idle window {idle_s:.1f} s")
    per_second = wire["per_second"]
    first = int(wall["start"])
    idle_from = int(wall["held"]) + 1 - first
    last = int(wall["end"]) - first
    sent_kinds = ["SUBSCRIBE initial", "SUBSCRIBE refresh", "SUBSCRIBE end",
                  "PUBLISH initial", "PUBLISH refresh", "PUBLISH modify"]
    totals = {k: sum(v.values()) for k, v in per_second.items()}
    print()
    print(f"sent by the adapter (relay): { {k: totals[k] for k in sorted(totals)} }")
    print(f"answers: {wire['answers']}")
    refresh_kinds = ["SUBSCRIBE refresh", "PUBLISH refresh"]
    sent = histogram(per_second, sent_kinds, first, first + last)
    refreshes = histogram(per_second, refresh_kinds, first, first + last)
    retrans = histogram(per_second, ["SUBSCRIBE retransmitted", "PUBLISH retransmitted"],
                        first, first + last)
    idle = refreshes[idle_from:]
    idle_all = sent[idle_from:]
    if idle:
        busy = [v for v in idle if v]
        print(f"idle window: refreshes max {max(idle)}/s, mean {sum(idle) / len(idle):.0f}/s "
              f"over {len(idle)} s, mean {sum(busy) / max(len(busy), 1):.0f}/s over the "
              f"{len(busy)} s that had any; all SUBSCRIBE+PUBLISH sent {sum(idle_all):,}, "
              f"retransmissions {sum(retrans[idle_from:]):,}; set-up sent "
              f"{sum(sent[:idle_from]) / max(idle_from, 1):.0f}/s")
        idle_cpu = (cpu["end"]["adapter"] - cpu["held"]["adapter"]) / idle_s
        mean = sum(idle) / len(idle)
        if mean:
            print(f"adapter CPU per refresh in the idle window: {idle_cpu / mean * 1e6:.0f} µs "
                  f"(everything the process did, divided by the refreshes)")
    print("SUBSCRIBE+PUBLISH sent per second (all kinds), 5-second bins (set-up | idle); "
          "refreshes and retransmissions of the bin:")
    scale = max(max(sent, default=1), 1)
    for start in range(0, len(sent), 5):
        chunk = sent[start:start + 5]
        mark = "|" if start <= idle_from < start + 5 else " "
        bar = "#" * round(40 * max(chunk) / scale)
        print(f"  {start:>4}s{mark} max {max(chunk):>6}/s mean {sum(chunk) / len(chunk):>7.0f}/s"
              f"  refresh {sum(refreshes[start:start + 5]):>6} retrans "
              f"{sum(retrans[start:start + 5]):>4}  {bar}")
    print()
    print(f"alive at the end (the server's last 2xx not expired, read on the wire): "
          f"{wire['pairs_alive']:,} of {total:,} (watcher, presentity) pairs "
          f"({wire['pairs']:,} pairs seen, {wire['dialogs']:,} dialogs; pairs that needed "
          f"another dialog {wire['pairs_redone']:,}); publications {wire['publications_alive']:,}"
          f" of {args.publications:,}")
    print("  " + check.line())
    print("UDP datagrams the kernel dropped (receive buffer full) over the run: " + ", ".join(
        f"{name} {end - drops['start'][name]:,}" for name, end in drops["end"].items()
        if end is not None and drops["start"][name] is not None))
    complaints = [line for line in log if " WARNING " in line or " ERROR " in line
                  or "Traceback" in line]
    print(f"adapter log: {len(log):,} lines, {len(complaints)} warnings/errors")
    for line in complaints[:5] + (["…"] if len(complaints) > 10 else []) + complaints[-5:]:
        print("  " + line[:300])
    lost = total - wire["pairs_alive"] + args.publications - wire["publications_alive"]
    rss_ok = samples["end"].peak_kib < 1024 * 1024
    idle_cpu = (cpu["end"]["adapter"] - cpu["held"]["adapter"]) / idle_s
    print(f"\nverdict: peak RSS {samples['end'].peak_kib / mib:.1f} MiB "
          f"({'<' if rss_ok else '>='} 1 GiB), idle CPU {idle_cpu * 100:.1f} % of a core "
          f"({'<' if idle_cpu < 0.10 else '>='} 10 %), lost {lost}; load average "
          f"{load_average()}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--watchers", type=int, default=1000)
    parser.add_argument("--per-watcher", type=int, default=100,
                        help="presentities each watcher subscribes to")
    parser.add_argument("--publications", type=int, default=10_000)
    parser.add_argument("--apps", type=int, default=10, help="application accounts")
    parser.add_argument("--concurrency", type=int, default=32, help="REST calls at once")
    parser.add_argument("--server-expires", type=int, default=300,
                        help="longest PUBLISH/SUBSCRIBE lifetime the server grants "
                             "(s; 0: the bundled configuration's 86,400)")
    parser.add_argument("--observe", type=float, default=300.0,
                        help="idle seconds measured after everything is held")
    parser.add_argument("--deadline", type=float, default=900.0,
                        help="longest set-up (s): calls not made by then count as 'deadline'")
    parser.add_argument("--rules", action=argparse.BooleanOptionalAction, default=True,
                        help="write pres-rules granting the watchers (else they stay pending)")
    parser.add_argument("--settle", type=float, default=120.0, metavar="S",
                        help="before the idle window, wait at most S s for the set-up's "
                        "queued pres-rules reads to finish (0: start at once)")
    parser.add_argument("--check", type=int, default=1000,
                        help="Get User Presence calls on random pairs at the end")
    parser.add_argument("--server-shm", type=int, default=2048,
                        help="the presence server's shared memory in MB")
    parser.add_argument("--adapter-log-level", default="info",
                        choices=("debug", "info", "warning", "error"))
    parser.add_argument("--profile", metavar="FILE",
                        help="py-spy record the adapter over the idle window (.svg: flame "
                             "graph, else collapsed stacks; not for recorded figures)")
    parser.add_argument("--cpu-profile", type=Path, metavar="FILE",
                        help="sample the adapter on its CPU clock over the idle window "
                             "(bench/cpu_sampler.py) into FILE; bench/cpu_layers.py FILE "
                             "prints it by layer")
    parser.add_argument("--profile-setup", metavar="FILE",
                        help="py-spy record the adapter over the Subscribe Presence phase")
    parser.add_argument("--source", type=Path, metavar="DIR",
                        help="run the adapter from this source tree (e.g. `git archive REV | "
                             "tar -x -C DIR`) rather than the working tree")
    parser.add_argument("--python", default=sys.executable, metavar="PATH",
                        help="the adapter's interpreter: another venv's python, with the "
                             "project installed in it (default: this one)")
    parser.add_argument("--keep-log", type=Path, metavar="FILE",
                        help="copy the adapter's log into FILE at the end")
    parser.add_argument("--role", choices=("relay",), help=argparse.SUPPRESS)
    parser.add_argument("--server", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.publications < 1 or args.apps < 1:
        parser.error("--publications and --apps must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.role == "relay":
        asyncio.run(relay_role(args.server))
        return 0
    with tempfile.TemporaryDirectory(prefix="scale-adapter-") as directory:
        return run(args, Path(directory))


if __name__ == "__main__":
    sys.exit(main())
