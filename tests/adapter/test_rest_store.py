"""REST calls when the store cannot write: 503 SVC0001 with Retry-After, and nothing half-done.

The real services over a real SQLite store whose database refuses every
write while told to (a trigger, as a full disk or a read-only file would
refuse); only the SIP and XCAP sides are the services' test fakes.
"""

import asyncio
import contextlib
import json
import logging
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.testclient import TestClient

from adapter import rest
from adapter.auth import Accounts
from adapter.config import Account, Config, load_config
from adapter.openapi import openapi_document
from adapter.presentity import PresentityService
from adapter.store import SqliteStore, StaleLease
from adapter.watcher import WatcherService
from pidf import decode
from tests.adapter import test_presentity as presentity_fakes
from tests.adapter import test_watcher as watcher_fakes
from tests.adapter.test_rest_publish import ALICE, ALICE_AUTH, basic, rest_client
from tests.adapter.test_store import rows_on_disk

REPO = Path(__file__).resolve().parents[2]
DISK_FULL = "disk full (refused by the test)"
UNAVAILABLE = {
    "requestError": {
        "serviceException": {
            "messageId": "SVC0001",
            "text": "A service error occurred. Error code is %1",
            "variables": ["store unavailable, retry later"],
        }
    }
}
BOB = Account(id=watcher_fakes.APP, password="bob-secret", addresses=(watcher_fakes.BOB,))
BOB_AUTH = {"Authorization": basic(BOB.id, "bob-secret")}


@pytest.fixture(scope="module")
def config() -> Config:
    return load_config(REPO / "conf/adapter.toml", cwd=REPO)


@contextlib.contextmanager
def refusing(path: Path) -> Iterator[None]:
    """The database refuses every write of a record meanwhile."""
    events = ("INSERT", "DELETE")
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        for event in events:
            db.execute(
                f"CREATE TRIGGER refuse_{event} BEFORE {event} ON records "
                f"BEGIN SELECT RAISE(ABORT, '{DISK_FULL}'); END"
            )
    try:
        yield
    finally:
        with contextlib.closing(sqlite3.connect(path)) as db, db:
            for event in events:
                db.execute(f"DROP TRIGGER refuse_{event}")


class Services:
    """The real presentity and watcher services on one SQLite store, behind the app."""

    def __init__(self, config: Config, path: Path) -> None:
        self.path = path
        self.publications = presentity_fakes.FakeEndpoint(None)  # type: ignore[arg-type]
        self.subscriptions = watcher_fakes.FakeEndpoint()
        self.watcher: WatcherService | None = None

        @contextlib.asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
            store = SqliteStore(path)
            presentity = PresentityService(
                self.publications,  # type: ignore[arg-type]
                presentity_fakes.FakeXcap(),  # type: ignore[arg-type]
                store=store,
                request_timeout=3.0,
            )
            self.watcher = WatcherService(
                self.subscriptions,  # type: ignore[arg-type]
                watcher_fakes.FakeXcap(),  # type: ignore[arg-type]
                watcher_fakes.FakeBayeux(),
                store=store,
            )
            yield {
                "accounts": Accounts([ALICE, BOB]),
                "presentity": presentity,
                "watcher": self.watcher,
                "notification_policy": config.notifications,
            }
            await self.watcher.close()
            await presentity.close()
            await store.close()

        self.http = rest_client(config, lifespan)

    def published(self) -> list[tuple[str, list[str]]]:
        """What went to the presence server: (publish or modify, the attribute values)."""
        out = []
        for what, _, extra in self.publications.sent:
            body = extra[0] if what == "publish" else extra
            out.append((what, [a.value.value for a in decode(body).attributes]))
        return out

    def stored(self, kind: str) -> list[str]:
        rows = rows_on_disk(self.path, f"SELECT key FROM records WHERE kind = '{kind}'")
        return [key for (key,) in rows]


def publish(http: TestClient, union: str, member: str, value: str) -> Any:
    body = {"presence": [{"typeAndValue": {"unionElement": union, member: value}}]}
    return http.post("/rest/presence", json=body, headers=ALICE_AUTH)


