"""The SIP edge secured, end to end: TLS, mutual TLS and digest against the real Kamailio.

A presence server of this module's own runs the bundled configuration in its
guarded modes (``conf/kamailio/run --tls-port … --tls-ca … --auth …``): SIP
over TLS and XCAP over HTTPS on its TLS port, a client certificate required,
and every PUBLISH (401), SUBSCRIBE (407) and XCAP request (401) challenged
for the one gateway account.  Adapter processes (``presence-adapter serve``)
reach it over TLS only; a real CometD client receives the notifications.

What it proves: the gateway's credentials (``[sip] username/password``,
``[xcap] username/password``) answer the challenges; NOTIFYs come back over
the TLS connection the adapter opened (the adapter has no TLS server, so a
delivered notification is the proof); wrong credentials end in one 502 naming
the failure and no retries; a server certificate from another CA, or no
client certificate, means no service rather than a plain link; a sips: server
without TLS settings stops start-up with one line.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.adapter_process import AdapterProcess, AppAccount, config_template
from tests.integration.conftest import BayeuxListener
from tests.polling import eventually
from tests.presence_server import PresenceServer
from tests.rawsip import new_token

pytestmark = pytest.mark.integration

RUN = new_token()[:8]
PASSWORD = "secret"
GATEWAY = "gateway"
GATEWAY_SECRET = "gw-" + new_token()[:12]


def alice(scenario: str) -> str:
    return f"sip:alice-{scenario}-{RUN}@example.com"


def bob(scenario: str) -> str:
    return f"sip:bob-{scenario}-{RUN}@example.com"


@pytest.fixture(scope="module")
def guarded() -> Iterator[PresenceServer]:
    """The bundled server with TLS (client certificates required) and digest authentication."""
    server = PresenceServer(tls=True, mutual=True, auth=(GATEWAY, GATEWAY_SECRET))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def settings(
    server: PresenceServer,
    *,
    password: str = GATEWAY_SECRET,
    xcap_password: str = GATEWAY_SECRET,
    ca: Path | None = None,
    client_certificate: bool = True,
) -> dict[str, dict[str, object]]:
    certificates = server.certificates
    assert certificates is not None
    sip: dict[str, object] = {
        "tls_ca": str(ca or certificates.ca_pem),
        "username": GATEWAY,
        "password": password,
        # Probes (and the canary subscription) every half second: the
        # no-retry test waits for two of them.
        "keepalive": 0.5,
        "request_timeout": 5,
    }
    if client_certificate:
        sip["tls_cert"] = str(certificates.client_cert)
        sip["tls_key"] = str(certificates.client_key)
    return {"sip": sip, "xcap": {"username": GATEWAY, "password": xcap_password}}


Start = Callable[..., AdapterProcess]


@pytest.fixture
def start(guarded: PresenceServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Start]:
    """``start(scenario, healthy=True, **settings)``: an adapter over TLS for that scenario's
    alice-app and bob-app, in front of the guarded server."""
    started: list[AdapterProcess] = []

    def run(scenario: str, *, healthy: bool = True, **options: Any) -> AdapterProcess:
        adapter = AdapterProcess.for_server(
            tmp_path_factory.mktemp("adapter"),
            guarded,
            [
                AppAccount("alice-app", PASSWORD, (alice(scenario),)),
                AppAccount("bob-app", PASSWORD, (bob(scenario),)),
            ],
            sip_server=guarded.sips_uri,
            xcap_root=guarded.https_xcap_root,
            transport="tls",
            settings=settings(guarded, **options),
        )
        started.append(adapter)
        adapter.start(healthy=healthy)
        return adapter

    yield run
    for adapter in started:
        adapter.stop()


def activity(value: str) -> dict[str, Any]:
    return {"typeAndValue": {"unionElement": "Activity", "activity": value}}


def challenges(server: PresenceServer, what: str) -> list[str]:
    """The server's log lines for challenges it sent, containing ``what``."""
    return [
        line for line in server.log_path.read_text(errors="replace").splitlines()
        if "auth: challenged" in line and what in line
    ]


def service_error(response: httpx.Response) -> str:
    exception = response.json()["requestError"]["serviceException"]
    assert exception["messageId"] == "SVC0001", response.text
    return str(exception["variables"][0])


