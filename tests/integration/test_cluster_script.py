"""scripts/cluster, run as a person runs it: PostgreSQL, Redis, Kamailio, two nodes and
HAProxy come up, and REST and Bayeux are answered through HAProxy; SIGTERM stops it all.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.polling import eventually
from tests.presence_server import free_ports

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
# conf/adapter.toml's demo accounts, which the script gives its nodes.
ALICE = ("alice-app", "alice-secret")
BOB = ("bob-app", "bob-secret")


def running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_the_demo_cluster_answers_through_haproxy_and_stops(tmp_path: Path) -> None:
    (port,) = free_ports("127.0.0.1", 1)
    log_path = tmp_path / "cluster.log"
    command = ["bash", "scripts/cluster", "--port", str(port), "--lease", "2",
               "--dir", str(tmp_path / "cluster")]
    with log_path.open("wb") as log:
        script = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        def up() -> bool:
            assert script.poll() is None, f"scripts/cluster exited:\n{log_path.read_text()}"
            return "cluster: HAProxy on" in log_path.read_text()

        eventually(up, timeout=180, interval=0.5, what="scripts/cluster up")
        text = log_path.read_text()
        nodes = [int(pid) for pid in re.findall(r"cluster: node \w+ on \S+ \(PID (\d+)\)", text)]
        assert len(nodes) == 2, text
        url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            try:
                return httpx.get(url + "/readyz", timeout=10).status_code == 200
            except httpx.TransportError:
                return False

        eventually(ready, timeout=60, interval=0.5, what="/readyz through HAProxy")
        activity = {"typeAndValue": {"unionElement": "Activity", "activity": "Busy"}}
        with httpx.Client(base_url=url, timeout=30) as http:
            # Round-robin: three in a row reach both nodes, one of them about
            # the other's work (alice's publication: passed on).
            for _ in range(3):
                answer = http.post("/rest/presence", json={"presence": [activity]}, auth=ALICE)
                assert answer.status_code == 204, answer.text
            answer = http.get("/rest/presence/subscription", params={"status": "open"},
                              auth=ALICE)
            assert answer.status_code == 200, answer.text
            assert answer.json() == {"result": []}
            (handshake,) = http.post("/cometd", auth=BOB, json=[{
                "channel": "/meta/handshake", "version": "1.0",
                "supportedConnectionTypes": ["long-polling"]}]).json()
            assert handshake["successful"], handshake
            assert handshake["clientId"][:2] in ("a.", "b."), handshake
    finally:
        if script.poll() is None:
            script.send_signal(signal.SIGTERM)
        try:
            script.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(script.pid, signal.SIGKILL)
            script.wait(10)
            pytest.fail(f"scripts/cluster did not stop on SIGTERM:\n{log_path.read_text()}")
    assert script.returncode == 0, log_path.read_text()
    for name in ("a", "b"):
        node_log = (tmp_path / "cluster" / f"node-{name}" / "adapter.log").read_text()
        assert '"POST /rest/presence HTTP/1.1" 204' in node_log, node_log[-2000:]
    # Everything it started stopped with it.
    assert not [pid for pid in nodes if running(pid)]
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
