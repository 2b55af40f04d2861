"""CPU of one subscription refresh in the SIP stack, without sockets.

    .venv/bin/python bench/sip_refresh_cost.py              # ~10 s
    .venv/bin/python bench/sip_refresh_cost.py --profile ua # cProfile, top functions
    .venv/bin/python bench/sip_refresh_cost.py --split      # endpoint: SUBSCRIBE out, 200, NOTIFY

A sans-IO replay of the exchange that keeps a live subscription alive
(RFC 6665 §4.1.2.2): the refresh SUBSCRIBE goes out, the presence server's
200 comes back, then its NOTIFY, which is answered 200.  The server side is
played by f-string templates shaped like the bundled Kamailio's messages
(tests/data/kamailio/04-subscribe-200.txt, 05-notify-pending.txt); its work
is *not* timed.  Timed, per refresh, in three variants run side by side:

* ``ua``       — ``sip.useragent.UserAgent`` under a fake clock: ``get_timer``,
  ``handle_timer`` at the refresh deadline, ``datagrams_to_send``,
  ``receive`` of the 200 and of the NOTIFY, ``next_event`` — and the Timer J
  expiries of the NOTIFY server transactions, which fall due in the same
  replay;
* ``endpoint`` — the same through the asyncio driver ``sip.aio.SipEndpoint``
  (``SubscriptionHandle.refresh``, ``_datagram``: flush, event dispatch, timer
  re-arm) with a fake UDP transport; the refresh is asked for directly, not
  by the event loop's timer;
* ``raw``      — the floor of bench/scale.py's raw holder (``RawHolder.send``
  and ``datagram_received``, f-strings and regexes, no parser, no
  transactions) on the same messages.

``--notify active`` makes each NOTIFY what a held watch gets: active, with
the captured PIDF document (tests/data/kamailio/09-notify-active-again-1.txt)
as its body, instead of the default pending one without a body.

``--subscribers`` and ``--presentities`` spread the subscriptions over
that many distinct addresses (1,000 and 100 by default; the
100,000-subscription run of bench/scale_adapter.py has 1,000 and 10,000,
more than the parser's tables of texts hold).

Subscriptions are set up first (not timed); then every one is refreshed
``--rounds`` times.  Figures are µs of CPU (``time.process_time``, the
timed calls only) per refresh, best of ``--repeat`` runs, with the ratio to
raw.  ``--reference DIR`` runs ua and endpoint also from another source tree
(``git archive REV | tar -x -C DIR``), each run in a child process between
the working tree's, and prints the ratio to it.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import pstats
import random
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
# Run as a script; as a child of --reference, the reference tree is the path.
if __name__ == "__main__" and str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from sip.aio.endpoint import SipEndpoint  # noqa: E402
from sip.subscription import NotifyReceived, SubscriptionAccepted  # noqa: E402
from sip.uri import SipURI  # noqa: E402
from sip.useragent import Destination, UserAgent  # noqa: E402

SERVER = ("127.0.0.1", 5070)
LOCAL = ("127.0.0.1", 5080)
SERVER_DEST = Destination("udp", *SERVER)
DOMAIN = "bench.example.com"
EXPIRES = 3600

_VIA = re.compile(rb"\r\nVia: ([^\r\n]+)")
_FROM = re.compile(rb"\r\nFrom: ([^\r\n]+)")
_TO = re.compile(rb"\r\nTo: ([^\r\n]+)")
_CALL_ID = re.compile(rb"\r\nCall-ID: ([^\r\n]+)")
_CSEQ = re.compile(rb"\r\nCSeq: ([^\r\n]+)")
_CONTACT = re.compile(rb"\r\nContact: <([^>\r\n]+)>")


# The document of tests/data/kamailio/09-notify-active-again-1.txt.
PIDF = (
    b'<?xml version="1.0" encoding="UTF-8"?>\r\n'
    b'<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:alice@example.com">\r\n'
    b'  <tuple id="t1">\r\n    <status><basic>open</basic></status>\r\n'
    b"    <note>at my desk</note>\r\n  </tuple>\r\n</presence>\r\n"
)
# The NOTIFY's state and body: "pending" (the default) or "active".
NOTIFY_STATE = "pending"


class Notifier:
    """The presence server's side, as text templates (not timed)."""

    def __init__(self) -> None:
        self.active = NOTIFY_STATE == "active"
        self.remote_tags: dict[bytes, str] = {}
        self.notify_cseq: dict[bytes, int] = {}
        self.serial = 0

    def answer(self, subscribe: bytes) -> tuple[bytes, bytes]:
        """The 200 to ``subscribe`` and the NOTIFY that follows it."""
        via = _match(_VIA, subscribe)
        from_ = _match(_FROM, subscribe)
        to = _match(_TO, subscribe)
        call_id = _match(_CALL_ID, subscribe)
        cseq = _match(_CSEQ, subscribe)
        contact = _match(_CONTACT, subscribe)
        tag = self.remote_tags.get(call_id)
        if tag is None:
            tag = self.remote_tags[call_id] = f"{random.getrandbits(128):032x}-1a4fac60"
        if b";tag=" not in to:
            to += f";tag={tag}".encode()
        # Kamailio fills in rport and received (RFC 3581 §4).
        via = via.replace(b";rport", f";rport={LOCAL[1]};received={LOCAL[0]}".encode())
        ok = (
            b"SIP/2.0 200 OK\r\nVia: " + via + b"\r\nFrom: " + from_ + b"\r\nTo: " + to
            + b"\r\nCall-ID: " + call_id + b"\r\nCSeq: " + cseq
            + f"\r\nExpires: {EXPIRES}\r\nContact: <sip:{SERVER[0]}:{SERVER[1]};transport=udp>"
            "\r\nServer: presence-adapter bundled presence server (Kamailio)"
            "\r\nContent-Length: 0\r\n\r\n".encode()
        )
        seq = self.notify_cseq[call_id] = self.notify_cseq.get(call_id, 1) + 1
        self.serial += 1
        notify = (
            f"NOTIFY {contact.decode()} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {SERVER[0]}:{SERVER[1]};branch=z9hG4bK{self.serial:x}"
            ".791dad16000000000000000000000000.0\r\n"
            f"To: {from_.decode()}\r\nFrom: {to.decode()}\r\n"
            f"CSeq: {seq} NOTIFY\r\nCall-ID: {call_id.decode()}\r\n"
            f"Content-Length: {len(PIDF) if self.active else 0}\r\n"
            "User-Agent: presence-adapter bundled presence server (Kamailio)\r\n"
            f"Max-Forwards: 70\r\nEvent: presence\r\n"
            f"Contact: <sip:{SERVER[0]}:{SERVER[1]};transport=udp>\r\n"
            + (f"Subscription-State: active;expires={EXPIRES}\r\n"
               "Content-Type: application/pidf+xml\r\n\r\n" if self.active else
               f"Subscription-State: pending;expires={EXPIRES}\r\n\r\n")
        ).encode() + (PIDF if self.active else b"")
        return ok, notify


