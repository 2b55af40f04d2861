"""CPU of one REST Publish inside the adapter, without HTTP: this tree against another.

    .venv/bin/python bench/rest_publish_cost.py --reference DIR      # about 2 minutes
    .venv/bin/python bench/rest_publish_cost.py --reference DIR --pairs 6
    .venv/bin/python bench/rest_publish_cost.py --profile prof.out   # cProfile, this tree

Each run is a child process that builds the adapter as ``presence-adapter
serve`` does (``adapter.app.make_app`` over a generated configuration: one
account holding 1,000 addresses, UDP to the responder below, its own SQLite
store; the CLI's logging, access log at INFO written to /dev/null, its
garbage-collector settings) and calls the app's ASGI stack directly — every
middleware, the router, the Publish endpoint, the presentity service, the SIP
endpoint and the store — from 32 concurrent callers, round-robin over the
addresses, with the two bodies bench/rest_publish.py alternates (Activity
Available / Busy with a note), so every measured Publish is a modify with
SIP-If-Match.  What it leaves out is uvicorn and the HTTP sockets, the same
code for both trees.

The SIP side is a responder in a process of its own (not counted): it answers
every PUBLISH 200 with a fresh To tag and SIP-ETag.  After a first pass that
publishes every address, ``--requests`` Publishes are timed three times with
``time.process_time`` (all the child's threads: the store's writer too); the
run's figure is the best of the three, in µs of CPU per Publish.  ``--rate N``
paces the timed passes (N Publishes a second in all, each caller on a
schedule of its own): the adapter then wakes for each request and each
answer as it does behind HTTP clients, instead of finding many at once.

With ``--reference DIR`` (a source tree, say ``git archive REV | tar -x -C
DIR``) the two trees' runs alternate ``--pairs`` times, each from its own
source (``PYTHONPATH``); printed: every run, then each side's median and range
and the ratio of the medians.  On a shared machine the runs of one side spread
by several per cent: read the medians of several pairs.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent

ADDRESSES = 1000
CONCURRENCY = 32
ACCOUNT, PASSWORD = "bench-app", "bench-secret"

#: The presence server's part, as little of it as the user agent needs: a 200
#: echoing Via, From, Call-ID and CSeq, a tagged To, and a fresh entity tag.
RESPONDER = r"""
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1], flush=True)
n = 0
echoed = (b"via:", b"v:", b"from:", b"f:", b"call-id:", b"i:", b"cseq:")
while True:
    data, addr = s.recvfrom(65535)
    head = data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    if not head[0].startswith((b"PUBLISH ", b"OPTIONS ")):
        continue
    n += 1
    lines = [b"SIP/2.0 200 OK"]
    for line in head[1:]:
        name = line.split(b":", 1)[0].strip().lower() + b":"
        if name in echoed:
            lines.append(line)
        elif name in (b"to:", b"t:"):
            lines.append(line + b";tag=r%d" % n)
    lines.append(b"SIP-ETag: e%d\r\nExpires: 3600\r\nContent-Length: 0\r\n\r\n" % n)
    s.sendto(b"\r\n".join(lines), addr)
