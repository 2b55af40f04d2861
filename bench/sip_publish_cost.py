"""CPU of one PUBLISH modify round trip in the SIP stack, without sockets.

    .venv/bin/python bench/sip_publish_cost.py                  # ~15 s
    .venv/bin/python bench/sip_publish_cost.py --base HEAD~2    # another baseline
    .venv/bin/python bench/sip_publish_cost.py --profile        # cProfile, working tree

A sans-IO replay of what the adapter's SIP stack does for one REST Publish
once the presentity is published (RFC 3903 §4.4): ``UserAgent.modify`` with
the new body, ``datagrams_to_send`` (the PUBLISH with SIP-If-Match), then the
server's 200 with a fresh SIP-ETag fed back through ``receive``, and
``next_event`` until the ``PublicationConfirmed``.  The 200 is a canned
Kamailio answer (shaped like tests/data/kamailio/02-publish-200.txt) built
by f-string from the PUBLISH's Via, From, To, Call-ID and CSeq; that work is
*not* timed.  The user agent gets ``random.SystemRandom()``, as
``sip.aio.SipEndpoint`` gives it by default.

The same replay runs for the working tree and for a ``git worktree`` of
``--base`` (default HEAD), each in its own child process, alternating
``--repeat`` times; figures are µs of CPU (``time.process_time``, the timed
calls only) per round trip, best of the runs, and the ratio tree / base.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import pstats
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent

SERVER = ("127.0.0.1", 5070)
LOCAL = ("127.0.0.1", 5080)
DOMAIN = "bench.example.com"
BODY = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    '<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:p{i}@bench.example.com">\n'
    '  <tuple id="t1">\n    <status><basic>{basic}</basic></status>\n'
    "    <note>at my desk</note>\n  </tuple>\n</presence>\n"
)

_VIA = re.compile(rb"\r\nVia: ([^\r\n]+)")
_FROM = re.compile(rb"\r\nFrom: ([^\r\n]+)")
_TO = re.compile(rb"\r\nTo: ([^\r\n]+)")
_CALL_ID = re.compile(rb"\r\nCall-ID: ([^\r\n]+)")
_CSEQ = re.compile(rb"\r\nCSeq: ([^\r\n]+)")


def _match(pattern: re.Pattern[bytes], data: bytes) -> bytes:
    m = pattern.search(data)
    assert m is not None, (pattern.pattern, data)
    return m.group(1)


class Server:
    """Kamailio's 200 to a PUBLISH, as a text template (not timed)."""

    def __init__(self) -> None:
        self.serial = 0

    def answer(self, publish: bytes) -> bytes:
        self.serial += 1
        via = _match(_VIA, publish).replace(
            b";rport", f";rport={LOCAL[1]};received={LOCAL[0]}".encode()
        )
        return (
            b"SIP/2.0 200 OK\r\nVia: " + via + b"\r\nFrom: " + _match(_FROM, publish)
            + b"\r\nTo: " + _match(_TO, publish)
            + f";tag={self.serial:032x}-9844fe47".encode()
            + b"\r\nCall-ID: " + _match(_CALL_ID, publish) + b"\r\nCSeq: " + _match(_CSEQ, publish)
            + f"\r\nExpires: 3600\r\nSIP-ETag: a.1795928171.{self.serial}.1.0"
            "\r\nServer: presence-adapter bundled presence server (Kamailio)"
            "\r\nContent-Length: 0\r\n\r\n".encode()
        )


def run(publications: int, rounds: int, profile: bool) -> dict[str, Any]:
    """Measure in this process, with whatever ``sip`` package is first on sys.path."""
    from sip.publication import PublicationConfirmed
    from sip.uri import SipURI
    from sip.useragent import Destination, UserAgent

    server_dest = Destination("udp", *SERVER)
    ua = UserAgent(local=Destination("udp", *LOCAL), server=SipURI.parse("sip:127.0.0.1:5070"),
                   rng=random.SystemRandom(), publication_expires=3600)
    server = Server()
    bodies = [
        [BODY.format(i=i, basic=basic).encode() for basic in ("open", "closed")]
        for i in range(publications)
    ]
    ids = []
    now = 0.0
    for i in range(publications):  # initial PUBLISHes, not timed
        ids.append(ua.publish(SipURI.parse(f"sip:p{i}@{DOMAIN}"), bodies[i][0], now))
        for data, _ in ua.datagrams_to_send():
            ua.receive(server.answer(data), server_dest, now)
        while ua.next_event() is not None:
            pass
    confirmed = 0
    cpu = 0.0
    clock = time.process_time
    answer = server.answer
    profiler = cProfile.Profile() if profile else None
    gc.collect()
    for r in range(rounds):
        for i, pid in enumerate(ids):
            body = bodies[i][(r + 1) % 2]
            if profiler:
                profiler.enable()
            t = clock()
            ua.modify(pid, body, now)
            out = ua.datagrams_to_send()
            cpu += clock() - t
            if profiler:
                profiler.disable()
            (data, _), = out
            ok = answer(data)
            if profiler:
                profiler.enable()
            t = clock()
            ua.receive(ok, server_dest, now)
            ua.datagrams_to_send()
            while (event := ua.next_event()) is not None:
                confirmed += isinstance(event, PublicationConfirmed)
            cpu += clock() - t
            if profiler:
                profiler.disable()
    assert confirmed == publications * rounds, (confirmed, publications * rounds)
    if profiler:
        stats = pstats.Stats(profiler)
        stats.sort_stats("tottime").print_stats(30)
    return {"us": cpu / confirmed * 1e6, "n": confirmed}


def child(tree: str, publications: int, rounds: int) -> float:
    # Imported here: the child imports this file alone, without its folder.
    sys.path.insert(0, str(BENCH))
    from trees import run_from_tree

    call = "json.dumps(bench.run(int(sys.argv[3]), int(sys.argv[4]), False))"
    out = run_from_tree(Path(__file__), tree, call, str(publications), str(rounds))
    return float(json.loads(out)["us"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="HEAD", help="git ref to compare with (default HEAD)")
    parser.add_argument("--publications", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="cProfile the working tree")
    args = parser.parse_args()
    if args.profile:
        sys.path.insert(0, str(REPO))
        print(run(args.publications, args.rounds, True))
        return
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(base),
                        args.base], check=True)
        try:
            rev = subprocess.run(["git", "-C", str(base), "rev-parse", "--short", "HEAD"],
                                 check=True, capture_output=True, text=True).stdout.strip()
            tree_us: list[float] = []
            base_us: list[float] = []
            for _ in range(args.repeat):
                base_us.append(child(str(base), args.publications, args.rounds))
                tree_us.append(child(str(REPO), args.publications, args.rounds))
                print(f"  base {base_us[-1]:7.1f} us   tree {tree_us[-1]:7.1f} us", flush=True)
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(base)],
                           check=True)
    b, t = min(base_us), min(tree_us)
    n = args.publications * args.rounds
    print(f"PUBLISH modify round trip, {n} per run, best of {args.repeat}:")
    print(f"  base ({args.base} = {rev}): {b:7.1f} us")
    print(f"  working tree:        {t:7.1f} us   ({t / b:.2f}x base)")


if __name__ == "__main__":
    main()