def _match(pattern: re.Pattern[bytes], data: bytes) -> bytes:
    m = pattern.search(data)
    assert m is not None, (pattern.pattern, data)
    return m.group(1)


# Distinct addresses the subscriptions are spread over (--subscribers,
# --presentities): the 100,000-subscription run has 1,000 and 10,000.
ADDRESSES = {"subscribers": 1000, "presentities": 100}


def subscriber(i: int) -> SipURI:
    return SipURI.parse(f"sip:w{i % ADDRESSES['subscribers']}@{DOMAIN}")


def presentity(i: int) -> SipURI:
    return SipURI.parse(f"sip:p{i % ADDRESSES['presentities']}@{DOMAIN}")


# ------------------------------------------------------------------ ua


def run_ua(subscriptions: int, rounds: int) -> tuple[float, int]:
    """(CPU seconds in the user agent, refreshes) for the sans-IO core."""
    ua = UserAgent(local=Destination("udp", *LOCAL), server=SipURI.parse("sip:127.0.0.1:5070"),
                   rng=random.Random(1), subscription_expires=EXPIRES)
    notifier = Notifier()
    now = 0.0

    def exchange(clock: Callable[[], float]) -> tuple[float, int]:
        """Answer what the user agent sent; returns (CPU spent in ua, SUBSCRIBEs)."""
        spent = 0.0
        sent = 0
        t = clock()
        out = ua.datagrams_to_send()
        spent += clock() - t
        for data, _dest in out:
            if not data.startswith(b"SUBSCRIBE "):
                continue
            sent += 1
            ok, notify = notifier.answer(data)
            t = clock()
            ua.receive(ok, SERVER_DEST, now)
            ua.receive(notify, SERVER_DEST, now)
            ua.datagrams_to_send()
            while ua.next_event() is not None:
                pass
            spent += clock() - t
        return spent, sent

    for i in range(subscriptions):
        ua.subscribe(subscriber(i), presentity(i), now)
        exchange(time.process_time)
    assert ua.subscription_count == subscriptions
    events = 0
    while (event := ua.next_event()) is not None:
        events += isinstance(event, SubscriptionAccepted | NotifyReceived)
    target = subscriptions * rounds
    refreshes = 0
    cpu = 0.0
    clock = time.process_time
    while refreshes < target:
        t = clock()
        deadline = ua.get_timer()
        assert deadline is not None
        now = deadline
        ua.handle_timer(now)
        cpu += clock() - t
        spent, sent = exchange(clock)
        cpu += spent
        refreshes += sent
    assert ua.subscription_count == subscriptions, "a subscription was lost in the replay"
    return cpu, refreshes


