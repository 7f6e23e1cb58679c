"""Who is in which room, and whose turn it is to publish there, across processes.

Chat's part of the connection registry (:mod:`realtime.registry`): an
:class:`~realtime.registry.Extension` that every registry builds, in this process
(:class:`LocalPresence`) or in Redis (:class:`RedisPresence`). The Redis one
restores this process's memberships after Redis lost them, and reaps a dead
process's, reporting which users left which rooms (:class:`Departure`). Each
change is one Lua script (:mod:`chat.presence_lua`), so it is atomic.
"""

import asyncio
import contextlib
import secrets
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from chat import presence_lua as lua
from realtime.registry import Extension, LocalRegistry, RedisRegistry, connection_prefix

#: The name of chat's extension in every registry.
APP = "chat"


@dataclass(frozen=True, slots=True)
class RoomChange:
    """The result of a join or leave: was/is the user present, and who is.

    A leave of a connection that is not in the room changes nothing: it reports
    the user as present (there is no departure to announce) and no ``users``.

    ``version`` rises with every change of the room's presence, so a listener
    can drop a presence event older than one it has already seen.
    """

    user_present: bool
    users: list[str]
    version: int


@dataclass(frozen=True, slots=True)
class Departure:
    """A user who left ``room`` because a dead process was reaped.

    Each departure is a change of its own: ``version`` is its own (the departures of
    one room rise in the order given) and ``users`` is the room after it.
    """

    room: str
    user: str
    users: list[str]
    version: int


#: A room's publication, ``(epoch, number)``: numbers rise by one per batch published
#: through the channel layer (one that no other process needed is not numbered: there
#: is nothing to catch up with); the epoch changes when Redis loses them (a restart)
#: and numbering starts over.
Publication = tuple[str, int]
#: How long a room's last publication is kept after its last batch. Losing it only
#: starts a new epoch (as after a Redis restart), which is safe once nothing of the
#: room is in flight; without an expiry every room ever written to kept a key.
PUBLICATION_TTL_SECONDS = 86400
#: How long a room's presence version is kept after its last change. Losing it is
#: safe: the next version starts at the clock floor (:func:`_version_floor`, the time
#: in microseconds), above every version handed out before unless the room changed
#: more than once a microsecond on average since its key was made.
VERSION_TTL_SECONDS = PUBLICATION_TTL_SECONDS


@dataclass(slots=True)
class RoomTurn:
    """A turn to store and publish in a room, held under its lock.

    ``after`` is the room's last publication, ``None`` where this process is
    the whole service (nothing comes from elsewhere). :meth:`advance` records
    each batch the turn publishes through the channel layer; the room's last
    publication is written when the lock is kept or given up. A turn may
    publish several batches: :meth:`keep` tells whether it may go on.
    """

    after: Publication | None = None
    #: Whether this turn has published (``after`` is its own last publication).
    published: bool = False
    #: Whether the lock is still this turn's.
    held: bool = True
    #: How long the holder may keep the lock while it has nothing to store, if no
    #: other process listens in the room (0: give it up at once; see
    #: :meth:`chat.sequencer.RoomSequencer.take_turn`).
    lease: float = 0.0
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


class _LocalLock:
    """A room's lock and how many turns hold it or wait for it."""

    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock, self.users = asyncio.Lock(), 0


class LocalPresence(Extension):
    """Room presence and locks of a single process.

    Nothing is kept for a room nobody is in and nobody locks: a room's members go with
    its last member, its lock with its last holder or waiter once the room is empty.
    Versions come from one counter of the process, so they rise in every room even
    after the room was forgotten (a late ``user_left`` from before is still dropped).
    """

    def __init__(self) -> None:
        self.room_conns: dict[str, dict[str, str]] = defaultdict(dict)
        self.locks: dict[str, _LocalLock] = {}
        self.version = 0
        #: When each (room, user) last had its ``typing`` relayed (monotonic seconds).
        self.typed: dict[tuple[str, str], float] = {}

    async def typing_turn(self, room: str, user: str, interval: float) -> bool:
        """Whether ``user``'s ``typing`` in ``room`` may be relayed now (once per
        ``interval`` seconds)."""
        now = time.monotonic()
        if now - self.typed.get((room, user), -interval) < interval:
            return False
        if len(self.typed) > 10_000:  # forget the turns that are over
            self.typed = {k: t for k, t in self.typed.items() if now - t < interval}
        self.typed[room, user] = now
        return True

    def _bump(self) -> int:
        self.version += 1
        return self.version

    async def room_join(self, room: str, conn: str, user: str) -> RoomChange:
        members = self.room_conns[room]
        present = user in members.values()
        members[conn] = user
        return RoomChange(present, sorted(set(members.values())), self._bump())

    async def room_leave(self, room: str, conn: str) -> RoomChange:
        members = self.room_conns.get(room, {})
        user = members.pop(conn, None)
        if user is None:  # never joined: nothing changed, nobody to announce
            return RoomChange(True, [], self.version)
        present = user in members.values()
        users = sorted(set(members.values()))
        if not members:
            self.room_conns.pop(room, None)
            self._forget_lock(room)
        return RoomChange(present, users, self._bump())

    async def room_has_user(self, room: str, user: str) -> bool:
        return user in self.room_conns.get(room, {}).values()

    @contextlib.asynccontextmanager
    async def room_lock(self, room: str) -> AsyncIterator[RoomTurn]:
        entry = self.locks.get(room)
        if entry is None:
            entry = self.locks[room] = _LocalLock()
        entry.users += 1
        try:
            async with entry.lock:
                yield RoomTurn()
        finally:
            entry.users -= 1
            if room not in self.room_conns:
                self._forget_lock(room)

    def _forget_lock(self, room: str) -> None:
        """Drop ``room``'s lock unless a turn holds it or waits for it."""
        entry = self.locks.get(room)
        if entry is not None and not entry.users:
            del self.locks[room]

    async def room_publication(self, room: str) -> Publication | None:
        """Nothing to catch up with: every publication is this process's own."""
        return None

    def close(self) -> None:
        self.room_conns.clear()


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


