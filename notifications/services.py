"""Notifications: the one place that stores, pushes, acknowledges and lists them.

Every notification is written first and pushed second, so a push that reaches
nobody (the user is offline, or is connecting right now) is not lost: it waits
in the database until the client acknowledges it.

Two entry points for posting, the same work underneath:

* ``await anotify(user, data)`` in async code (views, consumers);
* ``notify(user, data)`` in any sync code (a view, a management command, a
  Celery task, a signal handler). It stores in the caller's thread and
  transaction; inside an ``atomic`` block the push waits for the commit, so a
  rolled-back notification is never pushed and a pushed one can always be
  acknowledged.

Both return ``(id, status)``: ``"sent"`` when the user has an open
``/ws/notifications/`` connection on any process, else ``"queued"``.

Inside the server the push goes through the process hub of the running loop
(``realtime.hub``); elsewhere (a management command, a worker) it goes straight
to the channel layer, and a short-lived registry answers "is the user online".
"""

import asyncio
import contextlib
import contextvars
import logging
import secrets
import time
import weakref
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.base_user import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from notifications.models import Notification
from realtime import db, metrics, protocol
from realtime.api import NO_ACTIVE_USER, STAFF_ONLY
from realtime.hub import Hub, get_hub, running_hub
from realtime.registry import LocalRegistry, NotificationReach, RedisRegistry

logger = logging.getLogger(__name__)

SENT = "sent"
QUEUED = "queued"
BROADCAST = "broadcast"

#: The ``kind`` of the hub event that carries NOTEs.
EVENT_KIND = "notifications"
#: The channel-layer group of every process with ``/ws/notifications/``
#: connections. One event carries all the NOTEs a batch stored, each for its
#: user or for everyone: one layer message per batch instead of one per NOTE
#: (with Redis, the receiving side's round trips are what falls behind first).
FEED_GROUP = "notifications.feed"
#: Acked ``(id, user)`` pairs per ``UPDATE``: three parameters each, under the 999
#: that SQLite builds before 3.32 allow per query.
ACK_BATCH = 330
#: Posts per transaction of the writer (two usernames each in one ``IN``: SQLite's cap).
MAX_BATCH = 200
#: How long an ack may wait for a post to share its transaction. Under load every
#: batch of posts carries the acks taken meanwhile; without this wait each ack
#: frame would start a transaction of its own (one per notification). A delayed
#: ack only risks a redelivery (at-least-once), and it is written at once when
#: the connection goes or its user's queue is read (:meth:`Writer.flush_acks`).
ACK_DELAY_SECONDS = 0.05
#: Pending acked ids that start a transaction without waiting for the delay.
MAX_PENDING_ACKS = ACK_BATCH
#: Loop turns the writer waits, while posts keep arriving, before it takes a batch.
GATHER_TURNS = 8


# --- Frames and groups ------------------------------------------------------------


def note_frame(note_id: int, data: dict[str, Any], created_at: datetime, *,
               broadcast: bool = False) -> str:
    """The NOTE frame of the contract, serialised once for every connection."""
    frame: dict[str, Any] = {
        "type": "notification",
        "id": note_id,
        "data": data,
        "timestamp": protocol.timestamp(created_at),
    }
    if broadcast:
        frame["broadcast"] = True
    return protocol.encode(frame)


def frame_of(notification: "Notification | Stored") -> str:
    """The NOTE frame of a stored notification."""
    return note_frame(
        notification.pk, notification.data, notification.created_at,
        broadcast=notification.broadcast,
    )


def _item(notification: "Notification | Stored", username: str | None) -> dict[str, Any]:
    """One NOTE of a hub event: for ``username`` (``None``: everyone), serialised once."""
    return {"id": notification.pk, "frame": frame_of(notification), "user": username}


def _require_sync(name: str, async_name: str) -> None:
    if _loop_running():
        raise RuntimeError(f"{name}() is for sync code; use 'await {async_name}(...)' here")


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _check_data(data: Any) -> None:
    if not isinstance(data, dict):
        raise TypeError(f"notification data must be a dict (a JSON object), not {type(data)}")