"""


def bodies() -> list[bytes]:
    return [
        json.dumps({"presence": [{
            "typeAndValue": {"unionElement": "Activity", "activity": activity},
            "note": "bench presentity",
        }]}).encode()
        for activity in ("Available", "Busy")
    ]


def configuration(directory: Path, sip_server: int) -> Path:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        listen = probe.getsockname()[1]
    addresses = [f"sip:p{i}@bench.example.com" for i in range(ADDRESSES)]
    path = directory / "adapter.toml"
    path.write_text(
        f'[http]\nhost = "127.0.0.1"\nport = 18080\n'
        f'[sip]\nserver = "sip:127.0.0.1:{sip_server}"\nlisten = "127.0.0.1:{listen}"\n'
        f'transport = "udp"\n'
        f'[xcap]\nroot = "http://127.0.0.1:9/xcap-root"\n'
        f'[store]\npath = "{directory / "adapter.sqlite"}"\n'
        f'[[accounts]]\nid = "{ACCOUNT}"\npassword = "{PASSWORD}"\n'
        f"addresses = {json.dumps(addresses)}\n"
    )
    return path


def measure(requests: int, profile: str | None, rate: float = 0.0) -> float:
    """One run in this process, with the adapter first on sys.path; µs per Publish
    (``rate``: Publishes a second in all, paced; 0: as fast as they go)."""
    import gc

    from adapter import cli
    from adapter.app import make_app
    from adapter.config import load_config

    responder = subprocess.Popen(
        [sys.executable, "-c", RESPONDER], stdout=subprocess.PIPE, text=True
    )
    try:
        assert responder.stdout is not None
        port = int(responder.stdout.readline())
        with tempfile.TemporaryDirectory(prefix="rest-publish-cost-") as tmp:
            handler = logging.StreamHandler(open(os.devnull, "w"))  # noqa: SIM115
            handler.setFormatter(cli.LogFormatter())
            logging.basicConfig(level="INFO", handlers=[handler])
            cli._lean_log_records()
            config = load_config(configuration(Path(tmp), port))
            cli._configure_logging(handler, config, "info")
            app = make_app(config)
            gc.freeze()
            gc.set_threshold(*cli.GC_THRESHOLDS)
            import uvloop

            return uvloop.run(_drive(app, requests, profile, rate))
    finally:
        responder.kill()
        responder.wait()


async def _drive(app: Any, requests: int, profile: str | None, rate: float = 0.0) -> float:
    token = b"Basic " + base64.b64encode(f"{ACCOUNT}:{PASSWORD}".encode())
    payloads = bodies()
    addresses = [f"sip:p{i}@bench.example.com" for i in range(ADDRESSES)]
    visits = dict.fromkeys(addresses, 0)

    async with app.router.lifespan_context(app) as state:

        async def publish(address: str, body: bytes) -> None:
            scope = {
                "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
                "http_version": "1.1", "method": "POST", "scheme": "http",
                "path": "/rest/presence", "raw_path": b"/rest/presence", "query_string": b"",
                "root_path": "", "client": ("127.0.0.1", 50000),
                "server": ("127.0.0.1", 18080),
                "headers": [
                    (b"host", b"127.0.0.1:18080"), (b"authorization", token),
                    (b"x-presence-identity", address.encode()),
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
                "state": dict(state or {}),
            }
            messages = [{"type": "http.request", "body": body, "more_body": False}]

            async def receive() -> dict[str, Any]:
                if messages:
                    return messages.pop()
                await asyncio.Event().wait()  # the client stays until the answer
                raise AssertionError

            status: list[int] = []

            async def send(message: dict[str, Any]) -> None:
                if message["type"] == "http.response.start":
                    status.append(message["status"])

            await app(scope, receive, send)
            if status != [204]:
                raise RuntimeError(f"Publish of {address} answered {status}")

        async def caller(mine: list[str], count: int, paced: bool = False, nth: int = 0) -> None:
            # Paced: each caller starts its Publishes on a schedule of its own,
            # rate / CONCURRENCY a second, the callers' schedules staggered.
            loop = asyncio.get_running_loop()
            gap = CONCURRENCY / rate if paced and rate else 0.0
            due = loop.time() + gap * nth / CONCURRENCY
            for k in range(count):
                if gap:
                    due += gap
                    if due > loop.time():
                        await asyncio.sleep(due - loop.time())
                address = mine[k % len(mine)]
                visits[address] += 1
                await publish(address, payloads[visits[address] % 2])

        async def all_callers(per_caller: int, paced: bool = False) -> None:
            await asyncio.gather(*(
                caller(addresses[c::CONCURRENCY], per_caller, paced, c) for c in range(CONCURRENCY)
            ))

        await all_callers(-(-ADDRESSES // CONCURRENCY))  # every address published once
        per_caller = max(1, requests // CONCURRENCY)
        if profile is not None:
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
            await all_callers(per_caller)
            profiler.disable()
            profiler.dump_stats(profile)
            return float("nan")
        best = float("inf")
        for _ in range(3):
            started = time.process_time()
            await all_callers(per_caller, paced=True)
            best = min(best, (time.process_time() - started) / (per_caller * CONCURRENCY) * 1e6)
        return best


def child(tree: Path, requests: int, rate: float) -> float:
    """One run in a child process, from the source tree ``tree``."""
    # Imported here: the child imports this file alone, without its folder.
    sys.path.insert(0, str(BENCH))
    from trees import run_from_tree

    call = "json.dumps(bench.measure(int(sys.argv[3]), None, float(sys.argv[4])))"
    return float(json.loads(run_from_tree(Path(__file__), tree, call, str(requests), str(rate))))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--reference", type=Path, metavar="DIR",
                        help="a source tree to run beside this one, alternating")
    parser.add_argument("--pairs", type=int, default=4, help="runs of each side (default 4)")
    parser.add_argument("--requests", type=int, default=10_000,
                        help="Publishes per timed pass (default 10,000; three passes a run)")
    parser.add_argument("--rate", type=float, default=0.0,
                        help="Publishes a second, paced (default 0: as fast as they go)")
    parser.add_argument("--profile", metavar="FILE",
                        help="one cProfile'd pass of this tree, its stats written to FILE")
    args = parser.parse_args()
    if args.profile:
        sys.path.insert(0, str(REPO))
        measure(args.requests, args.profile)
        print(f"cProfile stats of {args.requests} Publishes in {args.profile}")
        return 0
    if args.reference is not None and not (args.reference / "adapter" / "app.py").is_file():
        parser.error(f"--reference: {args.reference} holds no adapter/app.py")
    sides = {"this tree": REPO}
    if args.reference is not None:
        sides = {"reference": args.reference.resolve(), **sides}
    runs: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(args.pairs):
        for name, tree in sides.items():
            runs[name].append(child(tree, args.requests, args.rate))
            print(f"  {name:10} {runs[name][-1]:7.1f} us", flush=True)
    pace = f"paced at {args.rate:g}/s" if args.rate else "unpaced"
    print(f"CPU per Publish in process, {CONCURRENCY} callers over {ADDRESSES} presentities, "
          f"{pace}, best of 3 x {args.requests} per run, {args.pairs} runs a side:")
    for name, values in runs.items():
        print(f"  {name:10} median {statistics.median(values):7.1f} us "
              f"(range {min(values):.1f}-{max(values):.1f})")
    if args.reference is not None:
        ratio = statistics.median(runs["this tree"]) / statistics.median(runs["reference"])
        print(f"  ratio this tree / reference: {ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
