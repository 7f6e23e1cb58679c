"""The notifications' SQL: store a batch, acknowledge, trim the queues, list the undelivered.

Plain sync functions, run in the caller's thread (sync code) or through the
database worker (:func:`realtime.db.run`). What runs with every batch of the
writer is SQL built once per shape (:func:`realtime.db.statement`) on a
:func:`realtime.db.hot_cursor`: it is the notify path's hot loop.
"""

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connections, transaction
from django.db.models import QuerySet
from django.utils import timezone

from notifications.errors import Refused
from notifications.models import Notification
from notifications.protocol import frame_of
from realtime import db

#: Acked ``(id, user)`` pairs per ``UPDATE``: three parameters each, under the 999
#: that SQLite builds before 3.32 allow per query.
ACK_BATCH = 330
#: Users locked per statement by :func:`delete` (chunks in primary-key order).
MAX_LOCKS = 900


def undelivered(user_ids: list[int]) -> dict[int, list[Notification]]:
    """Each user's undelivered notifications, oldest first (at most the queue limit, the
    newest), in one query for all the users."""
    limit = settings.NOTIFICATIONS_QUEUE_LIMIT
    queues: dict[int, list[Notification]] = {user_id: [] for user_id in user_ids}
    rows = Notification.objects.filter(user_id__in=user_ids, delivered_at__isnull=True)
    for row in rows.order_by("id"):
        queues[row.user_id].append(row)
    return {user_id: queue[-limit:] for user_id, queue in queues.items()}


def undelivered_frames(user_ids: list[int]) -> dict[int, list[tuple[int, str]]]:
    """``(id, NOTE frame)`` of :func:`undelivered` (the notifications connections that
    open together share the query)."""
    return {user_id: [(row.pk, frame_of(row)) for row in queue]
            for user_id, queue in undelivered(user_ids).items()}


def acknowledge(user_id: int, ids: Iterable[int]) -> int:
    """Mark delivered those of ``ids`` that are the user's; others are ignored.

    Returns how many were newly marked. Like a batch, on PostgreSQL it holds the
    user's lock and plans no bitmap scans (:func:`_start_writing_queues`).
    """
    ids = set(ids)
    if not ids:
        return 0
    with db.hot_cursor() as cursor, db.hot_transaction(cursor):
        _start_writing_queues(cursor, [user_id])
        return _mark_delivered(cursor, {user_id: ids}, timezone.now(), count=True)


@dataclass(eq=False)
class Post:
    """One notification to store, as the HTTP API posts it.

    ``target`` is a username (``None``: a broadcast). ``actor`` is the username
    of a Bearer token still to be checked (active, staff) in the same round
    trip; ``None`` when the caller has authorised the post itself. ``data``
    ``None`` asks for that check alone (the body was refused, but the answer
    to a bad token comes first).
    """

    target: str | None
    data: dict[str, Any] | None
    actor: str | None = None
    #: The recipient's primary key when the caller already has the user.
    target_pk: int | None = None
    #: Set by the writer's ``submit``: the poster's answer.
    done: asyncio.Future | None = field(default=None, repr=False)


#: Stands for "authorised" in a batch's results where nothing was to be stored.
AUTHORISED = "authorised"


@dataclass(frozen=True, slots=True)
class Stored:
    """A notification the writer stored: what its NOTE frame and the answer need."""

    pk: int
    user_id: int | None
    data: dict[str, Any]
    created_at: datetime
    broadcast: bool


