"""Chat's presence layer: every departure of a reaped process gets its own version, and
what a room leaves behind (local entries, Redis keys) is bounded."""

import asyncio

import pytest
from django.conf import settings

from chat import fanout, presence
from chat.presence import VERSION_TTL_SECONDS, LocalPresence
from realtime.hub import get_hub
from realtime.registry import RedisRegistry
from tests.chat.helpers import Silent
from tests.conftest import wait_for


@pytest.fixture
async def dead_and_survivor(redis_url):
    dead = RedisRegistry("dead-proc", redis_url, settings.REDIS_PREFIX)
    survivor = RedisRegistry("live-proc", redis_url, settings.REDIS_PREFIX)
    yield dead, survivor
    await dead.close()
    await survivor.close()


async def reap_three_of_four(dead, survivor) -> tuple[int, int, list]:
    """ann, bob, cyd on the dead process and dan on the survivor in "lobby"; ann and bob
    (dead) with eve (survivor) in "hall". The survivor reaps; the version each room had."""
    await dead.heartbeat()
    for i, user in enumerate(("ann", "bob", "cyd")):
        await presence.of(dead).room_join("lobby", f"dead-proc|{i}", user)
    await presence.of(dead).room_join("lobby", "dead-proc|9", "ann")  # a second socket
    lobby = await presence.of(survivor).room_join("lobby", "live-proc|1", "dan")
    for i, user in enumerate(("ann", "bob")):
        await presence.of(dead).room_join("hall", f"dead-proc|h{i}", user)
    hall = await presence.of(survivor).room_join("hall", "live-proc|2", "eve")
    await dead.redis.zadd(dead.key("procs"), {"dead-proc": 0})  # what mark_dead does
    return lobby.version, hall.version, await survivor.reap(dead_after=60)


async def test_each_departure_of_a_reap_has_its_own_rising_version(dead_and_survivor):
    """Several users of a dead process in one room leave with versions above the room's
    last one and above each other, each with the room as it is after its own departure."""
    dead, survivor = dead_and_survivor
    lobby_version, hall_version, departures = await reap_three_of_four(dead, survivor)
    lobby = [d for d in departures if d.room == "lobby"]
    hall = [d for d in departures if d.room == "hall"]
    assert [(d.user, d.users) for d in lobby] == [
        ("ann", ["bob", "cyd", "dan"]), ("bob", ["cyd", "dan"]), ("cyd", ["dan"])]
    assert [(d.user, d.users) for d in hall] == [("ann", ["bob", "eve"]), ("bob", ["eve"])]
    assert [d.version for d in lobby] == [lobby_version + 1, lobby_version + 2, lobby_version + 3]
    assert [d.version for d in hall] == [hall_version + 1, hall_version + 2]
    # The next change of the room is above every departure.
    after = await presence.of(survivor).room_join("lobby", "live-proc|3", "fay")
    assert after.version == lobby_version + 4 and after.users == ["dan", "fay"]


async def test_every_departure_reaches_a_member_of_the_room(dead_and_survivor):
    """A member that saw the room's last version before the reap gets user_left for each
    user of the dead process (a member drops an event whose version it has seen)."""
    dead, survivor = dead_and_survivor
    hub = await get_hub()
    watchers = {}
    for room in ("lobby", "hall"):
        member = Silent(hub.new_connection_name(), "watcher")
        await fanout.join(hub, room, member)
        await fanout.go_live(member)
        watchers[room] = member
    lobby_version, hall_version, departures = await reap_three_of_four(dead, survivor)
    watchers["lobby"].presence_version = lobby_version
    watchers["hall"].presence_version = hall_version
    await fanout.announce_departures(hub, departures)
    await wait_for(lambda: len(watchers["lobby"].frames) >= 3 and len(watchers["hall"].frames) >= 2)
    await asyncio.sleep(0.1)
    assert [f.count('"user_left"') for f in watchers["lobby"].frames] == [1, 1, 1]
    assert ['"user_id":"cyd"' in f.replace(" ", "") for f in watchers["lobby"].frames][-1]
    assert len(watchers["hall"].frames) == 2
    for room, member in watchers.items():
        await fanout.leave(hub, room, member, announced=False)