class RedisPresence(Extension):
    """Room presence and locks shared by every process on the registry's Redis."""

    lock_ttl_ms = 5000
    #: A turn's :attr:`RoomTurn.lease`: taking and giving back the lock costs two round
    #: trips to Redis, where a local lock costs nothing.
    lease_seconds = 0.25

    def __init__(self, registry: RedisRegistry) -> None:
        self.proc_id = registry.proc_id
        self.redis, self.key = registry.redis, registry.key
        # What this process has written, to put back if Redis loses it (a restart).
        self.own_room_conns: dict[tuple[str, str], str] = {}
        self.unannounced: list[Departure] = []  # reaped, not yet returned (see reap())
        self.scripts = registry.register_scripts(
            room_join=lua.ROOM_JOIN, room_leave=lua.ROOM_LEAVE, reap_room=lua.REAP_ROOM,
            lock=lua.LOCK, keep=lua.KEEP, unlock=lua.UNLOCK)

    async def room_join(self, room: str, conn: str, user: str) -> RoomChange:
        keys = [self.key("room", room), self.key("proc", self.proc_id, "rooms"),
                self.key("room-version", room)]
        present, users, version = await self.scripts["room_join"](
            keys, [conn, user, room, _version_floor(), VERSION_TTL_SECONDS]
        )
        self.own_room_conns[room, conn] = user
        return RoomChange(bool(present), list(users), int(version))

    async def room_leave(self, room: str, conn: str) -> RoomChange:
        self.own_room_conns.pop((room, conn), None)
        keys = [self.key("room", room), self.key("room-version", room),
                self.key("proc", self.proc_id, "rooms")]
        present, users, version = await self.scripts["room_leave"](
            keys, [conn, _version_floor(), VERSION_TTL_SECONDS,
                   connection_prefix(self.proc_id), room])
        return RoomChange(bool(present), list(users), int(version))

    async def room_has_user(self, room: str, user: str) -> bool:
        return user in await self.redis.hvals(self.key("room", room))

    async def typing_turn(self, room: str, user: str, interval: float) -> bool:
        """Whether ``user``'s ``typing`` in ``room`` may be relayed now, on any process."""
        return bool(await self.redis.set(self.key("typing", room, user), 1, nx=True,
                                         px=max(1, int(interval * 1000))))

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

        turn = RoomTurn(after=_publication(last), renew=renew, lease=self.lease_seconds)
        try:
            yield turn
        finally:
            if turn.held:
                await self.scripts["unlock"](keys[:2],
                                             [token, _published(turn), PUBLICATION_TTL_SECONDS])

    async def room_publication(self, room: str) -> Publication | None:
        """The room's last publication (``None``: none yet)."""
        return _publication(await self.redis.get(self.key("published", room)))

    def restore(self, pipe: Any) -> None:
        """Queue this process's room memberships (Redis lost them)."""
        for (room, conn), user in self.own_room_conns.items():
            pipe.hset(self.key("room", room), conn, user)
            pipe.sadd(self.key("proc", self.proc_id, "rooms"), room)

    async def reap(self, proc: str) -> list[Departure]:
        """Drop the dead process ``proc``'s room memberships; who left which room (with
        those of rooms reaped before a failure of an earlier call)."""
        rooms_key = self.key("proc", proc, "rooms")
        for room in await self.redis.smembers(rooms_key):
            keys = [self.key("room", room), self.key("room-version", room)]
            gone, users, last = await self.scripts["reap_room"](
                keys, [connection_prefix(proc), _version_floor(), VERSION_TTL_SECONDS]
            )
            self.unannounced += departed(room, list(gone), list(users), int(last))
        await self.redis.delete(rooms_key)
        departures, self.unannounced = self.unannounced, []
        return departures


def departed(room: str, gone: list[str], users: list[str], last: int) -> list[Departure]:
    """The departures of ``gone`` (sorted) from ``room``, one version each up to ``last``;
    each lists the room after it: ``users`` and those of ``gone`` still to leave."""
    first = last - len(gone) + 1
    return [Departure(room, user, sorted(users + gone[i + 1:]), first + i)
            for i, user in enumerate(gone)]


def attach(registry: LocalRegistry | RedisRegistry) -> LocalPresence | RedisPresence:
    """Chat's extension of ``registry`` (added to ``realtime.registry.extensions``)."""
    if isinstance(registry, RedisRegistry):
        return RedisPresence(registry)
    return LocalPresence()


def of(registry: LocalRegistry | RedisRegistry) -> LocalPresence | RedisPresence:
    """The room presence kept in ``registry``."""
    return registry.apps[APP]