def store_batch(posts: list[Post], acks: dict[int, set[int]]) -> list[Stored | Refused | str]:
    """Acknowledge, check and store posts in one transaction; a result per post.

    One query finds every user the batch names (Bearer actors and targets),
    one ``INSERT`` stores every accepted post, and the queues over
    ``NOTIFICATIONS_QUEUE_LIMIT`` are trimmed (:func:`_trim_queues`). On
    PostgreSQL the user rows of every queue the batch writes (its targets' and
    its acknowledging users') are locked first, in primary-key order, so that
    the batches of other processes write one queue one after the other.
    Without the acknowledging users' locks, a batch that trims Ann's queue and
    acknowledges Bob's deadlocked with one that did the reverse. Acks come
    before the insert, so what they deliver no longer counts against the
    limit. On PostgreSQL the transaction plans no bitmap scans
    (:data:`NO_BITMAP_SCANS`), and it waits for the server twice: for the
    users' query, and at the ``COMMIT``, after which the ``INSERT``'s ids are
    read (:func:`realtime.db.hot_transaction`, :func:`realtime.db.insert_rows`).

    A result is a :class:`Stored` notification, a :class:`Refused`, or
    :data:`AUTHORISED` for a post without data that passed its checks.

    This runs with every batch, so its statements are SQL on a
    :func:`realtime.db.hot_cursor`: the ORM's way costs several times the CPU.
    """
    names = {p.actor for p in posts if p.actor is not None}
    names |= {p.target for p in posts if p.target is not None and p.target_pk is None}
    now = timezone.now()
    with db.hot_cursor() as cursor, db.hot_transaction(cursor):
        results, accepted = _checked(posts, _users_named(cursor, names))
        queues = sorted({user_id for _, user_id, _ in accepted if user_id is not None})
        _start_writing_queues(cursor, sorted({*queues, *acks}))
        if acks:
            _mark_delivered(cursor, acks, now)
        inserted = _insert(cursor, [(user_id, data) for _, user_id, data in accepted], now)
        _trim_queues(cursor, queues)
    for (index, user_id, data), pk in zip(accepted, inserted(), strict=True):
        results[index] = Stored(pk, user_id, data, now, user_id is None)
    return results


def delete(notifications: QuerySet) -> int:
    """Delete ``notifications`` (the admin's deletes) after locking their users' queues.

    A batch locks the queues it writes before it touches a row
    (:func:`_start_writing_queues`). A bulk delete that did not could hold a
    row that a batch trims while it waits for a row that the batch acked: a
    deadlock, which PostgreSQL breaks after ``deadlock_timeout`` by failing one
    of them. Returns how many rows were deleted.
    """
    alias = notifications.db
    with transaction.atomic(using=alias):
        user_ids = sorted(set(notifications.filter(user__isnull=False)
                              .values_list("user_id", flat=True)))
        with connections[alias].cursor() as cursor:
            for start in range(0, len(user_ids), MAX_LOCKS):
                _start_writing_queues(cursor, user_ids[start : start + MAX_LOCKS])
        deleted, _ = notifications.delete()
    return deleted


def _checked(posts: list[Post], users: dict[str, tuple[int, bool, bool]]
             ) -> tuple[list[Stored | Refused | str], list[tuple[int, int | None, dict[str, Any]]]]:
    """Each post's answer as far as the checks go, and the posts to store.

    A post to store is ``(its index, its user's id or None for a broadcast,
    its data)``; its answer is :data:`AUTHORISED` until it is stored.
    """
    accepted: list[tuple[int, int | None, dict[str, Any]]] = []
    results: list[Stored | Refused | str] = []
    for post in posts:
        if post.actor is not None:
            actor = users.get(post.actor)
            if actor is None or not actor[1]:
                results.append(Refused.no_active_user())
                continue
            if not actor[2]:
                results.append(Refused.not_staff())
                continue
        if post.data is None:
            results.append(AUTHORISED)
            continue
        if post.target is None:
            user_id = None
        elif post.target_pk is not None:
            user_id = post.target_pk
        elif post.target in users:
            user_id = users[post.target][0]
        else:
            results.append(Refused.no_such_user(post.target))
            continue
        accepted.append((len(results), user_id, post.data))
        results.append(AUTHORISED)
    return results, accepted


def store_one(post: Post) -> Stored:
    """Store one authorised post in the caller's thread and transaction (sync callers)."""
    (stored,) = store_batch([post], {})
    return stored


def _users_sql(conn, count: int | None) -> str:
    model = get_user_model()
    opts, quote = model._meta, conn.ops.quote_name
    columns = [opts.pk.column, opts.get_field(model.USERNAME_FIELD).column,
               opts.get_field("is_active").column, opts.get_field("is_staff").column]
    one_of = db.one_of(count, "text")
    return (f"SELECT {', '.join(map(quote, columns))} FROM {quote(opts.db_table)}"
            f" WHERE {quote(columns[1])} {one_of}")