# --- Database work (plain sync functions; async callers use database_sync_to_async) ---


def undelivered(user_id: int) -> list[Notification]:
    """The user's undelivered notifications, oldest first (at most the queue limit)."""
    rows = list(
        Notification.objects.filter(user_id=user_id, delivered_at__isnull=True)
        .order_by("-id")[: settings.NOTIFICATIONS_QUEUE_LIMIT]
    )
    rows.reverse()
    return rows


def undelivered_frames(user_id: int) -> list[tuple[int, str]]:
    """``(id, NOTE frame)`` of each undelivered notification, oldest first."""
    return [(row.pk, frame_of(row)) for row in undelivered(user_id)]


def acknowledge(user_id: int, ids: Iterable[int]) -> int:
    """Mark delivered those of ``ids`` that are the user's; others are ignored.

    Returns how many were newly marked.
    """
    with db.hot_cursor() as cursor:
        return _mark_delivered(cursor, {user_id: ids}, timezone.now())


@dataclass(eq=False)
class Post:
    """One notification for the :class:`Writer` to store, as the HTTP API posts it.

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
    #: Set by :meth:`Writer.submit`: the poster's answer.
    done: asyncio.Future | None = field(default=None, repr=False)


class ServiceUnavailable(Exception):
    """The database failed: nothing was stored."""


class Refused(Exception):
    """A post the batch refused: ``code`` is an API error code, ``message`` its text."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


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
    one ``INSERT`` stores every accepted post, and one count finds the queues
    over ``NOTIFICATIONS_QUEUE_LIMIT`` to trim. On PostgreSQL the targets' user
    rows are locked first (in primary-key order), so that batches of other
    processes trim one queue one after the other; acks come before the insert,
    so what they deliver no longer counts against the limit.

    A result is a :class:`Stored` notification, a :class:`Refused`, or
    :data:`AUTHORISED` for a post without data that passed its checks.

    This runs with every batch, so its statements are SQL, on a
    :func:`realtime.db.hot_cursor`: through the ORM (model instances,
    ``bulk_create``, a ``values()`` query) the same work cost about three
    times the CPU, when the database thread was half of the notify path's.
    """
    names = {p.actor for p in posts if p.actor is not None}
    names |= {p.target for p in posts if p.target is not None and p.target_pk is None}
    with db.hot_cursor() as cursor:
        users = _users_named(cursor, names)
        return _store_checked(cursor, posts, users, acks)


def _store_checked(cursor, posts: list[Post], users: dict[str, tuple[int, bool, bool]],
                   acks: dict[int, set[int]]) -> list[Stored | Refused | str]:
    now = timezone.now()
    accepted: list[tuple[int, int | None, dict[str, Any]]] = []
    results: list[Stored | Refused | str] = []
    for post in posts:
        if post.actor is not None:
            actor = users.get(post.actor)
            if actor is None or not actor[1]:
                results.append(Refused(*NO_ACTIVE_USER))
                continue
            if not actor[2]:
                results.append(Refused(*STAFF_ONLY))
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
            results.append(Refused("not_found", f"no user {post.target!r}"))
            continue
        accepted.append((len(results), user_id, post.data))
        results.append(AUTHORISED)  # replaced by the stored row below
    queues = sorted({user_id for _, user_id, _ in accepted if user_id is not None})
    with db.hot_transaction(cursor):
        if queues and cursor.db.features.has_select_for_update:
            _lock_users(cursor, queues)
        if acks:
            _mark_delivered(cursor, acks, now)
        pks = _insert(cursor, [(user_id, data) for _, user_id, data in accepted], now)
        for user_id in _over_limit(cursor, queues):
            _trim_queue(cursor, user_id)
    for (index, user_id, data), pk in zip(accepted, pks, strict=True):
        results[index] = Stored(pk, user_id, data, now, user_id is None)
    return results


def store_one(post: Post) -> Stored:
    """Store one authorised post in the caller's thread and transaction (sync callers)."""
    (stored,) = store_batch([post], {})
    return stored


