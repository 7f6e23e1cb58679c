"""The chat messages' SQL: store the batches of several rooms in one transaction.

Plain sync functions for the database worker (:func:`realtime.db.run`), called by
:class:`chat.sequencer.RoomsWriter` with every batch: with many small rooms that is
once every few messages, so the statements are SQL built once per shape
(:func:`realtime.db.statement`) on a :func:`realtime.db.hot_cursor`, as the
notifications' are: the ORM's ``bulk_create`` was the largest cost of a message in
small rooms (bench/RESULTS.md, issue 20's seventh part).
"""

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from django.contrib.auth import get_user_model
from django.utils import timezone

from chat.models import Message, Room
from realtime import db

if TYPE_CHECKING:
    from chat.sequencer import Outgoing


#: How far ``Room.last_message_at`` may lag behind the room's latest message. A busy
#: room's row (and its indexes) is rewritten once per step, not with every batch.
LAST_MESSAGE_AT_STEP = timedelta(seconds=1)

#: The columns :func:`insert_batches` writes, in the order of its values; the batch's
#: ``created_at`` is one value that every row shares.
INSERT_FIELDS = ("room", "sender", "content", "recipient")


@dataclass(frozen=True, slots=True)
class Stored:
    """A stored message: what its frame needs beyond the ``Outgoing`` it came from."""

    pk: int
    created_at: datetime


def insert_batches(batches: "list[tuple[str, list[Outgoing]]]") -> list[list[Stored | None]]:
    """Store each room's batch, all in one transaction; a result per message.

    A result is ``None`` where a private message names no active user. A room that
    is missing (deleted while its members were connected) is made again, as a join
    would. Statements: the recipients of private messages (only if any), the rooms,
    the missing rooms (only if any), the ``INSERT`` of the messages
    (:func:`realtime.db.insert_rows`), and the ``UPDATE`` of the last message
    time of the rooms where it is :data:`LAST_MESSAGE_AT_STEP` behind (only if any).
    """
    now = timezone.now()
    recipients = {o.recipient for _, batch in batches for o in batch if o.recipient is not None}
    users: dict[str, int] = {}
    if recipients:
        users = dict(get_user_model().objects.filter(username__in=recipients, is_active=True)
                     .values_list("username", "pk"))
    names = sorted({room for room, _ in batches})
    with db.hot_cursor() as cursor, db.hot_transaction(cursor):
        moment = cursor.db.ops.adapt_datetimefield_value(now)
        step_ago = cursor.db.ops.adapt_datetimefield_value(now - LAST_MESSAGE_AT_STEP)
        rooms = _rooms(cursor, names, step_ago)
        missing = [name for name in names if name not in rooms]
        if missing:
            cursor.execute(db.statement(cursor, _make_rooms_sql, len(missing)),
                           [value for name in missing for value in (name, moment, False)])
            rooms.update(_rooms(cursor, missing, step_ago))
        rows: list[tuple] = []
        kept: list[list[bool]] = []  # per room, per message: stored (else no recipient)
        for room, batch in batches:
            keep = [o.recipient is None or o.recipient in users for o in batch]
            pk = rooms[room][0]
            rows.extend((pk, o.sender.pk, o.content, users.get(o.recipient))
                        for o, ok in zip(batch, keep, strict=True) if ok)
            kept.append(keep)
        inserted = db.insert_rows(cursor, Message, INSERT_FIELDS, rows, {"created_at": moment})
        behind = sorted(pk for pk, stale in rooms.values() if stale)
        if behind:
            shape, params = db.list_shape(cursor, behind)
            cursor.execute(db.statement(cursor, _touch_sql, shape), [moment, *params])
    ids = iter(inserted())
    return [[Stored(next(ids), now) if ok else None for ok in keep] for keep in kept]


def insert_batch(room: str, batch: "list[Outgoing]") -> list[Stored | None]:
    """:func:`insert_batches` of one room."""
    return insert_batches([(room, batch)])[0]


def _rooms(cursor, names: list[str], step_ago) -> dict[str, tuple[int, bool]]:
    """``{name: (pk, whether its last_message_at is a step behind or empty)}``."""
    shape, params = db.list_shape(cursor, names)
    cursor.execute(db.statement(cursor, _rooms_sql, shape), [step_ago, *params])
    return {name: (pk, bool(stale)) for pk, name, stale in cursor.fetchall()}


def _rooms_sql(conn, count: int | None) -> str:
    opts, quote = Room._meta, conn.ops.quote_name
    name = quote(opts.get_field("name").column)
    last = quote(opts.get_field("last_message_at").column)
    return (f"SELECT {quote(opts.pk.column)}, {name}, ({last} IS NULL OR {last} <= %s)"
            f" FROM {quote(opts.db_table)} WHERE {name} {db.one_of(count, 'text')}")


def _make_rooms_sql(conn, count: int) -> str:
    # Another process may make the same room meanwhile: its row is as good as ours.
    opts, quote = Room._meta, conn.ops.quote_name
    columns = [opts.get_field(f).column for f in ("name", "created_at", "private")]
    return (f"INSERT INTO {quote(opts.db_table)} ({', '.join(map(quote, columns))})"
            f" VALUES {db.placeholders(count, 3)} ON CONFLICT ({quote(columns[0])}) DO NOTHING")


def _touch_sql(conn, count: int | None) -> str:
    opts, quote = Room._meta, conn.ops.quote_name
    return (f"UPDATE {quote(opts.db_table)}"
            f" SET {quote(opts.get_field('last_message_at').column)} = %s"
            f" WHERE {quote(opts.pk.column)} {db.one_of(count, 'bigint')}")
