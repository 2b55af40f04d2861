"""Operating the adapter: /metrics, json logs, /livez and /readyz, SIGTERM, the command line.

Real processes only: ``presence-adapter serve`` in a subprocess
(tests/adapter_process.py) in front of a real Kamailio; metrics are read with
prometheus_client's own parser; Bayeux is spoken over plain HTTP long-polling
where the test must see the held connect's answer, and by the CometD
JavaScript client where it must see notifications arrive.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from adapter.shutdown import STOP_BOUND
from tests.adapter_process import AdapterProcess, AppAccount
from tests.integration.conftest import AdapterFactory, BayeuxListener
from tests.polling import eventually
from tests.presence_server import PresenceServer
from tests.rawsip import new_token

pytestmark = pytest.mark.integration

PASSWORD = "secret"


def _accounts() -> tuple[AppAccount, AppAccount]:
    run = new_token()[:8]
    alice = AppAccount("alice-app", PASSWORD, (f"sip:alice-{run}@example.com",))
    bob = AppAccount("bob-app", PASSWORD, (f"sip:bob-{run}@example.com",))
    return alice, bob


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(adapter: AdapterProcess, **options: Any) -> Samples:
    """Every sample of /metrics, by name and labels, parsed by prometheus_client."""
    response = httpx.get(adapter.url + "/metrics", timeout=10, **options)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


class Scene:
    """alice publishes, bob watches her; helpers for the REST calls."""

    def __init__(self, adapter: AdapterProcess, alice: AppAccount, bob: AppAccount) -> None:
        self.adapter = adapter
        self.alice = alice.addresses[0]
        self.bob = bob.addresses[0]

    def publish(self, activity: str) -> httpx.Response:
        with self.adapter.client("alice-app") as client:
            body = {"presence": [{"typeAndValue": {"unionElement": "Activity",
                                                   "activity": activity}}]}
            return client.post("/rest/presence", json=body)

    def watch(self, correlator: str) -> None:
        """bob subscribes to alice, alice authorises him, bob starts notifications."""
        with self.adapter.client("bob-app") as bob, self.adapter.client("alice-app") as alice:
            response = bob.post("/rest/presence/subscription", json={
                "application": "operations test",
                "presentity": self.alice,
                "attributes": ["Activity"],
                "reference": {"correlator": f"{correlator}-sub",
                              "endpoint": "/bayeux/bob-app/subscription"},
            })
            assert response.status_code == 204, response.text
            response = alice.put("/rest/presence/subscription", json={
                "watcher": self.bob,
                "decisions": [{"presenceAttribute": "Activity", "decision": True}],
            })
            assert response.status_code == 204, response.text
            response = bob.post("/rest/presence/notification", json={
                "presentity": self.alice,
                "attributes": ["Activity"],
                "reference": {"correlator": correlator, "endpoint": "/bayeux/bob-app/notes"},
            })
            assert response.status_code == 201, response.text


def status_changed(correlator: str, activity: str | None = None) -> Callable[[Any], bool]:
    def matches(message: dict[str, Any]) -> bool:
        data = message["data"].get("statusChanged")
        if data is None or data.get("correlator") != correlator:
            return False
        if activity is None:
            return True
        return any(item["typeAndValue"].get("activity") == activity
                   for item in data["changedAttributes"])

    return matches


# -- /metrics ------------------------------------------------------------------------


def test_metrics_counters_move_after_a_publish_and_a_notification(
    adapter_factory: AdapterFactory, bayeux_listener: Callable[..., BayeuxListener]
) -> None:
    alice, bob = _accounts()
    adapter = adapter_factory([alice, bob])
    scene = Scene(adapter, alice, bob)
    before = scrape(adapter)
    assert value(before, "presence_adapter_recovery_finished") == 1
    assert value(before, "presence_adapter_rest_request_duration_seconds_count",
                 operation="publish", status="204") == 0

    listener = bayeux_listener(adapter.url + "/cometd", "bob-app", PASSWORD)
    assert scene.publish("Busy").status_code == 204
    scene.watch("metrics")
    assert scene.publish("Meeting").status_code == 204
    listener.wait_for(status_changed("metrics", "Meeting"))

    after = eventually(
        lambda: (s := scrape(adapter))
        and value(s, "presence_adapter_notify_to_bayeux_seconds_count") >= 1
        and value(s, "presence_adapter_bayeux_messages_delivered_total") >= 1
        and s,
        what="the notification counted",
    )
    publishes = value(after, "presence_adapter_sip_client_transactions_total",
                      method="PUBLISH", status="200")
    assert publishes >= 2 > value(before, "presence_adapter_sip_client_transactions_total",
                                  method="PUBLISH", status="200")
    assert value(after, "presence_adapter_rest_request_duration_seconds_count",
                 operation="publish", status="204") == 2
    assert value(after, "presence_adapter_rest_request_duration_seconds_bucket",
                 operation="publish", status="204", le="+Inf") == 2
    assert value(after, "presence_adapter_rest_request_duration_seconds_count",
                 operation="start_notification", status="201") == 1
    assert value(after, "presence_adapter_sip_client_transactions_total",
                 method="SUBSCRIBE", status="200") >= 1
    # Kamailio's NOTIFYs for the watch: at least the one that told Meeting.
    assert value(after, "presence_adapter_sip_server_transactions_total",
                 method="NOTIFY", status="200") >= 1
    assert value(after, "presence_adapter_publications") >= 1
    assert value(after, "presence_adapter_watches", state="active") == 1
    assert value(after, "presence_adapter_notification_schedules") == 1
    assert value(after, "presence_adapter_subscriptions", event="presence", state="active") >= 1
    assert value(after, "presence_adapter_bayeux_sessions", transport="long-polling") + value(
        after, "presence_adapter_bayeux_sessions", transport="websocket") >= 1
    assert value(after, "presence_adapter_bayeux_sessions_opened_total") >= 1
    assert value(after, "presence_adapter_store_commit_duration_seconds_count") > value(
        before, "presence_adapter_store_commit_duration_seconds_count")
    assert ("presence_adapter_sip_datagrams_dropped_total", ()) in after
    assert ("presence_adapter_sip_retransmissions_total", ()) in after
    assert ("presence_adapter_sip_client_transactions_in_flight", ()) in after
    assert ("presence_adapter_bayeux_backlog_messages", (("application", "bob-app"),)) in after
    assert value(after, "process_cpu_seconds_total") > 0


def test_metrics_with_a_token_want_it(adapter_factory: AdapterFactory) -> None:
    alice, bob = _accounts()
    adapter = adapter_factory([alice, bob], settings={"metrics": {"token": "scrape-me"}})
    refused = httpx.get(adapter.url + "/metrics", timeout=10)
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"].startswith("Bearer")
    wrong = httpx.get(adapter.url + "/metrics", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    samples = scrape(adapter, headers={"Authorization": "Bearer scrape-me"})
    assert value(samples, "presence_adapter_recovery_finished") == 1


# -- logs ----------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_json_logs_are_one_object_a_line_with_uvicorn_and_sip_trace(
    adapter_factory: AdapterFactory, transport: str
) -> None:
    alice, bob = _accounts()
    adapter = adapter_factory(
        [alice, bob], transport=transport,
        settings={"log": {"format": "json", "sip_trace": True}},
    )
    scene = Scene(adapter, alice, bob)
    assert scene.publish("Away").status_code == 204

    def records() -> list[dict[str, Any]]:
        lines = adapter.log_path.read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]  # each line: one object

    found = eventually(
        lambda: (r := records()) and any(x["logger"] == "adapter.access" for x in r) and r,
        what="the access log line",
    )
    for record in found:
        assert {"time", "level", "logger", "message"} <= record.keys(), record
    loggers = {record["logger"] for record in found}
    assert "uvicorn.error" in loggers  # uvicorn's own lines, same formatter
    access = [r for r in found if r["logger"] == "adapter.access"
              and "POST /rest/presence" in r["message"]]
    assert access and access[0]["request"] == "POST /rest/presence"
    assert access[0]["presentity"] == scene.alice
    traced = [r for r in found if r["logger"] == "sip.trace"]
    assert any(r["message"].startswith("out to") and "PUBLISH sip:" in r["message"]
               for r in traced)
    assert any(r["message"].startswith(f"in from {transport}:") and "SIP/2.0 200"
               in r["message"] for r in traced)


def test_sip_trace_is_off_by_default(adapter_factory: AdapterFactory) -> None:
    alice, bob = _accounts()
    adapter = adapter_factory([alice, bob])
    scene = Scene(adapter, alice, bob)
    assert scene.publish("Away").status_code == 204
    eventually(lambda: "POST /rest/presence" in adapter.log_path.read_text(),
               what="the access line")
    assert "sip.trace" not in adapter.log_path.read_text()


# -- /livez and /readyz --------------------------------------------------------------


def own_adapter(directory: Path, server: PresenceServer, **settings: Any) -> AdapterProcess:
    alice, bob = _accounts()
    return AdapterProcess.for_server(
        directory, server, [alice, bob],
        settings={"sip": {"keepalive": 0.5, "request_timeout": 3}, **settings},
    )


def test_readyz_follows_the_presence_server_and_livez_does_not(
    kamailio: PresenceServer, tmp_path: Path
) -> None:
    adapter = own_adapter(tmp_path, kamailio)
    adapter.start(healthy=True)
    try:
        ready = eventually(lambda: (r := httpx.get(adapter.url + "/readyz")).status_code == 200
                           and r, what="ready")
        assert ready.json()["status"] == "ready"
        kamailio.halt()
        response = httpx.get(adapter.url + "/readyz", timeout=10)
        assert response.status_code == 503
        reasons = response.json()["reasons"]
        assert any("presence server" in reason for reason in reasons), reasons
        assert httpx.get(adapter.url + "/livez").status_code == 200
        assert httpx.get(adapter.url + "/livez").json() == {"status": "alive"}
        kamailio.resume()
        eventually(lambda: httpx.get(adapter.url + "/readyz", timeout=10).status_code == 200,
                   what="ready again")
    finally:
        adapter.stop()


# -- SIGTERM -------------------------------------------------------------------------


class LongPoll:
    """A Bayeux client over plain HTTP long-polling, to see the held connect's answer."""

    def __init__(self, url: str, user: str) -> None:
        self.client = httpx.Client(base_url=url, auth=(user, PASSWORD), timeout=120)
        self.next_id = 0
        self.client_id = ""

    def send(self, message: dict[str, Any]) -> list[dict[str, Any]]:
        self.next_id += 1
        message = {"id": str(self.next_id), **message}
        if self.client_id:
            message["clientId"] = self.client_id
        response = self.client.post("/cometd", json=[message])
        assert response.status_code == 200, response.text
        replies: list[dict[str, Any]] = response.json()
        return replies

    def handshake(self, channel: str) -> None:
        [reply] = self.send({"channel": "/meta/handshake", "version": "1.0",
                             "supportedConnectionTypes": ["long-polling"]})
        assert reply["successful"], reply
        self.client_id = reply["clientId"]
        [reply] = self.send({"channel": "/meta/subscribe", "subscription": channel})
        assert reply["successful"], reply

    def connect(self) -> list[dict[str, Any]]:
        return self.send({"channel": "/meta/connect", "connectionType": "long-polling"})