def _placeholders(count: int, width: int = 1) -> str:
    one = "%s" if width == 1 else f"({', '.join(['%s'] * width)})"
    return ", ".join([one] * count)


#: The writer's SQL by (backend, statement, shape): built once, not per batch.
_statements: dict[tuple, str] = {}


def _statement(cursor, kind: str, count: int) -> str:
    """The SQL of statement ``kind`` for ``count`` rows on the cursor's backend.

    Table and column names come from the models; the text depends only on
    the backend's quoting and the number of rows, so each shape is built once
    (building them took about a sixth of the writer's Python per batch).
    """
    conn = cursor.db
    key = (conn.vendor, kind, count)
    sql = _statements.get(key)
    if sql is None:
        sql = _statements[key] = _BUILDERS[kind](conn, count)
    return sql


def _users_sql(conn, count: int) -> str:
    model = get_user_model()
    opts, quote = model._meta, conn.ops.quote_name
    columns = [opts.pk.column, opts.get_field(model.USERNAME_FIELD).column,
               opts.get_field("is_active").column, opts.get_field("is_staff").column]
    return (f"SELECT {', '.join(map(quote, columns))} FROM {quote(opts.db_table)}"
            f" WHERE {quote(columns[1])} IN ({_placeholders(count)})")


def _lock_sql(conn, count: int) -> str:
    opts, quote = get_user_model()._meta, conn.ops.quote_name
    pk = quote(opts.pk.column)
    return (f"SELECT {pk} FROM {quote(opts.db_table)} WHERE {pk} IN"
            f" ({_placeholders(count)}) ORDER BY {pk} FOR UPDATE")


#: The columns :func:`_insert` writes, in the order of its values.
INSERT_FIELDS = ("user", "data", "broadcast", "created_at", "delivered_at")


def _insert_sql(conn, count: int) -> str:
    opts, quote = Notification._meta, conn.ops.quote_name
    columns = ", ".join(quote(opts.get_field(name).column) for name in INSERT_FIELDS)
    returning = (f" RETURNING {quote(opts.pk.column)}"
                 if conn.features.can_return_columns_from_insert else "")
    return (f"INSERT INTO {quote(opts.db_table)} ({columns})"
            f" VALUES {_placeholders(count, len(INSERT_FIELDS))}{returning}")


def _over_limit_sql(conn, count: int) -> str:
    table = conn.ops.quote_name(Notification._meta.db_table)
    return (f"SELECT user_id FROM {table} WHERE delivered_at IS NULL"
            f" AND user_id IN ({_placeholders(count)})"
            " GROUP BY user_id HAVING COUNT(*) > %s")


def _mark_sql(conn, count: int) -> str:
    table = conn.ops.quote_name(Notification._meta.db_table)
    return (f"UPDATE {table} SET delivered_at = %s WHERE id IN ({_placeholders(count)})"
            " AND delivered_at IS NULL"
            f" AND (id, user_id) IN (VALUES {_placeholders(count, 2)})")


def _trim_sql(conn, count: int) -> str:
    table = conn.ops.quote_name(Notification._meta.db_table)
    return (f"DELETE FROM {table} WHERE user_id = %s AND delivered_at IS NULL AND id <="
            f" (SELECT id FROM {table} WHERE user_id = %s AND delivered_at IS NULL"
            " ORDER BY id DESC LIMIT 1 OFFSET %s)")


_BUILDERS = {
    "trim": _trim_sql,
    "users": _users_sql,
    "lock": _lock_sql,
    "insert": _insert_sql,
    "over_limit": _over_limit_sql,
    "mark": _mark_sql,
}