async def test_a_room_version_expires_after_its_last_change(dead_and_survivor):
    """The room-version key has a TTL, refreshed by every change (join, leave, reap)."""
    dead, survivor = dead_and_survivor
    key = survivor.key("room-version", "lobby")
    rooms = presence.of(survivor)
    await rooms.room_join("lobby", "live-proc|1", "dan")
    assert 0 < await survivor.redis.ttl(key) <= VERSION_TTL_SECONDS
    await survivor.redis.expire(key, 100)
    await rooms.room_leave("lobby", "live-proc|1")
    assert 100 < await survivor.redis.ttl(key) <= VERSION_TTL_SECONDS
    await survivor.redis.expire(key, 100)
    await reap_three_of_four(dead, survivor)
    assert 100 < await survivor.redis.ttl(key) <= VERSION_TTL_SECONDS


async def test_a_joined_then_left_room_leaves_only_its_expiring_version_in_redis(
        dead_and_survivor):
    """The process's set of rooms loses a room with its last connection there (else a
    long-lived process kept every room it ever served, and its reap went through them all)."""
    _, survivor = dead_and_survivor
    rooms, mine = presence.of(survivor), survivor.key("proc", "live-proc", "rooms")
    await rooms.room_join("lobby", "live-proc|1", "dan")
    await rooms.room_join("lobby", "live-proc|2", "dan")
    await rooms.room_join("hall", "live-proc|3", "eve")
    await rooms.room_leave("lobby", "live-proc|1")
    assert await survivor.redis.smembers(mine) == {"lobby", "hall"}
    await rooms.room_leave("lobby", "live-proc|2")
    assert await survivor.redis.smembers(mine) == {"hall"}
    await rooms.room_leave("hall", "live-proc|3")
    keys = {key async for key in survivor.redis.scan_iter(match=survivor.key("*"))}
    assert keys == {survivor.key("room-version", "lobby"), survivor.key("room-version", "hall")}
    for key in keys:
        assert 0 < await survivor.redis.ttl(key) <= VERSION_TTL_SECONDS


async def test_an_expired_room_version_starts_above_the_old_one(dead_and_survivor):
    """Expiry is safe: the next version starts at the clock floor, above what members hold."""
    _, survivor = dead_and_survivor
    rooms = presence.of(survivor)
    before = await rooms.room_join("lobby", "live-proc|1", "dan")
    await survivor.redis.delete(survivor.key("room-version", "lobby"))  # what the TTL does
    after = await rooms.room_join("lobby", "live-proc|2", "eve")
    assert after.version > before.version


async def test_a_joined_then_left_room_leaves_nothing_in_local_presence():
    """One process's presence keeps no entry for a room nobody is in or locks."""
    rooms = LocalPresence()
    joined = await rooms.room_join("gone", "p|1", "ann")
    await rooms.room_join("gone", "p|2", "bob")
    async with rooms.room_lock("gone"):
        pass
    await rooms.room_leave("gone", "p|1")
    left = await rooms.room_leave("gone", "p|2")
    assert left.users == [] and left.version > joined.version
    assert dict(rooms.room_conns) == {} and dict(rooms.locks) == {}
    assert not hasattr(rooms, "versions") or dict(rooms.versions) == {}
    # Back in the room: versions still rise, so a late user_left of before is dropped.
    again = await rooms.room_join("gone", "p|3", "cyd")
    assert again.version > left.version