def test_a_publish_the_store_refuses_is_503_and_undone(
    config: Config, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    world = Services(config, tmp_path / "state.db")
    with world.http as http, caplog.at_level(logging.INFO):
        with refusing(world.path):
            first = publish(http, "Activity", "activity", "Busy")
        assert first.status_code == 503, first.text
        assert first.headers["retry-after"] == str(rest.STORE_RETRY_AFTER)
        assert first.json() == UNAVAILABLE
        # Nothing went out: the store is written before the PUBLISH.
        assert world.publications.sent == []

        assert publish(http, "Place", "place", "Office").status_code == 204
        with refusing(world.path):
            refused = publish(http, "Activity", "activity", "Away")
            withdrawal = http.delete("/rest/presence", headers=ALICE_AUTH)
        assert (refused.status_code, withdrawal.status_code) == (503, 503)
        assert publish(http, "Activity", "activity", "Meeting").status_code == 204

    # The refused Busy and Away were never published, nor merged into what
    # was later: the publication began with Office alone, and the withdrawal
    # refused left it in place.
    assert world.published() == [("publish", ["Office"]), ("modify", ["Meeting", "Office"])]
    (kept,) = rows_on_disk(world.path, "SELECT value FROM records WHERE kind = 'publication'")
    assert "Meeting" in kept[0] and "Away" not in kept[0]
    # Per failed call: the store's one error line, the call's one line, no traceback.
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.name for r in errors] == ["adapter.store.sqlite"] * 3
    assert all(DISK_FULL in r.getMessage() for r in errors)
    calls = [r.getMessage() for r in caplog.records if "store unavailable" in r.getMessage()]
    assert calls == [
        f"POST /rest/presence: store unavailable: {world.path}: {DISK_FULL}",
        f"POST /rest/presence: store unavailable: {world.path}: {DISK_FULL}",
        f"DELETE /rest/presence: store unavailable: {world.path}: {DISK_FULL}",
    ]
    assert not any(r.exc_info for r in caplog.records)


def subscribe_presence(http: TestClient) -> Any:
    return http.post(
        "/rest/presence/subscription",
        json={
            "application": "bob's app",
            "presentity": watcher_fakes.ALICE,
            "attributes": ["Activity"],
            "reference": {"correlator": "s1", "endpoint": f"/bayeux/{BOB.id}/s1"},
        },
        headers=BOB_AUTH,
    )


def start_notification(http: TestClient) -> Any:
    return http.post(
        "/rest/presence/notification",
        json={
            "presentity": watcher_fakes.ALICE,
            "attributes": ["Activity"],
            "count": 5,
            "reference": {"correlator": "n1", "endpoint": f"/bayeux/{BOB.id}/n1"},
        },
        headers=BOB_AUTH,
    )


def test_watcher_calls_the_store_refuses_are_503_and_leave_nothing_behind(
    config: Config, tmp_path: Path
) -> None:
    world = Services(config, tmp_path / "state.db")
    with world.http as http:
        assert world.watcher is not None
        machine = world.watcher.machine
        with refusing(world.path):
            subscribed = subscribe_presence(http)
            started = start_notification(http)
        for refused in (subscribed, started):
            assert refused.status_code == 503, refused.text
            assert refused.json() == UNAVAILABLE
            assert refused.headers["retry-after"] == str(rest.STORE_RETRY_AFTER)
        # The Subscribe Presence was written before its SUBSCRIBE: none went
        # out.  Start Presence Notification subscribes first: its
        # subscription, needed by nothing kept, is ended.
        (only,) = world.subscriptions.subscribed
        assert world.subscriptions.unsubscribed == [only[2]]
        assert machine.get(watcher_fakes.BOB, watcher_fakes.ALICE) is None
        assert machine.schedules == {}

        # Retried once the store writes again, each succeeds: the correlator
        # was not left taken.
        assert start_notification(http).status_code == 201
        assert subscribe_presence(http).status_code == 204
        assert set(machine.schedules) == {(BOB.id, "n1")}
    assert world.stored("schedule") and world.stored("watch")


def test_the_document_describes_the_503_of_every_call_that_stores() -> None:
    paths = openapi_document()["paths"]
    storing = {
        ("/rest/presence", "post"),
        ("/rest/presence", "delete"),
        ("/rest/presence/subscription", "post"),
        ("/rest/presence/subscription", "delete"),
        ("/rest/presence/notification", "post"),
        ("/rest/presence/notification/{correlator}", "delete"),
    }
    for path, method in storing:
        answer = paths[path][method]["responses"]["503"]
        examples = answer["content"]["application/json"]["examples"].values()
        assert UNAVAILABLE in [example["value"] for example in examples], (path, method)


def test_a_write_under_a_lease_lost_asks_to_retry_at_once() -> None:
    # A node of a cluster that lost the work (or just ended it): asked again,
    # the call goes where the work is now.
    scope = {"type": "http", "method": "POST", "path": "/rest/presence", "headers": [],
             "query_string": b""}
    answer = asyncio.run(rest._store_error(Request(scope), StaleLease("publication x")))
    assert answer.status_code == 503 and answer.headers["Retry-After"] == "1"
    error = json.loads(bytes(answer.body))["requestError"]["serviceException"]
    assert (error["messageId"], error["variables"]) == (
        "SVC0001", ["work changing hands between nodes, retry later"])