# ------------------------------------------------------------- endpoint


class _FakeUdp:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def sendto(self, data: bytes, addr: Any = None) -> None:
        self.sent.append(data)


async def run_endpoint(
    subscriptions: int, rounds: int, parts: list[float] | None = None
) -> tuple[float, int]:
    """(CPU seconds in SipEndpoint + UserAgent, refreshes) through the driver.

    ``parts``, if given, gets the CPU seconds of the refresh calls (the
    SUBSCRIBE made and sent), of the 200s and of the NOTIFYs added to it."""
    parts = parts if parts is not None else [0.0, 0.0, 0.0]
    endpoint = SipEndpoint(host=LOCAL[0], port=0, server=SipURI.parse("sip:127.0.0.1:5070"),
                           rng=random.Random(1), subscription_expires=EXPIRES)
    await endpoint.start()
    real_udp = endpoint._udp
    fake = _FakeUdp()
    endpoint._udp = fake  # type: ignore[assignment]
    notifier = Notifier()
    try:
        handles = []
        for i in range(subscriptions):
            handles.append(endpoint.subscribe(subscriber(i), presentity(i)))
            sent, fake.sent = fake.sent, []
            for data in sent:
                ok, notify = notifier.answer(data)
                endpoint._datagram(ok, SERVER)
                endpoint._datagram(notify, SERVER)
            fake.sent.clear()
        assert endpoint.ua.subscription_count == subscriptions
        clock = time.process_time
        cpu = 0.0
        refreshes = 0
        for _ in range(rounds):
            for handle in handles:
                t = clock()
                handle.refresh()
                spent = clock() - t
                cpu += spent
                parts[0] += spent
                sent = [d for d in fake.sent if d.startswith(b"SUBSCRIBE ")]
                fake.sent.clear()
                for data in sent:
                    refreshes += 1
                    ok, notify = notifier.answer(data)
                    t = clock()
                    endpoint._datagram(ok, SERVER)
                    middle = clock()
                    endpoint._datagram(notify, SERVER)
                    end = clock()
                    cpu += end - t
                    parts[1] += middle - t
                    parts[2] += end - middle
                fake.sent.clear()
        assert endpoint.ua.subscription_count == subscriptions
        return cpu, refreshes
    finally:
        endpoint._udp = real_udp
        await endpoint.close()


# ------------------------------------------------------------------ raw