async def test_a_local_room_lock_with_a_waiter_is_kept():
    """A lock that someone holds or waits for stays, even when the room empties; it goes
    once the last holder is done."""
    rooms = LocalPresence()
    await rooms.room_join("busy", "p|1", "ann")
    order = []
    entered = asyncio.Event()

    async def hold(name, release):
        async with rooms.room_lock("busy"):
            order.append(name)
            entered.set()
            await release.wait()

    first_done, second_done = asyncio.Event(), asyncio.Event()
    first = asyncio.create_task(hold("first", first_done))
    await entered.wait()
    second = asyncio.create_task(hold("second", second_done))
    await asyncio.sleep(0.01)
    await rooms.room_leave("busy", "p|1")
    assert "busy" in rooms.locks
    first_done.set()
    await first
    third = asyncio.create_task(hold("third", asyncio.Event()))
    await asyncio.sleep(0.01)
    assert order == ["first", "second"], "the waiter got the same lock; no second lock"
    second_done.set()
    await second
    await asyncio.sleep(0.01)
    assert order == ["first", "second", "third"]
    third.cancel()
    with pytest.raises(asyncio.CancelledError):
        await third
    assert dict(rooms.locks) == {}


async def test_a_reap_that_fails_midway_loses_no_departure(dead_and_survivor, monkeypatch):
    """Redis fails after one room of a dead process was reaped: the process is dead again,
    and the next reap finishes it and reports the departures of both rooms, once."""
    dead, survivor = dead_and_survivor
    rooms = presence.of(survivor)
    script, calls = rooms.scripts["reap_room"], []

    async def flaky(keys, args):
        calls.append(keys[0])
        if len(calls) == 2:
            raise ConnectionError("Redis went away")
        return await script(keys, args)

    monkeypatch.setattr(rooms, "scripts", {**rooms.scripts, "reap_room": flaky})
    with pytest.raises(ConnectionError):
        await reap_three_of_four(dead, survivor)
    departures = await survivor.reap(dead_after=60)
    assert sorted((d.room, d.user) for d in departures) == [
        ("hall", "ann"), ("hall", "bob"), ("lobby", "ann"), ("lobby", "bob"), ("lobby", "cyd")]
    assert not await rooms.room_has_user("lobby", "cyd")
    assert not await rooms.room_has_user("hall", "bob")
    assert await survivor.reap(dead_after=60) == []


async def test_a_reap_whose_reaper_died_is_taken_up_again(dead_and_survivor):
    """A reaper killed while reaping leaves its lease to expire; the dead process is still
    listed as dead, and a survivor then reaps it."""
    dead, survivor = dead_and_survivor
    lease = survivor.key("reaping", "dead-proc")
    await survivor.redis.set(lease, "killed-reaper", ex=60)
    assert (await reap_three_of_four(dead, survivor))[2] == []
    assert await survivor.redis.zscore(survivor.key("procs"), "dead-proc") == 0
    await survivor.redis.delete(lease)  # what its expiry does
    assert len(await survivor.reap(dead_after=60)) == 5
    assert await survivor.redis.zscore(survivor.key("procs"), "dead-proc") is None
    assert not await survivor.redis.exists(lease)


async def test_departures_a_handler_failed_on_are_handed_again(monkeypatch):
    """A departure handler that fails (the layer is down) gets the same departures at the
    next beat; a member sees each user_left once."""
    hub = await get_hub()
    member = Silent(hub.new_connection_name(), "watcher")
    await fanout.join(hub, "retry", member)
    await fanout.go_live(member)
    departures = presence.departed("retry", ["ann", "bob"], ["watcher"], 12)
    reaps = [departures, [], []]

    async def reap(dead_after):
        return reaps.pop(0)

    real_publish, failures = hub.publish, [ConnectionError("layer down")]

    async def publish(group, event, **kwargs):
        if failures:
            raise failures.pop()
        await real_publish(group, event, **kwargs)

    monkeypatch.setattr(hub.registry, "reap", reap)
    monkeypatch.setattr(hub, "publish", publish)
    with pytest.raises(ConnectionError):
        await hub._reap()
    await hub._reap()
    await wait_for(lambda: len(member.frames) >= 2)
    await hub._reap()  # nothing left to hand out
    await asyncio.sleep(0.1)
    assert len(member.frames) == 2 and '"ann"' in member.frames[0]
    await fanout.leave(hub, "retry", member, announced=False)
