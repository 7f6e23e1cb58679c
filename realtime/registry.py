"""Who is connected where, across processes: connections per user and endpoint.

Two implementations share one interface:

* :class:`LocalRegistry` keeps everything in this process. It is used with the
  in-memory channel layer, where there is only one process to know about.
* :class:`RedisRegistry` keeps it in Redis (``REDIS_URL``), so every process
  sees the same counts. Each process writes a heartbeat; a process that stops
  heartbeating (``kill -9``, a lost host) is reaped by the survivors, which
  drop its connections. Each change is one Lua script, so it is atomic.

An app that keeps more per process (chat's room presence) adds an
:class:`Extension` to :data:`extensions`: every registry builds one of each,
restores it with its own connections and reaps it with a dead process's.

Connections are named ``"<process id>|<connection id>"``.
"""

import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from realtime.scripts import Script, runner_of


def connection_prefix(proc_id: str) -> str:
    """How the names of a process's connections start: the registry tells processes apart by it."""
    return proc_id + "|"


@dataclass(frozen=True, slots=True)
class Reach:
    """Where some users' connections on one endpoint are.

    ``counts`` holds each user's open connections (every process), in the order
    asked; ``elsewhere`` says whether any of them is on another process.
    """

    counts: list[int]
    elsewhere: bool


class Extension:
    """What an app keeps in a registry beside its connections; every hook is optional."""

    def restore(self, pipe: Any) -> None:
        """Queue on the Redis ``pipe`` what this process holds (Redis lost it)."""

    async def reap(self, proc: str) -> list:
        """Drop what the dead process ``proc`` held; what it returns goes to the
        hub's ``departure_handlers``."""
        return []

    def close(self) -> None:
        """The registry closes."""


#: ``name -> factory``: the extensions every registry builds (apps add theirs in ``ready()``).
extensions: dict[str, Callable[["LocalRegistry | RedisRegistry"], Extension]] = {}


class LocalRegistry:
    """The registry of a single process."""

    def __init__(self, proc_id: str) -> None:
        self.proc_id = proc_id
        self.user_conns: dict[str, dict[str, str]] = defaultdict(dict)
        self.apps: dict[str, Extension] = {
            name: factory(self) for name, factory in extensions.items()}

    async def register(self, user: str, conn: str, endpoint: str, limit: int) -> bool:
        conns = self.user_conns[user]
        if limit and len(conns) >= limit:
            return False
        conns[conn] = endpoint
        return True

    async def unregister(self, user: str, conn: str) -> None:
        conns = self.user_conns.get(user)
        if conns is not None:
            conns.pop(conn, None)
            if not conns:
                del self.user_conns[user]

    async def connections_on(self, endpoint: str, users: list[str]) -> Reach:
        counts = [sum(1 for e in self.user_conns.get(user, {}).values() if e == endpoint)
                  for user in users]
        return Reach(counts, elsewhere=False)

    async def heartbeat(self) -> bool:
        """Nothing to do: this process cannot die without its registry."""
        return False

    async def restore(self) -> None:
        pass

    def mark_dead(self) -> None:
        """Nothing to do: nobody else shares this registry."""

    async def reap(self, dead_after: float) -> list:
        return []

    async def close(self) -> None:
        self.user_conns.clear()
        for app in self.apps.values():
            app.close()


# KEYS/ARGV layouts are documented at each script. Hash fields are connection names.
_REGISTER = """
for i = 5, #ARGV do redis.call('HDEL', KEYS[1], ARGV[i]) end
local n = redis.call('HLEN', KEYS[1])
if tonumber(ARGV[3]) > 0 and n >= tonumber(ARGV[3]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[4])
return 1
"""  # KEYS: user hash, proc users set; ARGV: conn, endpoint, limit, user, then the
#    user's connections this process has closed whose HDEL may not have landed yet

