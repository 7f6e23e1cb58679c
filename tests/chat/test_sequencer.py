"""chat.sequencer's storage: the batches of many rooms share one transaction, and one
room's failure stays that room's."""

import asyncio

import pytest
from channels.db import database_sync_to_async
from channels.layers import InMemoryChannelLayer
from django.db import connection
from django.test.utils import CaptureQueriesContext

from chat import fanout, sequencer, services
from chat.models import Message
from chat.sequencer import Outgoing, RoomsWriter, insert_batches
from realtime.hub import get_hub
from tests.chat.test_services import Silent

pytestmark = pytest.mark.django_db(transaction=True)


async def test_the_batches_of_several_rooms_are_one_transaction(make_user):
    """One transaction for three rooms (two of them new): one INSERT of the messages, one
    UPDATE of the rooms; each room's messages keep their order, and a private message to
    nobody is left out (None)."""
    alice = await database_sync_to_async(make_user)("alice")
    await database_sync_to_async(make_user)("bob")
    await database_sync_to_async(insert_batches)([("one", [Outgoing(sender=alice, content="0")])])
    batches = [
        ("one", [Outgoing(sender=alice, content="1a"), Outgoing(sender=alice, content="1b")]),
        ("two", [Outgoing(sender=alice, content="2a", recipient="bob"),
                 Outgoing(sender=alice, content="2b", recipient="nobody")]),
        ("three", [Outgoing(sender=alice, content="3a")]),
    ]

    def insert():
        with CaptureQueriesContext(connection) as queries:
            return insert_batches(batches), [q["sql"] for q in queries]

    results, statements = await database_sync_to_async(insert)()
    inserts = [sql for sql in statements if sql.upper().startswith("INSERT")]
    assert [sql.split('"')[1] for sql in inserts] == ["chat_room", "chat_room", "chat_message"]
    assert sum(sql.upper().startswith("UPDATE") for sql in statements) == 1
    contents = [[m and m.content for m in rows] for rows in results]
    assert contents == [["1a", "1b"], ["2a", None], ["3a"]]
    ids = [m.pk for rows in results for m in rows if m]
    assert ids == sorted(ids)
    private = await Message.objects.select_related("recipient").aget(room__name="two")
    assert private.recipient.username == "bob"


async def test_rooms_that_wait_together_share_one_database_call(make_user, monkeypatch):
    """While one transaction runs, the batches that arrive wait and go in the next one."""
    alice = await database_sync_to_async(make_user)("alice")
    calls = []
    real = sequencer.insert_batches

    def counted(batches):
        calls.append([room for room, _ in batches])
        return real(batches)

    monkeypatch.setattr(sequencer, "insert_batches", counted)
    writer = RoomsWriter()
    rooms = [f"r{n}" for n in range(20)]
    results = await asyncio.gather(*(
        writer.store(room, [Outgoing(sender=alice, content=room)]) for room in rooms))
    assert [rows[0].content for rows in results] == rooms
    assert len(calls) < len(rooms)
    assert sorted(room for call in calls for room in call) == sorted(rooms)


async def test_a_failing_room_fails_alone(make_user, monkeypatch):
    """If the shared transaction fails, each room is stored alone: the bad one fails, the
    others are stored."""
    alice = await database_sync_to_async(make_user)("alice")
    real = sequencer.insert_batch

    def insert_batch(room, batch):
        if room == "bad":
            raise RuntimeError("this room cannot be stored")
        return real(room, batch)

    real_batches = sequencer.insert_batches

    def insert_batches(batches):
        if any(room == "bad" for room, _ in batches):
            raise RuntimeError("the shared transaction fails (and is rolled back)")
        return real_batches(batches)

    monkeypatch.setattr(sequencer, "insert_batch", insert_batch)
    monkeypatch.setattr(sequencer, "insert_batches", insert_batches)
    writer = RoomsWriter()
    results = await asyncio.gather(
        *(writer.store(room, [Outgoing(sender=alice, content=room)])
          for room in ("good", "bad", "fine")),
        return_exceptions=True)
    assert isinstance(results[1], RuntimeError)
    assert results[0][0].content == "good" and results[2][0].content == "fine"


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
