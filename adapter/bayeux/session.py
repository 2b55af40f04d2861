"""One Bayeux client session: its subscriptions, its bounded queue, its ack state.

The ack extension (CometD's AckExtension, the de-facto Bayeux extension for
reliable delivery): the handshake carries `ext: {ack: true}`; each
/meta/connect reply carries `ext: {ack: <batch>}` and the deliveries of that
batch; the client's next /meta/connect carries the last batch it received.
Messages stay queued until a batch that contained them is acknowledged, so
whatever a lost connect reply carried is sent again.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from adapter.bayeux.channels import Channel
from adapter.bayeux.message import Delivery, MessageId


@dataclass(slots=True)
class Queued:
    delivery: Delivery
    # The batch it was last sent in; None while not yet sent.
    batch: int | None = None


@dataclass(slots=True)
class Hold:
    """A /meta/connect waiting for messages or its deadline."""

    token: int
    message_id: MessageId
    deadline: float


@dataclass(slots=True)
class Session:
    client_id: str
    app_id: str
    ack: bool
    queue_size: int
    subscriptions: set[Channel] = field(default_factory=set)
    queue: deque[Queued] = field(default_factory=deque)
    hold: Hold | None = None
    connected: bool = False  # a first /meta/connect was answered
    expires_at: float | None = None
    last_batch: int = 0
    #: The transport of the latest /meta/connect ("" before the first).
    transport: str = ""

    def enqueue(self, delivery: Delivery) -> int:
        """Queue a delivery; return how many of the oldest were dropped for it."""
        dropped = 0
        while len(self.queue) >= self.queue_size:
            self.queue.popleft()
            dropped += 1
        self.queue.append(Queued(delivery))
        return dropped

    def acknowledge(self, batch: int) -> list[Delivery]:
        """Forget what batches up to `batch` carried; returns it."""
        done: list[Delivery] = []
        while self.queue and self.queue[0].batch is not None and self.queue[0].batch <= batch:
            done.append(self.queue.popleft().delivery)
        return done

    def take_batch(self) -> tuple[int, list[Delivery]]:
        """The deliveries for the next connect reply, and that reply's batch id."""
        self.last_batch += 1
        deliveries = [queued.delivery for queued in self.queue]
        if self.ack:
            for queued in self.queue:
                queued.batch = self.last_batch
        else:
            self.queue.clear()
        return self.last_batch, deliveries

    def drop_sent(self) -> list[Delivery]:
        """Treat everything already sent as received (the client said goodbye); returns it."""
        sent = [queued.delivery for queued in self.queue if queued.batch is not None]
        self.queue = deque(queued for queued in self.queue if queued.batch is None)
        return sent

    def undelivered(self) -> list[Delivery]:
        """Whatever the client has not confirmed (or, without ack, not been sent)."""
        return [queued.delivery for queued in self.queue]

    def deadline(self) -> float | None:
        if self.hold is not None:
            return self.hold.deadline
        return self.expires_at
