"""chat.sequencer's storage: the batches of many rooms that wait together share one
transaction (chat.store), and one room's failure stays that room's."""

import asyncio
import gc
import weakref

import pytest
from channels.db import database_sync_to_async

from chat import fanout, services, store
from chat.models import Message
from chat.sequencer import Outgoing, RoomsWriter
from realtime import layers, wire
from realtime.hub import get_hub
from tests.chat.helpers import Silent

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
    """With no other listener, a room's batch reaches its members without a layer round
    trip (in memory, and on the core Redis layer); once another channel is in the group, it
    is published. Fails if the shortcut is silently off under the locked versions."""
    alice = await database_sync_to_async(make_user)("alice")
    hub = await get_hub()
    if layers.is_pubsub(hub.layer):
        pytest.skip("the pub/sub layer always publishes: there a message is one PUBLISH")
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


async def test_an_emptied_room_is_freed_without_the_garbage_collector(make_user):
    """Once its last member has left, a room that stored a message is freed by reference
    counting: no cycle between it and its sequencer (or the sequencer's finished task)
    waits for a full collection, which the servers space out (GC_THRESHOLD2)."""
    alice = await database_sync_to_async(make_user)("alice")
    hub = await get_hub()
    member = Silent(hub.new_connection_name(), "alice")
    local = await fanout.join(hub, "emptied", member)
    await fanout.go_live(member)
    await services.message_send(local=local, user=alice, content="before leaving")
    task = local.sequencer.task
    await fanout.leave(hub, "emptied", member, announced=False)
    await task
    room, sequencer = weakref.ref(local), weakref.ref(local.sequencer)
    gc.disable()
    try:
        del local, task
        assert room() is None and sequencer() is None
    finally:
        gc.enable()


# --- A batch's frames go to each member in one write --------------------------------------


class Recording(Silent):
    """A member whose connection takes what ``send_now`` is given, unless told not to."""

    def __init__(self, conn: str, username: str, *, takes: bool = True) -> None:
        super().__init__(conn, username)
        self.takes, self.writes = takes, []

    def send_now(self, encoded: bytes, frames: int = 1) -> bool:
        if not self.takes:
            return False
        self.writes.append((wire.asgi_messages(encoded), frames))
        return True


def texts(write: tuple[list[dict], int]) -> list[str]:
    messages, frames = write
    assert len(messages) == frames
    return [message["text"] for message in messages]


async def test_each_member_gets_a_batch_in_one_write_in_order():
    """N messages of one batch are one write per member, in id order; a private
    message goes only to its two users, the sender's own copy is its ref'd frame."""
    hub = await get_hub()
    ann, bob, cyd = (Recording(hub.new_connection_name(), name) for name in ("ann", "bob", "cyd"))
    local = await fanout.join(hub, "batched", ann)
    for member in (bob, cyd):
        await fanout.join(hub, "batched", member)
    for member in (ann, bob, cyd):
        member.pending = None  # live
    items = [
        {"id": 11, "frame": "m11", "frame_ref": "m11+ref", "origin": ann.conn},
        {"id": 12, "frame": "p12", "to": ["ann", "bob"]},
        {"id": 13, "frame": "m13"},
    ]
    await local.deliver_all(items)
    assert [texts(write) for write in ann.writes] == [["m11+ref", "p12", "m13"]]
    assert [texts(write) for write in bob.writes] == [["m11", "p12", "m13"]]
    assert [texts(write) for write in cyd.writes] == [["m11", "m13"]]
    await local.deliver_all(items)  # ids already seen are not sent again
    assert len(ann.writes) == len(bob.writes) == len(cyd.writes) == 1


async def test_a_member_that_cannot_take_a_batch_at_once_gets_it_frame_by_frame():
    """Bytes already wait (or another server): each frame through send(), in order;
    a joining member holds the batch."""
    hub = await get_hub()
    slow = Recording(hub.new_connection_name(), "slow", takes=False)
    joining = Recording(hub.new_connection_name(), "new")
    local = await fanout.join(hub, "held", slow)
    await fanout.join(hub, "held", joining)
    slow.pending = None
    items = [{"id": 21, "frame": "m21"}, {"id": 22, "frame": "m22"}]
    await local.deliver_all(items)
    assert slow.frames == ["m21", "m22"] and slow.writes == []
    assert joining.pending == items and joining.writes == []


async def test_a_batch_over_the_joined_size_goes_frame_by_frame():
    """Past MAX_JOINED_BYTES a member's share of a batch is sent frame by frame, so the
    slow-reader bound is checked between its frames as before."""
    hub = await get_hub()
    member = Recording(hub.new_connection_name(), "ann")
    local = await fanout.join(hub, "large", member)
    member.pending = None
    big = "x" * (fanout.MAX_JOINED_BYTES // 2)
    await local.deliver_all([{"id": 31, "frame": big}, {"id": 32, "frame": big + "y"}])
    assert member.writes == [] and member.frames == [big, big + "y"]
