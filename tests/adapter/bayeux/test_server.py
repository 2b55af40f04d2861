"""The sans-IO Bayeux core, driven by hand with a manual clock (plain floats)."""

import itertools
import random

import pytest

from adapter.bayeux.backlog import Backlog
from adapter.bayeux.channels import Channel
from adapter.bayeux.errors import LocalProtocolError
from adapter.bayeux.events import (
    ChannelsSubscribed,
    ConnectReleased,
    MessagesConfirmed,
    MessagesDropped,
    SessionExpired,
)
from adapter.bayeux.limits import BayeuxLimits
from adapter.bayeux.message import Message
from adapter.bayeux.server import BayeuxServer

ACCOUNTS = {"alice": "a-secret", "bob": "b-secret"}
FULL_ADVICE = {"reconnect", "interval", "timeout"}


def authenticate(user: str, password: str) -> str | None:
    return user if ACCOUNTS.get(user) == password else None


def make(**limits) -> BayeuxServer:
    return BayeuxServer(authenticate, BayeuxLimits(**limits))


def msg(channel: str, **fields) -> Message:
    return Message(channel=channel, **fields)


def events(server: BayeuxServer) -> list:
    found = []
    while (event := server.next_event()) is not None:
        found.append(event)
    return found


def handshake(server, now=0.0, user="alice", ack=False, transport="long-polling") -> str:
    ext = {"authentication": {"user": user, "password": ACCOUNTS[user]}}
    if ack:
        ext["ack"] = True
    (reply,) = server.receive(
        [msg("/meta/handshake", id="h", ext=ext)], now, transport=transport
    ).replies
    assert reply["successful"] is True
    return reply["clientId"]


def connect(server, client_id, now, ack=None, transport="long-polling", id="c"):
    ext = None if ack is None else {"ack": ack}
    return server.receive(
        [msg("/meta/connect", id=id, client_id=client_id, connection_type=transport, ext=ext)],
        now,
        transport=transport,
    )


def subscribe(server, client_id, channel, now=0.0):
    (reply,) = server.receive(
        [msg("/meta/subscribe", id="s", client_id=client_id, subscription=channel)],
        now,
        transport="long-polling",
    ).replies
    return reply


def session_with_held_connect(server, user="alice", ack=False, now=0.0):
    client_id = handshake(server, now, user, ack)
    assert subscribe(server, client_id, f"/bayeux/{user}/**", now)["successful"]
    first = connect(server, client_id, now, ack=0 if ack else None)
    assert first.held is None  # the first connect is answered at once
    held = connect(server, client_id, now, ack=first.replies[-1].get("ext", {}).get("ack"))
    assert held.held is not None and held.replies == []
    return client_id, held.held


def fire(server, now):
    server.handle_timer(now)
    return events(server)


# ---------------------------------------------------------------- handshake


def test_handshake_reply_has_every_field_real_clients_read():
    server = make()
    (reply,) = server.receive(
        [
            msg(
                "/meta/handshake",
                id="7",
                version="1.0",
                supported_connection_types=("websocket", "long-polling"),
                ext={"authentication": {"user": "alice", "password": "a-secret"}},
            )
        ],
        0.0,
        transport="long-polling",
    ).replies
    assert reply["channel"] == "/meta/handshake"
    assert reply["id"] == "7"
    assert reply["successful"] is True
    assert reply["version"] == "1.0"
    assert set(reply["supportedConnectionTypes"]) == {"long-polling", "websocket"}
    assert reply["advice"] == {"reconnect": "retry", "interval": 0, "timeout": 30000}


def test_http_basic_credentials_authenticate_too():
    server = make()
    result = server.receive(
        [msg("/meta/handshake")], 0.0, transport="long-polling", credentials=("bob", "b-secret")
    )
    assert result.replies[0]["successful"] is True
    assert server.session_app(result.replies[0]["clientId"]) == "bob"


