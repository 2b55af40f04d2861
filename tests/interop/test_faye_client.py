"""The Faye client (npm faye 1.4.3, on Node) against the adapter's Bayeux server."""

import json

import pytest

from tests.interop.served_hub import ServedHub, run_node


def faye(served: ServedHub, transport: str, password: str, scenario: str) -> dict:
    done = run_node("faye_client.cjs", served.url, transport, "app-a", password, scenario)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("transport", ["long-polling", "websocket"])
def test_receives_adapter_messages(served, node, transport):
    result = faye(served, transport, "secret-a", "receive")

    assert result["errors"] == []
    # Every /meta/connect went over the transport under test.
    assert result["transports"] == [transport]
    assert [m["seq"] for m in result["received"]] == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("transport", ["long-polling", "websocket"])
def test_denials(served, node, transport):
    result = faye(served, transport, "secret-a", "denied")

    assert result["denied"] == {"otherApp": "subscription denied", "publish": "publish denied"}


def test_bad_credentials_are_refused(served, node):
    result = faye(served, "long-polling", "wrong", "badcredentials")

    assert result["errors"] == ["403::authentication failed"]