def _lock_sql(conn, count: int | None) -> str:
    opts, quote = get_user_model()._meta, conn.ops.quote_name
    pk = quote(opts.pk.column)
    # FOR NO KEY UPDATE conflicts with itself, so it excludes only other writers of the
    # queue. FOR UPDATE would also wait for (and hold up) the key-share lock of a foreign
    # key's check, which every chat message of the user takes at its commit.
    mode = "NO KEY UPDATE" if conn.features.has_select_for_no_key_update else "UPDATE"
    one_of = db.one_of(count, "bigint")
    return f"SELECT {pk} FROM {quote(opts.db_table)} WHERE {pk} {one_of} ORDER BY {pk} FOR {mode}"


#: Run first in a PostgreSQL batch's transaction (it lasts until the transaction ends).
#: Every acked notification leaves an entry in the partial index of undelivered ones
#: until a vacuum. A bitmap scan reads the row of each such entry again with every batch,
#: and never marks it dead; an index scan marks it, and later scans skip it. The planner
#: picks bitmap scans for the queue trim's read and the acks' UPDATE while its statistics put a
#: user's queue at a few rows (taken on a near-empty table, say): a batch took 32 ms after
#: 140,000 notifications instead of 2.4 (bench/RESULTS.md, "sixteenth part").
NO_BITMAP_SCANS = "SET LOCAL enable_bitmapscan = off"

#: The columns :func:`_insert` writes, in the order of its values; the batch's
#: ``created_at`` is one value that every row shares.
INSERT_FIELDS = ("user", "data", "broadcast", "delivered_at")


def _mark_sql(conn, count: int | None) -> str:
    table = conn.ops.quote_name(Notification._meta.db_table)
    if count is None:
        return (f"UPDATE {table} SET delivered_at = %s"
                " FROM UNNEST(%s::bigint[], %s::bigint[]) AS acked (id, user_id)"
                f" WHERE {table}.id = acked.id AND {table}.user_id = acked.user_id"
                f" AND {table}.delivered_at IS NULL")
    return (f"UPDATE {table} SET delivered_at = %s WHERE id IN ({db.placeholders(count)})"
            " AND delivered_at IS NULL"
            f" AND (id, user_id) IN (VALUES {db.placeholders(count, 2)})")


def _over_limit_sql(conn, count: int) -> str:
    table = conn.ops.quote_name(Notification._meta.db_table)
    return (f"SELECT user_id FROM {table} WHERE delivered_at IS NULL"
            f" AND user_id IN ({db.placeholders(count)})"
            " GROUP BY user_id HAVING COUNT(*) > %s")


def _trim_sql(conn, count: int) -> str:
    table = conn.ops.quote_name(Notification._meta.db_table)
    return (f"DELETE FROM {table} WHERE user_id = %s AND delivered_at IS NULL AND id <="
            f" (SELECT id FROM {table} WHERE user_id = %s AND delivered_at IS NULL"
            " ORDER BY id DESC LIMIT 1 OFFSET %s)")


def _trim_all_sql(conn) -> str:
    table = conn.ops.quote_name(Notification._meta.db_table)
    return (f"DELETE FROM {table} WHERE id IN (SELECT beyond.id"
            " FROM UNNEST(%s::bigint[]) AS queue (user_id) CROSS JOIN LATERAL"
            f" (SELECT id FROM {table} WHERE user_id = queue.user_id AND delivered_at IS NULL"
            " ORDER BY id DESC OFFSET %s) AS beyond)")


def _trim_queues(cursor, user_ids: list[int]) -> None:
    """Delete each user's oldest undelivered notifications beyond the newest N.

    The newest N of a queue are its N greatest ids. On PostgreSQL one
    statement trims every queue, and nothing waits for its answer (the
    transaction is pipelined); it reads each queue backwards in the partial
    index of undelivered rows, as a count would. SQLite has no ``LATERAL``, and
    there a statement costs no round trip: one grouped count finds the queues
    over N, and one ``DELETE`` trims each (the SQL window of a single
    statement took longer than both). Measured in bench/RESULTS.md.
    """
    if not user_ids:
        return
    limit = settings.NOTIFICATIONS_QUEUE_LIMIT
    if cursor.db.vendor == "postgresql":
        cursor.execute(db.statement(cursor, _trim_all_sql), [user_ids, limit])
        return
    cursor.execute(db.statement(cursor, _over_limit_sql, len(user_ids)), [*user_ids, limit])
    for (user_id,) in cursor.fetchall():
        cursor.execute(db.statement(cursor, _trim_sql, 1), [user_id, user_id, limit])