_UNREGISTER = """
redis.call('HDEL', KEYS[1], ARGV[1])
local prefix = ARGV[2]
for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(f, 1, #prefix) == prefix then return 1 end
end
redis.call('SREM', KEYS[2], ARGV[3])
return 1
"""  # KEYS: user hash, proc users set; ARGV: conn, "<proc>|", user. The user leaves the
#    process's set with its last connection there.

_REACH = """
local own = ARGV[2]
local counts, elsewhere = {}, 0
for i, key in ipairs(KEYS) do
  local n = 0
  local fields = redis.call('HGETALL', key)
  for j = 1, #fields, 2 do
    if fields[j + 1] == ARGV[1] then
      n = n + 1
      if string.sub(fields[j], 1, #own) ~= own then elsewhere = 1 end
    end
  end
  counts[i] = n
end
counts[#KEYS + 1] = elsewhere
return counts
"""  # KEYS: hashes; ARGV: value, own field prefix. Per hash the fields with that value,
#    then 1 if any of them lacks the prefix.

_REAP_USER = """
local prefix = ARGV[1]
for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(f, 1, #prefix) == prefix then redis.call('HDEL', KEYS[1], f) end
end
return 1
"""  # KEYS: user hash; ARGV: "<proc>|"


#: How long a survivor may take to reap a dead process before another one may (a reap
#: that outlives it is harmless: each room and user is reaped atomically, once).
REAP_LEASE_SECONDS = 60


