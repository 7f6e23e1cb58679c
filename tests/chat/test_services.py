"""The chat service layer: ordering and failure handling of the room sequencer."""

import asyncio
import json

import pytest
from channels.db import database_sync_to_async
from django.conf import settings

from chat import fanout, presence, sequencer, services
from chat.models import Message, Room
from realtime.hub import get_hub
from realtime.registry import RedisRegistry
from realtime.shutdown import shutdown_handlers
from tests.chat.helpers import Silent
from tests.conftest import lose_the_database_connection, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


async def test_one_bad_message_does_not_sink_its_batch(make_user, monkeypatch):
    """When a batch fails to store, the others are stored one by one; only the bad one fails."""
    user = await database_sync_to_async(make_user)("writer")
    hub = await get_hub()
    member = Silent(hub.new_connection_name(), "writer")
    local = await fanout.join(hub, "batch", member)
    real_store = sequencer.store_messages

    async def store(room, batch):
        if any(o.content == "poison" for o in batch):
            raise RuntimeError("cannot store this batch")
        return await real_store(room, batch)

    monkeypatch.setattr(sequencer, "store_messages", store)
    results = await asyncio.gather(
        *(services.message_send(local=local, user=user, content=c)
          for c in ("one", "poison", "three")),
        return_exceptions=True,
    )
    assert isinstance(results[1], services.ServiceUnavailable)
    assert all(isinstance(r, int) for r in (results[0], results[2]))
    contents = [m.content async for m in Message.objects.order_by("id")]
    assert contents == ["one", "three"]
    await fanout.leave(hub, "batch", member, announced=False)


@pytest.mark.parametrize("count", [1, 3])
async def test_messages_sent_after_the_database_connection_is_lost_are_stored(make_user,
                                                                            count):
    """The batch that finds the connection gone (a database restart, an idle timeout)
    fails, and its messages are stored again one by one on a new connection: each
    sender gets its id, and every message is stored once."""
    user = await database_sync_to_async(make_user)("writer")
    hub = await get_hub()
    member = Silent(hub.new_connection_name(), "writer")
    local = await fanout.join(hub, "lost", member)
    await services.message_send(local=local, user=user, content="before")
    await lose_the_database_connection()
    ids = await asyncio.gather(
        *(services.message_send(local=local, user=user, content=f"m{n}") for n in range(count)))
    assert all(isinstance(i, int) for i in ids) and ids == sorted(ids)
    contents = [m.content async for m in Message.objects.order_by("id")]
    assert contents == ["before", *(f"m{n}" for n in range(count))]
    await fanout.leave(hub, "lost", member, announced=False)


async def test_ids_are_returned_in_submission_order(make_user):
    """Messages submitted together get rising ids in the order they were submitted."""
    user = await database_sync_to_async(make_user)("writer")
    hub = await get_hub()
    member = Silent(hub.new_connection_name(), "writer")
    local = await fanout.join(hub, "order", member)
    ids = await asyncio.gather(
        *(services.message_send(local=local, user=user, content=f"m{i}") for i in range(20))
    )
    assert ids == sorted(ids) and len(set(ids)) == 20
    await fanout.leave(hub, "order", member, announced=False)


# --- Local members first, in order across processes ----------------------------------


def test_a_room_knows_which_publications_it_has_received():
    """Numbers rise within an epoch; a new epoch (Redis lost them) starts over."""
    local = fanout.LocalRoom(hub=None, name="numbers")
    assert local.has_seen(None) and local.has_seen(("e1", 0))
    assert not local.has_seen(("e1", 1))
    local.note_publication(("e1", 2))
    assert local.has_seen(("e1", 1)) and local.has_seen(("e1", 2))
    assert not local.has_seen(("e1", 3)) and not local.has_seen(("e2", 1))
    local.note_publication(("e1", 1))  # a late, older one changes nothing
    assert local.has_seen(("e1", 2))
    local.note_publication(("e2", 1))
    assert local.has_seen(("e2", 1)) and not local.has_seen(("e1", 2))


async def another_process_publishes(redis_url: str, room: str):
    """Take a turn in ``room`` as another process would: its publication is now the last."""
    other = RedisRegistry("other-proc", redis_url, settings.REDIS_PREFIX)
    try:
        async with presence.of(other).room_lock(room) as turn:
            turn.advance()
        return turn.after
    finally:
        await other.close()


async def live_member(make_user, room: str):
    """A writer's user, the hub, and a live member of ``room`` that records its frames."""
    user = await database_sync_to_async(make_user)("writer")
    hub = await get_hub()
    member = Silent(hub.new_connection_name(), "writer")
    local = await fanout.join(hub, room, member)
    await fanout.go_live(member)
    return user, hub, member, local


