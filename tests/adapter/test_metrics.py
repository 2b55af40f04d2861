"""/metrics, /livez, /readyz and the drain gate, on the app with fakes behind it."""

import asyncio
from pathlib import Path

import pytest
from msgspec.structs import replace
from prometheus_client.parser import text_string_to_metric_families
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from adapter.app import create_app
from adapter.config import Config, MetricsConfig, load_config
from adapter.health import Readiness
from adapter.metrics import Histogram, Metrics
from adapter.shutdown import Drain

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def config() -> Config:
    return load_config(REPO / "conf/adapter.toml", cwd=REPO)


class Probe:
    def __init__(self, fails: bool = False) -> None:
        self.fails = fails

    async def ping(self) -> float:
        if self.fails:
            raise ConnectionRefusedError("port unreachable")
        return 0.001


async def open_subscriptions(request: Request) -> JSONResponse:
    return JSONResponse({"result": []})


def client(config: Config, **kwargs) -> TestClient:
    probe = kwargs.pop("probe", Probe())
    routes = [Route("/rest/presence/subscription", open_subscriptions, methods=["GET"])]
    app = create_app(config, sip_probe=probe, routes=routes, **kwargs)
    return TestClient(app, raise_server_exceptions=False)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_histogram_buckets_are_cumulative_with_le_inclusive() -> None:
    histogram = Histogram((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 3.0):
        histogram.observe(value)
    assert histogram.buckets() == [("0.1", 2), ("1.0", 3), ("+Inf", 4)]
    assert histogram.count == 4
    assert histogram.sum == pytest.approx(3.65)


def test_rest_requests_are_timed_by_operation_and_status(config: Config) -> None:
    with client(config) as c:
        assert c.get("/rest/presence/subscription").status_code == 200
        assert c.get("/rest/presence/nowhere").status_code == 404
        assert c.get("/livez").status_code == 200  # not REST: not timed
        text = c.get("/metrics").text
    found = samples(text)
    name = "presence_adapter_rest_request_duration_seconds_count"
    assert found[(name, (("operation", "open_subscriptions"), ("status", "200")))] == 1
    assert found[(name, (("operation", "unmatched"), ("status", "404")))] == 1
    assert not [key for key in found if key[0] == name and ("operation", "livez_endpoint")
                in key[1]]
    assert found[("presence_adapter_recovery_finished", ())] == 0  # nothing recovered yet


def test_metrics_token(config: Config) -> None:
    guarded = replace(config, metrics=MetricsConfig(token="t0ken"))
    with client(guarded) as c:
        assert c.get("/metrics").status_code == 401
        assert c.get("/metrics", headers={"Authorization": "Basic dDBrZW4="}).status_code == 401
        assert c.get("/metrics", headers={"Authorization": "Bearer t0ke"}).status_code == 401
        answer = c.get("/metrics", headers={"Authorization": "Bearer t0ken"})
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")


def test_livez_and_readyz_when_all_is_well(config: Config) -> None:
    with client(config) as c:
        assert c.get("/livez").json() == {"status": "alive"}
        ready = c.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready" and "reasons" not in ready.json()


def test_readyz_names_every_reason(config: Config) -> None:
    async def broken_store() -> None:
        raise OSError("disk full")

    readiness = Readiness(recovered=lambda: False, store_probe=broken_store,
                          draining=lambda: True)
    with client(config, probe=Probe(fails=True), readiness=readiness) as c:
        assert c.get("/livez").status_code == 200
        answer = c.get("/readyz")
    assert answer.status_code == 503
    body = answer.json()
    assert body["status"] == "not ready"
    assert body["reasons"] == [
        "shutting down",
        "recovery of stored publications and subscriptions not finished",
        "store not writable: disk full",
        "presence server not answering: port unreachable",
    ]


def test_readyz_reports_a_node_s_redis_and_is_degraded_without_it(
    config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("adapter.health.PROBE_TIMEOUT", 0.05)
    answers: list[str] = ["up"]

    async def redis() -> None:
        if answers[0] == "refused":
            raise ConnectionRefusedError("redis: Connection refused")
        if answers[0] == "silent":
            await asyncio.sleep(3600)

    readiness = Readiness(redis_probe=redis, redis_waiting=lambda: 7)
    with client(config, readiness=readiness) as c:
        ready = c.get("/readyz")
        answers[0] = "refused"
        refused = c.get("/readyz")
        answers[0] = "silent"
        silent = c.get("/readyz")
        readiness.draining = lambda: True
        draining = c.get("/readyz")
    assert (ready.status_code, ready.json()["status"]) == (200, "ready")
    assert ready.json()["redis"] == {"reachable": True, "waiting_messages": 7}
    assert (refused.status_code, refused.json()["status"]) == (200, "degraded")
    assert refused.json()["redis"] == {
        "reachable": False, "reason": "redis: Connection refused", "waiting_messages": 7}
    assert "reasons" not in refused.json()
    assert silent.json()["redis"]["reason"] == "no answer within 0.05 s"
    # Not ready for its own reasons: "not ready", whatever Redis says.
    assert (draining.status_code, draining.json()["status"]) == (503, "not ready")


def test_readyz_store_probe_that_hangs_is_cut_short(
    config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("adapter.health.PROBE_TIMEOUT", 0.05)

    async def hanging() -> None:
        await asyncio.sleep(3600)

    with client(config, readiness=Readiness(store_probe=hanging)) as c:
        answer = c.get("/readyz")
    assert answer.status_code == 503
    assert answer.json()["reasons"] == ["store write not done within 0.05 s"]


def test_draining_refuses_new_requests_but_not_the_health_endpoints(config: Config) -> None:
    drain = Drain()
    steps: list[str] = []
    drain.on_drain(lambda: steps.append("sessions ended"))
    with client(config, drain=drain) as c:
        assert c.get("/rest/presence/subscription").status_code == 200
        asyncio.run(drain.run())
        assert steps == ["sessions ended"]
        refused = c.get("/rest/presence/subscription")
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "5"
        fault = refused.json()["requestError"]["serviceException"]
        assert fault["messageId"] == "SVC0001"
        assert c.get("/livez").status_code == 200
        assert c.get("/metrics").status_code == 200
        assert c.get("/readyz").json()["reasons"] == ["shutting down"]


def test_a_metrics_object_given_is_the_one_served(config: Config) -> None:
    metrics = Metrics()
    metrics.recovery.started("publications", 3)
    metrics.recovery.advanced("publications")
    with client(config, metrics=metrics) as c:
        found = samples(c.get("/metrics").text)
    items = "presence_adapter_recovery_items"
    assert found[(items, (("kind", "publications"), ("progress", "total")))] == 3
    assert found[(items, (("kind", "publications"), ("progress", "done")))] == 1


def test_the_collector_reads_the_sources_when_scraped() -> None:
    from types import SimpleNamespace

    from adapter.bayeux.backlog import Backlog
    from adapter.bayeux.server import BayeuxServer
    from adapter.metrics import NOTIFY_BUCKETS, Sources
    from sip.aio import EndpointStats

    stats = EndpointStats(
        outcomes={("PUBLISH", "200"): 1, ("SUBSCRIBE", "timeout"): 1},
        retransmissions=4,
        answered={("NOTIFY", 200): 12, ("NOTIFY", 481): 1},
        late_answers=11,
        transactions_in_flight=2,
        publications=5,
        subscriptions={("presence.winfo", "active"): 3},
        dropped=1,
        refused=8,
    )
    hub = SimpleNamespace(server=BayeuxServer(lambda user, password: None))
    watchers = SimpleNamespace(
        watch_states=lambda: {"active": 7},
        xcap_requests=lambda: {("GET", "pres-rules"): 9},
        schedule_count=6,
        news_superseded=3,
        notify_latency=Histogram(NOTIFY_BUCKETS),
    )
    metrics = Metrics()
    metrics.sources = Sources(
        endpoint=SimpleNamespace(stats=lambda: stats),  # type: ignore[arg-type]
        hub=hub,  # type: ignore[arg-type]
        backlog=Backlog(10, 60.0),
        watchers=watchers,  # type: ignore[arg-type]
        store_commits=None,
        app_ids=["alice-app"],
    )
    found = samples(metrics.exposition().decode())
    p = "presence_adapter_"
    assert found[(p + "sip_client_transactions_total",
                  (("method", "PUBLISH"), ("status", "200")))] == 1
    assert found[(p + "sip_client_timeouts_total", (("method", "SUBSCRIBE"),))] == 1
    assert found[(p + "sip_retransmissions_total", ())] == 4
    assert found[(p + "sip_server_transactions_total",
                  (("method", "NOTIFY"), ("status", "200")))] == 12
    assert found[(p + "sip_server_transactions_total",
                  (("method", "NOTIFY"), ("status", "481")))] == 1
    assert found[(p + "sip_notify_answered_late_total", ())] == 11
    assert found[(p + "xcap_requests_total",
                  (("document", "pres-rules"), ("method", "GET")))] == 9
    assert found[(p + "sip_client_transactions_in_flight", ())] == 2
    assert found[(p + "sip_datagrams_dropped_total", ())] == 1
    assert found[(p + "sip_requests_refused_total", ())] == 8
    assert found[(p + "publications", ())] == 5
    assert found[(p + "subscriptions", (("event", "presence.winfo"), ("state", "active")))] == 3
    assert found[(p + "watches", (("state", "active"),))] == 7
    assert found[(p + "notification_schedules", ())] == 6
    assert found[(p + "watch_news_superseded_total", ())] == 3
    assert found[(p + "bayeux_backlog_messages", (("application", "alice-app"),))] == 0
    assert not [key for key in found if key[0].startswith(p + "store_commit")]
    # CPython's collector, per generation, beside the adapter's own figures.
    assert found[("python_gc_collections_total", (("generation", "2"),))] >= 0
