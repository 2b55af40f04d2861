"""Publish through the app: the answers of ``POST /rest/presence``.

Driven against a stand-in presentity service: each kind of request gets its
status, the headers that matter and the body, and reaches the service only
when it is sound.  Every test runs twice: with Publish served ahead of the
router (``create_app(direct=...)``, as ``make_app`` serves it) and as an
ordinary route, so the two answer alike.
"""

import asyncio
import base64
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect
from starlette.responses import PlainTextResponse
from starlette.testclient import TestClient

from adapter import rest
from adapter.app import create_app
from adapter.auth import Accounts
from adapter.config import Account, Config, load_config
from pidf import PresenceAttribute, validate_publication
from sip.aio import RequestTimedOut

REPO = Path(__file__).resolve().parents[2]
ALICE = Account(
    id="alice-app",
    password="alice-secret",
    addresses=("sip:alice@example.com", "sip:alice@work.example"),
)


@pytest.fixture(scope="module")
def config() -> Config:
    return load_config(REPO / "conf/adapter.toml", cwd=REPO)


#: Whether the apps of the test being run serve Publish ahead of the router.
DIRECT = {"on": True}


@pytest.fixture(autouse=True, params=["direct", "router"])
def served(request: pytest.FixtureRequest) -> str:
    """Which way the app serves Publish in this test (see the module's docstring)."""
    DIRECT["on"] = request.param == "direct"
    return str(request.param)


class Presentities:
    """The PresentityService's publish, recorded; a presentity named "timeout" times out."""

    def __init__(self) -> None:
        self.published: list[tuple[str, tuple[PresenceAttribute, ...]]] = []

    async def publish(self, presentity: str, attributes: tuple[PresenceAttribute, ...]) -> None:
        validate_publication(attributes)  # as the service does first
        if "timeout" in presentity:
            raise RequestTimedOut("PUBLISH", None, "no answer")
        if "bug" in presentity:
            raise KeyError("secret-internal-detail")
        self.published.append((presentity, attributes))