async def batch_from_elsewhere(hub, redis_url: str, room: str, user, delay: float):
    """Another process stores a message and publishes it; its event arrives ``delay`` s late.

    Returns the message and the task that delivers the event.
    """
    earlier = await Message.objects.acreate(
        room=await Room.objects.acreate(name=room), sender=user, content="from elsewhere"
    )
    number = await another_process_publishes(redis_url, room)

    async def arrive_late():
        await asyncio.sleep(delay)
        group = fanout.room_group(room)
        await hub.layer.group_send(group, {
            "type": "hub.event", "group": group, "kind": "batch", "number": list(number),
            "items": [{"id": earlier.pk, "frame": json.dumps({"id": earlier.pk})}],
        })

    return earlier, asyncio.create_task(arrive_late())


async def test_a_sender_waits_for_the_earlier_batch_of_another_process(make_user, redis_url):
    """The batch another process published just before reaches the local members first.

    Without the wait, the local member would get this process's later id first
    and then drop the earlier one as already seen.
    """
    user, hub, member, local = await live_member(make_user, "turns")
    earlier, late = await batch_from_elsewhere(hub, redis_url, "turns", user, delay=0.2)
    mine = await services.message_send(local=local, user=user, content="mine")
    await late
    await wait_for(lambda: len(member.frames) == 2)
    assert [json.loads(frame)["id"] for frame in member.frames] == [earlier.pk, mine]
    await fanout.leave(hub, "turns", member, announced=False)


async def test_a_batch_that_never_arrives_sends_through_the_layer(make_user, redis_url,
                                                                 monkeypatch):
    """If the earlier batch is late past CATCH_UP_SECONDS, the sender's goes the slow way."""
    monkeypatch.setattr(fanout, "CATCH_UP_SECONDS", 0.2)
    user, hub, member, local = await live_member(make_user, "lost")
    number = await another_process_publishes(redis_url, "lost")
    mine = await services.message_send(local=local, user=user, content="mine")
    await wait_for(lambda: member.frames)
    await asyncio.sleep(0.2)
    assert [json.loads(frame)["id"] for frame in member.frames] == [mine]
    assert await presence.of(hub.registry).room_publication("lost") == (number[0], number[1] + 1)
    await fanout.leave(hub, "lost", member, announced=False)


async def test_a_batch_after_one_sent_through_the_layer_does_not_overtake_it(
    make_user, redis_url, monkeypatch
):
    """Once a batch has gone the slow way, the next one waits for it to come back.

    The first batch gives up waiting for another process's batch and goes through
    the layer (slowly, here); the other's batch then arrives, and the next batch
    would be free to go straight to the members, ahead of the first.
    """
    monkeypatch.setattr(fanout, "CATCH_UP_SECONDS", 0.2)
    monkeypatch.setattr(sequencer, "MAX_BATCH", 1)
    monkeypatch.setattr(sequencer, "HOLD_SECONDS", 10)  # no pause between the two batches
    user, hub, member, local = await live_member(make_user, "behind")
    real_publish, publishes = hub.publish, []

    async def slow_first_publish(group, event):
        publishes.append(event)
        if len(publishes) == 1:
            await asyncio.sleep(0.3)
        await real_publish(group, event)

    monkeypatch.setattr(hub, "publish", slow_first_publish)
    earlier, late = await batch_from_elsewhere(hub, redis_url, "behind", user, delay=0.25)
    first = asyncio.create_task(services.message_send(local=local, user=user, content="m0"))
    await asyncio.sleep(0.05)
    second = await services.message_send(local=local, user=user, content="m1")
    await late
    ids = [earlier.pk, await first, second]
    await wait_for(lambda: len(member.frames) >= 3)
    await asyncio.sleep(0.2)
    assert [json.loads(frame)["id"] for frame in member.frames] == ids
    await fanout.leave(hub, "behind", member, announced=False)


# --- A room only this process serves keeps its Redis lock (the turn's lease) ---------


def count_script(monkeypatch, rooms, name: str) -> list[str]:
    """The keys of each call of one of ``rooms``'s Lua scripts, from now on."""
    calls, real = [], rooms.scripts[name]

    async def counted(keys, args):
        calls.append(keys[0])
        return await real(keys, args)

    monkeypatch.setitem(rooms.scripts, name, counted)
    return calls


async def lock_given_back(rooms, local) -> None:
    """Wait until the room's sequencer has ended its turn and given back the lock."""
    await wait_for(lambda: local.sequencer.task is None or local.sequencer.task.done())
    assert not await rooms.redis.exists(rooms.key("lock", local.name))


async def leasing_member(make_user, monkeypatch, room: str, lease: float):
    """:func:`live_member` on a process whose room locks are leased for ``lease`` seconds;
    and that process's presence."""
    user, hub, member, local = await live_member(make_user, room)
    rooms = presence.of(hub.registry)
    monkeypatch.setattr(rooms, "lease_seconds", lease)
    return user, hub, member, local, rooms


