"""notifications.api and store: store first, then push; queue limit; acks; sync notify()."""

import asyncio
import json
import re
import threading
import time
from datetime import UTC, datetime

import pytest
from channels.db import database_sync_to_async
from channels.layers import BaseChannelLayer
from django.contrib.auth import get_user_model
from django.db import connection, connections, transaction

from notifications import api, push, store
from notifications import protocol as note_protocol
from notifications.models import Notification
from notifications.protocol import NOTIFICATIONS
from realtime import hub as hub_module
from tests.notifications.conftest import receive, receive_notes, undelivered_ids

pytestmark = pytest.mark.django_db(transaction=True)


async def test_anotify_offline_stores_and_queues(amake_user):
    """A notification for a user without a connection is stored undelivered and 'queued'."""
    bob = await amake_user("bea")
    note_id, status = await api.anotify(bob, {"text": "hi"})
    assert status == "queued"
    row = await Notification.objects.aget(pk=note_id)
    assert (row.user_id, row.data, row.broadcast, row.delivered_at) == (
        bob.pk, {"text": "hi"}, False, None)
    assert await undelivered_ids(bob) == [note_id]


async def test_undelivered_is_oldest_first(amake_user):
    """The undelivered listing is in posting order, oldest first."""
    bob = await amake_user("bea")
    ids = [(await api.anotify(bob, {"n": n}))[0] for n in range(5)]
    assert await undelivered_ids(bob) == ids


async def test_queue_limit_keeps_the_newest(amake_user, settings):
    """Beyond NOTIFICATIONS_QUEUE_LIMIT undelivered, the oldest are deleted."""
    settings.NOTIFICATIONS_QUEUE_LIMIT = 3
    bob, carol = await amake_user("bea"), await amake_user("cyd")
    carol_id, _ = await api.anotify(carol, {"other": True})
    ids = [(await api.anotify(bob, {"n": n}))[0] for n in range(5)]
    assert await undelivered_ids(bob) == ids[-3:]
    assert await Notification.objects.filter(user=bob).acount() == 3
    assert await undelivered_ids(carol) == [carol_id], "another user's queue is untouched"


async def test_queue_limit_counts_only_undelivered(amake_user, settings):
    """Acknowledged notifications neither count toward the limit nor get trimmed."""
    settings.NOTIFICATIONS_QUEUE_LIMIT = 2
    bob = await amake_user("bea")
    acked = [(await api.anotify(bob, {"n": n}))[0] for n in range(2)]
    assert await api.aack(bob.pk, acked) == 2
    queued = [(await api.anotify(bob, {"n": n}))[0] for n in range(2, 4)]
    assert await undelivered_ids(bob) == queued
    assert await Notification.objects.filter(user=bob).acount() == 4


def test_one_batch_trims_every_queue_it_fills_to_its_own_newest(make_user, settings):
    """A batch trims each queue it fills to that queue's newest; acked rows stay."""
    settings.NOTIFICATIONS_QUEUE_LIMIT = 2
    ann, bob, cyd = make_user("ann"), make_user("bob"), make_user("cyd")
    (acked,) = store.store_batch([store.Post(target="ann", data={"n": -1})], {})
    posts = [store.Post(target=name, data={"n": n}) for n in range(3) for name in ("ann", "bob")]
    stored = store.store_batch([*posts, store.Post(target="cyd", data={})], {ann.pk: {acked.pk}})
    newest = {name: [row.pk for post, row in zip(posts, stored, strict=False)
                     if post.target == name][-2:] for name in ("ann", "bob")}

    def queue(user):
        return list(Notification.objects.filter(user=user, delivered_at__isnull=True)
                    .order_by("pk").values_list("pk", flat=True))

    assert queue(ann) == newest["ann"] and queue(bob) == newest["bob"]
    assert queue(cyd) == [stored[-1].pk]
    assert Notification.objects.filter(pk=acked.pk, delivered_at__isnull=False).exists()