async def run_raw(subscriptions: int, rounds: int) -> tuple[float, int]:
    """(CPU seconds in RawHolder, refreshes): bench/scale.py's floor."""
    from bench.scale import RawHolder, Tally

    holder = RawHolder(SERVER, EXPIRES, Tally(started=asyncio.get_running_loop().time()))
    fake = _FakeUdp()
    holder.transport = fake  # type: ignore[assignment]
    holder.local = f"{LOCAL[0]}:{LOCAL[1]}"
    notifier = Notifier()
    call_ids = []
    for i in range(subscriptions):
        call_id = f"{random.getrandbits(64):016x}".encode()
        holder.dialogs[call_id] = ["u", str(subscriber(i)), str(presentity(i)),
                                   f"{random.getrandbits(64):016x}", None, 0, None]
        holder.send(call_id)
        sent, fake.sent = fake.sent, []
        for data in sent:
            ok, notify = notifier.answer(data)
            holder.datagram_received(ok, SERVER)
            holder.datagram_received(notify, SERVER)
        fake.sent.clear()
        call_ids.append(call_id)
    holder.due.clear()
    clock = time.process_time
    cpu = 0.0
    refreshes = 0
    for _ in range(rounds):
        for call_id in call_ids:
            t = clock()
            holder.send(call_id)
            cpu += clock() - t
            data = fake.sent.pop()
            assert data.startswith(b"SUBSCRIBE ")
            refreshes += 1
            ok, notify = notifier.answer(data)
            t = clock()
            holder.datagram_received(ok, SERVER)
            holder.datagram_received(notify, SERVER)
            holder.due.pop()  # refresh_forever pops what the 200 scheduled
            cpu += clock() - t
            fake.sent.clear()
    return cpu, refreshes


# ------------------------------------------------------------------ main


def measure(variant: str, subscriptions: int, rounds: int) -> tuple[float, int]:
    gc.collect()
    if variant == "ua":
        return run_ua(subscriptions, rounds)
    if variant == "endpoint":
        return asyncio.run(run_endpoint(subscriptions, rounds))
    return asyncio.run(run_raw(subscriptions, rounds))


def measure_us(variant: str, subscriptions: int, rounds: int, notify: str = "pending",
               addresses: str = "1000,100") -> float:
    """µs of CPU per refresh: what a child run from another tree prints."""
    global NOTIFY_STATE
    NOTIFY_STATE = notify
    _set_addresses(addresses)
    cpu, refreshes = measure(variant, subscriptions, rounds)
    return cpu / refreshes * 1e6


def _set_addresses(addresses: str) -> None:
    """``"SUBSCRIBERS,PRESENTITIES"`` into ADDRESSES (a child's argument)."""
    subscribers, presentities = addresses.split(",")
    ADDRESSES.update(subscribers=int(subscribers), presentities=int(presentities))


def _addresses() -> str:
    return f"{ADDRESSES['subscribers']},{ADDRESSES['presentities']}"


def measure_split(subscriptions: int, rounds: int, notify: str = "pending",
                  addresses: str = "1000,100") -> str:
    """µs of CPU per refresh of the endpoint variant's three parts: the
    refresh call (SUBSCRIBE out), the 200, the NOTIFY (and its 200 out)."""
    global NOTIFY_STATE
    NOTIFY_STATE = notify
    _set_addresses(addresses)
    gc.collect()
    parts = [0.0, 0.0, 0.0]
    _, refreshes = asyncio.run(run_endpoint(subscriptions, rounds, parts))
    return ",".join(f"{part / refreshes * 1e6:.2f}" for part in parts)