async def holding_a_lease(make_user, monkeypatch, room: str, lease: float):
    """A live member of ``room`` whose message left its process holding the lock in a
    lease of ``lease`` seconds: the hub, the member, its LocalRoom and the presence."""
    user, hub, member, local, rooms = await leasing_member(make_user, monkeypatch, room, lease)
    await services.message_send(local=local, user=user, content="mine")
    await asyncio.sleep(0.1)  # an idle room: without a lease its turn would have ended
    assert await rooms.redis.exists(rooms.key("lock", room))
    return hub, member, local, rooms


async def test_a_room_no_other_process_listens_in_keeps_its_lock_between_messages(
    make_user, redis_url, monkeypatch
):
    """Messages within a lease of each other take the lock once, and are not numbered:
    no other process has to catch up with them. The lock is given back a lease after
    the last. Fails if the lease is silently off."""
    user, hub, member, local, rooms = await leasing_member(make_user, monkeypatch, "lone",
                                                          2)
    locks = count_script(monkeypatch, rooms, "lock")
    for n in range(3):
        await services.message_send(local=local, user=user, content=f"m{n}")
        await asyncio.sleep(0.1)  # an idle room: its turn would have ended
    assert locks == [rooms.key("lock", "lone")]
    assert await rooms.redis.exists(rooms.key("lock", "lone"))
    await lock_given_back(rooms, local)
    assert (await rooms.room_publication("lone"))[1] == 0
    assert len(member.frames) == 3
    await fanout.leave(hub, "lone", member, announced=False)


async def test_a_process_that_waits_gets_a_leased_lock(make_user, redis_url, monkeypatch):
    """Another process that wants the lock gets it once the lease is over, and finds the
    last publication it has to catch up with unchanged."""
    hub, member, local, _ = await holding_a_lease(make_user, monkeypatch, "leased", 1)
    other = RedisRegistry("other-proc", redis_url, settings.REDIS_PREFIX)
    try:
        async with presence.of(other).room_lock("leased") as turn:
            # The turn gave the lock back: its task ends with the unlock's reply, which
            # may reach this process just after the other registry's lock.
            await wait_for(lambda: local.sequencer.task.done(), timeout=1)
            assert turn.after[1] == 0
    finally:
        await other.close()
    await fanout.leave(hub, "leased", member, announced=False)


async def test_a_room_another_process_listens_in_gives_its_lock_back_after_each_turn(
    make_user, redis_url, monkeypatch
):
    """As soon as another process is in the room's group, each turn gives the lock back
    when its batch is out, and each batch is numbered for that process to catch up."""
    user, hub, member, local, rooms = await leasing_member(make_user, monkeypatch, "shared",
                                                          30)
    locks = count_script(monkeypatch, rooms, "lock")
    await hub.layer.group_add(local.group, "another-process!x")
    try:
        for n in range(2):
            await services.message_send(local=local, user=user, content=f"m{n}")
            await lock_given_back(rooms, local)
    finally:
        await hub.layer.group_discard(local.group, "another-process!x")
    assert len(locks) == 2
    assert (await rooms.room_publication("shared"))[1] == 2
    await fanout.leave(hub, "shared", member, announced=False)


async def test_a_room_that_empties_here_gives_its_leased_lock_back_at_once(
    make_user, redis_url, monkeypatch
):
    """Its last member gone, the process has no reason to keep the room's lock."""
    hub, member, local, rooms = await holding_a_lease(make_user, monkeypatch, "emptied", 30)
    await fanout.leave(hub, "emptied", member, announced=False)
    await lock_given_back(rooms, local)


async def test_a_stopping_process_gives_its_leased_locks_back(make_user, redis_url,
                                                             monkeypatch):
    """The shutdown handler ends every lease, so no room waits for the lock's expiry."""
    hub, member, local, rooms = await holding_a_lease(make_user, monkeypatch, "deploy", 30)
    assert sequencer.end_leases in shutdown_handlers
    async with asyncio.timeout(10):  # the lease would last 30 s
        await sequencer.end_leases()
    assert local.sequencer.task.done()
    assert not await rooms.redis.exists(rooms.key("lock", "deploy"))
    await fanout.leave(hub, "deploy", member, announced=False)


async def test_a_room_that_empties_while_its_batch_is_stored_takes_no_lease(
    make_user, redis_url, monkeypatch
):
    """The last member leaves while the turn stores: the turn ends with that batch."""
    user, hub, member, local, rooms = await leasing_member(make_user, monkeypatch, "left",
                                                          30)
    storing, stored = asyncio.Event(), asyncio.Event()
    real_store = sequencer.store_messages

    async def slow_store(room, batch):
        storing.set()
        await stored.wait()
        return await real_store(room, batch)

    monkeypatch.setattr(sequencer, "store_messages", slow_store)
    sending = asyncio.create_task(
        services.message_send(local=local, user=user, content="leaving"))
    await storing.wait()
    await fanout.leave(hub, "left", member, announced=False)
    stored.set()
    await sending
    await lock_given_back(rooms, local)
