"""chat.store: the batches of several rooms are stored in one transaction, in few statements.

These run on the test process's own connection (sync), as the database worker runs them.
"""

import pytest
from django.db import connection
from django.db.backends.utils import CursorWrapper
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from chat import store
from chat.models import Message, Room
from chat.sequencer import Outgoing
from realtime import db

pytestmark = pytest.mark.django_db(transaction=True)


def message(sender, content: str, recipient: str | None = None) -> Outgoing:
    """A message to store; stored here without a sequencer, so no one awaits ``done``."""
    return Outgoing(sender=sender, content=content, recipient=recipient, done=None)


def contents(results: list[list[store.Stored | None]]) -> list[list[str | None]]:
    """What was stored under each result's id (``None`` stays ``None``)."""
    rows = Message.objects.in_bulk([s.pk for stored in results for s in stored if s])
    return [[s and rows[s.pk].content for s in stored] for stored in results]


def test_the_batches_of_several_rooms_are_one_transaction(make_user):
    """Three rooms, two of them new: one INSERT makes the new rooms, one INSERT stores the
    messages, one UPDATE moves the last message time of the rooms where it is a step
    behind (the new ones). Each room's messages keep their order, and a private message
    to nobody is left out (None)."""
    alice = make_user("alice")
    make_user("bob")
    store.insert_batches([("one", [message(alice, "0")])])
    batches = [
        ("one", [message(alice, "1a"), message(alice, "1b")]),
        ("two", [message(alice, "2a", "bob"),
                 message(alice, "2b", "nobody")]),
        ("three", [message(alice, "3a")]),
    ]
    with CaptureQueriesContext(connection) as queries:
        results = store.insert_batches(batches)
    statements = [q["sql"] for q in queries]
    inserts = [sql for sql in statements if sql.upper().startswith("INSERT")]
    assert [sql.split('"')[1] for sql in inserts] == ["chat_room", "chat_message"]
    assert sum(sql.upper().startswith("UPDATE") for sql in statements) == 1
    assert contents(results) == [["1a", "1b"], ["2a", None], ["3a"]]
    ids = [s.pk for stored in results for s in stored if s]
    assert ids == sorted(ids)
    private = Message.objects.select_related("recipient").get(room__name="two")
    assert private.recipient.username == "bob"
    touched = Room.objects.filter(last_message_at=results[0][0].created_at)
    assert sorted(touched.values_list("name", flat=True)) == ["three", "two"]


def test_a_rooms_last_message_time_moves_once_a_step(make_user, monkeypatch):
    """``Room.last_message_at`` lags the latest message by less than LAST_MESSAGE_AT_STEP:
    a busy room's row is rewritten once a step, not with every batch."""
    alice = make_user("alice")
    start = timezone.now()
    moments = iter([start, start + store.LAST_MESSAGE_AT_STEP / 2,
                    start + store.LAST_MESSAGE_AT_STEP])
    monkeypatch.setattr(store.timezone, "now", lambda: next(moments))

    def last_message_at():
        store.insert_batch("busy", [message(alice, "x")])
        return Room.objects.get(name="busy").last_message_at

    assert last_message_at() == start
    assert last_message_at() == start
    assert last_message_at() == start + store.LAST_MESSAGE_AT_STEP


def test_a_transaction_of_rooms_none_behind_updates_nothing(make_user):
    """When every room's last message time is less than a step old, the transaction has
    no UPDATE at all: two statements, the rooms and the INSERT."""
    alice = make_user("alice")
    store.insert_batches([("a", [message(alice, "1")]), ("b", [message(alice, "1")])])
    with CaptureQueriesContext(connection) as queries:
        store.insert_batches([("a", [message(alice, "2")]), ("b", [message(alice, "2")])])
    statements = [q["sql"].split()[0].upper() for q in queries]
    assert [s for s in statements if s in ("SELECT", "INSERT", "UPDATE")] == [
        "SELECT", "INSERT"]


def test_the_messages_room_lookups_share_one_index():
    """The message table has one index that starts with its room: (room, id). A second
    one on the room alone would be one more B-tree written per stored message."""
    with connection.cursor() as cursor:
        found = connection.introspection.get_constraints(cursor, Message._meta.db_table)
    by_room = [c["columns"] for c in found.values()
               if c["index"] and not c["primary_key"] and c["columns"][0] == "room_id"]
    assert by_room == [["room_id", "id"]]


