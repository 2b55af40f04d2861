"""Nothing is lost: the adapter killed, the presence server restarted or gone, a client away.

Real processes only: the adapter runs as ``presence-adapter serve`` in a
subprocess (tests/adapter_process.py) against a Kamailio of each test's own
(tests/presence_server.py, restarted on the same port and database where the
test says so), and notifications are received by the CometD JavaScript client
with the ack extension (tests/interop/cometd_listen.mjs).  The adapter probes
the server every 0.5 s (``[sip] keepalive``) so that faults are seen quickly;
tests wait on conditions, never on fixed sleeps longer than a barrier.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from lxml import etree

from sip import NotifyReceived, UserAgentEvent
from sip.aio import SipEndpoint
from sip.uri import SipURI
from tests.adapter_process import AdapterProcess
from tests.integration.conftest import BayeuxListener
from tests.presence_server import PresenceServer
from tests.rawsip import new_token

pytestmark = pytest.mark.integration

PASSWORD = "secret"
KEEPALIVE = 0.5
REQUEST_TIMEOUT = 3.0
WINFO_NS = "urn:ietf:params:xml:ns:watcherinfo"

CONFIG = """\
[http]
host = "127.0.0.1"
port = {http_port}

[sip]
server = "{sip_server}"
listen = "127.0.0.1:{sip_port}"
transport = "udp"
keepalive = {keepalive}
request_timeout = {request_timeout}

[xcap]
root = "{xcap_root}"

[store]
path = "{store}"

[[accounts]]
id = "alice-app"
password = "{password}"
addresses = ["{alice}"]

[[accounts]]
id = "bob-app"
password = "{password}"
addresses = ["{bob}"]
"""


# -- fixtures ------------------------------------------------------------------------


@pytest.fixture
def kamailio() -> Iterator[PresenceServer]:
    """A presence server of this test's own: tests here restart and stop it."""
    server = PresenceServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


class Scene:
    """One adapter process, its two applications, and their addresses."""

    def __init__(self, directory: Path, server: PresenceServer) -> None:
        run = new_token()[:8]
        self.alice = f"sip:alice-{run}@example.com"
        self.bob = f"sip:bob-{run}@example.com"
        self.server = server
        self.adapter = AdapterProcess(
            directory,
            CONFIG,
            sip_server=server.sip_uri,
            xcap_root=server.xcap_root,
            keepalive=KEEPALIVE,
            request_timeout=REQUEST_TIMEOUT,
            password=PASSWORD,
            alice=self.alice,
            bob=self.bob,
        )
        self.presentity = httpx.Client(
            base_url=self.adapter.url, auth=("alice-app", PASSWORD), timeout=10
        )
        self.watcher = httpx.Client(
            base_url=self.adapter.url, auth=("bob-app", PASSWORD), timeout=10
        )

    def close(self) -> None:
        self.presentity.close()
        self.watcher.close()
        self.adapter.stop()

    # presentity side

    def publish(self, value: str) -> httpx.Response:
        body = {"presence": [{"typeAndValue": {"unionElement": "Activity", "activity": value}}]}
        return self.presentity.post("/rest/presence", json=body)

    def authorize_bob(self) -> None:
        body = {
            "watcher": self.bob,
            "decisions": [{"presenceAttribute": "Activity", "decision": True}],
        }
        response = self.presentity.put("/rest/presence/subscription", json=body)
        assert response.status_code == 204, response.text

    # watcher side

    def subscribe(self, correlator: str, endpoint: str) -> httpx.Response:
        return self.watcher.post(
            "/rest/presence/subscription",
            json={
                "application": "durability test",
                "presentity": self.alice,
                "attributes": ["Activity"],
                "reference": {"correlator": correlator, "endpoint": endpoint},
            },
        )

    def start_notification(self, correlator: str, endpoint: str, count: int) -> httpx.Response:
        return self.watcher.post(
            "/rest/presence/notification",
            json={
                "presentity": self.alice,
                "attributes": ["Activity"],
                "count": count,
                "reference": {"correlator": correlator, "endpoint": endpoint},
            },
        )

    def seen_activity(self) -> str | None:
        """The Activity Get User Presence answers for alice, or None if it does not answer 200."""
        query = json.dumps({"presentity": self.alice, "attributes": ["Activity"]})
        response = self.watcher.get("/rest/presence", params={"query": query})
        if response.status_code != 200:
            return None
        for item in response.json()["result"]:
            value = item["typeAndValue"]
            if value["unionElement"] == "Activity":
                return str(value["activity"])
        return None

    def watching(self, correlator: str, endpoint: str, count: int, activity: str) -> None:
        """bob subscribed to alice and authorised, alice publishing, a schedule of ``count``."""
        response = self.subscribe(f"{correlator}-sub", "/bayeux/bob-app/subscription")
        assert response.status_code == 204, response.text
        self.authorize_bob()
        assert self.publish(activity).status_code == 204
        eventually(lambda: self.seen_activity() == activity, what=f"bob sees {activity}")
        response = self.start_notification(correlator, endpoint, count)
        assert response.status_code == 201, response.text