def test_over_mutual_tls_with_digest_everything_works_and_notifies_reach_bayeux(
    start: Start, guarded: PresenceServer, bayeux_listener: Callable[..., BayeuxListener]
) -> None:
    adapter = start("works")
    a, b = alice("works"), bob("works")
    listener = bayeux_listener(adapter.url + "/cometd", "bob-app", PASSWORD)
    with adapter.client("alice-app") as presentity, adapter.client("bob-app") as watcher:
        response = presentity.post("/rest/presence", json={"presence": [activity("Busy")]})
        assert response.status_code == 204, response.text
        subscription = "/bayeux/bob-app/works/subscription"
        response = watcher.post("/rest/presence/subscription", json={
            "application": "buddies", "presentity": a, "attributes": ["Activity"],
            "reference": {"correlator": "works-sub", "endpoint": subscription,
                          "interfaceName": "PresenceNotification"},
        })
        assert response.status_code == 204, response.text

        def asking() -> bool:
            answer = presentity.get("/rest/presence/subscription", params={"status": "open"})
            assert answer.status_code == 200, answer.text
            return any(s["watcher"] == b for s in answer.json()["result"])

        eventually(asking, what="bob among the open subscriptions (winfo NOTIFY over TLS)")
        # XCAP over HTTPS, digest-authenticated.
        response = presentity.put("/rest/presence/subscription", json={
            "watcher": b, "decisions": [{"presenceAttribute": "Activity", "decision": True}],
        })
        assert response.status_code == 204, response.text
        listener.wait_for(lambda m: m["channel"] == subscription
                          and "notifySubscription" in m["data"])

        notifications = "/bayeux/bob-app/works/notifications"
        response = watcher.post("/rest/presence/notification", json={
            "presentity": a, "checkImmediate": True, "count": 5,
            "reference": {"correlator": "works-n", "endpoint": notifications},
        })
        assert response.status_code == 201, response.text
        response = presentity.post("/rest/presence", json={"presence": [activity("Away")]})
        assert response.status_code == 204, response.text

        def status(value: str) -> Callable[[dict[str, Any]], bool]:
            return lambda m: m["channel"] == notifications and any(
                c["typeAndValue"].get("activity") == value
                for c in m["data"].get("statusChanged", {}).get("changedAttributes", [])
            )

        listener.wait_for(status("Busy"))
        listener.wait_for(status("Away"))
    # The server did demand credentials, of every kind (401 to PUBLISH, 407
    # to SUBSCRIBE, 401 to XCAP), and everything above was answered.
    (publish, *_) = challenges(guarded, f"PUBLISH of {a}")
    match = re.search(r"from (\S+) ", publish)
    assert match is not None, publish
    connection = match.group(1)
    assert challenges(guarded, f"SUBSCRIBE of sip:presence-adapter-canary@{guarded.host} "
                                 f"from {connection} ")
    assert challenges(guarded, f"XCAP GET /xcap-root/pres-rules/users/{a}/index")
    # Once challenged, requests carry the credentials up front — for every
    # identity (the gateway's account is one) and in dialogs too (the
    # canary's refreshes, every 0.5 s) — and they are accepted: a refusal is
    # logged with the user name the request carried.  One is expected: this
    # server challenges SUBSCRIBE with 407 and PUBLISH with 401, and the
    # first request of the second kind carries only the first kind's answer.
    refused = challenges(guarded, f"from {connection} (user {GATEWAY})")
    assert len(refused) <= 1, refused


def test_a_wrong_sip_password_is_one_502_naming_authentication_and_never_retried(
    start: Start, guarded: PresenceServer
) -> None:
    adapter = start("wrong", password="not-the-password")
    a = alice("wrong")
    with adapter.client("alice-app") as presentity:
        response = presentity.post("/rest/presence", json={"presence": [activity("Busy")]})
    assert response.status_code == 502, response.text
    assert "PUBLISH failed: authentication failed: the presence server refused our " \
        "credentials (401)" in service_error(response)
    # One PUBLISH without credentials, one with the wrong ones: then nothing.
    # The canary subscription, re-tried at each keepalive (0.5 s) over the
    # same connection, shows time passing on that adapter's side.
    (first, second) = challenges(guarded, f"PUBLISH of {a}")
    match = re.search(r"from (\S+) ", second)
    assert match is not None, second
    connection = match.group(1)
    canary = f"SUBSCRIBE of sip:presence-adapter-canary@{guarded.host} from {connection} "
    seen = len(challenges(guarded, canary))
    eventually(lambda: len(challenges(guarded, canary)) >= seen + 4,
               what="two more canary SUBSCRIBEs challenged")
    assert len(challenges(guarded, f"PUBLISH of {a}")) == 2
    assert "user gateway" in second  # the second carried the gateway's credentials


def test_a_wrong_xcap_password_is_a_502_naming_the_refusal(start: Start) -> None:
    adapter = start("xcap", xcap_password="not-the-password")
    with adapter.client("alice-app") as presentity:
        response = presentity.put("/rest/presence/subscription", json={
            "watcher": bob("xcap"),
            "decisions": [{"presenceAttribute": "Activity", "decision": True}],
        })
    assert response.status_code == 502, response.text
    assert "401 Unauthorized" in service_error(response)


@pytest.mark.parametrize("fault", ["other CA", "no client certificate"])
def test_a_tls_link_that_cannot_be_verified_gives_no_service_never_a_plain_link(
    start: Start, guarded: PresenceServer, fault: str
) -> None:
    certificates = guarded.certificates
    assert certificates is not None
    if fault == "other CA":
        adapter = start("refused", healthy=False, ca=certificates.other_ca())
    else:
        adapter = start("refused", healthy=False, client_certificate=False)
    with adapter.client("alice-app") as presentity:
        health = presentity.get("/health")
        assert health.status_code == 503, health.text
        assert health.json()["sip"]["reachable"] is False
        response = presentity.post("/rest/presence", json={"presence": [activity("Busy")]})
        assert response.status_code in (502, 504), response.text
    # The reason is in the adapter's log.
    reason = "CERTIFICATE_VERIFY_FAILED" if fault == "other CA" else "CERTIFICATE_REQUIRED"
    eventually(lambda: reason in adapter.log_tail(200), what=f"{reason} in the adapter's log")
    # Nothing reached the SIP layer of the server: no request was challenged.
    assert not challenges(guarded, alice("refused"))


def test_a_sips_server_without_working_tls_settings_stops_start_up_with_one_line(
    guarded: PresenceServer, tmp_path: Path
) -> None:
    accounts = [AppAccount("alice-app", PASSWORD, (alice("startup"),))]
    cases = {
        "none": ({}, "sip.tls_ca: missing (required for TLS"),
        "missing": ({"tls_ca": str(tmp_path / "nowhere.pem")}, "sip.tls_ca: "),
    }
    for name, (sip, problem) in cases.items():
        template = config_template(
            accounts, sip_server=guarded.sips_uri, xcap_root=guarded.https_xcap_root,
            transport="tls", settings={"sip": sip},
        )
        directory = tmp_path / name
        directory.mkdir()
        result = AdapterProcess(directory, template).run_to_exit()
        assert result.returncode == 2, result
        (line,) = result.stderr.splitlines()
        assert problem in line, line