def test_a_large_batch_keeps_its_order(make_user):
    """More rows than one SQLite INSERT takes: every message gets its own id, in the batch's
    order. PostgreSQL stores them in one INSERT of one array per column, whatever the
    number; SQLite in one INSERT per INSERT_CHUNK rows."""
    alice = make_user("alice")
    count = db.INSERT_CHUNK * 2 + 7
    batch = [message(alice, str(n)) for n in range(count)]
    with CaptureQueriesContext(connection) as queries:
        (results,) = store.insert_batches([("big", batch)])
    inserts = [q["sql"] for q in queries if q["sql"].startswith('INSERT INTO "chat_message"')]
    assert len(inserts) == (1 if connection.vendor == "postgresql" else 3)
    ids = [s.pk for s in results]
    assert ids == sorted(ids) and len(set(ids)) == count
    assert contents([results]) == [[str(n) for n in range(count)]]
    assert set(Message.objects.values_list("created_at", flat=True)) == {results[0].created_at}


@pytest.mark.skipif(connection.vendor != "postgresql", reason="arrays are PostgreSQL's")
def test_on_postgresql_a_transactions_statements_are_the_same_for_any_number_of_rooms(
        make_user, monkeypatch):
    """The rooms' lookup, the INSERT and the rooms' UPDATE each send one array per list,
    and the batch's time once: their text and number of parameters do not grow with the
    rooms or the messages (psycopg parses again each statement of over 50 parameters)."""
    alice = make_user("alice")
    names = [f"room-{n}" for n in range(60)]
    store.insert_batches([(name, [message(alice, "first")]) for name in names])
    later = timezone.now() + store.LAST_MESSAGE_AT_STEP * 2
    monkeypatch.setattr(store.timezone, "now", lambda: later)  # every room a step behind
    sent = []
    real = db.DriverCursor.execute

    def execute(self, sql, params):
        sent.append((sql, params))
        return real(self, sql, params)

    monkeypatch.setattr(db.DriverCursor, "execute", execute)

    def statements(rooms: list[str]) -> list[tuple[str, int]]:
        sent.clear()
        store.insert_batches([(name, [message(alice, "a"), message(alice, "b")])
                              for name in rooms])
        return [(sql, len(params)) for sql, params in sent if sql.split()[0] != "BEGIN"
                and sql != "COMMIT"]

    one = statements(names[:1])
    monkeypatch.setattr(store.timezone, "now", lambda: later + store.LAST_MESSAGE_AT_STEP * 2)
    assert statements(names) == one
    assert [sql.split()[0] for sql, _ in one] == ["SELECT", "INSERT", "UPDATE"]
    assert [count for _, count in one] == [2, len(store.INSERT_FIELDS) + 1, 2]
    (insert,) = [params for sql, params in sent if sql.startswith("INSERT")]
    assert sum(isinstance(param, list) for param in insert) == len(store.INSERT_FIELDS)


def test_a_room_deleted_meanwhile_is_made_again(make_user):
    """A room deleted while its members were connected is made again by its next message,
    as a join would make it."""
    alice = make_user("alice")
    store.insert_batch("gone", [message(alice, "before")])
    Room.objects.filter(name="gone").delete()
    (stored,) = store.insert_batch("gone", [message(alice, "after")])
    assert Message.objects.get(pk=stored.pk).room.name == "gone"
    assert not Room.objects.get(name="gone").private


def test_a_failed_batch_stores_nothing(make_user):
    """If one row of the transaction fails, none of the batch is stored."""
    alice = make_user("alice")
    ghost = make_user("ghost")
    ghost.delete()  # the object keeps its pk: its row would break the sender's key
    with pytest.raises(Exception):  # noqa: B017 (the driver's own error, or Django's)
        store.insert_batches([("a", [message(alice, "kept?")]),
                              ("b", [message(ghost, "bad")])])
    assert not Message.objects.exists()


def test_the_batch_bypasses_djangos_cursor_when_nothing_watches(make_user, monkeypatch):
    """With no query log and no execute wrapper, the statements go to the driver's own
    cursor (realtime.db.hot_cursor), not through the ORM's per-statement steps
    (bench/RESULTS.md)."""
    alice = make_user("alice")
    seen = []
    real = CursorWrapper.execute

    def execute(self, sql, params=None):
        seen.append(sql)
        return real(self, sql, params)

    monkeypatch.setattr(CursorWrapper, "execute", execute)
    (stored,) = store.insert_batch("quick", [message(alice, "x")])
    assert seen == []
    assert Message.objects.get(pk=stored.pk).content == "x"
