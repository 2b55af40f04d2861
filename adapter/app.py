"""The web application: routes, error bodies and lifespan, composed in one place."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import platform
import secrets
import signal
import sys
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from adapter import rest
from adapter.admission import Admission
from adapter.auth import IDENTITY_HEADER, Accounts
from adapter.bayeux import BayeuxLimits, Hub, bayeux_routes
from adapter.bayeux.backlog import Backlog
from adapter.bayeux.journal import BacklogJournal
from adapter.config import Config, sip_tls_context, xcap_tls_context
from adapter.console import console_routes
from adapter.errors import RestError, ServiceError
from adapter.health import (
    Readiness,
    SipProbe,
    health_endpoint,
    livez_endpoint,
    readyz_endpoint,
)
from adapter.heap import HeapTrim
from adapter.liveness import ServerLiveness
from adapter.logs import RequestContext
from adapter.metrics import Metrics, RestTiming, Sources, metrics_endpoint
from adapter.openapi import openapi_routes
from adapter.presentity import PresentityService
from adapter.shutdown import RECONNECT_AFTER, Drain, DrainGate
from adapter.store import Store, open_store
from adapter.watcher import WatcherService
from adapter.xcap import XcapClient
from sip.aio import SipEndpoint
from sip.digest import Credentials
from sip.uri import SipURI
from sip.useragent import Window

if TYPE_CHECKING:
    from adapter.cluster.bayeux import ClusterBayeux
    from adapter.cluster.ownership import Ownership
    from adapter.cluster.peer import PeerCheck

__all__ = ["create_app", "make_app"]

logger = logging.getLogger(__name__)

#: A lifespan for what the caller owns (the SIP user agent, the store, ...). Its
#: optional state mapping is merged into every request's ``request.state``.
Lifespan = Callable[[Starlette], AbstractAsyncContextManager[Mapping[str, Any] | None]]
ExceptionHandler = Callable[[Request, Exception], Any]


def _error_response(error: RestError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=dict(error.headers))


async def _rest_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RestError)
    return _error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Routing errors (unknown path, wrong method) in the REST error shape."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        error = ServiceError.invalid_input(request.url.path, status=404)
    elif exc.status_code == 405:
        error = ServiceError.service_error(
            f"method {request.method} not allowed on {request.url.path}", status=405
        )
    else:
        error = ServiceError.service_error(exc.detail, status=exc.status_code)
    headers = {**(exc.headers or {}), **error.headers}
    if exc.status_code == 405:
        # RFC 9110 §15.5.6: the origin server "MUST generate an Allow header field"
        # listing the target's methods.  Starlette names only those of the first
        # route on the path.
        headers["Allow"] = ", ".join(_allowed_methods(request))
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route serves on the request's path."""
    scope = request.scope
    methods: set[str] = set()
    for route in scope["app"].router.routes:
        if isinstance(route, Route) and route.methods and route.matches(scope)[0] != Match.NONE:
            methods |= route.methods
    return sorted(methods)


class _LastResort:
    """Answers SVC0001 for an exception nothing else handled, and logs it once.

    Starlette's own 500 handler would answer too, but then re-raises so that the
    server logs the traceback a second time; this middleware ends the exception here.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_watched)
        # The one place that catches everything: whatever escaped the endpoints is a
        # bug, and the client must still get the REST error body, never a traceback.
        except Exception:
            if started:
                raise  # too late to answer; the server logs it and drops the connection
            logger.exception(
                "unexpected error answering %s %s", scope.get("method"), scope.get("path")
            )
            error = ServiceError.service_error("internal error", status=500)
            await _error_response(error)(scope, receive, send)


access_logger = logging.getLogger("adapter.access")


class _AccessLog:
    """One line per HTTP request on the ``adapter.access`` logger at INFO (``[http] access_log``).

    In place of uvicorn's access log, the same line when the answer starts —
    ``127.0.0.1:50312 - "POST /rest/presence HTTP/1.1" 204`` — at about half
    its cost.  Off with the log level above INFO, as uvicorn's was.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not access_logger.isEnabledFor(logging.INFO):
            await self.app(scope, receive, send)
            return

        async def send_logged(message: Message) -> None:
            if message["type"] == "http.response.start":
                _log_access(scope, message["status"])
            await send(message)

        await self.app(scope, receive, send_logged)