async def test_acknowledge_ignores_ids_of_other_users(amake_user):
    """Ack marks the user's own ids delivered; another user's and unknown ids are ignored."""
    bob, carol = await amake_user("bea"), await amake_user("cyd")
    bob_id, _ = await api.anotify(bob, {"for": "bea"})
    carol_id, _ = await api.anotify(carol, {"for": "cyd"})
    assert await api.aack(bob.pk, [bob_id, carol_id, carol_id + 1000]) == 1
    assert await undelivered_ids(bob) == []
    assert await undelivered_ids(carol) == [carol_id]


async def test_acknowledge_handles_more_ids_than_one_batch(amake_user, settings):
    """An ack with thousands of ids (duplicates included) is applied in batches."""
    settings.NOTIFICATIONS_QUEUE_LIMIT = 1000
    bob = await amake_user("bea")
    last, _ = await api.anotify(bob, {"n": 1})
    ids = [*range(1, last + 1), *range(1, 3000)] * 2
    assert await api.aack(bob.pk, ids) == 1
    assert await undelivered_ids(bob) == []


def test_acknowledging_looks_its_rows_up_by_id(make_user):
    """An ack's UPDATE looks its rows up by id instead of scanning the queue.

    With the ``(id, user_id)`` pairs alone SQLite's planner scanned every
    undelivered row of every user, once per batch of acks. On PostgreSQL the
    pairs are a joined ``UNNEST``, each looked up in an index.
    """
    bob = make_user("bea")
    stored = store.store_batch([store.Post(target="bea", data={"n": n}) for n in range(3)],
                                  {})
    # A queue as a server holds it: on a table of a few rows the planner may take any
    # index, and which one it took depended on what earlier tests had left behind.
    others = make_user("cyd")
    Notification.objects.bulk_create(Notification(user=others, data={}) for _ in range(2000))
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(f"ANALYZE {Notification._meta.db_table}")
    statements = []

    def capture(execute, sql, params, many, context):
        statements.append((sql, params))
        return execute(sql, params, many, context)

    with connection.execute_wrapper(capture):
        assert api.ack(bob.pk, [stored[0].pk, stored[2].pk]) == 2
    ((sql, params),) = [(sql, params) for sql, params in statements if sql.startswith("UPDATE")]
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            cursor.execute("EXPLAIN QUERY PLAN " + sql, params)
            plan = " ".join(str(row) for row in cursor.fetchall())
            assert "USING INTEGER PRIMARY KEY" in plan and "SCAN notifications" not in plan
        else:
            with transaction.atomic():
                # Without an index on id, a scan would be the only plan left.
                cursor.execute("SET LOCAL enable_seqscan = off")
                cursor.execute("EXPLAIN " + sql, params)
                plan = " ".join(row[0] for row in cursor.fetchall())
            # Each acked (id, user) pair is one lookup in an index, by its id.
            assert re.search(r"Index Cond: \(.*\bid = acked\.id\)", plan), plan
            assert "Seq Scan" not in plan and "Bitmap" not in plan, plan
    assert [row.pk for row in store.undelivered([bob.pk])[bob.pk]] == [stored[1].pk]


async def test_abroadcast_is_stored_delivered_and_never_queued(amake_user):
    """A broadcast is one delivered row without a user, in nobody's queue."""
    bob = await amake_user("bea")
    note_id, status = await api.abroadcast({"all": 1})
    assert status == "broadcast"
    row = await Notification.objects.aget(pk=note_id)
    assert row.broadcast and row.user_id is None and row.delivered_at is not None
    assert await undelivered_ids(bob) == []


async def test_notify_data_must_be_a_dict(amake_user):
    """Data that is not a JSON object is refused before anything is stored."""
    bob = await amake_user("bea")
    with pytest.raises(TypeError):
        await api.anotify(bob, ["not", "an", "object"])
    with pytest.raises(TypeError):
        await api.abroadcast("text")
    assert await Notification.objects.acount() == 0


