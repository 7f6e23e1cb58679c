"""The notifications writer: posts and acks of one process share a transaction.

What must keep holding: stored before pushed, ids in posting order, the queue
limit per user, a refused or failing post never takes others with it, and an
ack is written before the connection that sent it is gone, or before the same
user's queue is read again (at-least-once, never a redelivery we could avoid).
"""

import asyncio
import contextlib
import socket

import pytest
from django.db import connection
from django.db import connections as djconnections

from notifications import api, errors, push, store, writer
from notifications import protocol as note_protocol
from notifications.models import Notification
from realtime import db
from tests.conftest import lose_the_database_connection
from tests.notifications.conftest import receive, receive_notes, send, undelivered_ids

pytestmark = pytest.mark.django_db(transaction=True)


async def test_concurrent_posts_share_one_transaction_in_posting_order(amake_user, batches):
    """Posts made together are stored in one batch; ids follow the order they were made."""
    bob = await amake_user("bob")
    results = await asyncio.gather(*(api.anotify(bob, {"n": n}) for n in range(5)))
    ids = [note_id for note_id, _ in results]
    assert batches == [(5, 0)]
    assert ids == sorted(ids)
    rows = [row async for row in Notification.objects.order_by("id")]
    assert [(row.pk, row.data) for row in rows] == [(i, {"n": n}) for n, i in enumerate(ids)]


async def test_a_post_made_a_loop_turn_later_joins_the_batch(amake_user, batches):
    """A request still on its way to the writer when the batch starts is in that batch."""
    bob = await amake_user("bob")

    async def later(turns: int, n: int):
        for _ in range(turns):
            await asyncio.sleep(0)
        return await api.anotify(bob, {"n": n})

    results = await asyncio.gather(later(0, 0), later(1, 1), later(2, 2))
    assert batches == [(3, 0)]
    assert [note_id for note_id, _ in results] == sorted(note_id for note_id, _ in results)


async def test_a_connected_user_gets_a_batch_in_id_order(amake_user, connect):
    """Every NOTE of a batch is pushed after the commit, oldest first."""
    bob = await amake_user("bob")
    communicator = await connect("bob")
    results = await asyncio.gather(*(api.anotify(bob, {"n": n}) for n in range(4)))
    assert {status for _, status in results} == {"sent"}
    frames = await receive_notes(communicator, 4)
    assert [frame["id"] for frame in frames] == [note_id for note_id, _ in results]


class FirstPushHeld:
    """``writer.push_notes`` that records the ids of each push and holds the first one
    until :attr:`may_end` is set (:attr:`started` is set once it is held)."""

    def __init__(self, monkeypatch) -> None:
        self.pushes: list[list[int]] = []
        self.started, self.may_end = asyncio.Event(), asyncio.Event()
        self.original = writer.push_notes
        monkeypatch.setattr(writer, "push_notes", self.push)

    async def push(self, items):
        self.pushes.append([item["id"] for item in items])
        if len(self.pushes) == 1:
            self.started.set()
            await self.may_end.wait()
        return await self.original(items)


async def test_a_batch_is_stored_while_the_one_before_is_pushed(amake_user, batches,
                                                                monkeypatch):
    """The push of a batch (its registry round trip, its NOTEs) does not hold the next
    batch out of the database; batches are still pushed one at a time, in id order."""
    bob = await amake_user("bob")
    held = FirstPushHeld(monkeypatch)
    first = asyncio.ensure_future(api.anotify(bob, {"n": 0}))
    await held.started.wait()
    second = asyncio.ensure_future(api.anotify(bob, {"n": 1}))
    for _ in range(200):  # the second batch reaches the database meanwhile
        if len(batches) == 2:
            break
        await asyncio.sleep(0.01)
    assert batches == [(1, 0), (1, 0)]
    assert len(held.pushes) == 1, "the second push waits for the first"
    assert not first.done() and not second.done()
    held.may_end.set()
    (first_id, _), (second_id, _) = await asyncio.gather(first, second)
    assert held.pushes == [[first_id], [second_id]] and first_id < second_id