@pytest.fixture
def scene(
    kamailio: PresenceServer, tmp_path: Path
) -> Iterator[Scene]:
    made = Scene(tmp_path, kamailio)
    try:
        yield made
    finally:
        made.close()


def eventually(check: Callable[[], Any], timeout: float = 8, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        time.sleep(0.05)


def status_changed(correlator: str) -> Callable[[dict[str, Any]], bool]:
    def matches(message: dict[str, Any]) -> bool:
        data = message["data"].get("statusChanged")
        return data is not None and data.get("correlator") == correlator

    return matches


def status_end(correlator: str) -> Callable[[dict[str, Any]], bool]:
    def matches(message: dict[str, Any]) -> bool:
        data = message["data"].get("statusEnd")
        return data is not None and data.get("correlator") == correlator

    return matches


def activities(messages: list[dict[str, Any]]) -> list[str]:
    """The Activity each statusChanged carried, in order."""
    out = []
    for message in messages:
        for item in message["data"]["statusChanged"]["changedAttributes"]:
            if item["typeAndValue"]["unionElement"] == "Activity":
                out.append(item["typeAndValue"]["activity"])
    return out


def stored(store: Path) -> tuple[list[Any], dict[str, Any]]:
    """What the adapter's store file holds durably: the backlog's data, oldest first,
    and the schedules by correlator (read by a separate connection, as after a crash)."""
    db = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    try:
        backlog = [json.loads(d) for (d,) in db.execute("SELECT data FROM backlog ORDER BY seq")]
        schedules = {
            json.loads(value)["correlator"]: json.loads(value)
            for (value,) in db.execute("SELECT value FROM records WHERE kind = 'schedule'")
        }
    finally:
        db.close()
    return backlog, schedules


def first_notify(server: PresenceServer, subscriber: str, target: str, event: str,
                 accept: str) -> bytes:
    """The body of the first NOTIFY of a new subscription made by an endpoint of the
    test's own (the full state: RFC 6665 §4.2.1, RFC 3857 §5.2)."""

    async def ask() -> bytes:
        endpoint = SipEndpoint(host="127.0.0.1", port=0, server=SipURI.parse(server.sip_uri))
        await endpoint.start()
        first: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        def listen(event: UserAgentEvent) -> None:
            if isinstance(event, NotifyReceived) and not first.done():
                first.set_result(event.body)

        endpoint.add_listener(listen)
        try:
            subscription = await endpoint.subscribe(
                SipURI.parse(subscriber), SipURI.parse(target), event=event, accept=(accept,)
            )
            body = await asyncio.wait_for(first, 3)
            # Leave no dialog of ours behind: later checks count the server's watchers.
            await asyncio.wait_for(endpoint.unsubscribe(subscription), 3)
            return body
        finally:
            await endpoint.close()

    return asyncio.run(ask())


def winfo_watchers(server: PresenceServer, presentity: str) -> list[tuple[str, str]]:
    """(watcher URI, status) of every subscription the server lists for ``presentity``
    (one entry per dialog: two dialogs of one watcher are listed twice — measured)."""
    body = first_notify(
        server, presentity, presentity, "presence.winfo", "application/watcherinfo+xml"
    )
    return [
        (str(w.text), str(w.get("status")))
        for w in etree.fromstring(body).iter(f"{{{WINFO_NS}}}watcher")
    ]


def publications(server: PresenceServer, presentity: str) -> list[str]:
    """The entity tags of the publications the server holds for ``presentity``
    (its presentity table: publ_cache=1 keeps every publication in the database)."""
    user = SipURI.parse(presentity).user
    db = sqlite3.connect(f"file:{server.db_path}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT etag FROM presentity WHERE username = ?", (user,)).fetchall()
    finally:
        db.close()
    return sorted(str(etag) for (etag,) in rows)


# -- kill -9 --------------------------------------------------------------------------


def test_kill_9_and_restart_with_the_same_store_loses_nothing(
    scene: Scene, bayeux_listener: Callable[..., BayeuxListener]
) -> None:
    adapter = scene.adapter
    adapter.start()
    notes = "/bayeux/bob-app/notes"
    first = bayeux_listener(adapter.url + "/cometd", "bob-app", PASSWORD)
    scene.watching("kill", notes, count=5, activity="Busy")

    assert scene.publish("Away").status_code == 204
    first.wait_for(status_changed("kill"))
    # The application goes away: what comes now is kept for it, in the store.
    first.stop()
    for value, remaining in (("Meeting", 3), ("Meal", 2)):
        assert scene.publish(value).status_code == 204
        eventually(
            lambda remaining=remaining: stored(adapter.store_path)[1]["kill"]["remaining"]
            == remaining,
            what=f"remaining count {remaining} in the store",
        )

    def backlogged() -> list[dict[str, Any]]:
        return [{"data": d} for d in stored(adapter.store_path)[0] if "statusChanged" in d]

    kept = eventually(lambda: len(backlogged()) == 2 and backlogged(), what="a stored backlog")
    assert activities(kept) == ["Meeting", "Meal"]

    adapter.kill()
    adapter.restart()

    # Recovery re-subscribes on its own; Get User Presence answers again.
    eventually(lambda: scene.seen_activity() == "Meal", what="Get User Presence after restart")
    # The application comes back: a new client, as after its own restart.
    again = bayeux_listener(adapter.url + "/cometd", "bob-app", PASSWORD)
    again.wait_for(status_changed("kill"), count=2)
    for value in ("Sleeping", "Holiday"):
        assert scene.publish(value).status_code == 204
    again.wait_for(status_end("kill"))
    # After the statusEnd the schedule is gone: one more change is not notified.
    # Get User Presence takes the watch's lock, which the NOTIFY holds while it
    # delivers, so once it shows Travel any notification would have been sent.
    assert scene.publish("Travel").status_code == 204
    eventually(lambda: scene.seen_activity() == "Travel", what="Get User Presence shows Travel")
    time.sleep(0.3)

    received = first.matching(status_changed("kill")) + again.matching(status_changed("kill"))
    assert activities(received) == ["Away", "Meeting", "Meal", "Sleeping", "Holiday"]
    ending = again.matching(status_end("kill"))
    assert len(ending) == 1
    last = again.matching(lambda m: status_changed("kill")(m) or status_end("kill")(m))[-1]
    assert last is ending[0]

    # Kamailio lists bob once: the restarted adapter made one new dialog, and the
    # dead process's dialog is gone (see tests/data/kamailio/README.md).
    listed = [status for uri, status in winfo_watchers(scene.server, scene.alice)
              if uri == scene.bob]
    assert listed == ["active"]