def test_feed_group_is_a_valid_group_name():
    """The one group every process with notifications connections joins is a valid name."""
    assert BaseChannelLayer().require_valid_group_name(note_protocol.FEED_GROUP)


def test_note_frame_matches_the_contract():
    """NOTE is exactly type, id, data, timestamp (UTC, Z), plus broadcast: true for broadcasts."""
    moment = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert json.loads(note_protocol.note_frame(7, {"a": "é"}, moment)) == {
        "type": "notification", "id": 7, "data": {"a": "é"}, "timestamp": "2026-01-02T03:04:05Z"}
    assert json.loads(note_protocol.note_frame(8, {}, moment, broadcast=True))["broadcast"] is True


def test_sync_notify_from_plain_sync_code(make_user):
    """notify() in sync code with no event loop stores, answers 'queued', starts no hub."""
    bob = make_user("bea")
    hubs_before = dict(hub_module._hubs)
    note_id, status = api.notify(bob, {"text": "export ready"})
    assert status == "queued"
    assert Notification.objects.get(pk=note_id).data == {"text": "export ready"}
    assert [row.pk for row in store.undelivered([bob.pk])[bob.pk]] == [note_id]
    assert hub_module._hubs == hubs_before
    broadcast_id, status = api.broadcast({"all": True})
    assert status == "broadcast" and broadcast_id > note_id


@pytest.mark.parametrize("returning", ["per row", "none"])
def test_store_batch_without_multi_row_returning(make_user, monkeypatch, returning):
    """Where one INSERT cannot return many ids (SQLite < 3.35), rows go in one by one, in order."""
    if returning == "none" and connection.vendor != "sqlite":
        pytest.skip("only SQLite < 3.35 inserts without RETURNING (PostgreSQL always has it)")
    bob = make_user("bea")
    features = type(connection.features)
    monkeypatch.setattr(features, "can_return_rows_from_bulk_insert", property(lambda f: False))
    if returning == "none":
        monkeypatch.setattr(features, "can_return_columns_from_insert", property(lambda f: False))
    posts = [store.Post(target="bea", data={"n": n}) for n in range(3)]
    posts.append(store.Post(target=None, data={"all": True}))
    stored = store.store_batch(posts, {})
    rows = list(Notification.objects.order_by("id"))
    assert [s.pk for s in stored] == [row.pk for row in rows]
    assert [(row.user_id, row.data, row.broadcast) for row in rows] == [
        (bob.pk, {"n": 0}, False), (bob.pk, {"n": 1}, False), (bob.pk, {"n": 2}, False),
        (None, {"all": True}, True),
    ]
    assert rows[3].delivered_at == rows[3].created_at, "a broadcast is delivered when stored"
    assert [row.pk for row in store.undelivered([bob.pk])[bob.pk]] == [s.pk for s in stored[:3]]


def test_sync_notify_in_atomic_block_pushes_after_commit(make_user, monkeypatch):
    """Inside atomic, notify() pushes only once the transaction commits, never on rollback."""
    bob = make_user("bea")
    pushed = []

    async def record(items):
        pushed.extend(item["id"] for item in items)
        return {item["user"]: "queued" for item in items}

    monkeypatch.setattr(api, "push_notes", record)
    with transaction.atomic():
        committed_id, _ = api.notify(bob, {"n": 1})
        assert pushed == []
    assert pushed == [committed_id]

    class Rollback(Exception):
        pass

    with pytest.raises(Rollback), transaction.atomic():
        api.notify(bob, {"n": 2})
        raise Rollback
    assert pushed == [committed_id]
    assert [row.pk for row in store.undelivered([bob.pk])[bob.pk]] == [committed_id]