def _trim_queue(cursor, user_id: int) -> None:
    """Delete the user's oldest undelivered notifications beyond the newest N.

    The newest N are the N greatest ids; the (N+1)th and everything older go
    (none when there are no more than N: the cutoff is then NULL).
    """
    cursor.execute(_statement(cursor, "trim", 1),
                   [user_id, user_id, settings.NOTIFICATIONS_QUEUE_LIMIT])


def _users_named(cursor, names: set[str]) -> dict[str, tuple[int, bool, bool]]:
    """``(pk, is_active, is_staff)`` of the users with these usernames, by username."""
    if not names:
        return {}
    cursor.execute(_statement(cursor, "users", len(names)), list(names))
    return {name: (pk, bool(active), bool(staff))
            for pk, name, active, staff in cursor.fetchall()}


def _lock_users(cursor, user_ids: list[int]) -> None:
    """Lock these user rows until the transaction ends, in primary-key order (PostgreSQL)."""
    cursor.execute(_statement(cursor, "lock", len(user_ids)), user_ids)


#: Rows per ``INSERT`` statement (five parameters each, under SQLite's older cap of 999).
INSERT_CHUNK = 150


def _insert(cursor, rows: list[tuple[int | None, dict[str, Any]]], now: datetime) -> list[int]:
    """Insert notifications ``(user_id or None for a broadcast, data)``; their ids, in order.

    A broadcast is delivered when it is stored. One multi-row ``INSERT ...
    RETURNING`` per ``INSERT_CHUNK`` rows (SQLite 3.35+, PostgreSQL: the order
    of the returned ids is the order of the rows, as ``bulk_create`` relies
    on too); one statement per row on an older SQLite.
    """
    conn = cursor.db  # the connection itself: ``connection`` looks it up on each use
    ops, encoder = conn.ops, Notification._meta.get_field("data").encoder
    moment = ops.adapt_datetimefield_value(now)
    values = [
        # What JSONField.get_db_prep_save() comes to, without its per-field steps.
        (user_id, ops.adapt_json_value(data, encoder), user_id is None, moment,
         moment if user_id is None else None)
        for user_id, data in rows
    ]
    pks: list[int] = []
    if conn.features.can_return_rows_from_bulk_insert:
        for start in range(0, len(values), INSERT_CHUNK):
            chunk = values[start : start + INSERT_CHUNK]
            cursor.execute(_statement(cursor, "insert", len(chunk)),
                           [value for row in chunk for value in row])
            pks.extend(row[0] for row in cursor.fetchall())
    else:
        returning = conn.features.can_return_columns_from_insert
        for row in values:
            cursor.execute(_statement(cursor, "insert", 1), row)
            pks.append(cursor.fetchone()[0] if returning else cursor.lastrowid)
    return pks


def _over_limit(cursor, user_ids: list[int]) -> list[int]:
    """Those of ``user_ids`` with more than ``NOTIFICATIONS_QUEUE_LIMIT`` undelivered.

    One grouped count per batch, in SQL for the reason given in :func:`_mark_delivered`
    (it uses the partial index of undelivered rows).
    """
    if not user_ids:
        return []
    cursor.execute(_statement(cursor, "over_limit", len(user_ids)),
                   [*user_ids, settings.NOTIFICATIONS_QUEUE_LIMIT])
    return [row[0] for row in cursor.fetchall()]


