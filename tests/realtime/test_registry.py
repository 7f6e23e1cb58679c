"""The registries: connection counts; through chat's extension, a join/leave storm,
room turns and their lock, and what a dead process or a Redis restart leaves."""

import asyncio

import pytest
from django.conf import settings

from chat import presence
from chat.presence import PUBLICATION_TTL_SECONDS, Departure
from notifications.protocol import NOTIFICATIONS
from realtime.registry import (
    LocalRegistry,
    Reach,
    RedisRegistry,
)


@pytest.fixture(params=["local", pytest.param("redis", marks=pytest.mark.redis)])
async def registry(request):
    if request.param == "local":
        found = LocalRegistry("count-proc")
    else:
        found = RedisRegistry("count-proc", request.getfixturevalue("redis_url"),
                              settings.REDIS_PREFIX)
    yield found
    await found.close()


async def test_notification_connections_are_counted_per_user_in_one_call(registry):
    """Open notification connections per user, in the order asked; other endpoints do not count."""
    await registry.register("ann", "count-proc|1", NOTIFICATIONS, 0)
    await registry.register("ann", "count-proc|2", NOTIFICATIONS, 0)
    await registry.register("bob", "count-proc|3", "chat", 0)
    await registry.register("cyd", "count-proc|4", NOTIFICATIONS, 0)
    reach = await registry.connections_on(NOTIFICATIONS, ["bob", "ann", "nobody", "cyd"])
    assert reach == Reach([0, 2, 0, 1], elsewhere=False)
    assert await registry.connections_on(NOTIFICATIONS, []) == Reach([], elsewhere=False)
    await registry.unregister("ann", "count-proc|1")
    assert (await registry.connections_on(NOTIFICATIONS, ["ann"])).counts == [1]


async def test_connections_of_other_processes_are_elsewhere(redis_url):
    """A notifications connection named by another process makes the users' reach elsewhere."""
    mine = RedisRegistry("mine-proc", redis_url, settings.REDIS_PREFIX)
    theirs = RedisRegistry("theirs-proc", redis_url, settings.REDIS_PREFIX)
    try:
        await mine.register("ann", "mine-proc|1", NOTIFICATIONS, 0)
        await theirs.register("bob", "theirs-proc|1", "chat", 0)
        assert await mine.connections_on(NOTIFICATIONS, ["ann", "bob"]) == Reach(
            [1, 0], elsewhere=False), "another process's chat connection does not count"
        await theirs.register("bob", "theirs-proc|2", NOTIFICATIONS, 0)
        assert await mine.connections_on(NOTIFICATIONS, ["ann", "bob"]) == Reach(
            [1, 1], elsewhere=True)
        assert await mine.connections_on(NOTIFICATIONS, ["ann"]) == Reach(
            [1], elsewhere=False)
        assert (await theirs.connections_on(NOTIFICATIONS, ["ann"])).elsewhere
    finally:
        await mine.close()
        await theirs.close()


async def test_a_storm_of_joins_and_leaves_loses_no_update(redis_url):
    """500 concurrent joins then leaves all take effect: callers wait for a pooled connection."""
    registry = RedisRegistry("storm-proc", redis_url, settings.REDIS_PREFIX)
    rooms = presence.of(registry)
    try:
        conns = [f"storm-proc|{i}" for i in range(500)]
        await asyncio.gather(*(rooms.room_join("storm", c, f"u{i % 50}")
                               for i, c in enumerate(conns)))
        assert len((await rooms.room_join("storm", "storm-proc|x", "zz")).users) == 51
        changes = await asyncio.gather(*(rooms.room_leave("storm", c) for c in conns))
        assert sum(not change.user_present for change in changes) == 50
        assert (await rooms.room_leave("storm", "storm-proc|x")).users == []
    finally:
        await registry.close()


async def test_room_turns_number_their_publications(redis_url):
    """Each turn starts after the room's last publication; one without any records none."""
    registry = RedisRegistry("turns-proc", redis_url, settings.REDIS_PREFIX)
    rooms = presence.of(registry)
    try:
        async with rooms.room_lock("numbers") as first:
            assert first.after[1] == 0
            epoch = first.after[0]
            first.advance()
            first.advance()
        assert await rooms.room_publication("numbers") == (epoch, 2)
        async with rooms.room_lock("numbers") as second:
            assert second.after == (epoch, 2)
        assert await rooms.room_publication("numbers") == (epoch, 2)
    finally:
        await registry.close()


async def test_a_rooms_publication_expires_a_day_after_its_last_batch(redis_url):
    """Every room written to leaves no key for ever: its publication expires, and a turn
    after that starts a new epoch, as after a Redis restart."""
    registry = RedisRegistry("expiry-proc", redis_url, settings.REDIS_PREFIX)
    rooms = presence.of(registry)
    key = registry.key("published", "expiring")
    try:
        async with rooms.room_lock("expiring") as turn:
            turn.advance()
            assert await turn.keep()
            assert 0 < await registry.redis.ttl(key) <= PUBLICATION_TTL_SECONDS
            turn.advance()
        assert 0 < await registry.redis.ttl(key) <= PUBLICATION_TTL_SECONDS
        (epoch, number) = await rooms.room_publication("expiring")
        assert number == 2
        await registry.redis.delete(key)  # what the expiry does
        async with rooms.room_lock("expiring") as after:
            assert after.after[1] == 0 and after.after[0] != epoch
            assert 0 < await registry.redis.ttl(key) <= PUBLICATION_TTL_SECONDS
    finally:
        await registry.close()


