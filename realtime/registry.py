"""Who is connected where: connection counts and room presence, across processes.

Two implementations share one interface:

* :class:`LocalRegistry` keeps everything in this process. It is used with the
  in-memory channel layer, where there is only one process to know about.
* :class:`RedisRegistry` keeps it in Redis (``REDIS_URL``), so every daphne
  process sees the same counts and room members. Each process writes a
  heartbeat; a process that stops heartbeating (``kill -9``, a lost host) is
  reaped by the survivors, which drop its connections and report which users
  left which rooms. Each change is one Lua script, so it is atomic.

Connections are named ``"<process id>|<connection id>"``.
"""

import asyncio
import contextlib
import logging
import secrets
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field


def connection_prefix(proc_id: str) -> str:
    """How the names of a process's connections start: the registry tells processes apart by it."""
    return proc_id + "|"


@dataclass(frozen=True, slots=True)
class RoomChange:
    """The result of a join or leave: was/is the user present, and who is.

    ``version`` rises with every change of the room's presence, so a listener
    can drop a presence event older than one it has already seen.
    """

    user_present: bool
    users: list[str]
    version: int


@dataclass(frozen=True, slots=True)
class Departure:
    """A user who left ``room`` because a dead process was reaped."""

    room: str
    user: str
    users: list[str]
    version: int


@dataclass(frozen=True, slots=True)
class Reach:
    """Where some users' connections on one endpoint are.

    ``counts`` holds each user's open connections (every process), in the order
    asked; ``elsewhere`` says whether any of them is on another process.
    """

    counts: list[int]
    elsewhere: bool


#: A room's publication, ``(epoch, number)``: numbers rise by one per published
#: batch; the epoch changes when Redis loses them (a restart) and numbering starts over.
Publication = tuple[str, int]
#: How long a room's last publication is kept after its last batch. Losing it only
#: starts a new epoch (as after a Redis restart), which is safe once nothing of the
#: room is in flight; without an expiry every room ever written to kept a key.
PUBLICATION_TTL_SECONDS = 86400


@dataclass(slots=True)
class RoomTurn:
    """A turn to store and publish in a room, held under its lock.

    ``after`` is the room's last publication, ``None`` where this process is
    the whole service (nothing comes from elsewhere). :meth:`advance` records
    each batch the turn publishes; the room's last publication is written when
    the lock is given up. A turn may publish several batches: :meth:`keep`
    tells whether it may go on.
    """

    after: Publication | None = None
    #: Whether this turn has published (``after`` is its own last publication).
    published: bool = False
    #: Whether the lock is still this turn's.
    held: bool = True
    renew: Callable[["RoomTurn"], Awaitable[bool]] | None = field(default=None, repr=False)

    @property
    def number(self) -> Publication | None:
        """The number of the turn's next publication: the one after :attr:`after`."""
        return None if self.after is None else (self.after[0], self.after[1] + 1)

    def advance(self) -> None:
        """The batch numbered :attr:`number` is out."""
        if self.after is not None:
            self.after = (self.after[0], self.after[1] + 1)
        self.published = True

    async def keep(self) -> bool:
        """Keep the lock for more batches; ``False`` (and the lock is given up)
        if another process is waiting for it."""
        if self.held and self.renew is not None:
            self.held = await self.renew(self)
        return self.held


class LocalRegistry:
    """The registry of a single process."""

    def __init__(self, proc_id: str) -> None:
        self.proc_id = proc_id
        self.user_conns: dict[str, dict[str, str]] = defaultdict(dict)
        self.room_conns: dict[str, dict[str, str]] = defaultdict(dict)
        self.locks: dict[str, asyncio.Lock] = {}
        self.versions: dict[str, int] = defaultdict(int)

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

    async def room_join(self, room: str, conn: str, user: str) -> RoomChange:
        members = self.room_conns[room]
        present = user in members.values()
        members[conn] = user
        self.versions[room] += 1
        return RoomChange(present, sorted(set(members.values())), self.versions[room])

    async def room_leave(self, room: str, conn: str) -> RoomChange:
        members = self.room_conns.get(room, {})
        user = members.pop(conn, None)
        present = user in members.values()
        users = sorted(set(members.values()))
        if not members:
            self.room_conns.pop(room, None)
        self.versions[room] += 1
        return RoomChange(present, users, self.versions[room])

    async def room_has_user(self, room: str, user: str) -> bool:
        return user in self.room_conns.get(room, {}).values()

    @contextlib.asynccontextmanager
    async def room_lock(self, room: str) -> AsyncIterator[RoomTurn]:
        lock = self.locks.setdefault(room, asyncio.Lock())
        async with lock:
            yield RoomTurn()

    async def room_publication(self, room: str) -> Publication | None:
        """Nothing to catch up with: every publication is this process's own."""
        return None

    async def heartbeat(self) -> bool:
        """Nothing to do: this process cannot die without its registry."""
        return False

    async def restore(self) -> None:
        pass

    def mark_dead(self) -> None:
        """Nothing to do: nobody else shares this registry."""

    async def reap(self, dead_after: float) -> list[Departure]:
        return []

    async def close(self) -> None:
        self.user_conns.clear()
        self.room_conns.clear()


