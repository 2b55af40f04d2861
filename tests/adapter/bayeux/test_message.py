import json

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapter.bayeux.channels import Channel
from adapter.bayeux.errors import RemoteProtocolError
from adapter.bayeux.message import Delivery, Message, encode_batch, parse_batch


def test_parses_a_cometd_handshake_batch():
    body = json.dumps(
        [
            {
                "id": "1",
                "version": "1.0",
                "minimumVersion": "1.0",
                "channel": "/meta/handshake",
                "supportedConnectionTypes": ["websocket", "long-polling"],
                "advice": {"timeout": 60000, "interval": 0},
                "ext": {"ack": True},
            }
        ]
    )
    (message,) = parse_batch(body.encode())
    assert message.channel == "/meta/handshake"
    assert message.id == "1"
    assert message.supported_connection_types == ("websocket", "long-polling")
    assert message.ext == {"ack": True}
    assert message.advice == {"timeout": 60000, "interval": 0}


def test_a_single_object_is_a_batch_of_one():
    assert parse_batch('{"channel": "/meta/connect", "clientId": "x"}') == [
        Message(channel="/meta/connect", client_id="x")
    ]


def test_subscription_may_be_a_list():
    (message,) = parse_batch('[{"channel": "/meta/subscribe", "subscription": ["/a", "/b"]}]')
    assert message.subscriptions == ("/a", "/b")


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"\xff\xfe",
        b"[1]",
        b'[{"channel": 3}]',
        b'[{"data": {}}]',
        b'[{"channel": "/a", "id": true}]',
        b'[{"channel": "/a", "id": {}}]',
        b'[{"channel": "/a", "clientId": 5}]',
        b'[{"channel": "/a", "subscription": 5}]',
        b'[{"channel": "/a", "subscription": [5]}]',
        b'[{"channel": "/a", "ext": []}]',
        b'[{"channel": "/a", "advice": "x"}]',
        b'[{"channel": "/a", "supportedConnectionTypes": "websocket"}]',
        b"[" * 100_000 + b"]" * 100_000,
        json.dumps([{"channel": "/a"}] * 1001).encode(),
    ],
)
def test_garbage_is_a_remote_protocol_error(body):
    with pytest.raises(RemoteProtocolError):
        parse_batch(body)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
message_like = st.dictionaries(
    st.sampled_from(
        [
            "channel",
            "id",
            "clientId",
            "subscription",
            "ext",
            "advice",
            "data",
            "connectionType",
            "supportedConnectionTypes",
            "version",
        ]
    ),
    json_values,
)


@given(st.binary() | st.lists(message_like).map(lambda m: json.dumps(m).encode()))
def test_only_remote_protocol_errors_escape(body):
    try:
        messages = parse_batch(body)
    except RemoteProtocolError:
        return
    assert all(isinstance(m.channel, str) for m in messages)


def _plain_encoding(messages):
    # What encode_batch would produce if deliveries did not carry their own text.
    return msgspec.json.encode([dict(m) for m in messages]).decode()


@given(st.lists(json_values, max_size=5), st.lists(message_like, max_size=3))
def test_a_batch_with_encoded_deliveries_is_the_plain_encoding(datas, others):
    channel = Channel.parse("/bayeux/app/notify")
    deliveries = [Delivery(channel, data, str(n)).to_wire() for n, data in enumerate(datas)]
    batch = [*deliveries, *others]
    assert encode_batch(batch) == _plain_encoding(batch)
    assert json.loads(encode_batch(batch)) == [dict(m) for m in batch]


def test_a_delivery_is_encoded_once_and_reads_as_its_message():
    delivery = Delivery(Channel.parse("/bayeux/app/x"), {"note": "é ✓"}, "7")
    wire = delivery.to_wire()
    assert wire == {"channel": "/bayeux/app/x", "data": {"note": "é ✓"}, "id": "7"}
    assert wire.wire == '{"channel":"/bayeux/app/x","data":{"note":"é ✓"},"id":"7"}'
    assert delivery.to_wire() is wire
    assert encode_batch([wire, wire]) == f"[{wire.wire},{wire.wire}]"
    assert encode_batch([]) == "[]"


def test_a_delivery_is_its_own_wire_form_and_equal_by_its_text():
    channel = Channel.parse("/bayeux/app/x")
    delivery = Delivery(channel, {"n": 1}, "7")
    assert delivery.to_wire() is delivery  # one object per message, in every reply
    assert delivery.channel is channel and delivery.id == "7"
    assert delivery == {"channel": "/bayeux/app/x", "data": {"n": 1}, "id": "7"}
    assert delivery != {"channel": "/bayeux/app/x", "data": {"n": 2}, "id": "7"}
    assert delivery == Delivery(channel, {"n": 1}, "7")
    assert delivery != Delivery(channel, {"n": 1}, "8")
    assert encode_batch([delivery, {"channel": "/meta/connect"}]) == (
        '[{"channel":"/bayeux/app/x","data":{"n":1},"id":"7"},{"channel":"/meta/connect"}]'
    )


def test_a_delivery_keeps_its_text_not_the_callers_data():
    data = {"statusChanged": {"correlator": "c", "changedAttributes": [{"note": "n"}]}}
    delivery = Delivery(Channel.parse("/bayeux/app/x"), data, "7")
    data["statusChanged"]["correlator"] = "changed afterwards"
    assert delivery.data == {
        "statusChanged": {"correlator": "c", "changedAttributes": [{"note": "n"}]}
    }
    assert json.loads(delivery.to_wire().wire)["data"]["statusChanged"]["correlator"] == "c"
    assert delivery == Delivery(
        Channel.parse("/bayeux/app/x"),
        {**data, "statusChanged": {"correlator": "c", "changedAttributes": [{"note": "n"}]}},
        "7",
    )
    assert delivery != Delivery(Channel.parse("/bayeux/app/x"), data, "7")


def test_a_delivery_of_data_that_is_not_json_fails_when_made():
    with pytest.raises(TypeError):
        Delivery(Channel.parse("/bayeux/app/x"), {"when": object()}, "1")


def test_a_delivery_of_text_that_is_not_unicode_fails_when_made():
    # A lone surrogate has no UTF-8 form: it would fail in the transport instead.
    with pytest.raises(ValueError):
        Delivery(Channel.parse("/bayeux/app/x"), {"note": "\ud800"}, "1")


def test_a_reply_may_carry_any_mapping():
    from types import MappingProxyType

    reply = {"channel": "/meta/connect", "ext": MappingProxyType({"ack": 3})}
    assert encode_batch([reply]) == '[{"channel":"/meta/connect","ext":{"ack":3}}]'