def _mark_delivered(cursor, acks: dict[int, Iterable[int]], now: datetime) -> int:
    """Mark delivered the acked ids that are their user's; how many were newly marked.

    ``acks`` maps user ids to the ids they acknowledged. Whatever the number of
    users, one ``UPDATE ... WHERE (id, user_id) IN (VALUES ...)`` per
    ``ACK_BATCH`` pairs marks only ids acknowledged by their own user. It is
    written as SQL (row values: SQLite 3.15+, PostgreSQL) because it runs with
    every batch, and building it through the ORM cost several times more CPU
    than running it. The plain ``id IN (...)`` beside the pairs is what SQLite's
    planner needs to find the rows by primary key: with the pairs alone it
    scanned every undelivered row (17 ms per batch with 200,000 queued, against
    14 µs).
    """
    pairs = sorted({(note_id, user_id) for user_id, ids in acks.items() for note_id in ids})
    moment = cursor.db.ops.adapt_datetimefield_value(now)
    marked = 0
    for start in range(0, len(pairs), ACK_BATCH):
        chunk = pairs[start : start + ACK_BATCH]
        cursor.execute(
            _statement(cursor, "mark", len(chunk)),
            [moment, *(pair[0] for pair in chunk), *(value for pair in chunk for value in pair)],
        )
        marked += cursor.rowcount
    return marked


async def aundelivered_frames(user_id: int) -> list[tuple[int, str]]:
    """:func:`undelivered_frames` from async code, after this process's pending acks.

    A client that acknowledged on one connection and reconnects at once does
    not get what it acknowledged again from this process.
    """
    await flush_acks(user_id)
    return await db.run(undelivered_frames, user_id)


async def aacknowledge(user_id: int, ids: Iterable[int]) -> int:
    """:func:`acknowledge` from async code, now: how many were newly marked."""
    return await db.run(acknowledge, user_id, ids)


def acknowledge_later(user_id: int, ids: Iterable[int]) -> None:
    """Mark ``ids`` delivered with the writer's next transaction (the ``ack`` frame).

    Acks of every connection on this process share one ``UPDATE`` per user and
    batch. An ack lost before it is written (the process dies) only means the
    notification comes again on the next connect: at-least-once still holds.
    """
    writer().acknowledge(user_id, ids)


async def flush_acks(user_id: int | None = None) -> None:
    """Wait until the acks of ``user_id`` (or all) taken so far are written (or failed)."""
    await writer().flush_acks(user_id)


# --- The writer: concurrent posts and acks share one transaction --------------------