async def test_a_graceful_stop_waits_for_the_last_push(amake_user, monkeypatch):
    """``writer.finish`` (SIGTERM) returns only once the last batch is pushed and its
    posts are answered."""
    bob = await amake_user("bob")
    held = FirstPushHeld(monkeypatch)
    post = asyncio.ensure_future(api.anotify(bob, {"n": 0}))
    await held.started.wait()
    finishing = asyncio.ensure_future(writer.finish())
    await asyncio.sleep(0.05)
    assert not finishing.done() and not post.done()
    held.may_end.set()
    await asyncio.wait_for(finishing, 10)
    assert post.done() and post.result()[1] == "queued"


async def test_a_post_is_answered_as_stored_when_its_answer_fails(amake_user, monkeypatch,
                                                                  caplog):
    """Past the commit nothing answers "could not store": if working out a post's status
    fails, the post is answered queued with its id, and the writer goes on."""
    bob = await amake_user("bob")

    def broken(status):
        raise RuntimeError("metrics are broken")

    monkeypatch.setattr(writer, "counted", broken)
    note_id, status = await asyncio.wait_for(api.anotify(bob, {"n": 0}), 10)
    assert (status, await undelivered_ids(bob)) == ("queued", [note_id])
    assert "their answers failed" in caplog.text
    monkeypatch.undo()
    next_id, _ = await asyncio.wait_for(api.anotify(bob, {"n": 1}), 10)
    assert next_id > note_id


async def test_queue_limit_holds_within_one_batch(amake_user, settings, batches):
    """Five posts to one user in one batch keep the newest NOTIFICATIONS_QUEUE_LIMIT."""
    settings.NOTIFICATIONS_QUEUE_LIMIT = 3
    bob, cyd = await amake_user("bob"), await amake_user("cyd")
    posts = [api.anotify(bob, {"n": n}) for n in range(5)] + [api.anotify(cyd, {})]
    results = await asyncio.gather(*posts)
    assert batches == [(6, 0)]
    bob_ids = [note_id for note_id, _ in results[:5]]
    assert await undelivered_ids(bob) == bob_ids[-3:]
    assert await undelivered_ids(cyd) == [results[5][0]], "another queue is untouched"


async def test_queue_limit_holds_across_batches(amake_user, settings):
    """Batch after batch, the user keeps the newest NOTIFICATIONS_QUEUE_LIMIT undelivered."""
    settings.NOTIFICATIONS_QUEUE_LIMIT = 2
    bob = await amake_user("bob")
    ids = [(await api.anotify(bob, {"n": n}))[0] for n in range(4)]
    assert await undelivered_ids(bob) == ids[-2:]


async def test_a_failing_post_fails_alone(amake_user, batches, caplog):
    """A row the database refuses sinks only its own post: the batch is retried one by one."""
    bob = await amake_user("bob")
    posts = [api.anotify(bob, {"n": 0}), api.anotify(bob, {"bad": object()}),
             api.anotify(bob, {"n": 2})]
    results = await asyncio.gather(*posts, return_exceptions=True)
    assert isinstance(results[1], errors.ServiceUnavailable)
    good = [results[0][0], results[2][0]]
    assert await undelivered_ids(bob) == good
    assert batches[0] == (3, 0) and batches[1:] == [(1, 0)] * 3


