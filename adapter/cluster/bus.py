"""The Redis side of the cluster's Bayeux messages: keys, streams and scripts.

Every command the nodes send Redis about Bayeux is here, as one method each;
:mod:`adapter.cluster.relay` decides when to call them.  The client is
redis-py's asyncio client, with its own retries off: a broken connection is
reported at once (:class:`BusDown`), because the relay must know that Redis
went away to tell whether it came back empty.

Keys (``pa:`` for presence-adapter):

``pa:bayeux:<app>``
    The application's stream: one entry per message (``c`` its channel, ``d``
    its data as JSON).  Entry ids are the messages' ids on the Bayeux wire:
    unique across nodes and ordered within the application.  An entry stays
    until a session is done with it (``XDEL``); what no session took is the
    application's backlog.  Bounded: ``XADD MAXLEN ~ <backlog_size>`` (Redis
    trims whole nodes of the stream, so it may hold up to about 100 more),
    and entries older than the backlog's ttl are trimmed (``XTRIM MINID``)
    and never delivered.
``pa:wake:<node>``
    A stream of at most a few entries that only wakes a node's blocked read.
``pa:alive:<node>``
    Set by a node once Redis holds everything it must: its absence is how a
    node learns that Redis restarted empty.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["Bus", "BusDown", "Entry", "Outgoing", "stream_time"]

#: Seconds to connect to Redis, and to wait for an answer beyond a read's block.
SOCKET_TIMEOUT = 5.0
#: The longest a read blocks (Bus.read caps its ``block``): with SOCKET_TIMEOUT,
#: the socket's read timeout, so that a Redis that stops answering is noticed.
MAX_BLOCK = 10.0

# A batch of messages, added only while this node's alive mark exists
# (else nothing is added and nil comes back: Redis restarted).
# KEYS: the mark, then one stream per message; ARGV: maxlen, then channel and data per message.
_PUBLISH = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local ids = {}
for i = 2, #KEYS do
  ids[i - 1] = redis.call('XADD', KEYS[i], 'MAXLEN', '~', ARGV[1], '*',
                          'c', ARGV[2 * i - 2], 'd', ARGV[2 * i - 1])
end
return ids
"""

# Messages added again after a restart, under their old ids where the stream
# allows (an id must exceed the stream's last), else under a new one.
# KEYS: one stream per message; ARGV: id, channel and data per message.
_REPLAY = """
local ids = {}
for i = 1, #KEYS do
  local j = 3 * (i - 1)
  local id = redis.pcall('XADD', KEYS[i], ARGV[j + 1], 'c', ARGV[j + 2], 'd', ARGV[j + 3])
  if type(id) == 'table' and id.err then
    id = redis.call('XADD', KEYS[i], '*', 'c', ARGV[j + 2], 'd', ARGV[j + 3])
  end
  ids[i] = id
end
return ids
"""


class BusDown(Exception):
    """Redis cannot be reached (or answered with an error): one line."""


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message on its way to an application's stream (data already JSON)."""

    app_id: str
    channel: str
    data: str


@dataclass(frozen=True, slots=True)
class Entry:
    """A message as a stream holds it."""

    app_id: str
    id: str
    channel: str
    data: str


def stream_time(entry_id: str) -> float:
    """The epoch seconds an entry id was made at (its first part is milliseconds)."""
    return int(entry_id.partition("-")[0]) / 1000