# KEYS/ARGV layouts are documented at each script. Hash fields are connection names.
_REGISTER = """
local n = redis.call('HLEN', KEYS[1])
if tonumber(ARGV[3]) > 0 and n >= tonumber(ARGV[3]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[4])
return 1
"""  # KEYS: user hash, proc users set; ARGV: conn, endpoint, limit, user

_USERS = """
local function users_of(key)
  local seen, list = {}, {}
  for _, u in ipairs(redis.call('HVALS', key)) do
    if not seen[u] then seen[u] = true; table.insert(list, u) end
  end
  table.sort(list)
  return list, seen
end
"""

# A room's presence version starts at the current time in microseconds, so after
# Redis loses its data (a restart) new versions are still above the old ones that
# connections hold, and their presence events are not dropped as stale.
_BUMP = """
local function bump(key, floor)
  if redis.call('EXISTS', key) == 0 then redis.call('SET', key, floor) end
  return redis.call('INCR', key)
end
"""

_ROOM_JOIN = _USERS + _BUMP + """
local _, before = users_of(KEYS[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
local list = users_of(KEYS[1])
return {before[ARGV[2]] and 1 or 0, list, bump(KEYS[3], ARGV[4])}
"""  # KEYS: room hash, proc rooms set, room version; ARGV: conn, user, room, version floor

_ROOM_LEAVE = _USERS + _BUMP + """
local user = redis.call('HGET', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[1], ARGV[1])
local list, seen = users_of(KEYS[1])
return {(user and seen[user]) and 1 or 0, list, bump(KEYS[2], ARGV[2])}
"""  # KEYS: room hash, room version; ARGV: conn, version floor

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

_REAP_ROOM = _USERS + _BUMP + """
local _, before = users_of(KEYS[1])
local prefix = ARGV[1]
for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(f, 1, #prefix) == prefix then redis.call('HDEL', KEYS[1], f) end
end
local list, after = users_of(KEYS[1])
local gone = {}
for u, _ in pairs(before) do if not after[u] then table.insert(gone, u) end end
table.sort(gone)
return {gone, list, bump(KEYS[2], ARGV[2])}
"""  # KEYS: room hash, room version; ARGV: "<proc>|", version floor

_REAP_USER = """
local prefix = ARGV[1]
for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(f, 1, #prefix) == prefix then redis.call('HDEL', KEYS[1], f) end
end
return 1
"""  # KEYS: user hash; ARGV: "<proc>|"

_LOCK = """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  redis.call('SET', KEYS[3], '1', 'PX', 200)
  return false
end
redis.call('DEL', KEYS[3])
local last = redis.call('GET', KEYS[2])
if not last then
  last = ARGV[3] .. ':0'
  redis.call('SET', KEYS[2], last, 'EX', ARGV[4])
end
return last
"""  # KEYS: room lock, room publication, room waiting; ARGV: token, ttl ms, a new epoch,
#    the publication's ttl in seconds

_KEEP = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[3] ~= '' then redis.call('SET', KEYS[2], ARGV[3], 'EX', ARGV[4]) end
if redis.call('EXISTS', KEYS[3]) == 1 then
  redis.call('DEL', KEYS[1])
  return 0
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""  # KEYS: as _LOCK; ARGV: token, ttl ms, the turn's last publication or '', the
#    publication's ttl in seconds. 1: kept

_UNLOCK = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] ~= '' then redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3]) end
return redis.call('DEL', KEYS[1])
"""  # KEYS: room lock, room publication; ARGV: token, the turn's last publication or '',
#    the publication's ttl in seconds


def _published(turn: RoomTurn) -> str:
    """What the lock scripts record of ``turn``: its last publication, or ``''``."""
    if not turn.published or turn.after is None:
        return ""
    return f"{turn.after[0]}:{turn.after[1]}"


def _publication(value: bytes | str | None) -> Publication | None:
    """``b"epoch:number"`` as a :data:`Publication`."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode()
    epoch, _, number = value.rpartition(":")
    return epoch, int(number)


def _version_floor() -> int:
    return time.time_ns() // 1000