async def test_a_held_room_lock_goes_to_a_process_that_waits(redis_url):
    """A turn keeps its lock while nobody else asks; a waiting process gets it at the next keep."""
    holder = RedisRegistry("holder-proc", redis_url, settings.REDIS_PREFIX)
    other = RedisRegistry("other-proc", redis_url, settings.REDIS_PREFIX)
    try:
        async with presence.of(holder).room_lock("shared") as turn:
            assert await turn.keep()
            turn.advance()
            assert await turn.keep()

            async def take():
                async with presence.of(other).room_lock("shared") as theirs:
                    return theirs.after

            waiting = asyncio.create_task(take())
            await asyncio.sleep(0.05)
            assert not waiting.done()
            assert not await turn.keep()
            assert not turn.held
            # The waiter starts after what the holder published.
            assert (await asyncio.wait_for(waiting, 5))[1] == 1
    finally:
        await holder.close()
        await other.close()


async def test_a_dead_process_is_reaped_with_its_rooms(redis_url):
    """A survivor drops a silent process's connections and room memberships, once, and
    reports who left which room for its departure handlers."""
    dead = RedisRegistry("dead-proc", redis_url, settings.REDIS_PREFIX)
    survivor = RedisRegistry("live-proc", redis_url, settings.REDIS_PREFIX)
    try:
        await dead.heartbeat()
        await dead.register("ann", "dead-proc|1", "chat", 0)
        await presence.of(dead).room_join("lobby", "dead-proc|1", "ann")
        await presence.of(survivor).room_join("lobby", "live-proc|1", "bob")
        await dead.redis.zadd(dead.key("procs"), {"dead-proc": 0})  # what mark_dead does
        departures = await survivor.reap(dead_after=60)
        assert [(d.room, d.user, d.users) for d in departures] == [("lobby", "ann", ["bob"])]
        assert all(isinstance(d, Departure) for d in departures)
        assert await survivor.redis.hlen(survivor.key("user", "ann")) == 0
        assert not await presence.of(survivor).room_has_user("lobby", "ann")
        assert await survivor.reap(dead_after=60) == []
    finally:
        await dead.close()
        await survivor.close()


async def test_a_restore_puts_back_connections_and_room_memberships(redis_url):
    """After Redis lost its data, a restore writes back this process's connections and
    the rooms its connections are in."""
    registry = RedisRegistry("restore-proc", redis_url, settings.REDIS_PREFIX)
    rooms = presence.of(registry)
    try:
        await registry.register("ann", "restore-proc|1", NOTIFICATIONS, 0)
        await rooms.room_join("lobby", "restore-proc|2", "ann")
        await registry.redis.delete(registry.key("user", "ann"), registry.key("room", "lobby"),
                                    registry.key("proc", "restore-proc", "rooms"))
        assert not await rooms.room_has_user("lobby", "ann")
        await registry.restore()
        assert (await registry.connections_on(NOTIFICATIONS, ["ann"])).counts == [1]
        assert await rooms.room_has_user("lobby", "ann")
        assert await registry.redis.smembers(
            registry.key("proc", "restore-proc", "rooms")) == {"lobby"}
    finally:
        await registry.close()


async def test_every_registry_carries_chats_presence(registry):
    """Chat's extension is built with each registry, local or Redis, and closes with it."""
    rooms = presence.of(registry)
    change = await rooms.room_join("lobby", "count-proc|1", "ann")
    assert change.users == ["ann"] and not change.user_present
    assert await rooms.room_has_user("lobby", "ann")
    assert not (await rooms.room_leave("lobby", "count-proc|1")).user_present


async def test_a_process_set_of_users_loses_a_user_with_its_last_connection(redis_url):
    """A long-lived process keeps no entry for every user it ever served (its reap would go
    through them all): its set of users loses one with the user's last connection there."""
    registry = RedisRegistry("users-proc", redis_url, settings.REDIS_PREFIX)
    mine = registry.key("proc", "users-proc", "users")
    try:
        await registry.register("ann", "users-proc|1", "chat", 0)
        await registry.register("ann", "users-proc|2", NOTIFICATIONS, 0)
        await registry.register("bob", "users-proc|3", "chat", 0)
        await registry.unregister("ann", "users-proc|1")
        assert await registry.redis.smembers(mine) == {"ann", "bob"}
        await registry.unregister("ann", "users-proc|2")
        await registry.unregister("bob", "users-proc|3")
        assert not await registry.redis.exists(mine, registry.key("user", "ann"))
    finally:
        await registry.close()


async def test_a_released_slot_is_free_here_before_redis_has_the_release(redis_url):
    """A user's slot is free on this process once ``unregister`` has started: the next
    register deletes what the HDEL in flight (or a failed one) would have deleted."""
    registry = RedisRegistry("slot-proc", redis_url, settings.REDIS_PREFIX)
    original, landed = registry.scripts["unregister"], asyncio.Event()

    async def slow_unregister(*args):
        await landed.wait()
        return await original(*args)

    try:
        assert await registry.register("ann", "slot-proc|1", "chat", 1)
        registry.scripts["unregister"] = slow_unregister
        unregistering = asyncio.ensure_future(registry.unregister("ann", "slot-proc|1"))
        await asyncio.sleep(0)
        assert await registry.register("ann", "slot-proc|2", "chat", 1)
        assert not await registry.register("ann", "slot-proc|3", "chat", 1)
        landed.set()
        await unregistering
        assert registry.releasing == {}

        async def failing_unregister(*args):
            raise ConnectionError("Redis went away")

        registry.scripts["unregister"] = failing_unregister
        with pytest.raises(ConnectionError):
            await registry.unregister("ann", "slot-proc|2")
        registry.scripts["unregister"] = original
        assert await registry.register("ann", "slot-proc|4", "chat", 1)
        assert registry.releasing == {}
        assert (await registry.connections_on("chat", ["ann"])).counts == [1]
    finally:
        await registry.close()