@pytest.mark.parametrize(
    ("ext", "credentials"),
    [
        (None, None),
        ({"authentication": {"user": "alice", "password": "wrong"}}, None),
        ({"authentication": {"user": "alice"}}, None),
        ({"authentication": "alice:a-secret"}, None),
        (None, ("alice", "b-secret")),
        ({"authentication": {"user": "mallory", "password": "x"}}, ("alice", "a-secret")),
    ],
)
def test_unauthenticated_handshakes_are_refused_with_403(ext, credentials):
    server = make()
    (reply,) = server.receive(
        [msg("/meta/handshake", id="1", ext=ext)],
        0.0,
        transport="long-polling",
        credentials=credentials,
    ).replies
    assert reply["successful"] is False
    assert reply["error"].startswith("403::")
    assert reply["id"] == "1"
    assert reply["advice"]["reconnect"] == "none" and set(reply["advice"]) == FULL_ADVICE
    assert "clientId" not in reply
    assert server.session_count() == 0
    assert server.counters.handshakes_refused == 1


def test_client_ids_are_random_and_at_least_128_bits():
    server = make(max_sessions_per_app=1000)
    ids = {handshake(server) for _ in range(200)}
    assert len(ids) == 200
    for client_id in ids:
        # base64url: 6 bits per character.
        assert len(client_id) * 6 >= 128


def test_no_common_connection_type_is_refused():
    server = make()
    (reply,) = server.receive(
        [msg("/meta/handshake", supported_connection_types=("callback-polling",))],
        0.0,
        transport="long-polling",
        credentials=("alice", "a-secret"),
    ).replies
    assert reply["successful"] is False and reply["error"].startswith("301:")


def test_sessions_per_application_are_bounded():
    server = make(max_sessions_per_app=2)
    handshake(server)
    handshake(server)
    (reply,) = server.receive(
        [msg("/meta/handshake")], 0.0, transport="websocket", credentials=("alice", "a-secret")
    ).replies
    assert reply["successful"] is False and reply["error"].startswith("403:")
    assert handshake(server, user="bob")


# ------------------------------------------------------------------ connect


def test_first_connect_is_answered_at_once_and_later_ones_are_held():
    server = make()
    client_id = handshake(server)
    first = connect(server, client_id, 1.0, id="c1")
    assert first.held is None
    (reply,) = first.replies
    assert reply == {
        "channel": "/meta/connect",
        "id": "c1",
        "clientId": client_id,
        "successful": True,
        "advice": {"reconnect": "retry", "interval": 0, "timeout": 30000},
    }
    second = connect(server, client_id, 1.1, id="c2")
    assert second.held is not None and second.replies == []
    assert server.get_timer() == pytest.approx(31.1)

    assert fire(server, 31.0) == []
    (released,) = fire(server, 31.1)
    assert isinstance(released, ConnectReleased) and released.token == second.held
    assert [r["id"] for r in released.replies] == ["c2"]


def test_client_advice_timeout_zero_is_answered_at_once():
    server = make()
    client_id = handshake(server)
    connect(server, client_id, 0.0)
    result = server.receive(
        [msg("/meta/connect", client_id=client_id, advice={"timeout": 0})],
        0.0,
        transport="long-polling",
    )
    assert result.held is None and result.replies[0]["successful"] is True


def test_a_new_connect_releases_the_held_one():
    server = make()
    client_id, token = session_with_held_connect(server)
    newer = connect(server, client_id, 2.0, transport="websocket", id="ws")
    (released,) = events(server)
    assert released.token == token and released.replies[-1]["successful"] is True
    assert newer.held is not None and newer.held != token


def test_delivery_releases_the_held_connect_on_the_next_timer_with_everything_queued():
    server = make()
    client_id, token = session_with_held_connect(server)
    assert server.deliver("alice", "/bayeux/alice/n", {"k": 1}, 5.0) == 1
    assert server.deliver("alice", "/bayeux/alice/n", {"k": 2}, 5.0) == 1
    assert events(server) == []  # not answered synchronously
    assert server.get_timer() == 5.0
    (released,) = fire(server, 5.0)
    assert released.token == token
    *deliveries, reply = released.replies
    assert [d["data"] for d in deliveries] == [{"k": 1}, {"k": 2}]
    assert all(d["channel"] == "/bayeux/alice/n" and "clientId" not in d for d in deliveries)
    assert len({d["id"] for d in deliveries}) == 2
    assert reply["channel"] == "/meta/connect" and reply["successful"] is True