async def test_sync_notify_refuses_to_run_on_an_event_loop(amake_user):
    """notify() called on an event loop raises before storing (use anotify there)."""
    bob = await amake_user("bea")
    with pytest.raises(RuntimeError, match="anotify"):
        api.notify(bob, {"n": 1})
    assert await Notification.objects.acount() == 0


async def test_sync_notify_from_a_server_thread_reaches_a_connected_user(amake_user, connect):
    """notify() from sync code run by the server (a sync view) is 'sent' and arrives live."""
    bob = await amake_user("bea")
    communicator = await connect("bea")
    note_id, status = await database_sync_to_async(api.notify)(bob, {"text": "from sync"})
    assert status == "sent"
    frame = await receive(communicator)
    assert (frame["id"], frame["data"]) == (note_id, {"text": "from sync"})


async def test_failed_push_keeps_the_notification_queued(amake_user, monkeypatch):
    """When the channel layer fails after storing, the answer is 'queued' and the row stays."""
    bob = await amake_user("bea")

    async def broken(group, event, **options):
        raise ConnectionError("layer down")

    monkeypatch.setattr(push, "publish", broken)
    note_id, status = await api.anotify(bob, {"n": 1})
    assert status == "queued"
    assert await undelivered_ids(bob) == [note_id]


async def test_status_is_sent_only_while_connected(amake_user, connect):
    """'sent' while the user has a notifications connection, 'queued' once it closed."""
    bob = await amake_user("bea")
    communicator = await connect("bea")
    assert (await api.anotify(bob, {"n": 1}))[1] == "sent"
    await communicator.disconnect()
    await asyncio.sleep(0)
    assert (await api.anotify(bob, {"n": 2}))[1] == "queued"


async def test_posts_are_counted_by_status(amake_user, connect):
    """realtime_notifications_total counts posts by status: queued, sent, broadcast."""
    from realtime import metrics

    bob = await amake_user("bea")
    before = {s: metrics.value("realtime_notifications_total", status=s)
              for s in ("queued", "sent", "broadcast")}
    await api.anotify(bob, {"n": 1})
    await connect("bea")
    await api.anotify(bob, {"n": 2})
    await api.abroadcast({"n": 3})
    after = {s: metrics.value("realtime_notifications_total", status=s) - before[s]
             for s in before}
    assert after == {"queued": 1, "sent": 1, "broadcast": 1}


@pytest.fixture
def published(monkeypatch) -> list[tuple[list, bool]]:
    """``(users of the items, elsewhere)`` of every event the writer publishes."""
    calls: list[tuple[list, bool]] = []
    original = push.publish

    async def recording(group, event, **options):
        calls.append(([item["user"] for item in event["items"]], options["elsewhere"]))
        await original(group, event, **options)

    monkeypatch.setattr(push, "publish", recording)
    return calls


async def test_a_note_goes_through_the_layer_only_for_a_user_connected_elsewhere(
        amake_user, connect, published, redis_url):
    """Other processes get an event only when they hold a connection it is for (or all)."""
    bob, cyd = await amake_user("bob"), await amake_user("cyd")
    tab = await connect("bob")
    hub = hub_module.running_hub()
    await hub.registry.register("cyd", "other-proc|1", NOTIFICATIONS, 0)
    assert (await api.anotify(bob, {}))[1] == "sent"
    assert (await api.anotify(cyd, {}))[1] == "sent"
    await api.abroadcast({})
    assert published == [(["bob"], False), (["cyd"], True), ([None], True)]
    assert [frame.get("broadcast", False) for frame in await receive_notes(tab, 2)] == [
        False, True]


async def test_without_the_registry_a_note_still_reaches_this_process(
        amake_user, connect, published, monkeypatch):
    """If the connections cannot be counted, the event goes everywhere and the answer is queued."""
    bob = await amake_user("bob")
    tab = await connect("bob")

    async def broken(usernames):
        raise ConnectionError("registry down")

    monkeypatch.setattr(push, "_reach", broken)
    note_id, status = await api.anotify(bob, {"n": 1})
    assert status == "queued"
    assert published == [(["bob"], True)]
    assert [frame["id"] for frame in await receive_notes(tab, 1)] == [note_id]