def client(config: Config, service: Presentities) -> TestClient:
    timeout = Account(
        id="t-app", password="t", addresses=("sip:timeout@example.com", "sip:bug@example.com")
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        yield {"accounts": Accounts([ALICE, timeout]), "presentity": service}

    return rest_client(config, lifespan)


def rest_client(config: Config, lifespan: Any) -> TestClient:
    """The app serving the REST routes over the services ``lifespan`` yields."""
    app = create_app(
        config,
        sip_probe=None,  # type: ignore[arg-type]
        routes=rest.routes(),
        lifespan=lifespan,
        exception_handlers=rest.EXCEPTION_HANDLERS,
        direct=rest.DIRECT_ROUTES if DIRECT["on"] else None,
    )
    return TestClient(app, raise_server_exceptions=False)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


BUSY = {"presence": [{"typeAndValue": {"unionElement": "Activity", "activity": "Busy"}}]}
ALICE_AUTH = {"Authorization": basic("alice-app", "alice-secret")}

CASES: dict[str, dict[str, Any]] = {
    "ok": {"json": BUSY, "headers": ALICE_AUTH},
    "ok as another address": {
        "json": BUSY,
        "headers": {**ALICE_AUTH, "X-Presence-Identity": " sip:alice@work.example "},
    },
    "no credentials": {"json": BUSY},
    "wrong password": {"json": BUSY, "headers": {"Authorization": basic("alice-app", "no")}},
    "not basic": {"json": BUSY, "headers": {"Authorization": "Bearer abc"}},
    "address not held": {
        "json": BUSY,
        "headers": {**ALICE_AUTH, "X-Presence-Identity": "sip:bob@example.com"},
    },
    "not JSON": {"content": b"{nope", "headers": ALICE_AUTH},
    "not an object": {"json": [1], "headers": ALICE_AUTH},
    "no presence": {"json": {"presence": []}, "headers": ALICE_AUTH},
    "bad attribute": {
        "json": {"presence": [{"typeAndValue": {"unionElement": "Activity", "activity": "X"}}]},
        "headers": ALICE_AUTH,
    },
    "twice the same type": {"json": {"presence": BUSY["presence"] * 2}, "headers": ALICE_AUTH},
    "a query parameter": {"json": BUSY, "headers": ALICE_AUTH, "params": {"presence": "x"}},
    "server does not answer": {
        "json": BUSY,
        "headers": {
            "Authorization": basic("t-app", "t"),
            "X-Presence-Identity": "sip:timeout@example.com",
        },
    },
    "unexpected failure": {
        "json": BUSY,
        "headers": {
            "Authorization": basic("t-app", "t"),
            "X-Presence-Identity": "sip:bug@example.com",
        },
    },
}


STATUS = {
    "ok": 204,
    "ok as another address": 204,
    "no credentials": 401,
    "wrong password": 401,
    "not basic": 401,
    "address not held": 403,
    "not JSON": 400,
    "not an object": 400,
    "no presence": 400,
    "bad attribute": 400,
    "twice the same type": 204,
    "a query parameter": 400,
    "server does not answer": 504,
    "unexpected failure": 500,
}


#: What the client learns besides the status: the fault's part, or the challenge.
ANSWERS: dict[str, Any] = {
    "no credentials": ("POL0001", ["authentication required"]),
    "not JSON": ("SVC0002", ["body (not JSON)"]),
    "not an object": ("SVC0002", ["body (not a JSON object)"]),
    "no presence": ("SVC0002", ["presence"]),
    "bad attribute": ("SVC0002", ["presence[0].typeAndValue.activity"]),
    "a query parameter": ("SVC0002", ["presence (unknown parameter)"]),
    "server does not answer": ("SVC0001", ["presence server: PUBLISH failed: no answer"]),
    "unexpected failure": ("SVC0001", ["internal error"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_request_gets_its_answer(config: Config, case: str) -> None:
    service = Presentities()
    with client(config, service) as http:
        response = http.post("/rest/presence", **CASES[case])
    assert response.status_code == STATUS[case], response.text
    if response.status_code == 204:
        assert response.content == b"" and len(service.published) == 1
        return
    assert service.published == []
    assert response.headers["content-type"] == "application/json"
    (fault,) = response.json()["requestError"].values()
    if case in ANSWERS:
        assert (fault["messageId"], fault["variables"]) == ANSWERS[case]
    if response.status_code == 401:
        assert response.headers["www-authenticate"].startswith("Basic ")


def test_publish_is_204_with_no_body_and_reaches_the_service(config: Config) -> None:
    service = Presentities()
    with client(config, service) as http:
        response = http.post(
            "/rest/presence",
            json=BUSY,
            headers={**ALICE_AUTH, "X-Presence-Identity": "sip:alice@work.example"},
        )
    assert response.status_code == 204
    assert response.content == b""
    assert "content-length" not in response.headers
    [(address, attributes)] = service.published
    assert address == "sip:alice@work.example"
    assert [a.type.value for a in attributes] == ["Activity"]


def test_a_body_in_several_chunks_is_read_whole(config: Config) -> None:
    service = Presentities()
    body = b'{"presence": [{"typeAndValue": {"unionElement": "Activity", "activity": "Busy"}}]}'
    with client(config, service) as http:
        response = http.post(
            "/rest/presence", content=iter([body[:10], body[10:40], body[40:]]), headers=ALICE_AUTH
        )
    assert response.status_code == 204
    assert len(service.published) == 1


def test_other_methods_and_paths_get_404_and_405(config: Config) -> None:
    with client(config, Presentities()) as http:
        slashed = http.post("/rest/presence/", json=BUSY, headers=ALICE_AUTH)
        wrong_method = http.put("/rest/presence", json=BUSY, headers=ALICE_AUTH)
    assert slashed.status_code == 404
    assert wrong_method.status_code == 405
    assert wrong_method.headers["allow"] == "DELETE, GET, HEAD, POST"


def test_the_unexpected_failure_is_logged_once_and_not_shown(config: Config, caplog) -> None:
    with caplog.at_level(logging.ERROR), client(config, Presentities()) as http:
        response = http.post("/rest/presence", **CASES["unexpected failure"])
    assert response.status_code == 500
    assert "secret-internal-detail" not in response.text
    [record] = caplog.records
    assert "POST /rest/presence" in record.getMessage()
    assert record.exc_info is not None and record.exc_info[0] is KeyError


@pytest.mark.parametrize(
    "messages",
    [
        [{"type": "http.disconnect"}],
        [{"type": "http.request", "body": b"{", "more_body": True}, {"type": "http.disconnect"}],
    ],
    ids=["before-the-body", "in-the-middle"],
)
def test_a_client_gone_before_its_body_is_read_is_starlette_s_disconnect(
    messages: list[dict[str, object]],
) -> None:
    # As Request.body: ClientDisconnect, which the server then ends quietly.
    left = list(messages)  # the parameter's list is shared by both ways of serving

    async def receive() -> dict[str, object]:
        return left.pop(0)

    with pytest.raises(ClientDisconnect):
        asyncio.run(rest.read_body(receive))  # type: ignore[arg-type]


def test_publish_is_timed_logged_and_refused_while_draining_either_way(
    config: Config, served: str, caplog
) -> None:
    # The layers above the router wrap Publish served ahead of it too.
    service = Presentities()
    with caplog.at_level(logging.INFO, logger="adapter.access"), client(config, service) as http:
        assert http.post("/rest/presence", **CASES["ok"]).status_code == 204
        assert http.post("/rest/presence", **CASES["not JSON"]).status_code == 400
        http.app.state.drain.active = True  # type: ignore[attr-defined]
        refused = http.post("/rest/presence", **CASES["ok"])
        timed = {key: sum(h.counts) for key, h in http.app.state.metrics.rest.items()}  # type: ignore[attr-defined]
    assert timed == {("publish", "204"): 1, ("publish", "400"): 1}
    lines = [r.getMessage() for r in caplog.records if r.name == "adapter.access"]
    # The drain gate stands outside the timing and the access log, as for every route.
    assert [line.rsplit(" ", 1)[1] for line in lines] == ["204", "400"]
    assert all('"POST /rest/presence HTTP/1.1"' in line for line in lines)
    assert refused.status_code == 503 and refused.headers["retry-after"] == "5"
    assert len(service.published) == 1


def test_only_the_exact_method_and_path_go_ahead_of_the_router(config: Config) -> None:
    # Anything else — another method, a longer path — is the router's, with its 405 and 404.
    calls: list[str] = []

    async def endpoint(scope: Any, receive: Any, send: Any) -> None:
        calls.append(scope["path"])
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    app = create_app(
        config,
        sip_probe=None,  # type: ignore[arg-type]
        routes=rest.routes(),
        exception_handlers=rest.EXCEPTION_HANDLERS,
        direct={("POST", "/rest/presence"): endpoint},
    )
    with TestClient(app, raise_server_exceptions=False) as http:
        assert http.post("/rest/presence", json=BUSY).status_code == 204
        assert http.patch("/rest/presence", json=BUSY).status_code == 405
        assert http.post("/rest/presence/x", json=BUSY).status_code == 404
    assert calls == ["/rest/presence"]


@pytest.mark.parametrize("kind", ["async", "plain"])
def test_a_direct_route_s_error_goes_to_the_app_s_handler(config: Config, kind: str) -> None:
    class Refused(Exception):
        pass

    async def endpoint(scope: Any, receive: Any, send: Any) -> None:
        raise Refused("no")

    def plain(request: Any, exc: Exception) -> Any:
        return PlainTextResponse(f"{request.url.path}: {exc}", status_code=418)

    async def handler(request: Any, exc: Exception) -> Any:
        return plain(request, exc)

    app = create_app(
        config,
        sip_probe=None,  # type: ignore[arg-type]
        exception_handlers={Refused: handler if kind == "async" else plain},
        direct={("POST", "/rest/presence"): endpoint},
    )
    with TestClient(app, raise_server_exceptions=False) as http:
        response = http.post("/rest/presence", json=BUSY)
    assert (response.status_code, response.text) == (418, "/rest/presence: no")
