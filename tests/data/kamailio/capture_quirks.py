"""Record two server behaviours found by tests/integration/test_useragent.py.

Run from the repository root:

    .venv/bin/python -m tests.data.kamailio.capture_quirks

Like capture.py: a private server, the raw peer of tests/rawsip.py, fixed
names, every message exactly as sent or received.  See README.md, "Removal
race" and "Waiting watcher".
"""

from __future__ import annotations

from tests.data.kamailio.capture import ALICE, BOB, save
from tests.integration.test_presence_server import PIDF, PUBLISH, SUBSCRIBE, UNSUBSCRIBE
from tests.integration.test_useragent import RAW_PUBLISH_IF_MATCH
from tests.presence_server import PresenceServer
from tests.rawsip import SipMessage, SipPeer, new_token

#: The race is lost or won within a millisecond; try until it shows.
ATTEMPTS = 50


def removal_race(peer: SipPeer) -> None:
    """PUBLISH, remove it, then at once refresh with the same entity tag until 412.

    Saves the first attempt in which the server answered anything but 412
    to the first refresh after the removal's 200.
    """
    for _ in range(ATTEMPTS):
        sent: list[tuple[str, bytes]] = []
        call_id = new_token()
        sent.append(
            (
                "publish",
                peer.send_request(
                    PUBLISH,
                    PIDF.format(presentity=ALICE, note="racing"),
                    presentity=ALICE,
                    tag=new_token(),
                    call_id=call_id,
                    expires=3600,
                ),
            )
        )
        reply = peer.response(call_id, "PUBLISH")
        sent.append(("publish-200", reply.raw))
        etag = reply.require("SIP-ETag")
        answers: list[SipMessage] = []
        for expires in [0] + [3600] * 20:
            template = RAW_PUBLISH_IF_MATCH.replace("{expires}", str(expires))
            call_id = new_token()
            what = "remove" if expires == 0 else "refresh"
            sent.append(
                (
                    what,
                    peer.send_request(
                        template, presentity=f"sip:{ALICE}", tag=new_token(), call_id=call_id,
                        etag=etag,
                    ),
                )
            )
            answer = peer.response(call_id, "PUBLISH")
            answers.append(answer)
            sent.append((f"{what}-{answer.status}", answer.raw))
            if answer.status == 412:
                break
        if len(answers) > 2:  # the removal, at least one refresh that still found it, the 412
            for index, (name, data) in enumerate(sent, start=1):
                save(f"race-{index:02}-{name}.txt", data)
            return
    print(f"the removal race did not show in {ATTEMPTS} attempts; nothing saved")


def waiting_watcher(alice: SipPeer, bob: SipPeer) -> None:
    """A pending watcher unsubscribes; a new winfo subscription still lists it."""
    call_id, tag = new_token(), new_token()
    save(
        "waiting-01-subscribe.txt",
        bob.send_request(
            SUBSCRIBE, presentity=ALICE, subscriber=BOB, tag=tag, call_id=call_id,
            event="presence", accept="application/pidf+xml",
        ),
    )
    reply = bob.response(call_id, "SUBSCRIBE")
    save("waiting-02-subscribe-200.txt", reply.raw)
    save("waiting-03-notify-pending.txt", bob.notify(call_id).raw)
    save(
        "waiting-04-unsubscribe.txt",
        bob.send_request(
            UNSUBSCRIBE, remote_target=reply.require("Contact").strip("<>"), presentity=ALICE,
            subscriber=BOB, tag=tag, remote_tag=reply.tag("To"), call_id=call_id,
        ),
    )
    save("waiting-05-unsubscribe-200.txt", bob.response(call_id, "SUBSCRIBE").raw)
    save("waiting-06-notify-terminated.txt", bob.notify(call_id).raw)

    winfo_call = new_token()
    save(
        "waiting-07-subscribe-winfo.txt",
        alice.send_request(
            SUBSCRIBE, presentity=ALICE, subscriber=ALICE, tag=new_token(), call_id=winfo_call,
            event="presence.winfo", accept="application/watcherinfo+xml",
        ),
    )
    save("waiting-08-subscribe-winfo-200.txt", alice.response(winfo_call, "SUBSCRIBE").raw)
    save("waiting-09-notify-winfo-waiting.txt", alice.notify(winfo_call).raw)


def main() -> None:
    with (
        PresenceServer() as server,
        SipPeer(server.sip_address) as alice,
        SipPeer(server.sip_address) as bob,
    ):
        removal_race(alice)
        waiting_watcher(alice, bob)


if __name__ == "__main__":
    main()