async def test_checks_of_a_batch_answer_each_post(amake_user, batches):
    """Bearer actors and targets are checked per post in the batch that stores the others."""
    await amake_user("boss", staff=True)
    await amake_user("gone", staff=True, active=False)
    bob = await amake_user("bob")
    calls = [
        writer.post_notification("bob", {"ok": 1}, actor="boss"),
        writer.post_notification("bob", {"x": 1}, actor="bob"),
        writer.post_notification("bob", {"x": 1}, actor="gone"),
        writer.post_notification("bob", {"x": 1}, actor="nobody"),
        writer.post_notification("nobody", {"x": 1}, actor="boss"),
        writer.post_notification("bob", None, actor="boss"),
        writer.post_notification(None, {"all": 1}, actor="boss"),
    ]
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert len(batches) == 1
    stored, *refused, authorised, broadcast = results
    assert stored[1] == "queued"
    assert [(r.code, r.message) for r in refused] == [
        ("forbidden", "staff only"),
        ("unauthorized", "token names no active user"),
        ("unauthorized", "token names no active user"),
        ("not_found", "no user 'nobody'"),
    ]
    assert authorised == (None, store.AUTHORISED)
    assert broadcast[1] == "broadcast"
    assert await undelivered_ids(bob) == [stored[0]]
    assert await Notification.objects.acount() == 2


async def test_acks_are_written_together(amake_user, batches):
    """Acks of several users taken together are one transaction; others' ids are ignored."""
    bob, cyd = await amake_user("bob"), await amake_user("cyd")
    bob_ids = [(await api.anotify(bob, {"n": n}))[0] for n in range(3)]
    cyd_id, _ = await api.anotify(cyd, {})
    batches.clear()
    writer.acknowledge_later(bob.pk, [*bob_ids[:2], cyd_id])
    writer.acknowledge_later(cyd.pk, [])
    writer.acknowledge_later(bob.pk, [bob_ids[0]])
    await writer.flush_acks()
    assert batches == [(0, 1)]
    assert await undelivered_ids(bob) == bob_ids[2:]
    assert await undelivered_ids(cyd) == [cyd_id], "an id of another user is ignored"


async def test_an_ack_rides_with_the_next_post(amake_user, batches, monkeypatch):
    """An ack waits for the next post and is written in its transaction."""
    monkeypatch.setattr(writer, "ACK_DELAY_SECONDS", 3600)
    bob = await amake_user("bob")
    note_id, _ = await api.anotify(bob, {})
    batches.clear()
    writer.acknowledge_later(bob.pk, [note_id])
    await asyncio.sleep(0.05)  # the writer is idle meanwhile: nothing is written
    assert batches == []
    await api.anotify(bob, {"next": 1})
    assert batches == [(1, 1)], "no transaction of the ack alone"
    assert note_id not in await undelivered_ids(bob)


async def test_an_ack_alone_is_written_after_the_delay(amake_user, batches):
    """Without posts and without anyone waiting, an ack is still written, on its own."""
    bob = await amake_user("bob")
    note_id, _ = await api.anotify(bob, {})
    batches.clear()
    writer.acknowledge_later(bob.pk, [note_id])
    for _ in range(100):  # polls for the write; ACK_DELAY_SECONDS is far shorter than this
        await asyncio.sleep(writer.ACK_DELAY_SECONDS)
        if batches:
            break
    assert batches == [(0, 1)]
    assert await undelivered_ids(bob) == []


async def test_many_pending_acks_are_written_without_waiting(amake_user, batches, monkeypatch):
    """Past MAX_PENDING_ACKS ids, acks start a transaction at once."""
    monkeypatch.setattr(writer, "ACK_DELAY_SECONDS", 3600)
    bob = await amake_user("bob")
    ids = [(await api.anotify(bob, {"n": n}))[0] for n in range(3)]
    monkeypatch.setattr(writer, "MAX_PENDING_ACKS", 3)
    batches.clear()
    writer.acknowledge_later(bob.pk, ids[:2])
    await asyncio.sleep(0.05)
    assert batches == []
    writer.acknowledge_later(bob.pk, ids[2:])
    for _ in range(100):
        await asyncio.sleep(0.01)
        if batches:
            break
    assert batches == [(0, 1)]
    assert await undelivered_ids(bob) == []