def test_sigterm_answers_held_connects_flushes_and_exits_0_within_the_bound(
    kamailio: PresenceServer, tmp_path: Path,
    bayeux_listener: Callable[..., BayeuxListener],
) -> None:
    # Connects are held for a minute unless something answers them sooner.
    adapter = own_adapter(tmp_path, kamailio, bayeux={"connect_timeout": 60})
    alice, bob = adapter.accounts["alice-app"], adapter.accounts["bob-app"]
    scene = Scene(adapter, alice, bob)
    adapter.start(healthy=True)
    try:
        assert scene.publish("Busy").status_code == 204
        scene.watch("drain")
        # A channel nothing is published on: only the drain can answer its held connect.
        poll = LongPoll(adapter.url, "bob-app")
        poll.handshake("/bayeux/bob-app/quiet")
        first = poll.connect()  # the first connect is answered at once
        assert first[-1]["channel"] == "/meta/connect" and first[-1]["successful"]
        held: list[list[dict[str, Any]]] = []
        holder = threading.Thread(target=lambda: held.append(poll.connect()))
        holder.start()
        time.sleep(0.5)  # a barrier: the connect reaches the adapter and is held
        assert not held

        process = adapter.process
        assert process is not None
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        status = process.wait(timeout=3 * STOP_BOUND)
        took = time.monotonic() - started
        holder.join(timeout=10)
        assert status == 0, adapter.log_tail()
        assert took < 3 * STOP_BOUND, took
        [reply] = held[0]
        assert reply["channel"] == "/meta/connect" and reply["successful"]
        assert reply["advice"]["reconnect"] == "handshake"
        assert reply["advice"]["interval"] > 0
        log = adapter.log_path.read_text()
        assert "Traceback" not in log
        poll.client.close()
        adapter.stop()  # reaps the exited process

        # Started again on the same store: bob's subscription to alice still notifies.
        adapter.restart(healthy=True)
        listener = bayeux_listener(adapter.url + "/cometd", "bob-app", PASSWORD)
        eventually(lambda: httpx.get(adapter.url + "/readyz", timeout=10).status_code == 200,
                   what="ready after the restart")
        assert scene.publish("Meal").status_code == 204
        listener.wait_for(status_changed("drain", "Meal"), timeout=15)
    finally:
        adapter.stop()