class RedisRegistry:
    """The registry shared by every process on one Redis."""

    def __init__(self, proc_id: str, url: str, prefix: str = "rt") -> None:
        import redis.asyncio as redis

        self.proc_id = proc_id
        self.url = url
        self.prefix = prefix + ":"
        # Timeouts: a Redis that stops answering gives errors (handled by the
        # callers), never a connection or the hub stuck forever.
        # A blocking pool: under a join or leave storm, callers wait for a free
        # connection instead of failing with MaxConnectionsError (the default pool
        # of redis-py 8), which left stale presence and connection counts behind.
        pool = redis.BlockingConnectionPool.from_url(
            url, decode_responses=True, socket_timeout=5, socket_connect_timeout=5,
            health_check_interval=15, max_connections=64, timeout=10,
        )
        self.redis = redis.Redis(connection_pool=pool)
        # What this process has written, to put back if Redis loses it (a restart).
        self.own_conns: dict[str, tuple[str, str]] = {}
        # Departures reaped by a call that then failed: the next call returns them.
        self.unannounced: list = []
        # Closed connections by user whose HDEL has not been confirmed: the user's next
        # register deletes them first, so a slot is free here as soon as it is released.
        self.releasing: dict[str, set[str]] = {}
        self.scripts = self.register_scripts(
            register=_REGISTER, unregister=_UNREGISTER, reach=_REACH, reap_user=_REAP_USER)
        self.apps: dict[str, Extension] = {
            name: factory(self) for name, factory in extensions.items()}

    def register_scripts(self, **sources: str) -> dict[str, Script]:
        """Lua scripts by name, each run by its SHA (loaded on first use); the calls of
        one pass of the event loop share one round trip (:mod:`realtime.scripts`)."""
        runner = runner_of(self.redis)
        return {name: runner.register(source) for name, source in sources.items()}

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    async def register(self, user: str, conn: str, endpoint: str, limit: int) -> bool:
        keys = [self.key("user", user), self.key("proc", self.proc_id, "users")]
        released = list(self.releasing.get(user, ()))
        registered = await self.scripts["register"](
            keys, [conn, endpoint, limit, user, *released])
        self._released(user, released)
        if not registered:
            return False
        self.own_conns[conn] = (user, endpoint)
        return True

    async def unregister(self, user: str, conn: str) -> None:
        """Free the connection's slot; on this process at once, even before Redis has it
        (a failed HDEL is retried by the user's next register here)."""
        self.own_conns.pop(conn, None)
        self.releasing.setdefault(user, set()).add(conn)
        keys = [self.key("user", user), self.key("proc", self.proc_id, "users")]
        await self.scripts["unregister"](keys, [conn, connection_prefix(self.proc_id), user])
        self._released(user, [conn])

    def _released(self, user: str, conns: list[str]) -> None:
        """``conns`` of ``user`` are gone from Redis."""
        pending = self.releasing.get(user)
        if pending is not None:
            pending.difference_update(conns)
            if not pending:
                del self.releasing[user]

    async def connections_on(self, endpoint: str, users: list[str]) -> Reach:
        """The users' connections on ``endpoint``, in one round trip.

        A connection is this process's when its name has this process's
        :func:`connection_prefix`.
        """
        if not users:
            return Reach([], elsewhere=False)
        keys = [self.key("user", user) for user in users]
        *counts, elsewhere = await self.scripts["reach"](
            keys, [endpoint, connection_prefix(self.proc_id)]
        )
        return Reach([int(n) for n in counts], elsewhere=bool(int(elsewhere)))

    async def heartbeat(self) -> bool:
        """Beat; true when this process was missing (Redis restarted, or we were reaped)."""
        return bool(await self.redis.zadd(self.key("procs"), {self.proc_id: time.time()}))

    def mark_dead(self) -> None:
        """At exit (sync): age this process's heartbeat so the others reap it now."""
        import redis

        try:
            client = redis.Redis.from_url(self.url, socket_timeout=2, socket_connect_timeout=2)
            client.zadd(self.key("procs"), {self.proc_id: 0}, xx=True)
            client.close()
        except Exception:
            logging.getLogger(__name__).warning("could not mark this process as gone")

    async def restore(self) -> None:
        """Write back every connection (and what the extensions hold) of this process."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for conn, (user, endpoint) in self.own_conns.items():
                pipe.hset(self.key("user", user), conn, endpoint)
                pipe.sadd(self.key("proc", self.proc_id, "users"), user)
            for app in self.apps.values():
                app.restore(pipe)
            await pipe.execute()

    async def reap(self, dead_after: float) -> list:
        """Drop the connections of processes silent for ``dead_after`` seconds; returns
        what the extensions reported (see :meth:`Extension.reap`)."""
        departures, self.unannounced = self.unannounced, []
        try:
            dead = await self.redis.zrangebyscore(
                self.key("procs"), "-inf", time.time() - dead_after)
            for proc in dead:
                # One survivor at a time reaps a process, under a lease; the process
                # stays listed as dead until its reap is complete, so a reap that
                # failed, or whose reaper died, is taken up again at a next beat.
                lease = self.key("reaping", proc)
                if proc == self.proc_id or not await self.redis.set(
                        lease, self.proc_id, nx=True, ex=REAP_LEASE_SECONDS):
                    continue
                try:
                    departures += await self._reap_process(proc)
                    await self.redis.zrem(self.key("procs"), proc)
                finally:
                    with contextlib.suppress(Exception):
                        await self.redis.delete(lease)
        except Exception:
            self.unannounced = departures  # returned by the next call
            raise
        return departures

    async def _reap_process(self, proc: str) -> list:
        departures = []
        users_key = self.key("proc", proc, "users")
        for user in await self.redis.smembers(users_key):
            await self.scripts["reap_user"]([self.key("user", user)],
                                            [connection_prefix(proc)])
        for app in self.apps.values():
            departures += await app.reap(proc)
        await self.redis.delete(users_key)
        return departures

    async def close(self) -> None:
        """Stop talking to Redis; what this process still holds is reaped by the others."""
        for app in self.apps.values():
            app.close()
        await self.redis.aclose(close_connection_pool=True)


def new_registry(proc_id: str) -> "LocalRegistry | RedisRegistry":
    """The registry the settings ask for: Redis's with ``REDIS_URL``, else this process's."""
    from django.conf import settings

    if settings.REDIS_URL:
        return RedisRegistry(proc_id, settings.REDIS_URL, settings.REDIS_PREFIX)
    return LocalRegistry(proc_id)
