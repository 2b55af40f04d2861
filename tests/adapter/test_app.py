import contextlib
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from msgspec.structs import replace
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from adapter.app import create_app, make_app
from adapter.config import Config, load_config
from adapter.errors import PolicyError, ServiceError
from adapter.openapi import openapi_document

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def config() -> Config:
    return load_config(REPO / "conf/adapter.toml", cwd=REPO)


class AnsweringProbe:
    def __init__(self, rtt: float) -> None:
        self.rtt = rtt
        self.pings = 0

    async def ping(self) -> float:
        self.pings += 1
        return self.rtt


class FailingProbe:
    async def ping(self) -> float:
        raise ConnectionRefusedError("ICMP port unreachable from 127.0.0.1:5070")


def client_for(config: Config, probe=None, **kwargs) -> TestClient:
    app = create_app(config, sip_probe=probe or AnsweringProbe(0.001), **kwargs)
    return TestClient(app, raise_server_exceptions=False, follow_redirects=False)


def test_health_when_the_presence_server_answers(config: Config) -> None:
    probe = AnsweringProbe(0.0123)
    with client_for(config, probe) as client:
        response = client.get("/health")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "sip": {"server": "sip:127.0.0.1:5070", "reachable": True, "rtt_ms": 12.3},
    }
    assert response.headers["cache-control"] == "no-store"
    assert probe.pings == 1


def test_health_when_the_presence_server_does_not_answer(config: Config) -> None:
    with client_for(config, FailingProbe()) as client:
        response = client.get("/health")
    assert response.status_code == 503
    assert response.json() == {
        "status": "degraded",
        "sip": {
            "server": "sip:127.0.0.1:5070",
            "reachable": False,
            "reason": "ICMP port unreachable from 127.0.0.1:5070",
        },
    }


def requesterror(kind: str, message_id: str, text: str, variables: list[str]) -> dict:
    return {"requestError": {kind: {"messageId": message_id, "text": text, "variables": variables}}}


def test_unknown_path_gets_the_rest_error_body(config: Config) -> None:
    with client_for(config) as client:
        response = client.get("/rest/presence/nowhere")
    assert response.status_code == 404
    assert response.json() == requesterror(
        "serviceException",
        "SVC0002",
        "Invalid input value for message part %1",
        ["/rest/presence/nowhere"],
    )


def test_wrong_method_gets_the_rest_error_body_and_allow(config: Config) -> None:
    with client_for(config) as client:
        response = client.post("/health")
    assert response.status_code == 405
    assert "GET" in response.headers["allow"]
    assert response.json() == requesterror(
        "serviceException",
        "SVC0001",
        "A service error occurred. Error code is %1",
        ["method POST not allowed on /health"],
    )


async def bayeux_stand_in(request: Request) -> JSONResponse:
    return JSONResponse([{"channel": "/meta/handshake", "successful": True}])


def test_trailing_slash_is_never_redirected(config: Config) -> None:
    routes = [Route("/cometd", bayeux_stand_in, methods=["POST"])]
    with client_for(config, routes=routes) as client:
        assert client.post("/cometd", json=[]).status_code == 200
        slashed = client.post("/cometd/", json=[])
        health = client.get("/health/")
    for response in (slashed, health):
        assert response.status_code == 404
        assert "location" not in response.headers
        assert response.json()["requestError"]["serviceException"]["messageId"] == "SVC0002"


async def raises_policy(request: Request) -> JSONResponse:
    raise PolicyError.unauthenticated("presence")


async def raises_service(request: Request) -> JSONResponse:
    raise ServiceError.service_error("SIP request timed out", status=504)


async def raises_http(request: Request) -> JSONResponse:
    raise HTTPException(413, "request body too large")


async def raises_bug(request: Request) -> JSONResponse:
    raise KeyError("secret-internal-detail")


ERROR_ROUTES = [
    Route("/policy", raises_policy),
    Route("/service", raises_service),
    Route("/http", raises_http),
    Route("/bug", raises_bug),
]


def test_errors_raised_by_endpoints_become_the_rest_body(config: Config) -> None:
    with client_for(config, routes=ERROR_ROUTES) as client:
        policy = client.get("/policy")
        service = client.get("/service")
        http = client.get("/http")
    assert policy.status_code == 401
    assert policy.headers["www-authenticate"] == 'Basic realm="presence", charset="UTF-8"'
    assert policy.json() == requesterror(
        "policyException",
        "POL0001",
        "A policy error occurred. Error code is %1",
        ["authentication required"],
    )
    assert service.status_code == 504
    assert service.json()["requestError"]["serviceException"]["variables"] == [
        "SIP request timed out"
    ]
    assert http.status_code == 413
    assert http.json()["requestError"]["serviceException"]["variables"] == [
        "request body too large"
    ]