def test_queued_messages_make_the_next_connect_immediate():
    server = make()
    client_id = handshake(server)
    subscribe(server, client_id, "/bayeux/alice/n")
    connect(server, client_id, 0.0)
    server.deliver("alice", "/bayeux/alice/n", {"k": 1}, 0.5)
    result = connect(server, client_id, 1.0)
    assert result.held is None
    assert [r.get("data") for r in result.replies] == [{"k": 1}, None]


def test_unknown_client_is_told_to_handshake_again():
    server = make()
    for channel in ("/meta/connect", "/meta/subscribe", "/meta/unsubscribe", "/meta/disconnect"):
        (reply,) = server.receive(
            [msg(channel, id="x", client_id="forged", subscription="/bayeux/alice")],
            0.0,
            transport="long-polling",
        ).replies
        assert reply["successful"] is False
        assert reply["error"].startswith("402:")
        assert reply["advice"]["reconnect"] == "handshake" and set(reply["advice"]) == FULL_ADVICE
        assert reply["id"] == "x"


def test_handshake_and_connect_in_one_batch():
    server = make()
    (handshake_reply,) = server.receive(
        [msg("/meta/handshake")], 0.0, transport="websocket", credentials=("alice", "a-secret")
    ).replies
    client_id = handshake_reply["clientId"]
    result = server.receive(
        [
            msg("/meta/subscribe", client_id=client_id, subscription="/bayeux/alice/*"),
            msg("/meta/connect", client_id=client_id),
        ],
        0.0,
        transport="websocket",
    )
    assert [r["channel"] for r in result.replies] == ["/meta/subscribe", "/meta/connect"]


def test_two_connects_in_one_batch_are_both_answered():
    server = make()
    client_id = handshake(server)
    connect(server, client_id, 0.0)
    result = server.receive(
        [
            msg("/meta/connect", id="1", client_id=client_id),
            msg("/meta/connect", id="2", client_id=client_id),
        ],
        1.0,
        transport="long-polling",
    )
    assert [r["id"] for r in result.replies] == ["1"]
    assert result.held is not None
    assert events(server) == []


# ------------------------------------------------------------------ expiry


def test_session_expires_without_connect_for_max_interval():
    server = make(max_interval=10)
    client_id = handshake(server, now=0.0)
    connect(server, client_id, 1.0)  # answered at once: expiry counts from here
    assert fire(server, 10.9) == []
    (expired,) = fire(server, 11.0)
    assert expired == SessionExpired("alice", client_id)
    assert server.session_count() == 0
    (reply,) = connect(server, client_id, 12.0).replies
    assert reply["error"].startswith("402:")


def test_a_held_connect_keeps_the_session_alive_and_expiry_restarts_after_it():
    server = make(max_interval=10, connect_timeout=30)
    client_id, token = session_with_held_connect(server)
    (released,) = fire(server, 30.0)
    assert released.token == token and server.session_count() == 1
    assert fire(server, 39.9) == []
    assert fire(server, 40.0) == [SessionExpired("alice", client_id)]


def test_abandoned_connect_leaves_the_session_to_expire_with_its_queue_backlogged():
    server = make(max_interval=10)
    client_id, token = session_with_held_connect(server)
    server.abandon(token, 3.0)
    server.deliver("alice", "/bayeux/alice/n", {"k": 1}, 4.0)
    assert fire(server, 4.0) == []  # nothing held any more
    assert fire(server, 13.0) == [SessionExpired("alice", client_id)]
    # A reconnecting application gets what the expired session never received.
    new_id = handshake(server, now=14.0)
    subscribe(server, new_id, "/bayeux/alice/**", now=14.0)
    replies = connect(server, new_id, 14.0).replies
    assert [r.get("data") for r in replies] == [{"k": 1}, None]


