"""Record the wire exchanges with the bundled presence server into this folder.

Run from the repository root:

    .venv/bin/python -m tests.data.kamailio.capture

Starts a private server (tests/presence_server.py), plays the scenario of
tests/integration/test_presence_server.py with fixed names (presentity
sip:alice@example.com, watcher sip:bob@example.com) and writes every message
exactly as sent or received (CRLF line ends kept). See README.md.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx

# The test module is the single source of the request templates.
from tests.integration.test_presence_server import OPTIONS, PIDF, PRES_RULES
from tests.presence_server import PresenceServer
from tests.rawsip import (
    PUBLISH,
    SUBSCRIBE,
    SipMessage,
    SipPeer,
    exchange_tcp,
    format_request,
    new_token,
)

HERE = Path(__file__).parent
ALICE = "alice@example.com"
BOB = "bob@example.com"


def save(name: str, data: bytes) -> None:
    (HERE / name).write_bytes(data)
    print(f"wrote {name} ({len(data)} bytes)")


def http_bytes(response: httpx.Response) -> tuple[bytes, bytes]:
    """Request and response as HTTP/1.1 text, headers as they were on the wire.

    httpx does not keep the raw bytes; start lines are rebuilt, header fields
    (names in their original case, order kept) and bodies are exact.
    """
    req = response.request
    head = f"{req.method} {req.url.raw_path.decode()} HTTP/1.1\r\n".encode()
    head += b"".join(k + b": " + v + b"\r\n" for k, v in req.headers.raw)
    request = head + b"\r\n" + req.content
    status = f"{response.http_version} {response.status_code} {response.reason_phrase}\r\n"
    head = status.encode() + b"".join(k + b": " + v + b"\r\n" for k, v in response.headers.raw)
    return request, head + b"\r\n" + response.content


def main() -> None:
    with (
        PresenceServer() as server,
        SipPeer(server.sip_address) as alice,
        SipPeer(server.sip_address) as bob,
    ):
        # PUBLISH
        call_id = new_token()
        body = PIDF.format(presentity=ALICE, note="at my desk")
        save(
            "01-publish.txt",
            alice.send_request(
                PUBLISH, body, presentity=ALICE, tag=new_token(), call_id=call_id, expires=3600
            ),
        )
        save("02-publish-200.txt", alice.response(call_id, "PUBLISH").raw)

        # SUBSCRIBE presence from the watcher, no rule yet
        bob_call = new_token()
        save(
            "03-subscribe.txt",
            bob.send_request(
                SUBSCRIBE,
                presentity=ALICE,
                subscriber=BOB,
                tag=new_token(),
                call_id=bob_call,
                event="presence",
                accept="application/pidf+xml",
            ),
        )
        save("04-subscribe-200.txt", bob.response(bob_call, "SUBSCRIBE").raw)
        save("05-notify-pending.txt", bob.notify(bob_call).raw)

        # XCAP: allow the watcher
        url = f"{server.xcap_root}/pres-rules/users/sip:{ALICE}/index"
        headers = {"Content-Type": "application/auth-policy+xml"}
        started = time.monotonic()
        put = httpx.put(
            url, content=PRES_RULES.format(watcher=BOB, handling="allow"), headers=headers
        )
        answered = time.monotonic()
        active = bob.notify(bob_call)
        print(
            f"PUT answered in {1000 * (answered - started):.1f} ms, first NOTIFY"
            f" {1000 * (time.monotonic() - answered):.1f} ms later"
        )
        request, response = http_bytes(put)
        save("06-xcap-put-allow.http", request)
        save("07-xcap-put-allow-200.http", response)
        save("08-notify-active.txt", active.raw)
        bob.drain(0.5)
        again = [
            m
            for m in bob.received
            if m is not active
            and m.method == "NOTIFY"
            and (m.header("Subscription-State") or "").startswith("active")
        ]
        for index, message in enumerate(again, start=1):
            save(f"09-notify-active-again-{index}.txt", message.raw)

        # presence.winfo from the presentity
        winfo_call = new_token()
        save(
            "10-subscribe-winfo.txt",
            alice.send_request(
                SUBSCRIBE,
                presentity=ALICE,
                subscriber=ALICE,
                tag=new_token(),
                call_id=winfo_call,
                event="presence.winfo",
                accept="application/watcherinfo+xml",
            ),
        )
        save("11-subscribe-winfo-200.txt", alice.response(winfo_call, "SUBSCRIBE").raw)
        save("12-notify-winfo.txt", alice.notify(winfo_call).raw)

        # XCAP: block the watcher
        put = httpx.put(
            url, content=PRES_RULES.format(watcher=BOB, handling="block"), headers=headers
        )
        request, response = http_bytes(put)
        save("13-xcap-put-block.http", request)
        save("14-xcap-put-block-200.http", response)
        terminated = bob.wait_for(
            lambda m: (
                m.method == "NOTIFY"
                and (m.header("Subscription-State") or "").startswith("terminated")
            )
        )
        save("15-notify-terminated.txt", terminated.raw)
        alice.drain(0.5)
        bob.drain(0.2)

        # SIP over the TCP port
        options = format_request(
            OPTIONS,
            server=f"{server.host}:{server.port}",
            transport="TCP",
            local=f"{server.host}:9",
            tag=new_token(),
            call_id=new_token(),
        )
        save("16-options-tcp.txt", options)
        save("17-options-tcp-200.txt", exchange_tcp(server.sip_address, options).raw)

        for name, peer in (("alice", alice), ("bob", bob)):
            lines = []
            for direction, data in peer.transcript:
                first = SipMessage.parse(data).start_line
                lines.append(f"{direction:8} {first}")
            save(f"transcript-{name}.txt", ("\n".join(lines) + "\n").encode())


if __name__ == "__main__":
    main()
