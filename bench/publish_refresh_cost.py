"""CPU of one publication's refresh in the adapter, part by part, without sockets.

    .venv/bin/python bench/publish_refresh_cost.py                      # ~30 s
    .venv/bin/python bench/publish_refresh_cost.py --reference DIR      # and another tree
    .venv/bin/python bench/publish_refresh_cost.py --profile adapter    # cProfile, this tree

What the adapter does for each publication it keeps alive (RFC 3903 §4.2):
the publication's timer fires, the PUBLISH with SIP-If-Match and no body
goes out, the presence server's 200 with a new SIP-ETag comes back, and the
new entity tag is written to the store (a restarted adapter refreshes that
publication instead of adding a second one).  Two variants:

* ``sip``     — ``sip.aio.SipEndpoint`` alone (``SipEndpoint.publish``, no
  listener): the refresh and its 200;
* ``adapter`` — the same publications made through the adapter's
  ``PresentityService`` over a ``SqliteStore`` in a temporary folder, as
  ``presence-adapter serve`` makes them: the refresh, its 200 up to the
  store's write queued, and the loop turn that commits it.

The endpoint's clock is a fake one moved to each publication's refresh
instant, and ``SipEndpoint._on_timer`` is called as the loop's timer would
call it, ``--batch`` publications at a time (refreshes falling due together
share a wake-up and a commit); the UDP transport is a fake that keeps what
is sent.  The server's 200 (shaped like tests/data/kamailio/02-publish-200.txt,
built by bench/sip_publish_cost.py's template) is made outside the timed
calls.  Figures: µs of CPU (``time.process_time``: the store's writer
thread included) per refresh, best of ``--repeat`` runs, by part.  With
``--reference DIR`` (``git archive REV | tar -x -C DIR``) each run is a
child process from either tree, alternating, and the ratio is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent

PARTS = ("refresh", "200", "commit")


class _FakeUdp:
    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.answer: Any = None  # set: every PUBLISH is answered at once (set-up)

    def sendto(self, data: bytes, addr: Any = None) -> None:
        if self.answer is not None and data.startswith(b"PUBLISH "):
            self.answer(data)
        else:
            self.sent.append(data)


async def _run(variant: str, publications: int, rounds: int, batch: int,
               profile: cProfile.Profile | None) -> dict[str, float]:
    from sip_publish_cost import DOMAIN, SERVER, Server

    from sip.aio import SipEndpoint
    from sip.uri import SipURI

    loop = asyncio.get_running_loop()
    clock = [loop.time()]
    endpoint = SipEndpoint(host="127.0.0.1", port=0, server=SipURI.parse("sip:127.0.0.1:5070"))
    await endpoint.start()
    endpoint.now = lambda: clock[0]  # type: ignore[method-assign]
    real_udp = endpoint._udp
    fake = _FakeUdp()
    endpoint._udp = fake  # type: ignore[assignment]
    server = Server()
    fake.answer = lambda data: loop.call_soon(endpoint._datagram, server.answer(data), SERVER)
    store: Any = None
    tmp = tempfile.TemporaryDirectory()
    try:
        ids: list[int] = []
        if variant == "sip":
            from sip_publish_cost import BODY

            handles = []
            for i in range(publications):
                body = BODY.format(i=i, basic="open").encode()
                handles.append(endpoint.publish(SipURI.parse(f"sip:p{i}@{DOMAIN}"), body))
            for handle in handles:
                await handle.outcome
            ids = [handle.id for handle in handles]
        else:
            from adapter.presence_json import attributes_from_json
            from adapter.presentity import PresentityService
            from adapter.store import SqliteStore

            store = SqliteStore(Path(tmp.name) / "adapter.sqlite")
            service = PresentityService(endpoint, None, store=store)  # type: ignore[arg-type]
            attributes = attributes_from_json([{
                "typeAndValue": {"unionElement": "Activity", "activity": "Busy"},
                "note": "bench presentity",
            }])
            await asyncio.gather(*(service.publish(f"sip:p{i}@{DOMAIN}", attributes)
                                   for i in range(publications)))
            ids = [entry.publication.id for entry in service._presentities.values()
                   if entry.publication is not None]
        assert len(ids) == publications
        fake.answer = None
        ua = endpoint.ua
        answer = server.answer
        cpu = dict.fromkeys(PARTS, 0.0)
        process_time = time.process_time
        refreshed = 0
        gc.collect()
        def timer(pid: int) -> float:
            publication = ua.publication(pid)
            assert publication is not None
            deadline = publication.get_timer()
            assert deadline is not None
            return deadline

        for _ in range(rounds):
            due = sorted(timer(pid) for pid in ids)
            # A wake-up at every ``batch``-th deadline; refreshes snapped to
            # one instant (the refresh grid) go out together whatever it is.
            for at in [*due[batch - 1::batch], due[-1]]:
                if at < clock[0]:
                    continue
                clock[0] = at
                if profile:
                    profile.enable()
                t = process_time()
                endpoint._on_timer()
                cpu["refresh"] += process_time() - t
                if profile:
                    profile.disable()
                sent, fake.sent = fake.sent, []
                oks = [answer(data) for data in sent]
                if profile:
                    profile.enable()
                t = process_time()
                for ok in oks:
                    endpoint._datagram(ok, SERVER)
                middle = process_time()
                await asyncio.sleep(0)  # the loop turn that commits the writes queued
                end = process_time()
                if profile:
                    profile.disable()
                cpu["200"] += middle - t
                cpu["commit"] += end - middle
                refreshed += len(sent)
        assert refreshed == rounds * publications, (refreshed, rounds * publications)
        return {part: seconds / refreshed * 1e6 for part, seconds in cpu.items()}
    finally:
        if store is not None:
            await store.close()
        endpoint._udp = real_udp
        await endpoint.close()
        tmp.cleanup()


def measure(variant: str, publications: int, rounds: int, batch: int) -> dict[str, float]:
    return asyncio.run(_run(variant, publications, rounds, batch, None))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--publications", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=1,
                        help="refreshes falling due at one wake-up (default 1)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--variants", default="sip,adapter")
    parser.add_argument("--reference", type=Path, default=None,
                        help="also run from this source tree, for the ratio")
    parser.add_argument("--profile", choices=("sip", "adapter"))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tree", type=Path, default=REPO, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child or args.profile:
        sys.path.insert(0, str(args.tree))
        sys.path.insert(0, str(BENCH))
    if args.child:
        import json

        print(json.dumps(measure(args.variants, args.publications, args.rounds, args.batch)))
        return 0
    if args.profile:
        profile = cProfile.Profile()
        print(asyncio.run(_run(args.profile, args.publications, args.rounds, args.batch,
                               profile)))
        pstats.Stats(profile).sort_stats("tottime").print_stats(30)
        return 0
    sys.path.insert(0, str(BENCH))
    from trees import interleaved, run_child

    variants = args.variants.split(",")
    print(f"{args.publications:,} publications x {args.rounds} refreshes, {args.batch} per "
          f"wake-up, best of {args.repeat}; µs of CPU per refresh")
    for variant in variants:
        def one(tree: Path, variant: str = variant) -> dict[str, float]:
            return dict(run_child(Path(__file__), tree, "--variants", variant,
                                  "--publications", str(args.publications),
                                  "--rounds", str(args.rounds), "--batch", str(args.batch)))

        runs = interleaved(REPO, args.reference, args.repeat, one)
        best = {name: min(results, key=lambda r: sum(r.values())) for name, results in runs.items()}
        for name, parts in best.items():
            total = sum(parts.values())
            detail = " / ".join(f"{part} {parts[part]:.1f}" for part in PARTS)
            ratio = ""
            if name == "tree" and "reference" in best:
                ratio = f"   ({total / sum(best['reference'].values()):.2f}x reference)"
            print(f"  {variant:8} {name:9} {total:7.1f}   ({detail}){ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