class Writer:
    """Stores this event loop's posts and acks in batches, then pushes what it stored.

    Posts and acks that arrive while a batch is in the database wait for the
    next one, so under load each transaction carries many of them; alone, a
    post pays one round trip. Acks also wait (up to ``ACK_DELAY_SECONDS``) for
    a post to ride with, so a busy process writes no transactions of acks
    alone. Notifications are pushed only once their batch has committed
    ("stored, then pushed"), in id order. A batch that fails is retried one
    post at a time, so one bad row does not fail the others.
    """

    def __init__(self) -> None:
        self.posts: list[Post] = []
        self.acks: dict[int, set[int]] = {}
        #: Ids in ``acks`` (with repeats), and when the oldest of them was taken.
        self.pending_acks = 0
        self.acks_since = 0.0
        #: Acks are due now, not after ``ACK_DELAY_SECONDS`` (someone waits for them).
        self.acks_wanted = False
        self.ack_timer: asyncio.TimerHandle | None = None
        self.task: asyncio.Task | None = None
        loop = asyncio.get_running_loop()
        #: Resolved when the batch that takes what is pending now has finished.
        self.next_batch: asyncio.Future = loop.create_future()
        #: The batch in the database, and the users whose acks it carries.
        self.current_batch: asyncio.Future | None = None
        self.current_ack_users: frozenset[int] = frozenset()

    async def submit(self, post: Post) -> tuple[int | None, str]:
        """Store and push ``post`` with the next batch: ``(id, status)``.

        The status is ``sent``, ``queued`` or ``broadcast``; ``(None,
        "authorised")`` for a post without data. Raises :class:`Refused` or
        :class:`ServiceUnavailable`.
        """
        post.done = asyncio.get_running_loop().create_future()
        self.posts.append(post)
        self._wake()
        return await post.done

    def acknowledge(self, user_id: int, ids: Iterable[int]) -> None:
        """Mark ``ids`` delivered (those of the user's) with a batch soon.

        With the next batch of posts, or after ``ACK_DELAY_SECONDS`` if no post
        comes first.
        """
        ids = set(ids)
        if not ids:
            return
        if not self.acks:
            self.acks_since = time.monotonic()
        self.acks.setdefault(user_id, set()).update(ids)
        self.pending_acks += len(ids)
        if self._acks_due():
            self._wake()
        else:
            self._schedule_acks()

    async def flush_acks(self, user_id: int | None = None) -> None:
        """Wait until the acks of ``user_id`` (or all) pending now have been written."""
        if (user_id is None and self.current_batch) or user_id in self.current_ack_users:
            await asyncio.shield(self.current_batch)
        if (user_id is None and self.acks) or user_id in self.acks:
            self.acks_wanted = True
            self._wake()
            await asyncio.shield(self.next_batch)

    def _acks_due(self) -> bool:
        return bool(self.acks) and (
            self.acks_wanted
            or self.pending_acks >= MAX_PENDING_ACKS
            or time.monotonic() - self.acks_since >= ACK_DELAY_SECONDS
        )

    def _schedule_acks(self) -> None:
        """Make sure the pending acks are written ``ACK_DELAY_SECONDS`` after the oldest."""
        if self.ack_timer is None:
            delay = max(0.0, self.acks_since + ACK_DELAY_SECONDS - time.monotonic())
            self.ack_timer = asyncio.get_running_loop().call_later(delay, self._ack_timer_fired)

    def _ack_timer_fired(self) -> None:
        self.ack_timer = None
        if self.acks:
            self.acks_wanted = True
            self._wake()

    def _wake(self) -> None:
        if self.task is None or self.task.done():
            # A fresh context: the task outlives the request that happened to start it.
            self.task = asyncio.get_running_loop().create_task(
                self._run(), name="notifications-writer", context=contextvars.Context()
            )

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self.posts or self._acks_due():
            await self._gather_posts()
            posts, self.posts = self.posts[:MAX_BATCH], self.posts[MAX_BATCH:]
            acks, self.acks = self.acks, {}
            self.pending_acks, self.acks_wanted = 0, False
            if self.ack_timer is not None:
                self.ack_timer.cancel()
                self.ack_timer = None
            self.current_batch, self.next_batch = self.next_batch, loop.create_future()
            self.current_ack_users = frozenset(acks)
            try:
                await self._store_and_push(posts, acks)
            except Exception:
                logger.exception("the notifications writer failed")
                for post in posts:
                    _settle(post, exception=ServiceUnavailable("could not store"))
            finally:
                self.current_ack_users = frozenset()
                self.current_batch.set_result(None)
                self.current_batch = None
        if self.acks:
            # Acks taken during the last batch wait for a post, or for the delay.
            self._schedule_acks()

    async def _gather_posts(self) -> None:
        """Let requests that have already arrived add their posts before a batch starts.

        A request whose bytes came in with the one that woke the writer is
        still one or two loop turns from :meth:`submit`. Waiting those turns
        (as long as posts keep coming, at most ``GATHER_TURNS``) costs no
        measurable latency and makes each transaction carry more posts: fewer
        commits and thread hops per notification.
        """
        for _ in range(GATHER_TURNS):
            waiting = len(self.posts)
            await asyncio.sleep(0)
            if len(self.posts) == waiting:
                return

    async def _store_and_push(self, posts: list[Post], acks: dict[int, set[int]]) -> None:
        try:
            results = await db.run(store_batch, posts, acks)
        except Exception:
            if acks:
                logger.warning("a batch of acks failed; its notifications come again",
                               exc_info=True)
            if len(posts) > 1 or (posts and acks):
                logger.warning("a batch of %d notifications failed; storing them one by one",
                               len(posts))
            results = []
            for post in posts:
                try:
                    results.extend(await db.run(store_batch, [post], {}))
                except Exception as exc:
                    logger.exception("could not store a notification")
                    results.append(ServiceUnavailable(f"could not store: {exc}"))
        stored: list[tuple[Post, Stored]] = []
        for post, result in zip(posts, results, strict=True):
            if isinstance(result, Stored):
                stored.append((post, result))
            elif isinstance(result, Exception):
                _settle(post, exception=result)
            else:
                _settle(post, result=(None, result))
        if not stored:
            return
        # Pushed once the transaction has committed, in id order, in one event.
        statuses = await _push([
            _item(row, None if row.broadcast else post.target) for post, row in stored
        ])
        for post, row in stored:
            status = BROADCAST if row.broadcast else statuses[post.target]
            _settle(post, result=(row.pk, _counted(status)))