class RedisRegistry:
    """The registry shared by every process on one Redis."""

    lock_ttl_ms = 5000

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
        self.own_room_conns: dict[tuple[str, str], str] = {}
        self.scripts = {
            name: self.redis.register_script(source)
            for name, source in {
                "register": _REGISTER,
                "room_join": _ROOM_JOIN,
                "room_leave": _ROOM_LEAVE,
                "reach": _REACH,
                "reap_room": _REAP_ROOM,
                "reap_user": _REAP_USER,
                "lock": _LOCK,
                "keep": _KEEP,
                "unlock": _UNLOCK,
            }.items()
        }

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    async def register(self, user: str, conn: str, endpoint: str, limit: int) -> bool:
        keys = [self.key("user", user), self.key("proc", self.proc_id, "users")]
        if not await self.scripts["register"](keys, [conn, endpoint, limit, user]):
            return False
        self.own_conns[conn] = (user, endpoint)
        return True

    async def unregister(self, user: str, conn: str) -> None:
        self.own_conns.pop(conn, None)
        await self.redis.hdel(self.key("user", user), conn)

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

    async def room_join(self, room: str, conn: str, user: str) -> RoomChange:
        keys = [self.key("room", room), self.key("proc", self.proc_id, "rooms"),
                self.key("room-version", room)]
        present, users, version = await self.scripts["room_join"](
            keys, [conn, user, room, _version_floor()]
        )
        self.own_room_conns[room, conn] = user
        return RoomChange(bool(present), list(users), int(version))

    async def room_leave(self, room: str, conn: str) -> RoomChange:
        self.own_room_conns.pop((room, conn), None)
        keys = [self.key("room", room), self.key("room-version", room)]
        present, users, version = await self.scripts["room_leave"](keys, [conn, _version_floor()])
        return RoomChange(bool(present), list(users), int(version))

    async def room_has_user(self, room: str, user: str) -> bool:
        return user in await self.redis.hvals(self.key("room", room))

    @contextlib.asynccontextmanager
    async def room_lock(self, room: str) -> AsyncIterator[RoomTurn]:
        """A lock on ``room`` across processes; it expires if its holder dies.

        The turn it yields says which publication came last, so the holder can
        tell whether its own process has received it. A process that fails to
        take the lock says it is waiting, and the holder gives it up at its
        next :meth:`RoomTurn.keep`.
        """
        keys = [self.key("lock", room), self.key("published", room), self.key("waiting", room)]
        token, delay = secrets.token_hex(8), 0.001
        deadline = time.monotonic() + 10
        while (last := await self.scripts["lock"](
                keys, [token, self.lock_ttl_ms, secrets.token_hex(4),
                       PUBLICATION_TTL_SECONDS])) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"room lock {room!r} not acquired in 10 s")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.02)

        async def renew(turn: RoomTurn) -> bool:
            return bool(await self.scripts["keep"](
                keys, [token, self.lock_ttl_ms, _published(turn), PUBLICATION_TTL_SECONDS]))

        turn = RoomTurn(after=_publication(last), renew=renew)
        try:
            yield turn
        finally:
            if turn.held:
                await self.scripts["unlock"](keys[:2],
                                             [token, _published(turn), PUBLICATION_TTL_SECONDS])

    async def room_publication(self, room: str) -> Publication | None:
        """The room's last publication (``None``: none yet)."""
        return _publication(await self.redis.get(self.key("published", room)))

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
        """Write back every connection and room membership this process holds."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for conn, (user, endpoint) in self.own_conns.items():
                pipe.hset(self.key("user", user), conn, endpoint)
                pipe.sadd(self.key("proc", self.proc_id, "users"), user)
            for (room, conn), user in self.own_room_conns.items():
                pipe.hset(self.key("room", room), conn, user)
                pipe.sadd(self.key("proc", self.proc_id, "rooms"), room)
            await pipe.execute()

    async def reap(self, dead_after: float) -> list[Departure]:
        """Drop the connections of processes silent for ``dead_after`` seconds."""
        departures: list[Departure] = []
        dead = await self.redis.zrangebyscore(self.key("procs"), "-inf", time.time() - dead_after)
        for proc in dead:
            # ZREM succeeds for one process only: that one reaps.
            if proc == self.proc_id or not await self.redis.zrem(self.key("procs"), proc):
                continue
            departures += await self._reap_process(proc)
        return departures

    async def _reap_process(self, proc: str) -> list[Departure]:
        departures = []
        users_key, rooms_key = self.key("proc", proc, "users"), self.key("proc", proc, "rooms")
        for user in await self.redis.smembers(users_key):
            await self.scripts["reap_user"]([self.key("user", user)],
                                            [connection_prefix(proc)])
        for room in await self.redis.smembers(rooms_key):
            keys = [self.key("room", room), self.key("room-version", room)]
            gone, users, version = await self.scripts["reap_room"](
                keys, [connection_prefix(proc), _version_floor()]
            )
            departures += [Departure(room, user, list(users), int(version)) for user in gone]
        await self.redis.delete(users_key, rooms_key)
        return departures

    async def close(self) -> None:
        """Stop talking to Redis; what this process still holds is reaped by the others."""
        await self.redis.aclose(close_connection_pool=True)