def split_reference(tree: str, subscriptions: int, rounds: int, notify: str) -> str:
    """:func:`measure_split` in a child process whose ``sip`` comes from ``tree``."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from trees import run_from_tree

    call = "bench.measure_split(int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6])"
    return run_from_tree(Path(__file__), tree, call, str(subscriptions), str(rounds), notify,
                         _addresses())


def measure_reference(
    tree: str, variant: str, subscriptions: int, rounds: int, notify: str
) -> float:
    """:func:`measure_us` in a child process whose ``sip`` comes from ``tree``."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from trees import run_from_tree

    call = ("bench.measure_us(sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6],"
            " sys.argv[7])")
    return float(run_from_tree(Path(__file__), tree, call, variant, str(subscriptions),
                               str(rounds), notify, _addresses()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--subscriptions", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3, help="refreshes per subscription")
    parser.add_argument("--repeat", type=int, default=3, help="runs per variant (best kept)")
    parser.add_argument("--variants", default="raw,ua,endpoint")
    parser.add_argument("--notify", choices=("pending", "active"), default="pending",
                        help="the NOTIFY's state; active carries a PIDF body")
    parser.add_argument("--reference", metavar="DIR",
                        help="also run ua and endpoint from this source tree, for the ratio")
    parser.add_argument("--profile", choices=("ua", "endpoint", "raw"),
                        help="run one variant under cProfile and print the top functions")
    parser.add_argument("--split", action="store_true",
                        help="endpoint only: µs of the refresh call, its 200 and the NOTIFY")
    parser.add_argument("--subscribers", type=int, default=1000,
                        help="distinct subscriber addresses")
    parser.add_argument("--presentities", type=int, default=100,
                        help="distinct presentity addresses")
    args = parser.parse_args(argv)
    ADDRESSES.update(subscribers=args.subscribers, presentities=args.presentities)
    global NOTIFY_STATE
    NOTIFY_STATE = args.notify
    if args.split:
        return print_split(args)
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        measure(args.profile, args.subscriptions, args.rounds)
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
        return 0
    variants = args.variants.split(",")
    best: dict[str, float] = {}
    reference: dict[str, float] = {}
    for _ in range(args.repeat):
        for variant in variants:  # interleaved, so machine noise falls on all
            per = measure_us(variant, args.subscriptions, args.rounds, args.notify)
            best[variant] = min(best.get(variant, per), per)
            if args.reference and variant != "raw":
                per = measure_reference(args.reference, variant, args.subscriptions,
                                        args.rounds, args.notify)
                reference[variant] = min(reference.get(variant, per), per)
    print(f"{args.subscriptions:,} subscriptions x {args.rounds} refreshes, best of "
          f"{args.repeat}; µs CPU per refresh (SUBSCRIBE + 200 + NOTIFY + 200), "
          f"the NOTIFY {args.notify}")
    for variant in variants:
        ratio = f"  {best[variant] / best['raw']:5.2f}x raw" if "raw" in best else ""
        if variant in reference:
            ratio += (f"   reference {reference[variant]:8.1f} µs"
                      f"  {best[variant] / reference[variant]:5.2f}x reference")
        print(f"  {variant:<9} {best[variant]:8.1f} µs{ratio}")
    if args.reference:
        print(f"reference: {args.reference}")
    return 0


def print_split(args: argparse.Namespace) -> int:
    """The endpoint variant's three parts, best of ``--repeat`` each, interleaved."""
    names = ("refresh call (SUBSCRIBE out)", "its 200", "the NOTIFY and our 200")
    best: dict[str, list[float]] = {}
    for _ in range(args.repeat):
        runs = {"tree": measure_split(args.subscriptions, args.rounds, args.notify)}
        if args.reference:
            runs["reference"] = split_reference(args.reference, args.subscriptions, args.rounds,
                                                 args.notify)
        for tree, text in runs.items():
            parts = [float(part) for part in text.split(",")]
            best[tree] = [min(a, b) for a, b in zip(best.get(tree, parts), parts, strict=True)]
    print(f"{args.subscriptions:,} subscriptions x {args.rounds} refreshes, endpoint, best of "
          f"{args.repeat} per part; µs CPU per refresh")
    for i, name in enumerate(names):
        line = f"  {name:<30} {best['tree'][i]:8.1f} µs"
        if "reference" in best:
            ref = best["reference"][i]
            line += f"   reference {ref:8.1f} µs  {best['tree'][i] / ref:5.2f}x reference"
        print(line)
    if args.reference:
        print(f"reference: {args.reference}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
