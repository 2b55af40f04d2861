"""Bayeux messages as they cross the wire (Bayeux 1.0 §3, §5).

A batch is a JSON array of message objects, or a single object (accepted for
the benefit of hand-written clients). Everything received is validated here,
once: after `parse_batch` the rest of the layer works on typed values.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from adapter.bayeux.channels import Channel
from adapter.bayeux.errors import RemoteProtocolError

# A message id is echoed back verbatim (Bayeux 1.0 §5.1.7 "id": a reply
# "MAY include the id field from the request").
MessageId = str | int | None

# json.loads recurses once per nesting level; a hostile body of "[[[[…" must
# become a RemoteProtocolError, not a RecursionError from deep inside.
_MAX_MESSAGES_PER_BATCH = 1000


@dataclass(frozen=True, slots=True)
class Message:
    """One received Bayeux message, fields validated by type."""

    channel: str
    id: MessageId = None
    client_id: str | None = None
    # As sent: one channel name, or a list (the CometD client batches
    # re-subscriptions into one message); echoed back in the reply.
    subscription: str | tuple[str, ...] | None = None
    connection_type: str | None = None
    supported_connection_types: tuple[str, ...] | None = None
    version: str | None = None
    ext: Mapping[str, Any] | None = None
    advice: Mapping[str, Any] | None = None
    data: Any = None

    @classmethod
    def parse(cls, obj: object) -> Message:
        if not isinstance(obj, dict):
            raise RemoteProtocolError("a Bayeux message must be a JSON object")
        channel = obj.get("channel")
        if not isinstance(channel, str):
            raise RemoteProtocolError("message without a string 'channel'")
        message_id = obj.get("id")
        if message_id is not None and (
            isinstance(message_id, bool) or not isinstance(message_id, str | int)
        ):
            raise RemoteProtocolError("'id' must be a string")
        subscription = obj.get("subscription")
        if isinstance(subscription, list):
            if not all(isinstance(s, str) for s in subscription):
                raise RemoteProtocolError("'subscription' must be channel names")
            subscription = tuple(subscription)
        elif subscription is not None and not isinstance(subscription, str):
            raise RemoteProtocolError("'subscription' must be a channel name")
        supported = obj.get("supportedConnectionTypes")
        if supported is not None:
            if not isinstance(supported, list) or not all(isinstance(s, str) for s in supported):
                raise RemoteProtocolError("'supportedConnectionTypes' must be a list of strings")
            supported = tuple(supported)
        return cls(
            channel=channel,
            id=message_id,
            client_id=_optional(obj, "clientId", str),
            subscription=subscription,
            connection_type=_optional(obj, "connectionType", str),
            supported_connection_types=supported,
            version=_optional(obj, "version", str),
            ext=_optional(obj, "ext", dict),
            advice=_optional(obj, "advice", dict),
            data=obj.get("data"),
        )

    @property
    def subscriptions(self) -> tuple[str, ...]:
        if self.subscription is None:
            return ()
        if isinstance(self.subscription, str):
            return (self.subscription,)
        return self.subscription


def _optional(obj: Mapping[str, Any], key: str, kind: type) -> Any:
    value = obj.get(key)
    if value is not None and not isinstance(value, kind):
        raise RemoteProtocolError(f"{key!r} has the wrong type")
    return value


def parse_batch(payload: bytes | str) -> list[Message]:
    """Decode one HTTP body or WebSocket frame into messages."""
    try:
        decoded = json.loads(payload)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise RemoteProtocolError("body is not JSON") from exc
    items = decoded if isinstance(decoded, list) else [decoded]
    if len(items) > _MAX_MESSAGES_PER_BATCH:
        raise RemoteProtocolError("too many messages in one batch")
    return [Message.parse(item) for item in items]


def _plain(value: object) -> object:
    # Replies may carry a received message's ext or advice, typed as Mapping.
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"Encoding objects of type {type(value).__name__} is unsupported")


# msgspec writes the compact, UTF-8 (not \u-escaped) text json.dumps did with
# separators=(",", ":") and ensure_ascii=False, several times faster: every
# delivered notification is encoded here. Unlike json.dumps it writes a
# non-finite float as null (json.dumps wrote NaN, which no client parses) and
# refuses a lone surrogate (ValueError) when the message is made.
_ENCODER = msgspec.json.Encoder(enc_hook=_plain)


class EncodedMessage(Mapping[str, Any]):
    """A delivered message as it goes on the wire: its JSON text, encoded once.

    A delivery reaches every session subscribed to its channel, and may go out
    again after a lost connect reply (ack extension): `encode_batch` copies
    `wire` instead of encoding the same data for each frame. It reads as the
    message object (decoded from `wire` at each use, for tests and the
    backlog journal; the transports never need to).  The decoded form is not
    kept: a backlog holds thousands of these for hours, and the journal reads
    each one once.
    """

    __slots__ = ("wire",)

    def __init__(self, wire: str) -> None:
        self.wire = wire

    def _message(self) -> dict[str, Any]:
        message: dict[str, Any] = json.loads(self.wire)
        return message

    def __getitem__(self, key: str) -> Any:
        return self._message()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._message())

    def __len__(self) -> int:
        return len(self._message())

    def __repr__(self) -> str:
        return f"EncodedMessage({self.wire!r})"


class Delivery(EncodedMessage):
    """A message the adapter publishes to subscribers of `channel`.

    Encoded when it is made, so data that is not JSON fails here (TypeError
    or ValueError), at the call that published it. Only the encoded text is
    kept: the caller's data (a tree of dicts and lists per notification) is
    freed at once instead of waiting in session queues, where every such
    object is one more for the garbage collector to walk. `data` decodes it
    again, on demand. It is its own wire form: one object per delivery, put
    as it is into every connect reply that carries it.
    """

    __slots__ = ("channel", "id")

    def __init__(self, channel: Channel, data: Any, id: str) -> None:
        # EncodedMessage's fields, set here rather than through its __init__:
        # one call less for every message published.
        self.wire = _ENCODER.encode({"channel": channel.name, "data": data, "id": id}).decode()
        self.channel = channel
        self.id = id

    @property
    def data(self) -> Any:
        return self["data"]

    def to_wire(self) -> EncodedMessage:
        """The message as sent (shared by every frame that carries it)."""
        return self

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Delivery):
            return self.wire == other.wire  # channel, id and data
        return super().__eq__(other)  # as the message object it reads as

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Delivery({self.channel!s}, {self.data!r}, {self.id!r})"


def encode_batch(messages: Sequence[Mapping[str, Any]]) -> str:
    # A list, not a generator: join makes one of it anyway.  The type test
    # first: isinstance against an ABC (Mapping) costs a call per message.
    return (
        "["
        + ",".join(
            [
                message.wire
                if type(message) is Delivery or isinstance(message, EncodedMessage)
                else _ENCODER.encode(message).decode()
                for message in messages
            ]
        )
        + "]"
    )
