"""The bundled presence server (conf/kamailio/) does what the adapter relies on.

Driven with the independent raw SIP peer (tests/rawsip.py) and httpx for
XCAP, against a real Kamailio started by the ``presence_server`` fixture.
Every test uses its own presentity and watcher names, so the tests share one
server with the rest of the suite without seeing each other's state.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from lxml import etree

from tests.certificates import Certificates
from tests.presence_server import RUN_SCRIPT, PresenceServer
from tests.rawsip import (
    PUBLISH,
    SUBSCRIBE,
    SipMessage,
    SipPeer,
    exchange_tcp,
    format_request,
    new_token,
)

pytestmark = pytest.mark.integration

OPTIONS = """
    OPTIONS sip:{server} SIP/2.0
    Via: SIP/2.0/{transport} {local};branch={branch};rport
    Max-Forwards: 70
    From: <sip:probe@example.com>;tag={tag}
    To: <sip:{server}>
    Call-ID: {call_id}
    CSeq: 1 OPTIONS
"""


# RFC 6665 §4.1.2.3: unsubscribing is a refresh (in-dialog SUBSCRIBE) with
# Expires 0.
UNSUBSCRIBE = """
    SUBSCRIBE {remote_target} SIP/2.0
    Via: SIP/2.0/UDP {local};branch={branch};rport
    Max-Forwards: 70
    From: <sip:{subscriber}>;tag={tag}
    To: <sip:{presentity}>;tag={remote_tag}
    Call-ID: {call_id}
    CSeq: 2 SUBSCRIBE
    Contact: <sip:{local}>
    Event: presence
    Expires: 0
"""

MESSAGE = """
    MESSAGE sip:{presentity} SIP/2.0
    Via: SIP/2.0/UDP {local};branch={branch};rport
    Max-Forwards: 70
    From: <sip:probe@example.com>;tag={tag}
    To: <sip:{presentity}>
    Call-ID: {call_id}
    CSeq: 1 MESSAGE
    Content-Type: text/plain
"""

PIDF = """<?xml version="1.0" encoding="UTF-8"?>
<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:{presentity}">
  <tuple id="t1">
    <status><basic>open</basic></status>
    <note>{note}</note>
  </tuple>
</presence>
"""

# RFC 5025 §3.2.1 sub-handling inside an RFC 4745 common-policy rule.
PRES_RULES = """<?xml version="1.0" encoding="UTF-8"?>
<cr:ruleset xmlns="urn:ietf:params:xml:ns:pres-rules"
    xmlns:cr="urn:ietf:params:xml:ns:common-policy">
  <cr:rule id="rule-1">
    <cr:conditions>
      <cr:identity><cr:one id="sip:{watcher}"/></cr:identity>
    </cr:conditions>
    <cr:actions><sub-handling>{handling}</sub-handling></cr:actions>
    <cr:transformations>
      <provide-services><all-services/></provide-services>
      <provide-persons><all-persons/></provide-persons>
      <provide-devices><all-devices/></provide-devices>
      <provide-all-attributes/>
    </cr:transformations>
  </cr:rule>