async def test_an_id_acked_by_its_owner_and_another_user_is_marked(amake_user):
    """Another user's ack of the same id in the same batch does not hide the owner's ack."""
    bob, cyd = await amake_user("bob"), await amake_user("cyd")
    cyd_id, _ = await api.anotify(cyd, {})
    writer.acknowledge_later(cyd.pk, [cyd_id])
    writer.acknowledge_later(bob.pk, [cyd_id])
    await writer.flush_acks()
    assert await undelivered_ids(cyd) == []


async def test_the_queue_is_read_after_the_users_pending_acks(amake_user):
    """An ack taken but not yet written is written before that user's queue is read."""
    bob = await amake_user("bob")
    ids = [(await api.anotify(bob, {"n": n}))[0] for n in range(2)]
    writer.acknowledge_later(bob.pk, ids[:1])
    frames = await writer.aundelivered_frames(bob.pk)
    assert [note_id for note_id, _ in frames] == ids[1:]


async def test_queues_read_together_take_one_query_and_each_is_its_users_own(
    amake_user, monkeypatch
):
    """Connections opening together share the read; each gets its own user's queue, in order."""
    bob, cyd, dan = await amake_user("bob"), await amake_user("cyd"), await amake_user("dan")
    bob_ids = [(await api.anotify(bob, {"n": n}))[0] for n in range(2)]
    cyd_ids = [(await api.anotify(cyd, {"n": n}))[0] for n in range(3)]
    calls, original = [], writer.UNDELIVERED.fetch
    monkeypatch.setattr(writer.UNDELIVERED, "fetch",
                        lambda keys: calls.append(sorted(keys)) or original(keys))
    queues = await asyncio.gather(*(writer.aundelivered_frames(user.pk)
                                    for user in (bob, cyd, dan, bob)))
    assert [[note_id for note_id, _ in queue] for queue in queues] == [
        bob_ids, cyd_ids, [], bob_ids]
    assert calls == [sorted([bob.pk, cyd.pk, dan.pk])]


async def test_acks_are_written_before_the_disconnect_completes(amake_user, connect):
    """An ack followed at once by a disconnect is in the database when the disconnect is done."""
    bob = await amake_user("bob")
    ids = [(await api.anotify(bob, {"n": n}))[0] for n in range(3)]
    communicator = await connect("bob")
    await receive_notes(communicator, 3)
    await send(communicator, {"type": "ack", "ids": ids})
    await communicator.disconnect()
    assert await undelivered_ids(bob) == []


async def test_a_failed_ack_batch_leaves_notifications_to_come_again(amake_user, monkeypatch):
    """If writing acks fails, nothing is marked: the notifications come again (at-least-once)."""
    bob = await amake_user("bob")
    note_id, _ = await api.anotify(bob, {})

    def broken(posts, acks):
        raise RuntimeError("database down")

    monkeypatch.setattr(writer, "store_batch", broken)
    writer.acknowledge_later(bob.pk, [note_id])
    await writer.flush_acks(bob.pk)
    monkeypatch.undo()
    assert await undelivered_ids(bob) == [note_id]
    assert (await api.anotify(bob, {}))[1] == "queued", "the writer still works"


async def test_a_batch_is_one_event_and_each_note_reaches_only_its_user(amake_user, connect,
                                                                         monkeypatch):
    """A batch is published once; each NOTE goes to its user's connections, broadcasts to all."""
    bob, cyd = await amake_user("bob"), await amake_user("cyd")
    bob_tab, cyd_tab = await connect("bob"), await connect("cyd")
    for tab in (bob_tab, cyd_tab):
        # The pong comes after the join: the (empty) queue has been read, all is live.
        await send(tab, {"type": "ping"})
        assert (await receive(tab))["type"] == "pong"
    events = []
    original = push.publish

    async def recording(group, event, **options):
        events.append((group, [item["id"] for item in event["items"]]))
        await original(group, event, **options)

    monkeypatch.setattr(push, "publish", recording)
    results = await asyncio.gather(
        api.anotify(bob, {"n": 0}), api.anotify(cyd, {"n": 1}),
        api.abroadcast({"n": 2}), api.anotify(bob, {"n": 3}),
    )
    ids = [note_id for note_id, _ in results]
    assert [status for _, status in results] == ["sent", "sent", "broadcast", "sent"]
    assert events == [(note_protocol.FEED_GROUP, ids)]
    assert [f["id"] for f in await receive_notes(bob_tab, 3)] == [ids[0], ids[2], ids[3]]
    assert [f["id"] for f in await receive_notes(cyd_tab, 2)] == [ids[1], ids[2]]
    assert await bob_tab.receive_nothing(0.1) and await cyd_tab.receive_nothing(0.1)


