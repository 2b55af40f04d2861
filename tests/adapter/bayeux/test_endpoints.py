"""The Starlette transports, through Starlette's test client."""

import json

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from adapter.bayeux.endpoints import basic_credentials, bayeux_routes
from adapter.bayeux.hub import Hub
from adapter.bayeux.limits import BayeuxLimits


def authenticate(user: str, password: str) -> str | None:
    return user if password == "pw" else None


@pytest.fixture
def client():
    hub = Hub(authenticate, BayeuxLimits(max_body=4096))
    with TestClient(Starlette(routes=bayeux_routes(hub))) as test_client:
        yield test_client


HANDSHAKE = [
    {
        "channel": "/meta/handshake",
        "id": "1",
        "version": "1.0",
        "supportedConnectionTypes": ["long-polling"],
    }
]


@pytest.mark.parametrize("path", ["/cometd", "/cometd/", "/cometd/handshake"])
def test_long_polling_answers_on_the_base_url_and_its_suffixes_without_redirect(client, path):
    response = client.post(path, json=HANDSHAKE, auth=("app", "pw"), follow_redirects=False)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    (reply,) = response.json()
    assert reply["successful"] is True and reply["id"] == "1"


def test_full_long_polling_session(client):
    (hs,) = client.post("/cometd/handshake", json=HANDSHAKE[0], auth=("app", "pw")).json()
    client_id = hs["clientId"]
    # No cookie is needed: the clientId is the session.
    client.cookies.clear()
    subscribe = {
        "channel": "/meta/subscribe",
        "clientId": client_id,
        "subscription": "/bayeux/app/**",
    }
    connect = {
        "channel": "/meta/connect",
        "clientId": client_id,
        "connectionType": "long-polling",
        "advice": {"timeout": 0},
    }
    replies = client.post("/cometd/", json=[subscribe, connect]).json()
    assert [r["successful"] for r in replies] == [True, True]
    (bye,) = client.post(
        "/cometd/disconnect", json=[{"channel": "/meta/disconnect", "clientId": client_id}]
    ).json()
    assert bye["successful"] is True


def test_bad_basic_credentials_are_a_bayeux_403(client):
    (reply,) = client.post("/cometd", json=HANDSHAKE, auth=("app", "no")).json()
    assert reply["successful"] is False and reply["error"].startswith("403:")


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"{not json", 400),
        (b"[]", 400),
        (b'[{"channel": 1}]', 400),
        (b"[" + b" " * 5000 + b"]", 413),
    ],
)
def test_bad_bodies_are_rejected_cleanly(client, body, status):
    response = client.post("/cometd", content=body, headers={"content-type": "application/json"})
    assert response.status_code == status
    (reply,) = response.json()
    assert reply["successful"] is False and reply["error"].startswith("400::")


def test_get_is_not_a_transport(client):
    assert client.get("/cometd").status_code == 405


def test_websocket_handshake_connect_and_delivery(client):
    with client.websocket_connect("/cometd") as ws:
        assert ws.accepted_subprotocol is None
        ws.send_text(
            json.dumps(
                [{**HANDSHAKE[0], "ext": {"authentication": {"user": "app", "password": "pw"}}}]
            )
        )
        (hs,) = ws.receive_json()
        client_id = hs["clientId"]
        ws.send_text(
            json.dumps(
                [
                    {
                        "channel": "/meta/subscribe",
                        "clientId": client_id,
                        "subscription": "/bayeux/app/x",
                    },
                    {
                        "channel": "/meta/connect",
                        "clientId": client_id,
                        "connectionType": "websocket",
                    },
                ]
            )
        )
        assert [r["channel"] for r in ws.receive_json()] == ["/meta/subscribe", "/meta/connect"]
        ws.send_text("[]")  # Faye's keep-alive: no answer
        ws.send_text("garbage")
        (error,) = ws.receive_json()
        assert error["successful"] is False and error["error"].startswith("400::")


def test_websocket_frame_over_the_cap_closes_with_1009(client):
    with client.websocket_connect("/cometd") as ws:
        ws.send_text("[" + " " * 5000 + "]")
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_text()
        assert closed.value.code == 1009


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("Basic YXBwOnB3", ("app", "pw")),
        ("basic YXBwOnA6dw==", ("app", "p:w")),
        ("Basic !!!", None),
        ("Basic YXBw", None),  # no colon
        ("Bearer x", None),
        (None, None),
    ],
)
def test_basic_credentials(header, expected):
    assert basic_credentials(header) == expected