# ------------------------------------------------------------------ disconnect


def test_disconnect_releases_the_held_connect_and_ends_the_session():
    server = make()
    client_id, token = session_with_held_connect(server)
    (reply,) = server.receive(
        [msg("/meta/disconnect", id="d", client_id=client_id)], 1.0, transport="long-polling"
    ).replies
    assert reply == {
        "channel": "/meta/disconnect",
        "id": "d",
        "clientId": client_id,
        "successful": True,
    }
    (released,) = events(server)
    assert released.token == token
    assert server.session_count() == 0
    assert server.get_timer() is None


# ------------------------------------------------------------------ channels


@pytest.mark.parametrize(
    "channel",
    ["/bayeux/alice", "/bayeux/alice/*", "/bayeux/alice/**", "/bayeux/alice/x/y"],
)
def test_an_application_may_subscribe_under_its_own_root(channel):
    server = make()
    client_id = handshake(server)
    reply = subscribe(server, client_id, channel)
    assert reply["successful"] is True and reply["subscription"] == channel


@pytest.mark.parametrize(
    "channel",
    [
        "/bayeux/bob",
        "/bayeux/bob/**",
        "/bayeux/*",
        "/bayeux/**",
        "/**",
        "/*",
        "/meta/**",
        "/meta/connect",
        "/service/x",
        "/other",
    ],
)
def test_anything_else_is_refused_with_403(channel):
    server = make()
    client_id = handshake(server)
    reply = subscribe(server, client_id, channel)
    assert reply["successful"] is False
    assert reply["error"] == f"403:{channel}:subscription denied"


def test_a_subscription_list_is_all_or_nothing():
    server = make()
    client_id = handshake(server)
    reply = subscribe(server, client_id, ("/bayeux/alice/a", "/bayeux/bob/b"))
    assert reply["successful"] is False
    assert reply["subscription"] == ["/bayeux/alice/a", "/bayeux/bob/b"]
    assert server.deliver("alice", "/bayeux/alice/a", {}, 0.0) == 0


def test_invalid_subscription_is_a_400():
    server = make()
    client_id = handshake(server)
    assert subscribe(server, client_id, "/bayeux/alice/a*b")["error"].startswith("400:")
    (reply,) = server.receive(
        [msg("/meta/subscribe", client_id=client_id)], 0.0, transport="long-polling"
    ).replies
    assert reply["error"].startswith("400:")


def test_unsubscribe_stops_deliveries():
    server = make()
    client_id = handshake(server)
    subscribe(server, client_id, "/bayeux/alice/**")
    (reply,) = server.receive(
        [msg("/meta/unsubscribe", client_id=client_id, subscription="/bayeux/alice/**")],
        0.0,
        transport="long-polling",
    ).replies
    assert reply["successful"] is True
    assert server.deliver("alice", "/bayeux/alice/n", {}, 0.0) == 0


@pytest.mark.parametrize("channel", ["/bayeux/alice/n", "/bayeux/bob", "/service/x", "/chat"])
def test_clients_cannot_publish(channel):
    server = make()
    client_id = handshake(server)
    (reply,) = server.receive(
        [msg(channel, id="p", client_id=client_id, data={"forged": True})],
        0.0,
        transport="long-polling",
    ).replies
    assert reply == {
        "channel": channel,
        "id": "p",
        "clientId": client_id,
        "successful": False,
        "error": f"403:{channel}:publish denied",
    }


@pytest.mark.parametrize("channel", ["/meta/frobnicate", "not-a-channel", "/a//b"])
def test_unknown_or_invalid_channels_get_a_400(channel):
    server = make()
    (reply,) = server.receive([msg(channel, id="u")], 0.0, transport="long-polling").replies
    assert reply["successful"] is False and reply["error"].startswith("400:")
    assert reply["id"] == "u"