async def test_a_batch_larger_than_one_insert_keeps_posting_order(amake_user, batches,
                                                                  settings):
    """More posts than one INSERT statement takes are stored in one batch, ids in order."""
    settings.NOTIFICATIONS_QUEUE_LIMIT = 1000
    bob = await amake_user("bob")
    count = db.INSERT_CHUNK + 10
    results = await asyncio.gather(*(api.anotify(bob, {"n": n}) for n in range(count)))
    ids = [note_id for note_id, _ in results]
    assert batches == [(count, 0)]
    assert ids == sorted(ids) and len(set(ids)) == count
    rows = [(row.pk, row.data["n"]) async for row in Notification.objects.order_by("id")]
    assert rows == list(zip(ids, range(count), strict=True))


async def test_posts_survive_the_loss_of_the_database_connection(amake_user, caplog):
    """A batch whose connection is gone (a database restart, an idle timeout) fails, and
    its posts are stored again one by one on a new connection: each is answered as
    stored, once, and nothing is lost."""
    bob = await amake_user("bob")
    (first, _) = await api.anotify(bob, {"n": 0})  # the worker's connection is open
    await lose_the_database_connection()
    results = await asyncio.gather(*(api.anotify(bob, {"n": n}) for n in range(1, 4)))
    ids = [note_id for note_id, _ in results]
    assert all(ids) and ids == sorted(ids)
    assert "storing each alone" in caplog.text
    rows = [(row.pk, row.data) async for row in Notification.objects.order_by("id")]
    assert rows == [(first, {"n": 0})] + [(i, {"n": n}) for n, i in enumerate(ids, 1)]


@pytest.mark.skipif(connection.vendor != "postgresql", reason="a database server's host")
async def test_posts_fail_soon_when_the_database_host_is_silent(amake_user, caplog):
    """The database host takes the TCP connection but never answers (a hung host, a
    firewall that drops): the batch fails once ``connect_timeout`` has passed, its posts
    with it, each with ``ServiceUnavailable``, after a single attempt to connect."""
    bob = await amake_user("bob")
    silent = socket.create_server(("127.0.0.1", 0), backlog=16)  # never accepts
    settings_dict = await db.run(lambda: djconnections["default"].settings_dict)

    def connect_to(port: int, timeout: int) -> None:
        worker = djconnections["default"]
        worker.close()
        worker.settings_dict = {**settings_dict, "HOST": "127.0.0.1", "PORT": port,
                                "OPTIONS": {**settings_dict["OPTIONS"],
                                            "connect_timeout": timeout}}

    await db.run(connect_to, silent.getsockname()[1], 2)
    try:
        results = await asyncio.wait_for(asyncio.gather(
            *(api.anotify(bob, {"n": n}) for n in range(5)), return_exceptions=True), 30)
    finally:
        silent.setblocking(False)
        attempts = 0
        with contextlib.suppress(BlockingIOError):
            while True:
                silent.accept()[0].close()
                attempts += 1
        silent.close()
    assert [type(result) for result in results] == [errors.ServiceUnavailable] * 5
    assert attempts == 1
    assert "could not be reached" in caplog.text
    # A new worker thread connects with the settings again (test_db checks that the same
    # worker tries again after RECONNECT_PAUSE_SECONDS).
    await asyncio.to_thread(db.close)
    note_id, _ = await api.anotify(bob, {"n": 5})
    assert await undelivered_ids(bob) == [note_id]