def test_requests_during_the_drain_are_refused_with_retry_after(
    kamailio: PresenceServer, tmp_path: Path
) -> None:
    """A REST call that arrives after SIGTERM, on a connection opened before, gets 503."""
    # The drain lasts as long as ending the Bayeux sessions takes: a call
    # sent right after the signal by a client descheduled longer than that
    # finds the connection closed.  That attempt shows nothing; the next
    # adapter is asked again.
    for attempt in range(3):
        answers = _answers_while_draining(kamailio, tmp_path / f"attempt-{attempt}")
        if answers:
            break
    assert answers and answers[-1].status_code == 503, answers
    assert answers[-1].headers["retry-after"].isdigit()
    assert answers[-1].json()["requestError"]["serviceException"]["messageId"] == "SVC0001"


def _answers_while_draining(kamailio: PresenceServer, directory: Path) -> list[httpx.Response]:
    """The answers to calls made on an open connection from SIGTERM on, until a
    503 or the connection's close; the adapter is made to exit 0."""
    directory.mkdir()
    adapter = own_adapter(directory, kamailio, bayeux={"connect_timeout": 60})
    adapter.start(healthy=True)
    try:
        poll = LongPoll(adapter.url, "bob-app")
        poll.handshake("/bayeux/bob-app/quiet")
        poll.connect()
        holder = threading.Thread(target=poll.connect)
        holder.start()
        time.sleep(0.3)
        answers: list[httpx.Response] = []
        # One keep-alive connection, opened before the signal.
        with adapter.client("alice-app") as client:
            assert client.get("/livez").status_code == 200
            process = adapter.process
            assert process is not None
            process.send_signal(signal.SIGTERM)
            for _ in range(40):
                try:
                    answers.append(client.get("/rest/presence/subscription",
                                              params={"status": "open"}))
                except httpx.HTTPError:
                    break  # the server closed the connection: stopped
                if answers[-1].status_code == 503:
                    break
                time.sleep(0.02)
        assert process.wait(timeout=3 * STOP_BOUND) == 0
        holder.join(timeout=10)
        poll.client.close()
        return answers
    finally:
        adapter.stop()


