"""aiocometd-ng (Python, aiohttp) against the adapter's Bayeux server.

aiocometd handshakes over HTTP and then connects over a WebSocket, and its
aiohttp cookie jar drops cookies from IP hosts: the session must live on the
clientId alone. The client runs in its own process (see aiocometd_client.py).
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.interop.served_hub import ServedHub

DRIVER = Path(__file__).with_name("aiocometd_client.py")


def aiocometd(served: ServedHub, connection_type: str, password: str, scenario: str) -> dict:
    done = subprocess.run(
        [
            sys.executable,
            "-W",
            "ignore",
            str(DRIVER),
            served.url,
            connection_type,
            "app-a",
            password,
            scenario,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("connection_type", ["websocket", "long-polling"])
def test_receives_adapter_messages(served, connection_type):
    result = aiocometd(served, connection_type, "secret-a", "receive")

    assert result["error"] is None
    assert [m["data"]["seq"] for m in result["received"]] == [0, 1, 2]
    assert {m["channel"] for m in result["received"]} == {"/bayeux/app-a/aio"}


def test_subscribing_to_another_application_is_refused(served):
    result = aiocometd(served, "websocket", "secret-a", "denied")

    assert result["error"] is not None and "subscription denied" in result["error"]


def test_bad_credentials_are_refused(served):
    result = aiocometd(served, "websocket", "nope", "badcredentials")

    assert result["error"] is not None and "authentication failed" in result["error"]