class Bus:
    def __init__(self, url: str, node: str, *, maxlen: int) -> None:
        self.node = node
        self.maxlen = maxlen
        self._redis = redis.Redis.from_url(
            url,
            decode_responses=True,
            socket_connect_timeout=SOCKET_TIMEOUT,
            socket_timeout=MAX_BLOCK + SOCKET_TIMEOUT,
            # Off: a broken connection must surface (see the module's docstring).
            retry=Retry(NoBackoff(), 0),
            client_name=f"presence-adapter:{node}",
        )
        self._publish = self._redis.register_script(_PUBLISH)
        self._replay = self._redis.register_script(_REPLAY)
        self._alive = f"pa:alive:{node}"
        self._wake = f"pa:wake:{node}"

    @staticmethod
    def stream(app_id: str) -> str:
        return f"pa:bayeux:{app_id}"

    async def _call(self, command: Any) -> Any:
        try:
            return await command
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise BusDown(f"redis: {' '.join(str(exc).split()) or type(exc).__name__}") from None
        except RedisError as exc:
            raise BusDown(f"redis: {' '.join(str(exc).split())}") from None

    # -- producing ---------------------------------------------------------------

    async def publish(self, messages: Sequence[Outgoing]) -> list[str] | None:
        """Add `messages` in order; their ids, or None when this node's alive mark
        is gone (Redis restarted: :meth:`replay` first)."""
        keys = [self._alive, *(self.stream(m.app_id) for m in messages)]
        args: list[Any] = [self.maxlen]
        for message in messages:
            args += (message.channel, message.data)
        ids = await self._call(self._publish(keys=keys, args=args))
        return None if ids is None else list(ids)

    async def replay(self, entries: Sequence[Entry]) -> list[str]:
        """Add `entries` again, each under its old id where possible; their ids."""
        if not entries:
            return []
        args: list[Any] = []
        for entry in entries:
            args += (entry.id, entry.channel, entry.data)
        keys = [self.stream(entry.app_id) for entry in entries]
        return list(await self._call(self._replay(keys=keys, args=args)))

    async def mark_alive(self) -> None:
        """Redis holds what this node must have there: set its mark."""
        await self._call(self._redis.set(self._alive, "1"))

    async def is_alive(self) -> bool:
        return bool(await self._call(self._redis.exists(self._alive)))

    async def present(self, since: Mapping[str, str], older_than: float) -> dict[str, set[str]]:
        """Per application, the ids from ``since[app]`` on that its stream still
        holds; first trims what is older than `older_than` (epoch seconds)."""
        apps = list(since)
        minid = f"{int(older_than * 1000)}-0"
        async with self._redis.pipeline(transaction=False) as pipe:
            for app_id in apps:
                pipe.xtrim(self.stream(app_id), minid=minid, approximate=False)
                pipe.xrange(self.stream(app_id), since[app_id], "+")
            replies = await self._call(pipe.execute())
        return {
            app_id: {entry_id for entry_id, _ in replies[2 * i + 1]}
            for i, app_id in enumerate(apps)
        }

    # -- consuming ---------------------------------------------------------------

    async def read(
        self, cursors: Mapping[str, str], wake_cursor: str, block: float, count: int
    ) -> tuple[list[Entry], str]:
        """Entries after each application's cursor, waiting up to `block` seconds
        for one (or for :meth:`wake`); and the new wake cursor."""
        streams: dict[Any, Any] = {self._wake: wake_cursor}
        streams.update((self.stream(app_id), cursor) for app_id, cursor in cursors.items())
        replies = await self._call(
            self._redis.xread(
                streams, count=count, block=max(1, int(min(block, MAX_BLOCK) * 1000))
            )
        )
        entries: list[Entry] = []
        prefix = len("pa:bayeux:")
        for name, items in replies or ():
            if name == self._wake:
                wake_cursor = items[-1][0]
                continue
            app_id = name[prefix:]
            entries.extend(Entry(app_id, i, f.get("c", ""), f.get("d", "null")) for i, f in items)
        return entries, wake_cursor

    async def fetch(self, app_id: str, upto: str = "+") -> list[Entry]:
        """The application's stream up to `upto` (its backlog, and what sessions
        hold unconfirmed)."""
        items = await self._call(self._redis.xrange(self.stream(app_id), "-", upto))
        return [Entry(app_id, i, f.get("c", ""), f.get("d", "null")) for i, f in items]

    async def wake(self) -> None:
        """Wake this node's blocked :meth:`read`."""
        await self._call(self._redis.xadd(self._wake, {"w": "1"}, maxlen=8, approximate=False))

    async def confirm(self, done: Mapping[str, Iterable[str]]) -> None:
        """Remove messages sessions are done with, per application."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for app_id, ids in done.items():
                pipe.xdel(self.stream(app_id), *ids)
            await self._call(pipe.execute())

    async def ping(self) -> None:
        """Raises BusDown unless Redis answers (for /readyz)."""
        await self._call(self._redis.ping())

    async def close(self) -> None:
        await self._redis.aclose()
