"""The HTTP edge made safe to expose, end to end: HTTPS, client certificates, CORS,
per-application rate limits and hashed or environment passwords — against the
real adapter process, the real Kamailio and real Bayeux clients.

Certificates come from a CA this module makes (tests/certificates.py).  The
CometD JavaScript client trusts it through ``NODE_EXTRA_CA_CERTS``, httpx
through an ``ssl.SSLContext``.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as websocket_connect

from tests.adapter_process import AdapterProcess, AppAccount
from tests.certificates import TestCA
from tests.integration.conftest import AdapterFactory
from tests.integration.test_rest_watcher import activity, error_id, eventually
from tests.presence_server import PresenceServer
from tests.rawsip import new_token

pytestmark = pytest.mark.integration

RUN = new_token()[:8]
ORIGIN = "https://app.example"
SCENARIOS = ("rest", "long-polling", "websocket", "passwords")

ALICE_PASSWORD = "alice-secret"
BOB_PASSWORD = "bob-correct-horse"  # given to the adapter as an Argon2 hash only
CAROL_PASSWORD = "carol-battery-staple"  # given to the adapter in its environment only
CAROL_ENV = "CAROL_APP_SECRET"


def alice(scenario: str) -> str:
    return f"sip:alice-{scenario}-{RUN}@example.com"


def bob(scenario: str) -> str:
    return f"sip:bob-{scenario}-{RUN}@example.com"


def hash_with_cli(password: str) -> str:
    """``presence-adapter hash-password``, the way an operator makes a hash."""
    done = subprocess.run(
        [sys.executable, "-m", "adapter", "hash-password"],
        input=password + "\n", capture_output=True, text=True, timeout=30, check=True,
    )
    return done.stdout.strip()


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def https(adapter_factory: AdapterFactory, ca: TestCA) -> AdapterProcess:
    """HTTPS, CORS for ORIGIN, and the three kinds of secret: alice-app's in the
    file, bob-app's as a hash, carol-app's in the environment."""
    server = ca.server()
    accounts = [
        AppAccount("alice-app", ALICE_PASSWORD, tuple(alice(s) for s in SCENARIOS)),
        AppAccount("bob-app", BOB_PASSWORD, tuple(bob(s) for s in SCENARIOS),
                   password_hash=hash_with_cli(BOB_PASSWORD)),
        AppAccount("carol-app", CAROL_PASSWORD, (f"sip:carol-{RUN}@example.com",),
                   password_env=CAROL_ENV),
    ]
    settings = {"http": {"tls_cert": str(server.cert), "tls_key": str(server.key),
                         "cors_origins": [ORIGIN]}}
    return adapter_factory(accounts, settings=settings, tls=ca.client_context(),
                    env={CAROL_ENV: CAROL_PASSWORD})


def subscribe(watcher: httpx.Client, presentity: str, correlator: str, endpoint: str) -> None:
    response = watcher.post("/rest/presence/subscription", json={
        "application": "security test", "presentity": presentity, "attributes": ["Activity"],
        "reference": {"correlator": correlator, "endpoint": endpoint,
                      "interfaceName": "PresenceNotification"},
    })
    assert response.status_code == 204, response.text


def authorize_when_asked(presentity: httpx.Client, watcher: str) -> None:
    def asked() -> bool:
        response = presentity.get("/rest/presence/subscription", params={"status": "open"})
        assert response.status_code == 200, response.text
        return any(s["watcher"] == watcher for s in response.json()["result"])

    eventually(asked, what=f"{watcher} among the open subscriptions")
    response = presentity.put("/rest/presence/subscription", json={
        "watcher": watcher, "decisions": [{"presenceAttribute": "Activity", "decision": True}],
    })
    assert response.status_code == 204, response.text


def pair(adapter: AdapterProcess, scenario: str) -> tuple[httpx.Client, httpx.Client]:
    return (adapter.client("alice-app", alice(scenario)), adapter.client("bob-app", bob(scenario)))


# -- HTTPS -------------------------------------------------------------------------


def test_publish_and_get_user_presence_over_https(https: AdapterProcess) -> None:
    assert https.url.startswith("https://")
    a, b = pair(https, "rest")
    with a, b:
        subscribe(b, alice("rest"), f"rest-{RUN}", "/bayeux/bob-app/rest")
        authorize_when_asked(a, bob("rest"))
        response = a.post("/rest/presence", json={"presence": [activity("Meeting")]})
        assert response.status_code == 204, response.text

        def seen() -> Any:
            query = json.dumps({"presentity": alice("rest"), "attributes": ["Activity"]})
            response = b.get("/rest/presence", params={"query": query})
            return response.status_code == 200 and response.json()["result"]

        result = eventually(seen, what="alice's Meeting seen by bob")
        assert [r["typeAndValue"] for r in result] == [activity("Meeting")["typeAndValue"]]


@pytest.mark.parametrize("transport", ["long-polling", "websocket"])
def test_bayeux_over_https_with_the_cometd_client(
    https: AdapterProcess, ca: TestCA, bayeux_listener: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch, transport: str,
) -> None:
    # Node trusts the test's CA; bob-app handshakes with the password whose hash
    # alone the adapter holds.
    monkeypatch.setenv("NODE_EXTRA_CA_CERTS", str(ca.cert))
    listener = bayeux_listener(https.url + "/cometd", "bob-app", BOB_PASSWORD, transport)
    a, b = pair(https, transport)
    channel = f"/bayeux/bob-app/{transport}"
    with a, b:
        response = b.post("/rest/presence/notification", json={
            "presentity": alice(transport), "checkImmediate": True, "count": 5,
            "reference": {"correlator": f"{transport}-{RUN}", "endpoint": channel},
        })
        assert response.status_code == 201, response.text
        # The Bayeux server is announced with the scheme it is served on.
        assert response.headers["Location"] == https.url + "/cometd"
        authorize_when_asked(a, bob(transport))
        response = a.post("/rest/presence", json={"presence": [activity("Away")]})
        assert response.status_code == 204, response.text

        def away(message: dict[str, Any]) -> bool:
            changed = message["data"].get("statusChanged", {}).get("changedAttributes", [])
            return message["channel"] == channel and any(
                c["typeAndValue"] == activity("Away")["typeAndValue"] for c in changed
            )

        listener.wait_for(away, timeout=15)


def test_plain_http_on_the_tls_port_is_not_answered_as_https(https: AdapterProcess) -> None:
    with socket.create_connection((https.host, https.http_port), timeout=10) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        received = b""
        try:
            while chunk := sock.recv(4096):
                received += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    # Nothing, or a TLS alert record (content type 21): never an HTTP answer.
    assert not received.startswith(b"HTTP/"), received[:80]
    assert b'"status"' not in received
    assert received == b"" or received[0] == 21, received[:80]
    with pytest.raises(httpx.TransportError):
        httpx.get(https.url.replace("https://", "http://") + "/health", timeout=10)


def test_client_certificates_are_required_when_tls_client_ca_is_set(
    adapter_factory: AdapterFactory, ca: TestCA, tmp_path: Path
) -> None:
    server = ca.server("server-mtls")
    client = ca.client("client-app")
    stranger_ca = TestCA(tmp_path / "stranger", name="another CA")
    stranger = stranger_ca.client("stranger")
    accounts = [AppAccount("alice-app", ALICE_PASSWORD, (f"sip:alice-mtls-{RUN}@example.com",))]
    settings = {"http": {"tls_cert": str(server.cert), "tls_key": str(server.key),
                         "tls_client_ca": str(ca.cert)}}
    adapter = adapter_factory(accounts, settings=settings, tls=ca.client_context(client))

    with adapter.client("alice-app") as app:
        response = app.post("/rest/presence", json={"presence": [activity("Busy")]})
        assert response.status_code == 204, response.text

    trusting = ca.client_context()  # trusts the server, presents nothing
    presenting_stranger = ca.client_context()
    presenting_stranger.load_cert_chain(stranger.cert, stranger.key)
    for context in (trusting, presenting_stranger):
        with pytest.raises(httpx.TransportError):
            httpx.get(adapter.url + "/health", verify=context, timeout=10)


# -- browsers ----------------------------------------------------------------------


def preflight(adapter: AdapterProcess, origin: str, path: str = "/rest/presence") -> httpx.Response:
    with adapter.client() as anonymous:
        return anonymous.options(path, headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        })


def test_cors_preflight_answered_for_listed_origins_only(https: AdapterProcess) -> None:
    for path in ("/rest/presence", "/rest/presence/subscription", "/cometd"):
        allowed = preflight(https, ORIGIN, path)
        assert allowed.status_code == 200, allowed.text
        assert allowed.headers["Access-Control-Allow-Origin"] == ORIGIN
        headers = {h.strip().lower()
                   for h in allowed.headers["Access-Control-Allow-Headers"].split(",")}
        assert {"authorization", "content-type"} <= headers
        assert "POST" in allowed.headers["Access-Control-Allow-Methods"]

    refused = preflight(https, "https://evil.example")
    assert refused.status_code >= 400
    assert "Access-Control-Allow-Origin" not in refused.headers

    # Actual requests: the listed origin may read the answer, errors included.
    with https.client("alice-app", alice("rest"), headers={"Origin": ORIGIN}) as app:
        response = app.post("/rest/presence", json={"presence": [activity("Busy")]})
        assert response.status_code == 204, response.text
        assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
    with https.client(headers={"Origin": ORIGIN}) as anonymous:
        response = anonymous.post("/rest/presence", json={"presence": []})
        assert response.status_code == 401
        assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
    with https.client("alice-app", headers={"Origin": "https://evil.example"}) as app:
        response = app.get("/health")
        assert "Access-Control-Allow-Origin" not in response.headers


def test_websocket_upgrades_from_unlisted_origins_are_refused(
    https: AdapterProcess, ca: TestCA
) -> None:
    url = https.url.replace("https://", "wss://") + "/cometd"
    with pytest.raises(InvalidStatus) as refused:
        websocket_connect(url, origin="https://evil.example", ssl=ca.client_context(),  # type: ignore[arg-type]
                          open_timeout=10)
    assert refused.value.response.status_code == 403
    # A listed page, the adapter's own (its console), or a client that is no browser.
    for origin in (ORIGIN, https.url, None):
        with websocket_connect(url, origin=origin, ssl=ca.client_context(),  # type: ignore[arg-type]
                               open_timeout=10) as ws:
            ws.send(json.dumps([{"channel": "/meta/handshake", "version": "1.0",
                                 "supportedConnectionTypes": ["websocket"]}]))
            (reply,) = json.loads(ws.recv(timeout=10))
            assert reply["channel"] == "/meta/handshake"  # answered (refused: no credentials)


# -- secrets -----------------------------------------------------------------------


def test_hashed_and_environment_passwords_log_in_and_wrong_ones_do_not(
    https: AdapterProcess,
) -> None:
    for account, password in (("bob-app", BOB_PASSWORD), ("carol-app", CAROL_PASSWORD)):
        for _ in range(3):  # the first verifies the hash, the next ones are remembered
            with https.client(auth=(account, password)) as app:
                response = app.get("/rest/presence/subscription", params={"status": "open"})
                assert response.status_code == 200, (account, response.text)
        for wrong in (password + "x", password[:-1], "", ALICE_PASSWORD):
            with https.client(auth=(account, wrong)) as app:
                response = app.get("/rest/presence/subscription", params={"status": "open"})
                assert (response.status_code, error_id(response)) == (401, "POL0001"), account
                assert response.headers["WWW-Authenticate"].startswith("Basic ")
    with https.client(auth=("nobody-app", BOB_PASSWORD)) as stranger:
        response = stranger.get("/rest/presence/subscription", params={"status": "open"})
        assert response.status_code == 401


# -- rate limits -------------------------------------------------------------------


def test_a_flooding_application_gets_429_while_another_is_served(
    adapter_factory: AdapterFactory,
) -> None:
    flood = AppAccount("flood-app", "flood-secret", (f"sip:flood-{RUN}@example.com",))
    quiet = AppAccount("quiet-app", "quiet-secret", (f"sip:quiet-{RUN}@example.com",))
    burst = 10
    adapter = adapter_factory([flood, quiet], settings={
        "limits": {"requests_per_second": 0.5, "burst": burst},
    })
    body = {"presence": [activity("Busy")]}

    async def run() -> tuple[list[httpx.Response], list[httpx.Response]]:
        async with adapter.async_client("flood-app") as f, adapter.async_client("quiet-app") as q:
            flooding = [f.post("/rest/presence", json=body) for _ in range(60)]
            # Within its own burst: none of these may be refused, however hard
            # flood-app pushes at the same moment.
            serving = [q.post("/rest/presence", json=body) for _ in range(burst)]
            answers = await asyncio.gather(*flooding, *serving)
            return list(answers[:60]), list(answers[60:])

    flooded, served = asyncio.run(run())
    assert [r.status_code for r in served] == [204] * burst, [r.text for r in served]
    refused = [r for r in flooded if r.status_code == 429]
    assert refused, "the flood was never limited"
    assert {r.status_code for r in flooded} <= {204, 429}
    for response in refused:
        assert error_id(response) == "POL0001"
        assert response.json()["requestError"]["policyException"]["variables"] == [
            "request rate limit exceeded"
        ]
        assert int(response.headers["Retry-After"]) >= 1

    # After the wait it names, the flooding application is served again.
    time.sleep(int(refused[-1].headers["Retry-After"]))
    with adapter.client("flood-app") as f:
        assert f.post("/rest/presence", json=body).status_code == 204


def test_no_cors_headers_without_cors_origins(adapter_factory: AdapterFactory) -> None:
    account = AppAccount("plain-app", "plain-secret", (f"sip:plain-{RUN}@x.example",))
    adapter = adapter_factory([account])
    response = preflight(adapter, ORIGIN)
    assert "Access-Control-Allow-Origin" not in response.headers
    with adapter.client("plain-app", headers={"Origin": ORIGIN}) as app:
        response = app.get("/rest/presence/subscription", params={"status": "open"})
        assert response.status_code == 200
        assert not [h for h in response.headers if h.lower().startswith("access-control-")]


# -- start-up refusals ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "make"),
    [
        ("http.tls_cert", lambda d, s: {"tls_cert": str(d / "missing.pem"), "tls_key": str(s.key)}),
        ("http.tls_key", lambda d, s: {"tls_cert": str(s.cert), "tls_key": str(s.cert)}),
        ("http.tls_client_ca", lambda d, s: {
            "tls_cert": str(s.cert), "tls_key": str(s.key), "tls_client_ca": str(s.key)}),
    ],
)
def test_bad_tls_files_stop_the_adapter_with_one_line(
    presence_server: PresenceServer, ca: TestCA, tmp_path: Path, key: str,
    make: Callable[[Path, Any], dict[str, str]],
) -> None:
    server = ca.server("server-bad")
    adapter = AdapterProcess.for_server(
        tmp_path, presence_server, [AppAccount("a-app", "a", ("sip:a@example.com",))],
        settings={"http": make(tmp_path, server)},
    )
    done = adapter.run_to_exit()
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert f": {key}: " in line


def test_an_unset_password_env_stops_the_adapter_with_one_line(
    presence_server: PresenceServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NO_SUCH_SECRET_FOR_TESTS", raising=False)
    adapter = AdapterProcess.for_server(
        tmp_path, presence_server,
        [AppAccount("a-app", "a", ("sip:a@example.com",), password_env="NO_SUCH_SECRET_FOR_TESTS")],
    )
    done = adapter.run_to_exit()
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.endswith(
        "accounts[0].password_env: environment variable NO_SUCH_SECRET_FOR_TESTS is not set"
    )

