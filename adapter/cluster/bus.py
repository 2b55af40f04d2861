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
``pa:where:<app>``
    The nodes holding a session of the application (a set): each node adds
    itself when its first session of the application subscribes, and takes
    itself out when its last one ends.
``pa:inbox:<node>``
    What a node reads, blocking, whatever its number of applications: every
    message added for an application the node is in ``pa:where`` of, by
    another node (``a`` the application, ``i`` the entry's id in its stream,
    ``c``, ``d``), added by the same script call as the entry, so in the
    same order; and entries (``w``) that only wake the node's read.  The
    node trims what it has read.  The producing node is left out: it hands
    its own messages to its sessions itself.
``pa:reading:<node>``
    Set, with an expiry, by a node's reader while it reads: producers add to
    the inboxes of reading nodes only, and take a node that stopped out of
    ``pa:where`` (a dead node's inbox does not grow).
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
# (else nothing is added and nil comes back: Redis restarted); each also to
# the inboxes of the other nodes reading for its application.
# KEYS: the mark, then one stream per message; ARGV: maxlen, this node, then
# application, channel and data per message.  (The pa:where, pa:reading and
# pa:inbox keys are derived: one Redis, not Redis Cluster.)
_PUBLISH = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local ids = {}
local readers = {}
for i = 2, #KEYS do
  local j = 3 * i - 3
  local app, channel, data = ARGV[j], ARGV[j + 1], ARGV[j + 2]
  local id = redis.call('XADD', KEYS[i], 'MAXLEN', '~', ARGV[1], '*', 'c', channel, 'd', data)
  ids[i - 1] = id
  local nodes = readers[app]
  if nodes == nil then
    nodes = {}
    local where = 'pa:where:' .. app
    for _, node in ipairs(redis.call('SMEMBERS', where)) do
      if node ~= ARGV[2] then
        if redis.call('EXISTS', 'pa:reading:' .. node) == 1 then
          nodes[#nodes + 1] = node
        else
          redis.call('SREM', where, node)
        end
      end
    end
    readers[app] = nodes
  end
  for _, node in ipairs(nodes) do
    redis.call('XADD', 'pa:inbox:' .. node, '*', 'a', app, 'i', id, 'c', channel, 'd', data)
  end
end
return ids
"""

# This node reads for an application from now on: in pa:where, and its stream
# as it is at that instant (what comes later reaches the inbox).
# KEYS: the application's pa:where, its stream; ARGV: this node.
_REGISTER = """
redis.call('SADD', KEYS[1], ARGV[1])
return redis.call('XRANGE', KEYS[2], '-', '+')
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


def _pairs(items: Any) -> list[tuple[str, dict[str, str]]]:
    """XRANGE's reply from a script (each entry's fields a flat list) as redis-py
    gives XRANGE's own."""
    out = []
    for entry_id, fields in items or ():
        if isinstance(fields, dict):
            out.append((entry_id, fields))
        else:
            out.append((entry_id, dict(zip(fields[::2], fields[1::2], strict=False))))
    return out


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
        self._register = self._redis.register_script(_REGISTER)
        self._alive = f"pa:alive:{node}"
        self._inbox = f"pa:inbox:{node}"
        self._reading = f"pa:reading:{node}"

    @staticmethod
    def stream(app_id: str) -> str:
        return f"pa:bayeux:{app_id}"

    @staticmethod
    def where(app_id: str) -> str:
        return f"pa:where:{app_id}"

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
        args: list[Any] = [self.maxlen, self.node]
        for message in messages:
            args += (message.app_id, message.channel, message.data)
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

    async def read(self, cursor: str, block: float, count: int) -> tuple[list[Entry], str]:
        """The inbox's entries after `cursor` (wakes left out), waiting up to
        `block` seconds for one; and the new cursor."""
        replies = await self._call(
            self._redis.xread(
                {self._inbox: cursor}, count=count, block=max(1, int(min(block, MAX_BLOCK) * 1000))
            )
        )
        entries: list[Entry] = []
        for _name, items in replies or ():
            cursor = items[-1][0]
            entries.extend(
                Entry(f["a"], f["i"], f.get("c", ""), f.get("d", "null"))
                for _id, f in items
                if "a" in f and "i" in f
            )
        return entries, cursor

    async def register(self, app_id: str) -> list[Entry]:
        """Read for `app_id` from now on (its messages from other nodes reach the
        inbox); what its stream holds now (the backlog, and what sessions hold
        unconfirmed)."""
        items = await self._call(
            self._register(keys=[self.where(app_id), self.stream(app_id)], args=[self.node])
        )
        return [Entry(app_id, i, f.get("c", ""), f.get("d", "null")) for i, f in _pairs(items)]

    async def unregister(self, app_ids: Iterable[str]) -> None:
        """No longer read for these applications."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for app_id in app_ids:
                pipe.srem(self.where(app_id), self.node)
            await self._call(pipe.execute())

    async def beat(self, ttl: float, cursor: str) -> bool:
        """This node reads for `ttl` seconds more; what it read of its inbox (up to
        `cursor`) goes.  Whether it was reading already (else producers may have
        taken it out of pa:where)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.set(self._reading, "1", px=int(ttl * 1000), get=True)
            if cursor != "0-0":
                pipe.xtrim(self._inbox, minid=cursor, approximate=False)
            replies = await self._call(pipe.execute())
        return replies[0] is not None

    async def empty_inbox(self) -> None:
        """At start: what an earlier run of this node left is not ours to read."""
        await self._call(self._redis.delete(self._inbox))

    async def fetch(self, app_id: str, upto: str = "+") -> list[Entry]:
        """The application's stream up to `upto`."""
        items = await self._call(self._redis.xrange(self.stream(app_id), "-", upto))
        return [Entry(app_id, i, f.get("c", ""), f.get("d", "null")) for i, f in items]

    async def wake(self) -> None:
        """Wake this node's blocked :meth:`read`."""
        await self._call(self._redis.xadd(self._inbox, {"w": "1"}))

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