def test_deliveries_reach_every_subscribed_session_through_globs_and_no_other():
    server = make()
    a1, t1 = session_with_held_connect(server, "alice")
    a2 = handshake(server)
    subscribe(server, a2, "/bayeux/alice/n")
    connect(server, a2, 0.0)
    t2 = connect(server, a2, 0.0).held
    b, tb = session_with_held_connect(server, "bob")

    assert server.deliver("alice", "/bayeux/alice/n", {"k": 1}, 1.0) == 2
    released = {e.token: e.replies for e in fire(server, 1.0)}
    assert set(released) == {t1, t2}
    assert tb not in released


@pytest.mark.parametrize(
    "channel", ["/meta/connect", "/bayeux/bob/n", "/bayeux/alice/*", "/bayeux", "bad"]
)
def test_the_adapter_cannot_deliver_outside_the_application_tree(channel):
    server = make()
    with pytest.raises(LocalProtocolError):
        server.deliver("alice", channel, {}, 0.0)


def test_a_channel_checked_once_stays_checked_per_application():
    server = make()
    client_id = handshake(server)
    subscribe(server, client_id, "/bayeux/alice/n")
    assert server.deliver("alice", "/bayeux/alice/n", {}, 0.0) == 1
    assert server.deliver("alice", "/bayeux/alice/n", {}, 0.0) == 1
    # The same channel name is still not bob's, and a refusal is not remembered.
    for _ in range(2):
        with pytest.raises(LocalProtocolError):
            server.deliver("bob", "/bayeux/alice/n", {}, 0.0)
        with pytest.raises(LocalProtocolError):
            server.deliver("alice", "/bayeux/alice/*", {}, 0.0)


def test_deliveries_follow_subscriptions_made_and_dropped_between_them():
    server = make()
    first = handshake(server)
    subscribe(server, first, "/bayeux/alice/n")
    assert server.deliver("alice", "/bayeux/alice/n", {}, 0.0) == 1
    second = handshake(server)
    subscribe(server, second, "/bayeux/alice/**")
    assert server.deliver("alice", "/bayeux/alice/n", {}, 0.0) == 2
    server.receive(
        [msg("/meta/unsubscribe", client_id=first, subscription="/bayeux/alice/n")],
        0.0,
        transport="long-polling",
    )
    assert server.deliver("alice", "/bayeux/alice/n", {}, 0.0) == 1
    server.receive([msg("/meta/disconnect", client_id=second)], 0.0, transport="long-polling")
    assert server.deliver("alice", "/bayeux/alice/n", {}, 0.0) == 0


def test_non_json_data_is_refused():
    with pytest.raises(LocalProtocolError):
        make().deliver("alice", "/bayeux/alice/n", {"x": object()}, 0.0)
    with pytest.raises(LocalProtocolError):
        make().deliver("alice", "/bayeux/alice/n", {1j: 1}, 0.0)


# ------------------------------------------------------------------ queues


def test_a_full_session_queue_drops_the_oldest_and_counts_them():
    server = make(queue_size=3)
    client_id = handshake(server)
    subscribe(server, client_id, "/bayeux/alice/**")
    connect(server, client_id, 0.0)
    for k in range(5):
        server.deliver("alice", "/bayeux/alice/n", {"k": k}, 1.0)
    dropped = [e for e in events(server) if isinstance(e, MessagesDropped)]
    assert sum(e.count for e in dropped) == 2
    assert all(e.client_id == client_id for e in dropped)
    assert server.counters.messages_dropped == 2
    replies = connect(server, client_id, 2.0).replies
    assert [r["data"]["k"] for r in replies[:-1]] == [2, 3, 4]


# ------------------------------------------------------------------ ack


def test_ack_batches_resend_what_a_lost_reply_carried():
    server = make()
    client_id, token = session_with_held_connect(server, ack=True)
    server.deliver("alice", "/bayeux/alice/n", {"k": 1}, 1.0)
    (released,) = fire(server, 1.0)
    batch = released.replies[-1]["ext"]["ack"]
    assert [r.get("data") for r in released.replies] == [{"k": 1}, None]

    # That reply never reached the client: it reconnects acking the previous batch.
    server.deliver("alice", "/bayeux/alice/n", {"k": 2}, 2.0)
    again = connect(server, client_id, 3.0, ack=batch - 1)
    assert [r.get("data") for r in again.replies] == [{"k": 1}, {"k": 2}, None]
    newer = again.replies[-1]["ext"]["ack"]
    assert newer > batch

    # Acknowledged: nothing is sent twice.
    held = connect(server, client_id, 4.0, ack=newer)
    assert held.held is not None
    (timed_out,) = fire(server, 34.0)
    assert [r["channel"] for r in timed_out.replies] == ["/meta/connect"]


