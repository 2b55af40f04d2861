"""The CometD JavaScript client 9 (on Node) against the adapter's Bayeux server."""

import json

import pytest

from tests.interop.served_hub import ServedHub, run_node

TRANSPORTS = ["long-polling", "websocket"]


def cometd(served: ServedHub, transport: str, password: str, scenario: str) -> dict:
    done = run_node("cometd_client.mjs", served.url, transport, "app-a", password, scenario)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_receives_adapter_messages_with_ack(served, node, transport):
    result = cometd(served, transport, "secret-a", "receive")

    assert result["handshakes"] == [{"successful": True, "ack": True}]
    assert result["transport"] == transport
    assert [m["seq"] for m in result["received"]] == [0, 1, 2, 3, 4]
    assert "duplicates" not in result


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_handshakes_again_after_the_adapter_forgets_the_session(served, node, transport):
    result = cometd(served, transport, "secret-a", "rehandshake")

    assert [h["successful"] for h in result["handshakes"]] == [True, True]
    rounds = [(m["round"], m["seq"]) for m in result["received"]]
    assert rounds == [(1, 0), (1, 1), (2, 0), (2, 1)]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_denials(served, node, transport):
    result = cometd(served, transport, "secret-a", "denied")

    denied = result["denied"]
    assert denied["otherApp"] == {
        "successful": False,
        "error": "403:/bayeux/app-b/**:subscription denied",
    }
    assert denied["meta"]["successful"] is False
    assert denied["meta"]["error"].startswith("403:")
    assert denied["publish"]["successful"] is False
    assert denied["publish"]["error"].startswith("403:")


def test_bad_credentials_are_refused(served, node):
    result = cometd(served, "long-polling", "wrong", "badcredentials")

    assert result["handshakes"] == [{"successful": False}]
    assert result["errors"] == ["403::authentication failed"]
    assert served.call(lambda: served.hub.server.session_count()) == 0
