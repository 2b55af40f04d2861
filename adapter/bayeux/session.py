"""One Bayeux client session: its subscriptions, its bounded queue, its ack state.

The ack extension (CometD's AckExtension, the de-facto Bayeux extension for
reliable delivery): the handshake carries `ext: {ack: true}`; each
/meta/connect reply carries `ext: {ack: <batch>}` and the deliveries of that
batch; the client's next /meta/connect carries the last batch it received.
Messages stay queued until a batch that contained them is acknowledged, so
whatever a lost connect reply carried is sent again.

Every reply sends the whole queue under a new batch id, so what has been sent
is always a head of the queue, all of it in the latest batch: a count of the
queue's head that was sent stands for a batch id per queued message.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from adapter.bayeux.channels import Channel
from adapter.bayeux.message import Delivery, MessageId


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
    queue: deque[Delivery] = field(default_factory=deque)
    #: How many at the head of the queue went out in batch `last_batch` (ack).
    sent: int = 0
    hold: Hold | None = None
    connected: bool = False  # a first /meta/connect was answered
    expires_at: float | None = None
    last_batch: int = 0
    #: The transport of the latest /meta/connect ("" before the first).
    transport: str = ""

    def enqueue(self, delivery: Delivery) -> int:
        """Queue a delivery; return how many of the oldest were dropped for it."""
        queue = self.queue
        if len(queue) < self.queue_size:
            queue.append(delivery)
            return 0
        dropped = 0
        while len(queue) >= self.queue_size:
            queue.popleft()
            if self.sent:
                self.sent -= 1
            dropped += 1
        queue.append(delivery)
        return dropped

    def acknowledge(self, batch: int) -> list[Delivery]:
        """Forget what batches up to `batch` carried; returns it."""
        if not self.sent or batch < self.last_batch:
            return []
        return self._pop_sent()

    def take_batch(self) -> tuple[int, list[Delivery]]:
        """The deliveries for the next connect reply, and that reply's batch id."""
        self.last_batch += 1
        deliveries = list(self.queue)
        if self.ack:
            self.sent = len(deliveries)
        else:
            self.queue.clear()
        return self.last_batch, deliveries

    def drop_sent(self) -> list[Delivery]:
        """Treat everything already sent as received (the client said goodbye); returns it."""
        return self._pop_sent()

    def undelivered(self) -> list[Delivery]:
        """Whatever the client has not confirmed (or, without ack, not been sent)."""
        return list(self.queue)

    def _pop_sent(self) -> list[Delivery]:
        popleft = self.queue.popleft
        done = [popleft() for _ in range(self.sent)]
        self.sent = 0
        return done

    def deadline(self) -> float | None:
        if self.hold is not None:
            return self.hold.deadline
        return self.expires_at