@pytest.mark.skipif(connection.vendor != "postgresql", reason="a PostgreSQL planner setting")
def test_a_batch_never_reads_acked_notifications_again_on_postgresql(make_user, monkeypatch):
    """Acked notifications stay in the index of undelivered ones until a vacuum.

    A bitmap scan reads each of their rows again with every batch (the planner takes one
    while its statistics put a queue at a few rows); an index scan marks them dead once.
    So the queue trim and the acks' UPDATE of a batch, and a plain ack, run without
    bitmap scans, and the setting ends with their transaction.
    """
    bea = make_user("bea")
    seen: dict[str, str] = {}

    def watching(name, statement):
        def run(cursor, *args, **kwargs):
            cursor.execute("SHOW enable_bitmapscan", [])
            seen[name] = cursor.fetchone()[0]
            return statement(cursor, *args, **kwargs)
        return run

    monkeypatch.setattr(store, "_trim_queues", watching("trim", store._trim_queues))
    monkeypatch.setattr(store, "_mark_delivered", watching("acks", store._mark_delivered))
    first, second = store.store_batch([store.Post(target="bea", data={"n": n}) for n in (1, 2)],
                                      {})
    store.store_batch([store.Post(target="bea", data={"n": 3})], {bea.pk: {first.pk}})
    assert seen == {"trim": "off", "acks": "off"}
    seen.clear()
    assert api.ack(bea.pk, [second.pk]) == 1
    assert seen == {"acks": "off"}
    with connection.cursor() as cursor:
        cursor.execute("SHOW enable_bitmapscan")
        assert cursor.fetchone()[0] == "on"


def waiting_for_a_lock() -> bool:
    """Whether a session of this test database waits for a lock."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname ="
                       " current_database() AND wait_event_type = 'Lock'")
        return cursor.fetchone()[0] > 0


def in_a_thread(work, errors: list) -> threading.Thread:
    """``work()`` in a thread of its own (a connection of its own), errors kept."""

    def run():
        try:
            work()
        except Exception as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


@pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL row locks")
def test_batches_trimming_and_acknowledging_each_others_queues_do_not_deadlock(
        make_user, monkeypatch, settings):
    """Two processes' batches: one posts to Ann and acks Bob's, the other the reverse.

    Both queues are full, so each batch trims its target's queue, whose oldest row the
    other batch has just acked. Each batch holds the user locks of the queues it writes,
    acks included, so the second waits for the first instead of deadlocking with it.
    """
    settings.NOTIFICATIONS_QUEUE_LIMIT = 3
    ann, bob = make_user("ann"), make_user("bob")
    queues = {user.pk: [row.pk for row in store.store_batch(
        [store.Post(target=user.username, data={"n": n}) for n in range(3)], {})]
        for user in (ann, bob)}
    at_trim, trim_now = threading.Semaphore(0), threading.Event()
    trim = store._trim_queues

    def trim_when_told(cursor, user_ids):
        cursor.execute("SELECT 1", [])
        cursor.fetchall()  # a read waits for the statements before it (a pipeline sends later)
        at_trim.release()
        trim_now.wait(10)
        trim(cursor, user_ids)

    monkeypatch.setattr(store, "_trim_queues", trim_when_told)
    errors: list[Exception] = []
    threads = [
        in_a_thread(lambda target=target, acker=acker: store.store_batch(
            [store.Post(target=target.username, data={"n": 3})],
            {acker.pk: {queues[acker.pk][0]}}), errors)
        for target, acker in ((ann, bob), (bob, ann))
    ]
    # Trim once both batches are at their trim, or once one waits for the other's lock.
    deadline, arrived = time.monotonic() + 10, 0
    while time.monotonic() < deadline and arrived < 2:
        if at_trim.acquire(timeout=0.02):
            arrived += 1
        elif waiting_for_a_lock():
            break
    trim_now.set()
    for thread in threads:
        thread.join(20)
    assert errors == []
    assert arrived < 2, "both batches reached their trim at once"
    # Whichever went first, each queue holds its three newest.
    for user in (ann, bob):
        undelivered = [row.pk for row in store.undelivered([user.pk])[user.pk]]
        assert undelivered[:2] == queues[user.pk][1:] and len(undelivered) == 3


def waits_while_held(hold, work) -> bool:
    """Whether ``work()`` waits for a lock that ``hold()`` took.

    ``hold()`` runs in a transaction of a thread of its own, kept open until ``work()``,
    in another thread, waits for a lock or ends. Both must succeed.
    """
    held, release = threading.Event(), threading.Event()

    def holding():
        with transaction.atomic():
            hold()
            held.set()
            release.wait(10)

    errors: list[Exception] = []
    holder = in_a_thread(holding, errors)
    assert held.wait(10)
    worker = in_a_thread(work, errors)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and worker.is_alive() and not waiting_for_a_lock():
        time.sleep(0.02)
    waited = worker.is_alive()
    release.set()
    holder.join(20)
    worker.join(20)
    assert errors == []
    return waited


@pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL row locks")
def test_acknowledging_waits_for_the_users_lock_on_postgresql(make_user):
    """A plain ``ack`` holds the user's row lock too, as a batch does."""
    ann = make_user("ann")
    (stored,) = store.store_batch([store.Post(target="ann", data={})], {})
    assert waits_while_held(
        lambda: get_user_model().objects.select_for_update().get(pk=ann.pk),
        lambda: api.ack(ann.pk, [stored.pk]),
    ), "the ack did not wait for the user's lock"
    assert store.undelivered([ann.pk])[ann.pk] == []


@pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL row locks")
def test_an_admin_delete_waits_for_the_users_locks_on_postgresql(make_user):
    """The admin's "delete selected" locks the recipients' queues before it deletes, as a
    batch does: otherwise it could hold a row a batch trims while it waits for a row the
    batch acked (a deadlock)."""
    from django.contrib import admin as django_admin

    from notifications.admin import NotificationAdmin

    _, bob = make_user("ann"), make_user("bob")
    store.store_batch([store.Post(target=name, data={}) for name in ("ann", "bob")], {})
    model_admin = NotificationAdmin(Notification, django_admin.site)
    assert waits_while_held(
        lambda: get_user_model().objects.select_for_update().get(pk=bob.pk),
        lambda: model_admin.delete_queryset(None, model_admin.get_queryset(None)),
    ), "the delete did not wait for the user's lock"
    assert Notification.objects.count() == 0


@pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL row locks")
def test_a_batch_does_not_wait_for_a_transaction_that_only_refers_to_its_user(make_user):
    """A batch's user locks exclude the other batches of that user, nothing else.

    A transaction that stores a row referring to Ann (here a chat message she sends)
    takes a key-share lock on her user row when it checks the foreign key: at its commit
    under Django's deferred constraints, at once with immediate ones (as here, so that
    the lock is held while the batch runs). A batch that posts to Ann and acks her
    notifications does not wait for it.
    """
    from chat.models import Message, Room

    ann = make_user("ann")
    room = Room.objects.create(name="lobby")
    (stored,) = store.store_batch([store.Post(target="ann", data={})], {})

    def send():
        with connection.cursor() as cursor:
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        Message.objects.create(room=room, sender=ann, content="hi")

    assert not waits_while_held(send, lambda: store.store_batch(
        [store.Post(target="ann", data={"n": 1})], {ann.pk: {stored.pk}})
    ), "the batch waited for a chat message's transaction"
    assert len(store.undelivered([ann.pk])[ann.pk]) == 1