def test_handshake_confirms_ack_only_when_asked():
    server = make()
    (with_ack,) = server.receive(
        [msg("/meta/handshake", ext={"ack": True})],
        0.0,
        transport="long-polling",
        credentials=("alice", "a-secret"),
    ).replies
    (without,) = server.receive(
        [msg("/meta/handshake")], 0.0, transport="long-polling", credentials=("alice", "a-secret")
    ).replies
    assert with_ack["ext"] == {"ack": True}
    assert "ext" not in without


def test_unacknowledged_messages_survive_session_expiry():
    server = make(max_interval=10)
    client_id, _ = session_with_held_connect(server, ack=True)
    server.deliver("alice", "/bayeux/alice/n", {"k": 1}, 1.0)
    fire(server, 1.0)  # sent, never acknowledged: the client vanished
    assert fire(server, 11.0) == [SessionExpired("alice", client_id)]
    fresh = handshake(server, now=12.0, ack=True)
    subscribe(server, fresh, "/bayeux/alice/**", now=12.0)
    replies = connect(server, fresh, 12.0, ack=0).replies
    assert [r.get("data") for r in replies] == [{"k": 1}, None]


# ------------------------------------------------------------------ backlog


def test_backlog_is_handed_to_the_next_matching_subscription_and_expires():
    server = make(backlog_size=3, backlog_ttl=60)
    assert server.deliver("alice", "/bayeux/alice/n", {"k": 1}, 0.0) == 0
    assert server.deliver("alice", "/bayeux/alice/n", {"k": 2}, 1.0) == 0
    assert server.deliver("alice", "/bayeux/alice/n", {"k": 3}, 2.0) == 0
    assert server.deliver("alice", "/bayeux/alice/other", {"k": 4}, 2.0) == 0
    assert events(server) == [MessagesDropped("alice", None, 1)]  # k=1, the oldest
    assert server.counters.messages_dropped == 1
    assert server.get_timer() == 60.0

    client_id = handshake(server, now=30.0)
    subscribe(server, client_id, "/bayeux/alice/n", now=30.0)
    replies = connect(server, client_id, 30.0).replies
    assert [r.get("data") for r in replies] == [{"k": 2}, {"k": 3}, None]

    # k=4 ("other") stays kept until its TTL, then is gone.
    server.handle_timer(62.0)
    late = handshake(server, now=63.0)
    subscribe(server, late, "/bayeux/alice/other", now=63.0)
    assert [r["channel"] for r in connect(server, late, 63.0).replies] == ["/meta/connect"]


def test_close_application_ends_its_sessions_only():
    server = make()
    a, ta = session_with_held_connect(server, "alice")
    b, tb = session_with_held_connect(server, "bob")
    assert server.close_application("alice", 1.0) == 1
    (released,) = events(server)
    assert released.token == ta
    (reply,) = connect(server, a, 2.0).replies
    assert reply["error"].startswith("402:")
    assert server.session_count("bob") == 1


def test_release_all_answers_every_held_connect():
    server = make()
    _, ta = session_with_held_connect(server, "alice")
    _, tb = session_with_held_connect(server, "bob")
    server.release_all(1.0)
    assert {e.token for e in events(server)} == {ta, tb}


def test_limits_must_be_positive():
    with pytest.raises(ValueError):
        BayeuxLimits(queue_size=0)
    with pytest.raises(ValueError):
        BayeuxLimits(connect_timeout=-1)
    assert BayeuxLimits(interval=0).interval == 0


def test_injected_client_ids_are_used():
    ids = itertools.count()
    server = BayeuxServer(authenticate, new_client_id=lambda: f"id{next(ids)}")
    assert handshake(server) == "id0"