# -- the command line ----------------------------------------------------------------


def test_version_is_the_package_version() -> None:
    from importlib.metadata import version

    done = subprocess.run([sys.executable, "-m", "adapter", "--version"],
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"presence-adapter {version('presence-adapter')}"


def test_systemd_hears_ready_and_stopping(kamailio: PresenceServer, tmp_path: Path) -> None:
    """The adapter as a Type=notify service: READY=1 once serving, STOPPING=1 at SIGTERM."""
    import socket

    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind(str(path))
        systemd.settimeout(15)
        adapter = AdapterProcess.for_server(
            tmp_path, kamailio, list(_accounts()), env={"NOTIFY_SOCKET": str(path)}
        )
        adapter.start()
        try:
            assert systemd.recv(100) == b"READY=1"
            assert httpx.get(adapter.url + "/livez").status_code == 200
            process = adapter.process
            assert process is not None
            process.send_signal(signal.SIGTERM)
            assert systemd.recv(100) == b"STOPPING=1"
            assert process.wait(timeout=3 * STOP_BOUND) == 0
        finally:
            adapter.stop()


def test_a_second_sigterm_still_ends_with_status_0(
    kamailio: PresenceServer, tmp_path: Path
) -> None:
    adapter = own_adapter(tmp_path, kamailio)
    adapter.start(healthy=True)
    try:
        process = adapter.process
        assert process is not None
        process.send_signal(signal.SIGTERM)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=3 * STOP_BOUND) == 0, adapter.log_tail()
    finally:
        adapter.stop()