def test_unexpected_exception_is_logged_not_shown(config: Config, caplog) -> None:
    app = create_app(config, sip_probe=AnsweringProbe(0.001), routes=ERROR_ROUTES)
    # raise_server_exceptions: the exception must end in the app, or the server
    # would log its traceback a second time.
    with caplog.at_level(logging.ERROR), TestClient(app, raise_server_exceptions=True) as client:
        response = client.get("/bug")
    assert response.status_code == 500
    assert response.json() == requesterror(
        "serviceException",
        "SVC0001",
        "A service error occurred. Error code is %1",
        ["internal error"],
    )
    assert "secret-internal-detail" not in response.text
    assert "Traceback" not in response.text
    records = caplog.records
    assert len(records) == 1 and records[0].name == "adapter.app"
    assert "GET /bug" in records[0].getMessage()
    assert records[0].exc_info is not None and records[0].exc_info[0] is KeyError


def test_long_lived_objects_live_in_app_state(config: Config) -> None:
    probe = AnsweringProbe(0.001)
    app = create_app(config, sip_probe=probe)
    assert app.state.config is config
    assert app.state.sip_probe is probe


def test_caller_lifespan_runs_around_serving_and_shares_its_state(config: Config) -> None:
    events: list[str] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, object]]:
        events.append("started")
        yield {"user_agent": "ua-object"}
        events.append("stopped")

    async def shows_state(request: Request) -> JSONResponse:
        return JSONResponse({"user_agent": request.state.user_agent})

    client = client_for(config, routes=[Route("/state", shows_state)], lifespan=lifespan)
    with client:
        assert events == ["started"]
        assert client.get("/state").json() == {"user_agent": "ua-object"}
    assert events == ["started", "stopped"]


# -- 405s and the access log -----------------------------------------------------


def test_405_allows_every_method_served_on_the_path(config: Config) -> None:
    """RFC 9110 §15.5.6: Allow lists the target's methods, not one route's."""
    routes = [Route("/x", bayeux_stand_in, methods=["GET"]),
              Route("/x", bayeux_stand_in, methods=["PUT"]),
              Route("/x", bayeux_stand_in, methods=["POST"]),
              Route("/x/{y:path}", bayeux_stand_in, methods=["DELETE"])]
    with client_for(config, routes=routes) as client:
        on_x = client.request("OPTIONS", "/x")
        below = client.patch("/x/sip:bob@example.com")
    assert on_x.status_code == 405
    assert on_x.headers["allow"] == "GET, HEAD, POST, PUT"
    assert on_x.json()["requestError"]["serviceException"]["messageId"] == "SVC0001"
    assert (below.status_code, below.headers["allow"]) == (405, "DELETE")


def test_the_adapters_405s_allow_what_its_document_describes(config: Config) -> None:
    client = TestClient(make_app(config), raise_server_exceptions=False)
    for path, item in openapi_document()["paths"].items():
        methods = {method.upper() for method in item}
        if "GET" in methods:
            methods.add("HEAD")  # Starlette serves HEAD wherever GET is
        target = re.sub(r"\{\w+\}", "sip:x@example.com", path)
        response = client.request("TRACE", target)
        assert response.status_code == 405, path
        assert set(response.headers["allow"].split(", ")) == methods, path


def test_access_log_writes_one_line_per_request(config: Config, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="adapter.access"), client_for(config) as client:
        client.get("/health?verbose=1")
        client.post("/nowhere")
    lines = [r.getMessage() for r in caplog.records if r.name == "adapter.access"]
    assert lines == [
        'testclient:50000 - "GET /health?verbose=1 HTTP/1.1" 200',
        'testclient:50000 - "POST /nowhere HTTP/1.1" 404',
    ]


def test_access_log_follows_the_log_level_and_the_configuration(
    config: Config, caplog
) -> None:
    quiet = replace(config, http=replace(config.http, access_log=False))
    with caplog.at_level(logging.INFO, logger="adapter.access"), client_for(quiet) as client:
        client.get("/health")
    with caplog.at_level(logging.WARNING, logger="adapter.access"), client_for(config) as client:
        client.get("/health")
    assert [r for r in caplog.records if r.name == "adapter.access"] == []
