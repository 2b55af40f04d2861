"""CPU of reading one SIP message into the stack's typed form, and of answering it.

    .venv/bin/python bench/sip_parse_cost.py                   # about 10 s
    .venv/bin/python bench/sip_parse_cost.py --reference DIR   # DIR: git archive REV

The part of the per-exchange floor that is the message, apart from sockets
(bench/sip_exchange_floor.py) and from state (transactions, dialogs,
timers: bench/sip_refresh_cost.py).  Messages are the bundled Kamailio's,
captured (tests/data/kamailio/08-notify-active.txt, a NOTIFY with a PIDF
body, and 04-subscribe-200.txt, the 200 to a SUBSCRIBE), each copy with a
fresh Via branch, tags and Call-ID as in a refresh wave (a branch per
transaction, tags and Call-ID per dialog).  Timed, µs of CPU per message
(``time.process_time``), best of ``--repeat``:

* ``lines``  — the least any reader does: split the head into lines and
  the lines into a dict of name to value, and slice the body;
* ``parse``  — ``sip.message.parse_message`` and the To tag (what the user
  agent reads of every NOTIFY before its dialog is known);
* ``answer`` — the NOTIFY's 200 (``Request.response_bytes``), from a message
  parsed before;
* ``lean``   — the byte paths' readers, what a refresh wave runs:
  ``read_lean_notify`` for the NOTIFY, ``read_lean_success`` for the 200;
* ``lean answer`` — the NOTIFY's 200 written from what ``read_lean_notify``
  read (``LeanNotify.answer``).

``--presentities N`` gives the copies addresses as a gateway at scale sees
them: the presentity's (the NOTIFY's From, the 200's To) cycling over N
names, the watcher's over 1,000 (the 100,000-subscription run has 10,000
and 1,000: more than the parser's table of addresses holds).  Without it,
every copy names the captured two.

``--reference DIR`` runs the same from another source tree in a child
process and prints the ratio.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "data" / "kamailio"


def messages(name: str, count: int, seed: int, presentities: int = 0) -> list[bytes]:
    """``count`` copies of a captured message, each with its own branch, tags and
    Call-ID, and with ``presentities``, addresses spread as described above."""
    # The capture is the datagram as it came: CRLF in the head, the body as sent.
    head, _, body = (DATA / name).read_bytes().partition(b"\r\n\r\n")
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        fresh = head
        for marker in (b"branch=z9hG4bK", b";tag=", b"Call-ID: "):
            at = fresh.find(marker)
            while at >= 0:
                start = at + len(marker)
                fresh = fresh[:start] + b"%016x" % rng.getrandbits(64) + fresh[start + 16:]
                at = fresh.find(marker, start)
        if presentities:
            n = len(out)
            fresh = fresh.replace(b"<sip:alice@example.com>",
                                  b"<sip:p%d@example.com>" % (n % presentities), 1)
            fresh = fresh.replace(b"<sip:bob@example.com>",
                                  b"<sip:w%d@example.com>" % (n % 1000), 1)
        out.append(fresh + b"\r\n\r\n" + body)
    return out


def lines(data: bytes) -> object:
    end = data.find(b"\r\n\r\n")
    fields = data[:end].decode("utf-8").split("\r\n")
    return dict(line.split(": ", 1) for line in fields[1:]), data[end + 4:]


def timed(run: Callable[[bytes], object], batch: list[bytes], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.process_time()
        for data in batch:
            run(data)
        best = min(best, time.process_time() - started)
    return best / len(batch) * 1e6


def measure(count: int, repeat: int, presentities: int = 0) -> dict[str, float]:
    from sip.message import Request, parse_message, read_lean_notify, read_lean_success

    def parse(data: bytes) -> object:
        message = parse_message(data)
        return message.to.tag

    figures = {}
    for name, label in (("08-notify-active.txt", "NOTIFY"),
                        ("04-subscribe-200.txt", "200 to SUBSCRIBE")):
        batch = messages(name, count, 8, presentities)
        for data in batch[:100]:
            parse(data)  # the parser's tables of repeated texts, as in a wave
        figures[f"{label} lines"] = timed(lines, batch, repeat)
        figures[f"{label} parse"] = timed(parse, batch, repeat)
        read = read_lean_notify if label == "NOTIFY" else read_lean_success
        assert all(read(data) is not None for data in batch)
        figures[f"{label} lean"] = timed(read, batch, repeat)
        if label == "NOTIFY":
            parsed = [parse_message(data) for data in batch]
            requests = [m for m in parsed if isinstance(m, Request)]
            best = float("inf")
            for _ in range(repeat):
                started = time.process_time()
                for request in requests:
                    request.response_bytes(200, to_tag=None)
                best = min(best, time.process_time() - started)
            figures[f"{label} answer"] = best / len(requests) * 1e6
            notifies = [read_lean_notify(data) for data in batch]
            best = float("inf")
            for _ in range(repeat):
                started = time.process_time()
                for notify in notifies:
                    notify.answer()  # type: ignore[union-attr]
                best = min(best, time.process_time() - started)
            figures[f"{label} lean answer"] = best / len(notifies) * 1e6
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=20_000, help="messages per batch")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--presentities", type=int, default=0,
                        help="spread the copies' addresses over this many presentities")
    parser.add_argument("--reference", type=Path, metavar="DIR")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.count, args.repeat, args.presentities)))
        return
    sys.path.insert(0, str(REPO))
    ours = measure(args.count, args.repeat, args.presentities)
    theirs: dict[str, Any] = {}
    if args.reference is not None:
        child = subprocess.run(
            [sys.executable, __file__, "--child", "--count", str(args.count),
             "--repeat", str(args.repeat), "--presentities", str(args.presentities)],
            env={"PYTHONPATH": str(args.reference.resolve())}, capture_output=True,
            text=True, check=True)
        theirs = json.loads(child.stdout)
    spread = f", addresses over {args.presentities:,} presentities" if args.presentities else ""
    print(f"µs of CPU per message, best of {args.repeat} × {args.count:,}{spread}")
    for key, value in ours.items():
        ratio = ""
        if key in theirs:
            ratio = f"  reference {theirs[key]:.1f} ({value / theirs[key]:.2f}x)"
        print(f"  {key:<28} {value:6.1f}{ratio}")


if __name__ == "__main__":
    main()
