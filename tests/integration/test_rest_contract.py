"""The OpenAPI description is the contract: schemathesis against the real adapter.

The schemathesis CLI (``--checks all``) reads ``/openapi.json`` from an adapter
process in front of the session's Kamailio and sends what the document allows
and what it forbids: every answer must be documented, every schema-valid
request served, every schema-violating one refused, and no 5xx ever.  It acts
as bob-app (``sip:bob@example.com``, the address the document's examples
watch from) with its Basic credentials; before it runs, bob watches alice with
her grant and his own presence, so that the examples reach real resources
rather than 404s.  The run is bounded by a fixed seed and a number of examples
per operation.
"""

from __future__ import annotations

import collections
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from adapter.openapi import ALICE, BOB, OPERATIONS, PRESENCE, REFERENCE
from pidf import AttributeType
from tests.adapter_process import AppAccount
from tests.integration.conftest import AdapterFactory

pytestmark = pytest.mark.integration

ALICE_APP = AppAccount("alice-app", "alice-secret", (ALICE,))
BOB_APP = AppAccount("bob-app", "bob-secret", (BOB,))
MAX_EXAMPLES = 25
SEED = 20261206
CONFIG = f"""\
[parameters]
"header.X-Presence-Identity" = "{BOB}"
"""


EVERYTHING = [{"presenceAttribute": kind.value, "decision": True} for kind in AttributeType]


def watch(watcher: httpx.Client, presentity: httpx.Client, address: str, granted: str) -> None:
    """``watcher`` subscribes to ``address`` and ``presentity`` grants it everything."""
    body = {"presentity": address, "reference": REFERENCE}
    response = watcher.post("/rest/presence/subscription", json=body)
    assert response.status_code == 204, response.text
    deadline = time.monotonic() + 10
    while True:
        response = presentity.get("/rest/presence/subscription", params={"status": "open"})
        assert response.status_code == 200, response.text
        if granted in [s["watcher"] for s in response.json()["result"]]:
            break
        assert time.monotonic() < deadline, f"{granted} never asked to watch {address}"
        time.sleep(0.05)
    body = {"watcher": granted, "decisions": EVERYTHING}
    response = presentity.put("/rest/presence/subscription", json=body)
    assert response.status_code == 204, response.text


def test_schemathesis_finds_nothing(adapter_factory: AdapterFactory, tmp_path: Path) -> None:
    adapter = adapter_factory([ALICE_APP, BOB_APP])
    with adapter.client("alice-app") as alice, adapter.client("bob-app") as bob:
        for app in (alice, bob):
            response = app.post("/rest/presence", json={"presence": PRESENCE})
            assert response.status_code == 204, response.text
        watch(bob, alice, ALICE, BOB)
        watch(bob, bob, BOB, BOB)  # the presentity examples decide on BOB

    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    report = tmp_path / "events.ndjson"
    command = [
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run",
        f"{adapter.url}/openapi.json", "--url", adapter.url,
        "--checks", "all",
        "--auth", f"{BOB_APP.id}:{BOB_APP.password}",
        "--max-examples", str(MAX_EXAMPLES), "--seed", str(SEED), "--workers", "1",
        "--request-timeout", "20", "--no-color",
        "--report", "ndjson", "--report-ndjson-path", str(report),
    ]
    run = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False
    )
    assert run.returncode == 0, run.stdout[-20000:] + run.stderr[-5000:]
    assert " passed" in run.stdout, run.stdout[-5000:]

    # It exercised the operations for real: each answered 2xx at least once (in one
    # of its spellings: the second DELETE …/subscription(s) finds nothing left to
    # end), and the authentication it was given was not merely refused.
    statuses = answers(report)
    operation_of = {f"{op.method} {path}": op.id for op in OPERATIONS for path in op.paths}
    # (All but the document it reads, which it does not test.)
    assert set(statuses) == set(operation_of) - {"GET /openapi.json"}
    served = {operation_of[label] for label, seen in statuses.items() if min(seen) < 300}
    tested = {operation_of[label] for label in statuses}
    assert served == tested, {label: dict(seen) for label, seen in statuses.items()}
    assert not any(s >= 500 for seen in statuses.values() for s in seen)


def answers(report: Path) -> dict[str, collections.Counter[int]]:
    """Operation label ("GET /rest/presence") → how often each status was answered."""
    statuses: dict[str, collections.Counter[int]] = collections.defaultdict(collections.Counter)
    for line in report.read_text().splitlines():
        event = json.loads(line)
        finished = event.get("ScenarioFinished")
        if finished is None:
            continue
        recorder = finished["recorder"]
        for interaction in recorder.get("interactions", {}).values():
            response = interaction.get("response")
            if response is not None:
                statuses[recorder["label"]][response["status_code"]] += 1
    return statuses