# ---------------------------------------------------------------- shutdown


def test_drain_answers_held_connects_with_handshake_advice_and_keeps_what_was_not_confirmed():
    backlog = Backlog(10, 3600.0)
    server = BayeuxServer(authenticate, BayeuxLimits(), backlog=backlog)
    client_id, token = session_with_held_connect(server, "alice", ack=True)
    # A delivery moves the held connect's deadline but is not sent before the timer runs.
    server.deliver("alice", "/bayeux/alice/notes", {"n": 1}, 1.0)
    assert server.drain(1.0, interval=2.0) == 1
    (released,) = [e for e in events(server) if isinstance(e, ConnectReleased)]
    assert released.token == token
    (reply,) = released.replies  # no messages in it: they stay for after the restart
    assert reply["channel"] == "/meta/connect" and reply["successful"] is True
    assert reply["advice"] == {"reconnect": "handshake", "interval": 2000, "timeout": 30000}
    assert server.session_count() == 0
    # The message went to the application's backlog (which the store keeps).
    (kept,) = backlog.take("alice", [Channel.parse("/bayeux/alice/**")], 2.0)
    assert kept.data == {"n": 1}


def test_sessions_are_counted_by_the_transport_of_their_latest_connect():
    server = make()
    waiting = handshake(server)
    polling = handshake(server, user="bob")
    connect(server, polling, 0.0)
    socket = handshake(server)
    connect(server, socket, 0.0, transport="websocket")
    assert waiting != polling
    assert server.sessions_by_transport() == {"": 1, "long-polling": 1, "websocket": 1}


@pytest.mark.parametrize("seed", range(4))
def test_the_counts_by_transport_follow_every_session_made_connected_and_ended(seed):
    rng = random.Random(seed)
    server = make(max_sessions_per_app=50)
    now = 0.0
    clients: list[str] = []
    most = 0
    for _ in range(2000):
        step = rng.random()
        if step < 0.25 or not clients:
            clients.append(handshake(server, now, user=rng.choice(("alice", "bob"))))
        elif step < 0.6:
            connect(server, rng.choice(clients), now,
                    transport=rng.choice(("long-polling", "websocket")), id=str(step))
        elif step < 0.7:
            server.receive([msg("/meta/disconnect", id="d", client_id=rng.choice(clients))],
                           now, transport="long-polling")
        elif step < 0.72:
            server.close_application(rng.choice(("alice", "bob")), now)
        else:
            now += rng.choice((1.0, 10.0, 60.0))
            server.handle_timer(now)
        events(server)
        recount: dict[str, int] = {}
        for session in server._sessions.values():  # the long way: every session
            recount[session.transport] = recount.get(session.transport, 0) + 1
        assert server.sessions_by_transport() == recount
        most = max(most, server.session_count())
    assert most >= 10


def test_after_the_drain_handshakes_are_refused_with_advice_to_come_back():
    server = make()
    server.drain(0.0, interval=2.0)
    ext = {"authentication": {"user": "alice", "password": ACCOUNTS["alice"]}}
    (reply,) = server.receive(
        [msg("/meta/handshake", id="h", ext=ext)], 0.0, transport="websocket"
    ).replies
    assert reply["successful"] is False and reply["error"].startswith("503:")
    assert reply["advice"]["reconnect"] == "handshake" and reply["advice"]["interval"] == 2000
    assert server.session_count() == 0


# -- a shared server (a cluster node: adapter.cluster.relay feeds it) -------------


def shared(**limits) -> BayeuxServer:
    return BayeuxServer(authenticate, BayeuxLimits(**limits), shared=True)


def test_a_shared_server_tells_subscriptions_and_delivers_under_the_given_ids():
    server = shared()
    client_id = handshake(server, ack=True)
    assert subscribe(server, client_id, "/bayeux/alice/**")["successful"]
    (told,) = events(server)
    assert told == ChannelsSubscribed("alice", (Channel.parse("/bayeux/alice/**"),))
    assert server.deliver("alice", "/bayeux/alice/x", {"n": 1}, 0.0, "1700000000000-0") == 1
    replies = connect(server, client_id, 0.0, ack=0).replies
    assert [r["id"] for r in replies[:-1]] == ["1700000000000-0"]
    assert server.queued_ids("alice") == {"1700000000000-0"}


