"""``GET /metrics``: the adapter's counters and state in the Prometheus text format.

Most of what is exported is counted already where it happens — the SIP user
agent's transaction outcomes, the Bayeux core's :class:`~adapter.bayeux.Counters`,
the datagrams the driver dropped — or is state the services hold (publications,
subscriptions, watches, schedules).  :class:`AdapterCollector` reads all of it
when Prometheus scrapes, so nothing on the hot paths calls into
``prometheus_client``.  The three latencies are observed per event into a
:class:`Histogram` of our own: a bucket index and two additions, with no lock
and no label lookup (``prometheus_client``'s takes a lock per observation,
and a labelled one a dictionary lookup under another), since they are
observed on the event loop for every REST request, NOTIFY and store commit.

Names follow Prometheus conventions: ``presence_adapter_`` prefix, ``_total``
on counters, seconds.
"""

from __future__ import annotations

import hmac
import time
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from adapter.bayeux.backlog import Backlog
    from adapter.bayeux.hub import Hub
    from adapter.cluster.ownership import Ownership
    from adapter.cluster.peer import PeerCheck
    from adapter.cluster.relay import Relay
    from adapter.watcher import WatcherService
    from sip.aio import EndpointStats, SipEndpoint

__all__ = [
    "NOTIFY_BUCKETS",
    "REST_BUCKETS",
    "STORE_BUCKETS",
    "AdapterCollector",
    "Histogram",
    "Metrics",
    "RecoveryProgress",
    "RestTiming",
    "metrics_endpoint",
]

PREFIX = "presence_adapter_"
#: The classic text format (what generate_latest writes for names like ours):
#: every Prometheus version reads it, where "version=1.0.0" is newer.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Upper bounds (seconds) of the latency buckets.
NOTIFY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
REST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
STORE_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0
)


class Histogram:
    """Observations counted into fixed buckets; exported as a Prometheus histogram."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        # counts[i]: observations <= bounds[i] and > bounds[i-1]; the last: above them all.
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative ``(le, count)`` pairs, ``+Inf`` last, as the text format wants them."""
        out: list[tuple[str, float]] = []
        total = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += count
            out.append(("+Inf" if bound == float("inf") else repr(bound), total))
        return out


@dataclass
class RecoveryProgress:
    """How far the re-creation of the SIP side after a start has come, by kind."""

    #: kind ("publications", "subscriptions") -> [items to recover, items done].
    kinds: dict[str, list[int]] = field(default_factory=dict)
    #: Set once every kind's recovery has run to its end.
    finished: bool = False

    def started(self, kind: str, total: int) -> None:
        self.kinds[kind] = [total, 0]

    def advanced(self, kind: str) -> None:
        self.kinds[kind][1] += 1


@dataclass
class Sources:
    """The long-lived objects whose state is read at scrape time."""

    endpoint: SipEndpoint
    hub: Hub
    backlog: Backlog
    watchers: WatcherService
    store_commits: Histogram | None
    app_ids: Sequence[str]
    #: A node of a cluster: its leases (None: alone).
    cluster: Ownership | None = None
    #: A node of a cluster: its end of the Redis streams, and its check of the
    #: calls from other nodes.
    relay: Relay | None = None
    peers: PeerCheck | None = None


class Metrics:
    """What /metrics exports: the latencies observed here, and the sources read at scrape."""

    def __init__(self, *, token: str | None = None) -> None:
        self.token = token
        self.rest: dict[tuple[str, str], Histogram] = {}
        self.recovery = RecoveryProgress()
        self.sources: Sources | None = None
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(AdapterCollector(self))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        # The collector's runs per generation: the adapter tunes its
        # thresholds (cli.GC_THRESHOLDS), and operators see what they cost.
        GCCollector(registry=self.registry)

    def rest_observe(self, operation: str, status: int, seconds: float) -> None:
        key = (operation, str(status))
        histogram = self.rest.get(key)
        if histogram is None:
            histogram = self.rest[key] = Histogram(REST_BUCKETS)
        histogram.observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def _histogram(
    name: str, documentation: str, labels: Sequence[str],
    histograms: Iterable[tuple[Sequence[str], Histogram]],
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(PREFIX + name, documentation, labels=list(labels))
    for values, histogram in histograms:
        family.add_metric(list(values), histogram.buckets(), histogram.sum)
    return family


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(PREFIX + name, documentation, value=value)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, documentation, value=value)