def _users_named(cursor, names: set[str]) -> dict[str, tuple[int, bool, bool]]:
    """``(pk, is_active, is_staff)`` of the users with these usernames, by username."""
    if not names:
        return {}
    shape, params = db.list_shape(cursor, list(names))
    cursor.execute(db.statement(cursor, _users_sql, shape), params)
    return {name: (pk, bool(active), bool(staff))
            for pk, name, active, staff in cursor.fetchall()}


def _start_writing_queues(cursor, user_ids: list[int]) -> None:
    """The first statements of a transaction that writes these users' queues.

    On PostgreSQL: no bitmap scans (:data:`NO_BITMAP_SCANS`), and the user rows
    locked against other writers of the same queues until the transaction ends,
    in primary-key order (``user_ids`` sorted).
    """
    if not user_ids:
        return
    if cursor.db.vendor == "postgresql":
        cursor.execute(NO_BITMAP_SCANS, [])
    if cursor.db.features.has_select_for_update:
        shape, params = db.list_shape(cursor, user_ids)
        cursor.execute(db.statement(cursor, _lock_sql, shape), params)


def _insert(cursor, rows: list[tuple[int | None, dict[str, Any]]],
            now: datetime) -> Callable[[], list[int]]:
    """Insert notifications ``(user_id or None for a broadcast, data)``.

    Returns a function that gives their ids, in order (:func:`realtime.db.insert_rows`).
    A broadcast is delivered when it is stored.
    """
    ops, encoder = cursor.db.ops, Notification._meta.get_field("data").encoder
    moment = ops.adapt_datetimefield_value(now)
    return db.insert_rows(cursor, Notification, INSERT_FIELDS, [
        # What JSONField.get_db_prep_save() comes to, without its per-field steps.
        (user_id, ops.adapt_json_value(data, encoder), user_id is None,
         moment if user_id is None else None)
        for user_id, data in rows
    ], {"created_at": moment})


def _mark_delivered(cursor, acks: dict[int, Iterable[int]], now: datetime, *,
                    count: bool = False) -> int:
    """Mark delivered the acked ids that are their user's.

    With ``count``, returns how many were newly marked; else 0, without waiting
    for the statements' answer (in a pipelined transaction a count waits).

    ``acks`` maps user ids to the ids they acknowledged. Whatever the number of
    users, one ``UPDATE`` per ``ACK_BATCH`` pairs marks only ids acknowledged
    by their own user: on PostgreSQL joined with ``UNNEST`` of the pairs'
    arrays (:func:`realtime.db.in_one_array`), on SQLite ``WHERE (id, user_id) IN (VALUES
    ...)`` (row values: SQLite 3.15+). It is SQL because it runs with every
    batch. The plain ``id IN (...)`` beside the pairs lets SQLite's planner
    find the rows by primary key instead of scanning the undelivered ones.
    """
    pairs = sorted({(note_id, user_id) for user_id, ids in acks.items() for note_id in ids})
    moment = cursor.db.ops.adapt_datetimefield_value(now)
    marked = 0
    for start in range(0, len(pairs), ACK_BATCH):
        chunk = pairs[start : start + ACK_BATCH]
        if db.in_one_array(cursor.db):
            ids, user_ids = zip(*chunk, strict=True)
            cursor.execute(db.statement(cursor, _mark_sql, None),
                           [moment, list(ids), list(user_ids)])
        else:
            cursor.execute(db.statement(cursor, _mark_sql, len(chunk)),
                           [moment, *(pair[0] for pair in chunk),
                            *(value for pair in chunk for value in pair)])
        if count:
            marked += cursor.rowcount
    return marked