def test_a_shared_server_tells_what_an_acknowledged_batch_carried():
    server = shared()
    client_id, token = session_with_held_connect(server, ack=True)
    events(server)
    server.deliver("alice", "/bayeux/alice/x", 1, 0.0, "1-0")
    server.deliver("alice", "/bayeux/alice/x", 2, 0.0, "2-0")
    (released,) = fire(server, 0.0)
    batch = released.replies[-1]["ext"]["ack"]
    assert events(server) == []  # sent, not yet acknowledged
    connect(server, client_id, 0.0, ack=batch)
    assert events(server) == [MessagesConfirmed("alice", ("1-0", "2-0"))]
    assert server.queued_ids("alice") == set()


def test_without_the_ack_extension_a_shared_server_tells_what_it_sent():
    server = shared()
    client_id, token = session_with_held_connect(server)
    events(server)
    server.deliver("alice", "/bayeux/alice/x", 1, 0.0, "1-0")
    confirmed, released = fire(server, 0.0)
    assert confirmed == MessagesConfirmed("alice", ("1-0",))
    assert isinstance(released, ConnectReleased) and released.token == token


def test_a_shared_server_tells_what_a_disconnecting_client_was_sent():
    server = shared()
    client_id = handshake(server, ack=True)
    subscribe(server, client_id, "/bayeux/alice/**")
    server.deliver("alice", "/bayeux/alice/x", 1, 0.0, "1-0")
    connect(server, client_id, 0.0, ack=0)  # sent, not acknowledged
    events(server)
    server.receive([msg("/meta/disconnect", client_id=client_id)], 0.0, transport="long-polling")
    assert events(server) == [MessagesConfirmed("alice", ("1-0",))]


def test_a_shared_server_keeps_no_backlog():
    server = shared()
    assert server.deliver("alice", "/bayeux/alice/x", 1, 0.0, "1-0") == 0
    client_id = handshake(server, ack=True)
    subscribe(server, client_id, "/bayeux/alice/**")
    # The message stays in its stream; the relay hands it on after ChannelsSubscribed.
    assert connect(server, client_id, 0.0, ack=0).replies[:-1] == []
    assert server.counters.messages_backlogged == 0
    # A session that ends unconfirmed leaves its messages to the stream too.
    server.deliver("alice", "/bayeux/alice/x", 2, 0.0, "2-0")
    events(server)
    assert server.close_application("alice", 0.0) == 1
    assert [e for e in events(server) if isinstance(e, MessagesConfirmed)] == []
    other = handshake(server, ack=True)
    subscribe(server, other, "/bayeux/alice/**")
    assert connect(server, other, 0.0, ack=0).replies[:-1] == []


def test_settled_says_when_a_delivery_left_the_driver_nothing_to_do():
    server = make(connect_timeout=30, queue_size=2)
    session_with_held_connect(server)
    events(server)
    assert server.get_timer() == 30.0
    assert server.settled()
    # The first message moves the held connect's deadline to now: re-arm.
    server.deliver("alice", "/bayeux/alice/x", {"n": 1}, 1.0)
    assert not server.settled()
    assert server.get_timer() == 1.0
    assert server.settled()
    # The connect is already due: the next one changes no deadline.
    server.deliver("alice", "/bayeux/alice/x", {"n": 2}, 1.1)
    assert server.settled()
    # A full queue drops the oldest: an event for the driver.
    server.deliver("alice", "/bayeux/alice/x", {"n": 3}, 1.2)
    assert not server.settled()
    assert [type(e) for e in events(server)] == [MessagesDropped]
    server.get_timer()
    assert server.settled()
    server.handle_timer(1.2)
    assert not server.settled()  # the connect was released
    assert [type(e) for e in events(server)] == [ConnectReleased]