def _log_access(scope: Scope, status: int) -> None:
    client = scope.get("client")
    raw_path = scope.get("raw_path")
    path = raw_path.decode("latin-1") if raw_path else quote(scope["path"])
    query = scope.get("query_string")
    if query:
        path = f"{path}?{query.decode('latin-1')}"
    access_logger.info(
        '%s - "%s %s HTTP/%s" %d',
        f"{client[0]}:{client[1]}" if client else "-",
        scope["method"],
        path,
        scope.get("http_version", "1.1"),
        status,
    )


class _WebSocketOrigins:
    """Refuses a WebSocket upgrade whose ``Origin`` is neither in ``[http] cors_origins``
    nor the adapter's own (its console's pages).

    Where CORSMiddleware falls short: it handles HTTP only, and browsers apply
    no CORS to WebSockets — they send ``Origin`` and leave the check to the
    server (RFC 6455 §10.2).  Clients that send none (not a browser: the Node
    and Python Bayeux clients) are let through, as for HTTP.
    """

    def __init__(self, app: ASGIApp, origins: Sequence[str]) -> None:
        self.app = app
        self.origins = frozenset(origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            origin = next((v for k, v in scope["headers"] if k == b"origin"), None)
            if (
                origin is not None
                and origin.decode("latin-1") not in self.origins
                and not _same_origin(scope, origin)
            ):
                # Closing before accepting: the server answers the upgrade with 403.
                await send({"type": "websocket.close", "code": 1008})
                return
        await self.app(scope, receive, send)


def _same_origin(scope: Scope, origin: bytes) -> bool:
    """A page of the adapter's own (the console at /console/) opening a WebSocket.

    RFC 6454 §4: its origin is the scheme, host and port it was loaded from,
    which is where the upgrade goes — the Host header (RFC 6455 §4.1).
    """
    host = next((v for k, v in scope["headers"] if k == b"host"), None)
    scheme = b"https" if scope.get("scheme") == "wss" else b"http"
    return host is not None and origin == scheme + b"://" + host


class _DirectRoutes:
    """The operations that carry the load, served ahead of Starlette's router.

    Innermost of the middleware, so that every layer above (drain, timing,
    access log, last resort, admission) still wraps them; what they skip is
    the exception middleware (a ``Request`` made for every call) and the
    router's walk, whose frames every resumption of the call's coroutine goes
    back through.  An exact method and path only: anything else goes to the
    router, which keeps these routes too (for 405's Allow, the OpenAPI
    document).  Errors go to the app's handlers, as the exception middleware
    would send them; an endpoint here answers last, so no handler answers
    after a response has started.
    """

    def __init__(
        self,
        app: ASGIApp,
        routes: Mapping[tuple[str, str], ASGIApp],
        handlers: Mapping[type[Exception], ExceptionHandler],
    ) -> None:
        self.app = app
        self.routes = dict(routes)
        self.handlers = dict(handlers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = (
            self.routes.get((scope["method"], scope["path"])) if scope["type"] == "http" else None
        )
        if endpoint is None:
            await self.app(scope, receive, send)
            return
        scope["endpoint"] = endpoint  # as the router leaves it (RestTiming names it)
        try:
            await endpoint(scope, receive, send)
        except Exception as exc:
            handler = next(
                (self.handlers[k] for k in type(exc).__mro__ if k in self.handlers), None
            )
            if handler is None:
                raise
            response = handler(Request(scope, receive), exc)
            if inspect.isawaitable(response):  # Starlette takes plain functions too
                response = await response
            await response(scope, receive, send)


def _edge_middleware(config: Config) -> list[Middleware]:
    """CORS for the listed browser origins, outermost so that errors carry it too."""
    if not config.http.cors_origins:
        return []  # no CORS headers at all: browsers keep their same-origin rule
    return [
        Middleware(
            CORSMiddleware,
            allow_origins=list(config.http.cors_origins),
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["Authorization", "Content-Type", IDENTITY_HEADER],
            # Start Presence Notification's Location, and what a refusal tells.
            expose_headers=["Location", "Retry-After", "WWW-Authenticate"],
            max_age=600,
        ),
        Middleware(_WebSocketOrigins, origins=config.http.cors_origins),
    ]


def create_app(
    config: Config,
    *,
    sip_probe: SipProbe,
    routes: Sequence[BaseRoute] = (),
    lifespan: Lifespan | None = None,
    exception_handlers: Mapping[type[Exception], ExceptionHandler] | None = None,
    direct: Mapping[tuple[str, str], ASGIApp] | None = None,
    metrics: Metrics | None = None,
    readiness: Readiness | None = None,
    drain: Drain | None = None,
) -> Starlette:
    """The adapter's Starlette application.

    ``sip_probe`` answers /health. ``routes`` are added before the adapter's own, and
    ``lifespan`` (optional) runs inside the app's lifespan, for the objects that the
    caller starts and stops with the server.  ``direct``: endpoints by (method,
    path) served ahead of the router (:class:`_DirectRoutes`).  ``metrics``
    (what /metrics exports), ``readiness`` (what /readyz asks) and ``drain``
    (turned on at SIGTERM) are made empty when not given.
    """
    metrics = metrics or Metrics(token=config.metrics.token)
    drain = drain or Drain()
    readiness = readiness or Readiness(draining=lambda: drain.active)

    @contextlib.asynccontextmanager
    async def app_lifespan(app: Starlette) -> AsyncIterator[Mapping[str, Any]]:
        async with contextlib.AsyncExitStack() as stack:
            state = await stack.enter_async_context(lifespan(app)) if lifespan else None
            # The interpreter too: what each SIP exchange costs depends on its build
            # (scripts/setup prefers the system's).
            logger.info("serving on %s://%s (Python %s, %s)", config.http.scheme,
                        config.http.address, platform.python_version(),
                        os.path.realpath(sys.executable))
            yield dict(state or {})

    handlers: dict[type[Exception], ExceptionHandler] = {
        **(exception_handlers or {}),
        RestError: _rest_error,
        HTTPException: _http_error,
    }
    middleware = _edge_middleware(config)
    middleware.append(Middleware(DrainGate, drain=drain))
    if config.log.format == "json":
        middleware.append(Middleware(RequestContext))
    middleware.append(Middleware(RestTiming, metrics=metrics, prefix=rest.BASE, names={}))
    if config.http.access_log:
        middleware.append(Middleware(_AccessLog))
    middleware.append(Middleware(_LastResort))
    if config.limits is not None or any(a.password_hash for a in config.accounts):
        middleware.append(Middleware(Admission, prefix=rest.BASE, limit=config.limits))
    if direct:
        middleware.append(Middleware(_DirectRoutes, routes=direct, handlers=handlers))
    app = Starlette(
        # The caller's routes first: the router tries them in order, and the
        # REST API's (Publish first) carry the load.
        routes=[
            *routes,
            Route("/health", health_endpoint, methods=["GET"]),
            Route("/livez", livez_endpoint, methods=["GET"]),
            Route("/readyz", readyz_endpoint, methods=["GET"]),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
        ],
        middleware=middleware,
        exception_handlers=handlers,
        lifespan=app_lifespan,
    )
    # No 307 from "/cometd/" to "/cometd": Bayeux clients POST to both forms and do
    # not follow redirects, and REST clients must get the error body, not a redirect.
    app.router.redirect_slashes = False
    app.state.config = config
    app.state.sip_probe = sip_probe
    app.state.metrics = metrics
    app.state.readiness = readiness
    app.state.drain = drain
    return app


def sip_endpoint(config: Config) -> SipEndpoint:
    """The SIP user agent the configuration describes (not started)."""
    server = SipURI.parse(config.sip.server)
    if config.sip.transport != "udp" and server.transport is None and server.scheme == "sip":
        server = server.with_params(transport=config.sip.transport)
    endpoint = SipEndpoint(
        host=config.sip.listen.bind_host,
        port=config.sip.listen.port,
        server=server,
        transport=config.sip.transport,
        tls=sip_tls_context(config),
        # A REST call's request waits for room at most half its own bound,
        # so that it is answered 503 (retry later) rather than 504.
        window=Window(
            size=config.sip.window,
            queue=config.sip.window_queue,
            kept=config.sip.window_kept,
            wait=config.sip.request_timeout / 2,
        ),
    )
    if config.sip.username is not None and config.sip.password is not None:
        endpoint.set_credentials(
            Credentials(config.sip.username, config.sip.password, config.sip.realm)
        )
    return endpoint


def cluster_routes(config: Config) -> list[BaseRoute]:
    """A node's own route: the others tell it of rules changed through them."""
    if config.cluster is None:
        return []
    from adapter.cluster.ownership import RULES_PATH, rules_endpoint

    return [Route(RULES_PATH, rules_endpoint, methods=["POST"])]


def make_app(config: Config, *, store: Store | None = None) -> Starlette:
    """The adapter as ``presence-adapter serve`` runs it: the app and its services.

    The store is opened here, before serving, so that an unusable store file
    stops start-up with one line (StoreError) rather than inside the server.
    """
    endpoint = sip_endpoint(config)
    accounts = Accounts(config.accounts)
    # A REST call that must store waits no longer for the store than for the
    # presence server.
    store = store or open_store(
        config.store,
        write_timeout=config.sip.request_timeout,
        node=config.cluster.node if config.cluster is not None else None,
    )
    me = None
    if config.cluster is not None:
        from adapter.cluster.nodes import Node, claim
        from adapter.store.postgres import PostgresStore

        assert isinstance(store, PostgresStore)  # [cluster] needs [store] url
        me = Node(config.cluster.node, f"{config.http.scheme}://{config.http.address}",
                  str(config.sip.listen), secrets.token_hex(8))
        try:
            # Before serving: a name another live process has stops start-up.
            claim(store.run_locked, me, config.cluster.lease)
        except BaseException:
            asyncio.run(store.close())
            raise
    limits = BayeuxLimits(**config.bayeux)

    def bayeux_login(user: str, password: str) -> str | None:
        account = accounts.check(user, password)
        return account.id if account is not None else None

    peers: PeerCheck | None = None
    secret = b""
    if config.cluster is not None:
        from adapter.cluster.peer import PeerCheck, cluster_secret
        from adapter.store.postgres import PostgresStore

        assert isinstance(store, PostgresStore)  # [cluster] needs [store] url
        # The key of the calls between nodes, read before serving like the store
        # itself: a node never serves without it.
        secret = cluster_secret(config, store)
        peers = PeerCheck(secret)

    bayeux: ClusterBayeux | None = None
    if config.cluster is None:
        journal: BacklogJournal | None = BacklogJournal(store)
        backlog = Backlog(limits.backlog_size, limits.backlog_ttl, journal)
        hub = Hub(bayeux_login, limits, backlog=backlog, prepare=accounts.check_async)
    else:
        # Imported only by a node: a single adapter loads nothing of Redis.
        from adapter.cluster.bayeux import ClusterBayeux

        # A node's backlog is its applications' Redis streams (adapter.cluster.relay).
        journal = None
        backlog = Backlog(limits.backlog_size, limits.backlog_ttl)
        bayeux = ClusterBayeux(config, limits, bayeux_login, accounts.check_async, secret)
        hub = bayeux.hub
    metrics = Metrics(token=config.metrics.token)
    drain = Drain()
    # Sessions end first, before uvicorn stops: a held connect waiting out its
    # timeout would hold the stop back (adapter.shutdown).
    drain.on_drain(lambda: hub.drain(RECONNECT_AFTER))
    readiness = Readiness(
        recovered=lambda: metrics.recovery.finished,
        store_probe=store.probe,
        draining=lambda: drain.active,
    )
    if bayeux is not None:
        readiness.redis_probe = bayeux.bus.ping
        relay = bayeux.relay
        readiness.redis_waiting = lambda: relay.waiting

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[Mapping[str, Any]]:
        if journal is not None:
            kept = journal.restore(backlog, asyncio.get_running_loop().time())
            if kept:
                logger.info(
                    "kept %d Bayeux messages for applications from before the restart", kept
                )
        if bayeux is not None:
            bayeux.start()
        await endpoint.start()
        xcap = XcapClient(
            config.xcap.root,
            username=config.xcap.username,
            password=config.xcap.password,
            tls=xcap_tls_context(config),
        )
        liveness = ServerLiveness(endpoint, config.sip.keepalive)
        timeout = config.sip.request_timeout
        watchers = WatcherService(
            endpoint,
            xcap,
            hub if bayeux is None else bayeux.relay,
            store=store,
            liveness=liveness,
            request_timeout=timeout,
            list_check=config.sip.list_check,
        )
        ownership: Ownership | None = None
        directory_elsewhere = None
        if config.cluster is not None:
            # Imported only by a node of a cluster (psycopg with it).
            from adapter.cluster.ownership import stored_directory
            from adapter.store.postgres import PostgresStore

            assert isinstance(store, PostgresStore)  # [cluster] needs [store] url
            directory_elsewhere = stored_directory(store, watchers)

        def rules_changed(presentity: str) -> None:
            watchers.rules_changed(presentity)
            if ownership is not None:
                ownership.rules_changed(presentity)  # the other nodes' watches too

        presentities = PresentityService(
            endpoint,
            xcap,
            store=store,
            liveness=liveness,
            request_timeout=timeout,
            directory=watchers.directory,
            rules_changed=rules_changed,
            stored_directory=directory_elsewhere,
        )
        if me is not None:
            from adapter.cluster.ownership import Ownership
            from adapter.cluster.peer import peer_client

            assert isinstance(store, PostgresStore)
            assert config.cluster is not None
            ownership = Ownership(
                store, me, config.cluster.lease, presentities=presentities,
                watchers=watchers, request_timeout=timeout,
                http=peer_client(config, secret, timeout=timeout + 5),
                # As SIGTERM does: drained, and stopped.
                stop=lambda: signal.raise_signal(signal.SIGTERM),
            )
            assert bayeux is not None
            bayeux.forward.locate = ownership.nodes.find
        liveness.on_resync(presentities.resync)
        liveness.on_resync(watchers.resync)
        liveness.start()
        heap = HeapTrim()
        heap.start()
        metrics.sources = Sources(
            endpoint=endpoint,
            hub=hub,
            backlog=backlog,
            watchers=watchers,
            store_commits=getattr(store, "commit_seconds", None),
            app_ids=[account.id for account in config.accounts],
            cluster=ownership,
            relay=bayeux.relay if bayeux is not None else None,
            peers=peers,
        )
        # Recovery runs beside the server: requests are answered meanwhile.
        progress = metrics.recovery
        recovery: asyncio.Future[Any]
        if ownership is not None:
            # A node takes up the work its leases give it, not all the store holds.
            ownership.start(progress)
            recovery = asyncio.gather(ownership.ready.wait())
        else:
            recovery = asyncio.gather(
                presentities.restore(progress=progress), watchers.restore(progress=progress)
            )

        def recovered(done: asyncio.Future[Any]) -> None:
            if done.cancelled() or ownership is not None:
                return  # a node's first round tells (Ownership)
            if done.exception() is not None:
                # /readyz stays 503: what the store kept is not all back.
                logger.error("recovery failed: %r", done.exception())
                return
            progress.finished = True
            logger.info("recovery finished")

        recovery.add_done_callback(recovered)
        try:
            yield {
                "sip": endpoint,
                "accounts": accounts,
                "bayeux": hub,
                "presentity": presentities,
                "watcher": watchers,
                "notification_policy": config.notifications,
                "cluster": ownership,
            }
        finally:
            recovery.cancel()
            await heap.close()
            await liveness.close()
            await presentities.close()
            await watchers.close()
            if ownership is not None:
                await ownership.close()
            hub.close()
            if bayeux is not None:
                await bayeux.close()
            await xcap.close()
            await endpoint.close()
            await store.close()

    app = create_app(
        config,
        sip_probe=endpoint,
        routes=[
            *rest.routes(),
            *openapi_routes(),
            *bayeux_routes(hub, forward=bayeux.forward if bayeux is not None else None),
            *console_routes(),
            *cluster_routes(config),
        ],
        lifespan=lifespan,
        exception_handlers=rest.EXCEPTION_HANDLERS,
        direct=rest.DIRECT_ROUTES,
        metrics=metrics,
        readiness=readiness,
        drain=drain,
    )
    if peers is not None:
        from adapter.cluster.peer import PeerGate

        # Outermost: a call claiming to come from a node is checked before
        # anything else sees it.
        app.add_middleware(PeerGate, check=peers)
    return app