</cr:ruleset>
"""

PIDF_NS = "urn:ietf:params:xml:ns:pidf"
WINFO_NS = "urn:ietf:params:xml:ns:watcherinfo"


@dataclass
class Pair:
    """A presentity and a watcher, each with its own UDP endpoint."""

    presentity: str
    watcher: str
    presentity_peer: SipPeer
    watcher_peer: SipPeer


@pytest.fixture
def pair(presence_server: PresenceServer) -> Iterator[Pair]:
    suffix = new_token()
    with SipPeer(presence_server.sip_address) as a, SipPeer(presence_server.sip_address) as w:
        yield Pair(f"alice-{suffix}@example.com", f"bob-{suffix}@example.com", a, w)


def pres_rules_url(server: PresenceServer, presentity: str) -> str:
    return f"{server.xcap_root}/pres-rules/users/sip:{presentity}/index"


def put_rules(
    server: PresenceServer, presentity: str, watcher: str, handling: str
) -> httpx.Response:
    return httpx.put(
        pres_rules_url(server, presentity),
        content=PRES_RULES.format(watcher=watcher, handling=handling),
        headers={"Content-Type": "application/auth-policy+xml"},
        timeout=5.0,
    )


def publish(peer: SipPeer, presentity: str, note: str, expires: int = 3600) -> SipMessage:
    return peer.request(
        PUBLISH,
        PIDF.format(presentity=presentity, note=note),
        call_id=new_token(),
        method="PUBLISH",
        presentity=presentity,
        tag=new_token(),
        expires=expires,
    )


def subscribe(
    peer: SipPeer, presentity: str, subscriber: str, event: str, accept: str
) -> tuple[str, SipMessage]:
    call_id = new_token()
    response = peer.request(
        SUBSCRIBE,
        call_id=call_id,
        method="SUBSCRIBE",
        presentity=presentity,
        subscriber=subscriber,
        tag=new_token(),
        event=event,
        accept=accept,
    )
    return call_id, response


def notify_in_state(peer: SipPeer, call_id: str, state: str) -> SipMessage:
    """The next NOTIFY of ``call_id`` whose Subscription-State value is ``state``.

    Earlier NOTIFYs in other states are skipped: the server may send the
    same state more than once (an allow rule usually yields two NOTIFYs).
    """
    return peer.wait_for(
        lambda m: (
            not m.is_response
            and m.method == "NOTIFY"
            and m.call_id == call_id
            and (m.header("Subscription-State") or "").split(";")[0] == state
        ),
    )


def test_options_over_udp_is_answered_200(presence_server: PresenceServer) -> None:
    with SipPeer(presence_server.sip_address) as peer:
        call_id = new_token()
        peer.send_request(
            OPTIONS,
            server=f"{presence_server.host}:{presence_server.port}",
            transport="UDP",
            tag=new_token(),
            call_id=call_id,
        )
        reply = peer.response(call_id, "OPTIONS")
    assert reply.status == 200
    assert {m.strip() for m in reply.require("Allow").split(",")} >= {"PUBLISH", "SUBSCRIBE"}


def test_tcp_port_accepts_sip(presence_server: PresenceServer) -> None:
    call_id = new_token()
    request = format_request(
        OPTIONS,
        server=f"{presence_server.host}:{presence_server.port}",
        transport="TCP",
        local=f"{presence_server.host}:9",
        tag=new_token(),
        call_id=call_id,
    )
    reply = exchange_tcp(presence_server.sip_address, request)
    assert reply.status == 200
    assert reply.call_id == call_id


def test_unsupported_method_gets_405_with_allow(pair: Pair) -> None:
    call_id = new_token()
    pair.watcher_peer.send_request(
        MESSAGE, "hello", presentity=pair.presentity, tag=new_token(), call_id=call_id
    )
    reply = pair.watcher_peer.response(call_id, "MESSAGE")
    assert reply.status == 405
    assert "SUBSCRIBE" in reply.require("Allow")


def test_publish_is_answered_200_with_sip_etag(pair: Pair) -> None:
    reply = publish(pair.presentity_peer, pair.presentity, "at my desk")
    assert reply.status == 200
    assert reply.require("SIP-ETag")
    assert reply.require("Expires") == "3600"


def test_publish_lifetime_is_capped_at_a_day(pair: Pair) -> None:
    # RFC 3903 §6 (step 5) lets the server grant less than the requested
    # expiration; conf/kamailio/kamailio.cfg allows at most 86400 s.
    reply = publish(pair.presentity_peer, pair.presentity, "long", expires=10 * 86400)
    assert reply.status == 200
    assert reply.require("Expires") == "86400"


def test_watcher_moves_from_pending_to_active_to_rejected(
    presence_server: PresenceServer, pair: Pair
) -> None:
    note = f"note {new_token()}"
    assert publish(pair.presentity_peer, pair.presentity, note).status == 200

    call_id, reply = subscribe(
        pair.watcher_peer, pair.presentity, pair.watcher, "presence", "application/pidf+xml"
    )
    assert reply.status == 200  # RFC 6665 §8.3.1 retired 202
    # No rule for this watcher yet: pending, and nothing about the presentity.
    pending = notify_in_state(pair.watcher_peer, call_id, "pending")
    assert pending.body == b""
    assert pending.require("Event") == "presence"
    # The NOTIFY belongs to the dialog the 200 created (RFC 6665 §4.1.2).
    assert pending.tag("From") == reply.tag("To")

    rules = put_rules(presence_server, pair.presentity, pair.watcher, "allow")
    assert rules.status_code == 200
    assert rules.headers["ETag"]

    active = notify_in_state(pair.watcher_peer, call_id, "active")
    assert active.require("Content-Type") == "application/pidf+xml"
    document = etree.fromstring(active.body)
    assert document.get("entity") == f"sip:{pair.presentity}"
    assert document.findtext(f"{{{PIDF_NS}}}tuple/{{{PIDF_NS}}}note") == note

    winfo_id, winfo_reply = subscribe(
        pair.presentity_peer,
        pair.presentity,
        pair.presentity,
        "presence.winfo",
        "application/watcherinfo+xml",
    )
    assert winfo_reply.status == 200
    winfo = pair.presentity_peer.notify(winfo_id)
    assert winfo.require("Content-Type") == "application/watcherinfo+xml"
    watchers = etree.fromstring(winfo.body).findall(f".//{{{WINFO_NS}}}watcher")
    assert [(w.text, w.get("status")) for w in watchers] == [(f"sip:{pair.watcher}", "active")]
    assert watchers[0].get("id") == call_id

    assert put_rules(presence_server, pair.presentity, pair.watcher, "block").status_code == 200
    terminated = notify_in_state(pair.watcher_peer, call_id, "terminated")
    assert terminated.require("Subscription-State") == "terminated;reason=rejected"


def test_in_dialog_subscribe_with_expires_0_ends_the_subscription(pair: Pair) -> None:
    tag = new_token()
    call_id = new_token()
    pair.watcher_peer.send_request(
        SUBSCRIBE,
        presentity=pair.presentity,
        subscriber=pair.watcher,
        tag=tag,
        call_id=call_id,
        event="presence",
        accept="application/pidf+xml",
    )
    reply = pair.watcher_peer.response(call_id, "SUBSCRIBE")
    assert reply.status == 200
    notify_in_state(pair.watcher_peer, call_id, "pending")

    # RFC 3261 §12.2.1.1: in-dialog requests go to the remote target, the
    # Contact of the 200.
    remote_target = reply.require("Contact").strip("<>")
    pair.watcher_peer.send_request(
        UNSUBSCRIBE,
        remote_target=remote_target,
        presentity=pair.presentity,
        subscriber=pair.watcher,
        tag=tag,
        remote_tag=reply.tag("To"),
        call_id=call_id,
    )
    assert pair.watcher_peer.response(call_id, "SUBSCRIBE").status == 200
    final = notify_in_state(pair.watcher_peer, call_id, "terminated")
    assert final.require("Subscription-State") == "terminated;reason=timeout"


def test_xcap_document_reads_back_byte_for_byte(
    presence_server: PresenceServer, pair: Pair
) -> None:
    put = put_rules(presence_server, pair.presentity, pair.watcher, "confirm")
    assert put.status_code == 200
    got = httpx.get(pres_rules_url(presence_server, pair.presentity), timeout=5.0)
    assert got.status_code == 200
    assert got.content == PRES_RULES.format(watcher=pair.watcher, handling="confirm").encode()
    assert got.headers["ETag"] == put.headers["ETag"]

    stale = httpx.put(
        pres_rules_url(presence_server, pair.presentity),
        content=PRES_RULES.format(watcher=pair.watcher, handling="allow"),
        headers={"Content-Type": "application/auth-policy+xml", "If-Match": '"stale"'},
        timeout=5.0,
    )
    assert stale.status_code == 412


def test_pres_rules_up_to_64_kb_are_stored_and_larger_ones_refused_at_once(
    presence_server: PresenceServer, pair: Pair
) -> None:
    # conf/kamailio: a larger TCP read buffer takes documents past 16 KB;
    # xcap_server copies a body through a fixed 64 KB buffer (measured), and
    # the config answers 413 instead of leaving the request unanswered.
    rule = PRES_RULES.split("<cr:rule ", 1)[1].split("</cr:rule>", 1)[0]
    head, tail = PRES_RULES.split("<cr:rule ", 1)[0], "</cr:ruleset>\n"

    def document(rules: int) -> bytes:
        body = "".join(
            "<cr:rule " + rule.replace("rule-1", f"rule-{i}").format(
                watcher=f"w{i}-{pair.watcher}", handling="allow"
            ) + "</cr:rule>"
            for i in range(rules)
        )
        return (head + body + tail).encode()

    url = pres_rules_url(presence_server, pair.presentity)
    headers = {"Content-Type": "application/auth-policy+xml"}
    fits = document(60)
    assert 16_384 < len(fits) < 65_000
    assert httpx.put(url, content=fits, headers=headers, timeout=5.0).status_code == 200
    assert httpx.get(url, timeout=5.0).content == fits
    too_big = document(200)
    assert len(too_big) > 65_535
    assert httpx.put(url, content=too_big, headers=headers, timeout=5.0).status_code == 413


def test_http_outside_xcap_root_is_404(presence_server: PresenceServer) -> None:
    reply = httpx.get(f"http://{presence_server.host}:{presence_server.port}/other", timeout=5.0)
    assert reply.status_code == 404


def test_run_check_validates_the_config(tmp_path: os.PathLike[str]) -> None:
    done = subprocess.run(
        [str(RUN_SCRIPT), "--dir", str(tmp_path), "--port", "5999", "--check"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert "config file ok" in done.stdout + done.stderr


def test_run_without_kamailio_fails_with_one_line(tmp_path: os.PathLike[str]) -> None:
    done = subprocess.run(
        [str(RUN_SCRIPT), "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "KAMAILIO": "/nonexistent/kamailio"},
    )
    assert done.returncode != 0
    assert done.stderr.count("\n") == 1
    assert "kamailio is not installed" in done.stderr


def test_run_check_validates_the_tls_and_auth_modes(tmp_path: Path) -> None:
    certificates = Certificates(tmp_path / "tls")
    tls = ["--tls-port", "5998", "--tls-cert", str(certificates.server_cert),
           "--tls-key", str(certificates.server_key)]
    done = subprocess.run(
        [str(RUN_SCRIPT), "--dir", str(tmp_path), "--port", "5999", *tls,
         "--tls-ca", str(certificates.ca_pem), "--auth", "gateway:secret", "--check"],
        capture_output=True, text=True, timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert "tls: 127.0.0.1 [127.0.0.1]:5998" in done.stdout + done.stderr


@pytest.mark.parametrize(
    ("arguments", "problem"),
    [
        (["--tls-port", "5998"], "--tls-port needs --tls-cert and --tls-key"),
        (["--tls-cert", "x.pem"], "--tls-cert, --tls-key and --tls-ca need --tls-port"),
        (["--auth", "gateway"], "--auth must be USER:PASSWORD, both non-empty"),
        (["--auth", 'a:"b'], "--auth must not contain quotes or backslashes"),
    ],
)
def test_run_refuses_unusable_tls_and_auth_arguments_with_one_line(
    tmp_path: Path, arguments: list[str], problem: str
) -> None:
    done = subprocess.run(
        [str(RUN_SCRIPT), "--dir", str(tmp_path), "--port", "5999", *arguments, "--check"],
        capture_output=True, text=True, timeout=30,
    )
    assert done.returncode == 2
    assert done.stderr == f"conf/kamailio/run: {problem}\n"