class AdapterCollector(Collector):
    """Builds every ``presence_adapter_*`` family from the current state, when scraped."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        metrics = self.metrics
        yield _histogram(
            "rest_request_duration_seconds",
            "REST requests by operation and HTTP status, from arrival to the last byte sent.",
            ("operation", "status"),
            sorted(metrics.rest.items()),
        )
        recovery = GaugeMetricFamily(
            PREFIX + "recovery_items",
            "Stored publications and subscriptions re-created at start: total and done.",
            labels=["kind", "progress"],
        )
        for kind, (total, done) in sorted(metrics.recovery.kinds.items()):
            recovery.add_metric([kind, "total"], total)
            recovery.add_metric([kind, "done"], done)
        yield recovery
        yield _gauge(
            "recovery_finished",
            "1 once the recovery after start has run to its end.",
            1 if metrics.recovery.finished else 0,
        )
        sources = metrics.sources
        if sources is None:
            return  # not serving yet
        # One snapshot for both: it is a copy of the user agent's counts.
        stats = sources.endpoint.stats()
        yield from _sip(stats)
        yield from _state(sources, stats)
        yield from _bayeux(sources)
        if sources.cluster is not None:
            yield from _cluster(sources.cluster)
        if sources.relay is not None:
            yield from _relay(sources.relay)
        if sources.peers is not None:
            refused = CounterMetricFamily(
                PREFIX + "cluster_peer_calls_refused",
                "Calls marked as coming from another node, or to /cluster/, refused: "
                "unsigned, malformed, stale (clock off) or bad-signature.",
                labels=["reason"],
            )
            for reason, count in sorted(sources.peers.refused.items()):
                refused.add_metric([reason], count)
            yield refused
        if sources.store_commits is not None:
            yield _histogram(
                "store_commit_duration_seconds",
                "Commits of the store (a group of writes each), from BEGIN to COMMIT.",
                (),
                [((), sources.store_commits)],
            )


def _cluster(cluster: Ownership) -> Iterator[Metric]:
    leases = GaugeMetricFamily(
        PREFIX + "cluster_leases",
        "Pieces of SIP work this node of the cluster owns, by kind (publication, watch).",
        labels=["kind"],
    )
    for kind, count in sorted(cluster.held().items()):
        leases.add_metric([kind], count)
    yield leases
    yield _counter(
        "cluster_taken_over",
        "Pieces of work this node took from another node (dead, or silent too long).",
        cluster.taken_over,
    )
    yield _counter(
        "cluster_let_go",
        "Pieces of work this node let go: taken by another node, or not renewed in time.",
        cluster.let_go,
    )
    yield _counter(
        "cluster_forwarded_requests",
        "REST calls this node passed to the node owning their work.",
        cluster.forwarded,
    )


def _relay(relay: Relay) -> Iterator[Metric]:
    yield _gauge(
        "cluster_redis_up",
        "1 while Redis answered this node's last call, 0 once one failed.",
        1 if relay.connected else 0,
    )
    yield _counter(
        "cluster_redis_errors",
        "Calls of this node to Redis that failed (unreachable, or an error).",
        relay.errors,
    )
    yield _gauge(
        "cluster_relay_waiting_messages",
        "Bayeux messages made on this node and waiting in its memory to be added to Redis.",
        relay.waiting,
    )
    yield _counter(
        "cluster_relay_dropped_messages",
        "Bayeux messages dropped from that wait: Redis unreachable too long, and the "
        "memory's bound reached.",
        relay.dropped,
    )


def _sip(stats: EndpointStats) -> Iterator[Metric]:
    transactions = CounterMetricFamily(
        PREFIX + "sip_client_transactions",
        "SIP client transactions ended, by method and outcome: the final status code, "
        "or timeout, or transport-error, or busy (never sent: the window and its queue "
        "were full).",
        labels=["method", "status"],
    )
    timeouts = CounterMetricFamily(
        PREFIX + "sip_client_timeouts",
        "SIP client transactions that got no final response (Timer F), by method.",
        labels=["method"],
    )
    timed_out: dict[str, int] = {}
    for (method, outcome), count in sorted(stats.outcomes.items()):
        transactions.add_metric([method, outcome], count)
        if outcome == "timeout":
            timed_out[method] = timed_out.get(method, 0) + count
    for method, count in sorted(timed_out.items()):
        timeouts.add_metric([method], count)
    yield transactions
    yield timeouts
    answered = CounterMetricFamily(
        PREFIX + "sip_server_transactions",
        "SIP requests from the presence server (NOTIFYs) answered, by method and the "
        "status answered; their retransmissions apart.",
        labels=["method", "status"],
    )
    for (method, status), count in sorted(stats.answered.items()):
        answered.add_metric([method, str(status)], count)
    yield answered
    yield _counter(
        "sip_retransmissions",
        "SIP requests sent again because no response came (Timer E; UDP only).",
        stats.retransmissions,
    )
    yield _counter(
        "sip_notify_answered_late",
        "NOTIFYs the presence server sent again several times after they were answered: "
        "the answer came late (the subscription is refreshed to learn whether it stands).",
        stats.late_answers,
    )
    yield _gauge(
        "sip_client_transactions_in_flight",
        "SIP client transactions sent and waiting for their final response.",
        stats.transactions_in_flight,
    )
    if stats.window_bound is not None:
        yield _gauge(
            "sip_window",
            "SIP client transactions allowed in flight now: [sip] window, halved while "
            "requests go unanswered for T1 and widened again as answers come in time.",
            stats.window_bound,
        )
    yield _gauge(
        "sip_requests_waiting",
        "SIP requests waiting for room in the window of outstanding transactions.",
        stats.requests_waiting,
    )
    yield _counter(
        "sip_requests_queued",
        "SIP requests that waited for room in the window before they were sent or refused.",
        stats.requests_queued,
    )
    yield _counter(
        "sip_datagrams_dropped",
        "SIP messages received that were not usable (unparsable, or missing a needed header).",
        stats.dropped,
    )
    yield _counter(
        "sip_requests_refused",
        "SIP requests refused (403) because they did not come from the presence server.",
        stats.refused,
    )


def _state(sources: Sources, stats: EndpointStats) -> Iterator[Metric]:
    yield _gauge(
        "publications",
        "Publications the adapter holds at the presence server (PUBLISH, refreshed).",
        stats.publications,
    )
    subscriptions = GaugeMetricFamily(
        PREFIX + "subscriptions",
        "SIP subscriptions of the adapter, by event package and state.",
        labels=["event", "state"],
    )
    for (event, state), count in sorted(stats.subscriptions.items()):
        subscriptions.add_metric([event, state], count)
    yield subscriptions
    watches = GaugeMetricFamily(
        PREFIX + "watches",
        "Watcher subscriptions asked for through REST, by state.",
        labels=["state"],
    )
    for state, count in sorted(sources.watchers.watch_states().items()):
        watches.add_metric([state], count)
    yield watches
    xcap = CounterMetricFamily(
        PREFIX + "xcap_requests",
        "XCAP requests sent, by method and document (pres-rules, rls-services).",
        labels=["method", "document"],
    )
    for (method, usage), count in sorted(sources.watchers.xcap_requests().items()):
        xcap.add_metric([method, usage], count)
    yield xcap
    yield _counter(
        "watch_news_superseded",
        "Presence documents a watch held while its rules were read (or unreadable) "
        "and replaced by a later one once it held its limit of news.",
        sources.watchers.news_superseded,
    )
    yield _gauge(
        "notification_schedules",
        "Presence notifications started (Start Presence Notification) and not ended.",
        sources.watchers.schedule_count,
    )
    yield _histogram(
        "notify_to_bayeux_seconds",
        "From a NOTIFY received to its notification handed to Bayeux, for notifications "
        "sent at once (not those held back by a schedule's frequency).",
        (),
        [((), sources.watchers.notify_latency)],
    )


def _bayeux(sources: Sources) -> Iterator[Metric]:
    server = sources.hub.server
    counters = server.counters
    sessions = GaugeMetricFamily(
        PREFIX + "bayeux_sessions",
        "Bayeux sessions, by the transport of their latest /meta/connect "
        "(none: not connected yet).",
        labels=["transport"],
    )
    for transport, count in sorted(server.sessions_by_transport().items()):
        sessions.add_metric([transport or "none"], count)
    yield sessions
    totals: tuple[tuple[str, str, int], ...] = (
        ("bayeux_sessions_opened", "Bayeux handshakes accepted.", counters.sessions_opened),
        ("bayeux_sessions_expired", "Bayeux sessions ended for want of a /meta/connect.",
         counters.sessions_expired),
        ("bayeux_handshakes_refused", "Bayeux handshakes refused (credentials).",
         counters.handshakes_refused),
        ("bayeux_messages_delivered", "Messages placed in /meta/connect replies.",
         counters.messages_delivered),
        ("bayeux_messages_dropped",
         "Messages dropped because a session's queue or an application's backlog was full.",
         counters.messages_dropped),
        ("bayeux_messages_backlogged",
         "Messages kept for an application that had no session subscribed.",
         counters.messages_backlogged),
    )
    for name, documentation, value in totals:
        yield _counter(name, documentation, value)
    backlog = GaugeMetricFamily(
        PREFIX + "bayeux_backlog_messages",
        "Messages kept for an application until a session of it subscribes.",
        labels=["application"],
    )
    for app_id in sources.app_ids:
        backlog.add_metric([app_id], sources.backlog.count(app_id))
    yield backlog


class RestTiming:
    """Times every request under ``prefix`` into :attr:`Metrics.rest`.

    The operation is the name of the endpoint that served it (Starlette's
    router leaves it in the scope), or the name given for a fast route.
    """

    def __init__(
        self, app: ASGIApp, metrics: Metrics, prefix: str, names: Mapping[tuple[str, str], str]
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.prefix = prefix
        self.names = dict(names)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_timed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_timed)
        finally:
            endpoint: Any = scope.get("endpoint")
            operation = getattr(endpoint, "__name__", None) or self.names.get(
                (scope["method"], scope["path"]), "unmatched"
            )
            self.metrics.rest_observe(operation, status, time.perf_counter() - started)


async def metrics_endpoint(request: Request) -> Response:
    """GET /metrics: the Prometheus text format; a bearer token when ``[metrics] token``."""
    metrics: Metrics = request.app.state.metrics
    if metrics.token is not None:
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), metrics.token.encode()
        ):
            return JSONResponse(
                {"error": "a bearer token is required ([metrics] token)"},
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
            )
    return Response(
        metrics.exposition(),
        media_type=CONTENT_TYPE,
        headers={"Cache-Control": "no-store"},
    )
