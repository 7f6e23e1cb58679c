"""chat.sequencer's storage: the batches of many rooms that wait together share one
transaction (chat.store), and one room's failure stays that room's."""

import asyncio

import pytest
from channels.db import database_sync_to_async
from channels.layers import InMemoryChannelLayer

from chat import fanout, services, store
from chat.models import Message
from chat.sequencer import Outgoing, RoomsWriter
from realtime.hub import get_hub
from tests.chat.test_services import Silent

pytestmark = pytest.mark.django_db(transaction=True)


async def contents(stored: list[store.Stored]) -> list[str]:
    """What was stored under each result's id."""
    rows = await database_sync_to_async(Message.objects.in_bulk)([s.pk for s in stored])
    return [rows[s.pk].content for s in stored]


async def test_rooms_that_wait_together_share_one_database_call(make_user, monkeypatch):
    """While one transaction runs, the batches that arrive wait and go in the next one."""
    alice = await database_sync_to_async(make_user)("alice")
    calls = []
    real = store.insert_batches

    def counted(batches):
        calls.append([room for room, _ in batches])
        return real(batches)

    monkeypatch.setattr(store, "insert_batches", counted)
    writer = RoomsWriter()
    rooms = [f"r{n}" for n in range(20)]
    results = await asyncio.gather(*(
        writer.store(room, [Outgoing(sender=alice, content=room)]) for room in rooms))
    assert await contents([rows[0] for rows in results]) == rooms
    assert len(calls) < len(rooms)
    assert sorted(room for call in calls for room in call) == sorted(rooms)


async def test_a_failing_room_fails_alone(make_user, monkeypatch):
    """If the shared transaction fails, each room is stored alone: the bad one fails, the
    others are stored."""
    alice = await database_sync_to_async(make_user)("alice")
    real = store.insert_batch

    def insert_batch(room, batch):
        if room == "bad":
            raise RuntimeError("this room cannot be stored")
        return real(room, batch)

    real_batches = store.insert_batches

    def insert_batches(batches):
        if any(room == "bad" for room, _ in batches):
            raise RuntimeError("the shared transaction fails (and is rolled back)")
        return real_batches(batches)

    monkeypatch.setattr(store, "insert_batch", insert_batch)
    monkeypatch.setattr(store, "insert_batches", insert_batches)
    writer = RoomsWriter()
    results = await asyncio.gather(
        *(writer.store(room, [Outgoing(sender=alice, content=room)])
          for room in ("good", "bad", "fine")),
        return_exceptions=True)
    assert isinstance(results[1], RuntimeError)
    assert await contents([results[0][0], results[2][0]]) == ["good", "fine"]


async def test_a_batch_delivered_here_skips_the_layer_when_nobody_else_listens(make_user,
                                                                              monkeypatch):
    """On the in-memory layer with no other listener, a room's batch reaches its members
    without a layer round trip; once another channel is in the group, it is published."""
    alice = await database_sync_to_async(make_user)("alice")
    hub = await get_hub()
    if not isinstance(hub.layer, InMemoryChannelLayer):
        pytest.skip("the shortcut of the in-memory layer (Redis layers always publish)")
    member = Silent(hub.new_connection_name(), "alice")
    local = await fanout.join(hub, "quiet", member)
    await fanout.go_live(member)
    sent = []
    real_send = hub.layer.group_send

    async def group_send(group, message):
        sent.append(group)
        await real_send(group, message)

    monkeypatch.setattr(hub.layer, "group_send", group_send)
    await services.message_send(local=local, user=alice, content="alone")
    assert sent == [] and "alone" in member.frames[-1]
    await hub.layer.group_add(local.group, "another-process!x")
    await services.message_send(local=local, user=alice, content="together")
    assert sent == [local.group] and "together" in member.frames[-1]
    await hub.layer.group_discard(local.group, "another-process!x")
    await fanout.leave(hub, "quiet", member, announced=False)