def _settle(post: Post, *, result: Any = None, exception: Exception | None = None) -> None:
    if post.done is None or post.done.done():
        return  # the poster went away (a cancelled request); the work stands
    if exception is not None:
        post.done.set_exception(exception)
    else:
        post.done.set_result(result)


_writers: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Writer]" = (
    weakref.WeakKeyDictionary()
)


def writer() -> Writer:
    """The writer of the running event loop (one per server process)."""
    loop = asyncio.get_running_loop()
    found = _writers.get(loop)
    if found is None:
        found = _writers[loop] = Writer()
    return found


async def post_notification(target: str | None, data: dict[str, Any] | None, *,
                            actor: str | None = None) -> tuple[int | None, str]:
    """Store and push one post of the HTTP API: ``(id, "sent"|"queued"|"broadcast")``.

    ``target`` is a username, ``None`` for a broadcast. With ``actor`` (the
    username of a Bearer token) the same round trip checks that it names an
    active staff user. ``data`` ``None`` runs only that check and answers
    ``(None, "authorised")``. Raises :class:`Refused` (``unauthorized``,
    ``forbidden``, ``not_found``) or :class:`ServiceUnavailable`.
    """
    if data is not None:
        _check_data(data)
    return await writer().submit(Post(target=target, data=data, actor=actor))


# --- Pushing ------------------------------------------------------------------------


async def ensure_hub() -> Hub | None:
    """Start the hub of this server process if it has none yet (for HTTP views).

    ``None`` when it cannot start (Redis down): posting then falls back to the
    direct path, which stores and answers ``queued`` if the layer is down too.
    """
    try:
        return await get_hub()
    except Exception:
        logger.warning("could not start the process hub", exc_info=True)
        return None


@contextlib.asynccontextmanager
async def temporary_registry() -> AsyncIterator[LocalRegistry | RedisRegistry]:
    """A registry for code outside the server (no hub on this loop), closed after use.

    Without Redis there is no server this process could reach through the
    in-memory layer, so the empty local registry answers correctly: nobody.
    """
    proc_id = "notify-" + secrets.token_hex(6)
    if settings.REDIS_URL:
        registry = RedisRegistry(proc_id, settings.REDIS_URL, settings.REDIS_PREFIX)
    else:
        registry = LocalRegistry(proc_id)
    try:
        yield registry
    finally:
        await registry.close()


async def publish(group: str, event: dict[str, Any], *, elsewhere: bool = True) -> None:
    """Send a hub event to ``group`` on every process, through this loop's hub if any.

    This process's connections get it first: live NOTEs posted on different
    processes have no order to keep (PROTOCOL.md promises id order for a
    room's messages, not for notifications). With ``elsewhere`` false (no
    other process has a connection it is for) it goes no further.
    """
    hub = running_hub()
    if hub is not None:
        await hub.publish(group, event, here_first=True, elsewhere=elsewhere)
    else:
        # The message shape of Hub.publish, which every process's hub receives.
        await get_channel_layer().group_send(group, {"type": "hub.event", "group": group,
                                                     **event})


async def notification_connections(username: str) -> int:
    """Open ``/ws/notifications/`` connections of the user on every process."""
    return (await _reach([username])).counts[0]


async def _reach(usernames: list[str]) -> NotificationReach:
    hub = running_hub()
    if hub is not None:
        return await hub.registry.notification_connections(usernames)
    async with temporary_registry() as registry:
        return await registry.notification_connections(usernames)


def _counted(status: str) -> str:
    metrics.inc("realtime_notifications_total", status=status)
    return status


async def _push(items: list[dict[str, Any]]) -> dict[str, str]:
    """Publish stored NOTEs in one event; the status of each user they name.

    ``sent`` when the user has a notifications connection on some process,
    else ``queued``; ``queued`` too when the push failed, which loses nothing a
    user was sent: the rows are stored and come on the next connect.
    Broadcasts that could not be pushed are missed (they are never queued).

    The event goes through the channel layer only when a broadcast is in it
    or one of its users has a connection on another process, as the registry
    says just before. A connection that registers after that reads the queue
    after registering, so it finds these rows (stored before the registry
    was read).
    """
    users = list(dict.fromkeys(item["user"] for item in items if item["user"] is not None))
    try:
        reach: NotificationReach | None = await _reach(users)
    except Exception:
        logger.exception("could not count the connections of %d users", len(users))
        reach = None
    broadcast = any(item["user"] is None for item in items)
    elsewhere = reach is None or reach.elsewhere or broadcast
    try:
        await publish(FEED_GROUP, {"kind": EVENT_KIND, "items": items}, elsewhere=elsewhere)
    except Exception:
        logger.exception("could not push notifications %s; they stay queued",
                         [item["id"] for item in items])
        return dict.fromkeys(users, QUEUED)
    if reach is None:
        return dict.fromkeys(users, QUEUED)
    return {user: SENT if count else QUEUED for user, count in zip(users, reach.counts,
                                                                      strict=True)}


async def anotify(user: AbstractBaseUser, data: dict[str, Any]) -> tuple[int, str]:
    """Store a notification for ``user``, then push it: ``(id, "sent"|"queued")``.

    It shares a transaction with whatever else this process is posting now.
    """
    _check_data(data)
    return await writer().submit(
        Post(target=user.get_username(), target_pk=user.pk, data=data)
    )


def notify(user: AbstractBaseUser, data: dict[str, Any]) -> tuple[int, str]:
    """Store a notification for ``user``, then push it: ``(id, "sent"|"queued")``.

    One call from any sync code: ``notify(user, {"text": "Your export is ready"})``.
    The row is written in the caller's thread and transaction. Inside an
    ``atomic`` block the push runs when the transaction commits (and not at all
    if it rolls back); the status then says whether the user is connected now.
    From async code use :func:`anotify` (this raises ``RuntimeError`` there).
    """
    _check_data(data)
    _require_sync("notify", "anotify")
    username = user.get_username()
    notification = store_one(Post(target=username, target_pk=user.pk, data=data))
    items = [_item(notification, username)]
    if transaction.get_connection().in_atomic_block:
        transaction.on_commit(lambda: async_to_sync(_push)(items))
        try:
            connected = async_to_sync(notification_connections)(username)
            return notification.pk, _counted(SENT if connected else QUEUED)
        except Exception:
            logger.exception("could not count the connections of a user")
            return notification.pk, _counted(QUEUED)
    return notification.pk, _counted(async_to_sync(_push)(items)[username])


async def abroadcast(data: dict[str, Any]) -> tuple[int, str]:
    """Store one broadcast and push it to every notifications connection: ``(id, "broadcast")``."""
    _check_data(data)
    return await writer().submit(Post(target=None, data=data))


def broadcast(data: dict[str, Any]) -> tuple[int, str]:
    """Sync :func:`abroadcast`, for management commands and tasks."""
    _check_data(data)
    _require_sync("broadcast", "abroadcast")
    notification = store_one(Post(target=None, data=data))
    items = [_item(notification, None)]
    if transaction.get_connection().in_atomic_block:
        transaction.on_commit(lambda: async_to_sync(_push)(items))
    else:
        async_to_sync(_push)(items)
    return notification.pk, _counted(BROADCAST)
