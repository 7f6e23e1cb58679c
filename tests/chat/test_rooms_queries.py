"""What rooms cost the database (issue 19, "Cost"), counted and explained.

* ``GET /api/rooms`` answers in one or two queries whatever the number of rooms
  (counted on a database of 1,000 rooms, public and private).
* ``unread`` counts come from indexes, not scans: the plan of every statement the
  endpoint runs searches the message table by its ``(room, id)`` index.
* A join to a private room costs at most one indexed query more than a join to
  a public one.

The server runs its queries on its database thread (``realtime.db.run``), so
statements are counted at Django's cursor, whatever thread runs them.
"""

import contextlib
import re

import pytest
from django.db import connection, transaction
from django.db.backends.utils import CursorWrapper
from django.test import Client

from chat.models import Message, ReadMarker, Room, RoomBan, RoomMember
from tests.chat.helpers import open_chat

pytestmark = pytest.mark.django_db(transaction=True)

#: Statements that are bookkeeping of a connection, not a question to the database.
HOUSEKEEPING = re.compile(r"^\s*(PRAGMA|SAVEPOINT|RELEASE|ROLLBACK|BEGIN|COMMIT|SET )", re.I)


@contextlib.contextmanager
def statements():
    """Every statement run through a Django cursor meanwhile, on any thread: ``(sql, params)``."""
    seen: list[tuple[str, object]] = []
    original = CursorWrapper._execute_with_wrappers

    def spy(self, sql, params, many, executor):
        if not HOUSEKEEPING.match(sql):
            seen.append((sql, params))
        return original(self, sql, params, many, executor)

    CursorWrapper._execute_with_wrappers = spy
    try:
        yield seen
    finally:
        CursorWrapper._execute_with_wrappers = original


def touches(sql: str, table: str) -> bool:
    return f'"{table}"' in sql or re.search(rf"\b{table}\b", sql) is not None


def build_rooms(count: int, reader, others) -> dict:
    """``count`` rooms, half public and half private, three messages each (one of them
    private to ``reader`` in every fourth room); ``reader`` is a member of half the
    private rooms, banned from a tenth of the public ones, and has read markers in
    half the rooms. Returns what ``GET /api/rooms`` should list for ``reader``."""
    other, third = others
    rooms = Room.objects.bulk_create(
        Room(name=f"r{n:05d}", private=n % 2 == 1, owner=other if n % 2 else None)
        for n in range(count)
    )
    messages = []
    for n, room in enumerate(rooms):
        messages += [
            Message(room=room, sender=other, content=f"{room.name} one"),
            Message(room=room, sender=reader, content=f"{room.name} two"),
            Message(room=room, sender=third, content=f"{room.name} three",
                    recipient=reader if n % 4 == 0 else None),
        ]
    Message.objects.bulk_create(messages)
    messages = list(Message.objects.order_by("id"))  # ids on every database
    by_room: dict[int, list[Message]] = {}
    for message in messages:
        by_room.setdefault(message.room_id, []).append(message)
    members, bans, markers = [], [], []
    for n, room in enumerate(rooms):
        if room.private:
            members.append(RoomMember(room=room, user=other))
            if n % 4 == 1:
                members.append(RoomMember(room=room, user=reader))
        elif n % 20 == 0:
            bans.append(RoomBan(room=room, user=reader))
        if n % 3 != 2:
            markers.append(ReadMarker(user=reader, room=room,
                                      message_id=by_room[room.pk][n % 3].pk))
    RoomMember.objects.bulk_create(members)
    RoomBan.objects.bulk_create(bans)
    ReadMarker.objects.bulk_create(markers)
    member_of = {m.room_id for m in members if m.user_id == reader.pk}
    banned = {b.room_id for b in bans}
    read = {m.room_id: m.message_id for m in markers}
    expected = {}
    for room in rooms:
        if room.pk in banned or (room.private and room.pk not in member_of):
            continue
        visible = [m for m in by_room[room.pk]
                   if m.recipient_id is None or reader.pk in (m.sender_id, m.recipient_id)]
        after = read.get(room.pk) or 0
        expected[room.name] = {
            "room": room.name, "private": room.private, "last_id": visible[-1].pk,
            "read_id": read.get(room.pk),
            "unread": sum(1 for m in visible if m.pk > after and m.sender_id != reader.pk),
        }
    return expected


@pytest.fixture
def users(make_user):
    return make_user("alice"), make_user("bob"), make_user("carol")


def list_rooms(token: str) -> tuple[list[dict], list[tuple[str, object]]]:
    client = Client()
    with statements() as seen:
        response = client.get("/api/rooms", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.status_code == 200, response.content
    return response.json()["rooms"], seen


def room_statements(seen) -> list[str]:
    """The statements of the answer itself (not the token's user lookup)."""
    return [sql for sql, _ in seen if "chat_" in sql]


def test_listing_1000_rooms_is_one_or_two_queries(users, token_for):
    """1,000 rooms (public and private, with bans, members, markers): at most two queries
    read them, and as many as for ten rooms."""
    alice, bob, carol = users
    token = token_for("alice")
    expected = build_rooms(10, alice, (bob, carol))
    rooms, seen = list_rooms(token)
    assert {room["room"]: room for room in rooms} == expected
    few = room_statements(seen)

    Room.objects.all().delete()
    expected = build_rooms(1000, alice, (bob, carol))
    rooms, seen = list_rooms(token)
    many = room_statements(seen)
    print(f"GET /api/rooms, 1000 rooms: {len(many)} room queries, {len(seen)} in all")
    assert len(rooms) == len(expected) > 400
    assert {room["room"]: room for room in rooms} == expected
    # newest activity first
    assert [room["last_id"] for room in rooms] == sorted(
        (room["last_id"] for room in rooms), reverse=True)
    assert 1 <= len(many) <= 2, many
    assert len(many) == len(few)
    # Besides them, at most the token's user is looked up.
    assert len(seen) - len(many) <= 1, seen


def test_a_staff_user_lists_1000_rooms_in_one_or_two_queries(users, make_user, token_for):
    """Staff see every room with a visible message, private ones included: still two queries
    at most."""
    alice, bob, carol = users
    make_user("root", staff=True)
    build_rooms(1000, alice, (bob, carol))
    rooms, seen = list_rooms(token_for("root"))
    assert len(rooms) == 1000
    assert 1 <= len(room_statements(seen)) <= 2, room_statements(seen)


def plan_of(sql: str, params) -> str:
    """The database's plan of ``sql`` (one line per step)."""
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            cursor.execute("EXPLAIN QUERY PLAN " + sql, params)
            return "\n".join(row[-1] for row in cursor.fetchall())
        cursor.execute("ANALYZE")
        with transaction.atomic():
            # Small test tables: without this any plan may be a scan.
            cursor.execute("SET LOCAL enable_seqscan = off")
            cursor.execute("EXPLAIN " + sql, params)
            return "\n".join(row[0] for row in cursor.fetchall())


def steps_on(plan: str, table: str) -> list[str]:
    """The steps of ``plan`` that read ``table``: by its name, or (SQLite, where Django's
    subqueries alias tables U0, U1...) by the name of the index they use, which starts
    with the table's (``chat_message_room_id``, ``sqlite_autoindex_chat_roomban_1``)."""
    if connection.vendor == "sqlite":
        return [line for line in plan.splitlines()
                if line.startswith(("SEARCH", "SCAN"))
                and (re.search(rf"^(SEARCH|SCAN) {table}\b", line)
                     or re.search(rf"INDEX (sqlite_autoindex_)?{table}_", line))]
    return [line for line in plan.splitlines() if re.search(rf"\bon {table}\b", line)]


def scans(plan: str, *, allowed: tuple[str, ...] = ()) -> list[str]:
    """Steps of ``plan`` that read a whole table (other than ``allowed`` tables)."""
    if connection.vendor == "sqlite":
        found = [line for line in plan.splitlines() if line.startswith("SCAN")]
        return [line for line in found
                if not any(re.match(rf"SCAN {table}\b", line) for table in allowed)]
    found = [line for line in plan.splitlines() if "Seq Scan on" in line]
    return [line for line in found
            if not any(re.search(rf"Seq Scan on {table}\b", line) for table in allowed)]


def conditions(plan: str, step: str) -> str:
    """PostgreSQL: the ``Index Cond`` / ``Recheck Cond`` lines under ``step``."""
    lines = plan.splitlines()
    at = lines.index(step)
    found = []
    for line in lines[at + 1:]:
        if "->" in line or "SubPlan" in line or "InitPlan" in line:
            break
        if "Index Cond" in line or "Recheck Cond" in line:
            found.append(line.strip())
    return " ".join(found)


def assert_searched_by_index(plan: str, table: str, *, key: str | None = None) -> list[str]:
    """Every step of ``plan`` on ``table`` is an index search (with ``key``: a search on
    that column, not a walk of a whole index); returns those steps."""
    steps = steps_on(plan, table)
    for step in steps:
        if connection.vendor == "sqlite":
            assert step.startswith("SEARCH"), f"{table} scanned:\n{plan}"
            if key:
                assert f"{key}=?" in step, f"{table} not searched by {key}:\n{plan}"
        else:
            assert "Seq Scan" not in step, f"{table} scanned:\n{plan}"
            assert "Index" in step or "Bitmap Heap Scan" in step, f"{table}:\n{plan}"
            if key:
                assert re.search(rf"\b{key} = ", conditions(plan, step)), (
                    f"{table} not searched by {key}:\n{plan}")
    return steps


def test_unread_counts_come_from_indexes(users, token_for):
    """The plan of each statement of ``GET /api/rooms`` reads messages, members, bans and
    markers by their indexes: messages by room, and the unread count by the ids after
    the marker (a range of the ``(room, id)`` index), never by a scan."""
    alice, bob, carol = users
    build_rooms(1000, alice, (bob, carol))
    _, seen = list_rooms(token_for("alice"))
    reads = [(sql, params) for sql, params in seen if "chat_message" in sql]
    assert reads, seen
    ranges = 0
    for sql, params in reads:
        plan = plan_of(sql, params)
        print(plan)
        # The rooms themselves are listed (every public one may be in the answer);
        # nothing else is read whole.
        assert not scans(plan, allowed=("chat_room",)), plan
        steps = assert_searched_by_index(plan, "chat_message", key="room_id")
        assert steps, plan
        for table in ("chat_readmarker", "chat_roommember", "chat_roomban"):
            assert_searched_by_index(plan, table)
        if connection.vendor == "sqlite":
            ranges += sum(1 for step in steps
                          if re.search(r"room_id=\? AND (row)?id>\?", step))
        else:
            ranges += sum(1 for step in steps
                          if re.search(r"room_id = .* AND \(id > ", conditions(plan, step)))
    assert ranges >= 1, "the unread count does not walk the ids after the marker"


def test_the_unread_plan_holds_on_a_room_with_a_long_history(users, token_for):
    """With one room of 5,000 messages next to 999 small ones the count still searches
    the room's ids after the marker (the planner sees a skewed table)."""
    alice, bob, carol = users
    build_rooms(999, alice, (bob, carol))
    big = Room.objects.create(name="big")
    Message.objects.bulk_create(Message(room=big, sender=bob, content=f"b{n}")
                                for n in range(5000))
    marker = Message.objects.filter(room=big).order_by("id")[4990]
    ReadMarker.objects.create(user=alice, room=big, message_id=marker.pk)
    rooms, seen = list_rooms(token_for("alice"))
    assert rooms[0]["room"] == "big" and rooms[0]["unread"] == 9
    for sql, params in seen:
        if "chat_message" in sql:
            plan = plan_of(sql, params)
            assert not scans(plan, allowed=("chat_room",)), plan
            assert_searched_by_index(plan, "chat_message", key="room_id")


# --- The cost of a join -----------------------------------------------------------------


async def join_statements(room: str, token: str) -> list[tuple[str, object]]:
    """The statements of one join, from the handshake to ``user_joined``."""
    with statements() as seen:
        chat, _, _ = await open_chat(room, token)
    await chat.disconnect()
    return seen


def make_join_rooms(alice, bob):
    for name, private in (("warm", False), ("pub", False), ("priv", True)):
        room = Room.objects.create(name=name, private=private, owner=bob if private else None)
        if private:
            RoomMember.objects.bulk_create([RoomMember(room=room, user=bob),
                                            RoomMember(room=room, user=alice)])
        Message.objects.bulk_create(Message(room=room, sender=bob, content=f"m{n}")
                                    for n in range(60))
    # Other rooms' members and bans, so that an index is what finds alice's rows.
    for n in range(200):
        other = Room.objects.create(name=f"other{n}", private=n % 2 == 0)
        RoomMember.objects.create(room=other, user=bob)
        RoomBan.objects.create(room=other, user=alice if n % 2 else bob)


async def test_a_private_join_costs_at_most_one_indexed_query_more(users, token_for):
    """Joining a private room (as a member) against joining a public one, both with a
    history: at most one statement more, and the statements that check membership and
    bans search their indexes."""
    from asgiref.sync import sync_to_async

    alice, bob, _ = users
    await sync_to_async(make_join_rooms)(alice, bob)
    token = token_for("alice")
    await join_statements("warm", token)  # the token's user, caches of the process
    public = await join_statements("pub", token)
    private = await join_statements("priv", token)
    print(f"join: public {len(public)} statements, private {len(private)}")
    for sql, _ in private:
        print("  ", sql[:200])
    assert len(private) - len(public) <= 1, (public, private)
    checks = [(sql, params) for sql, params in private
              if touches(sql, "chat_roommember") or touches(sql, "chat_roomban")]
    assert checks, "no statement of the private join checks membership"
    for sql, params in checks:
        plan = await sync_to_async(plan_of)(sql, params)
        assert not scans(plan), f"a join reads a table whole:\n{plan}"
        for table in ("chat_roommember", "chat_roomban"):
            if touches(sql, table):
                assert assert_searched_by_index(plan, table), plan


async def test_the_joins_database_call_counts_the_same_for_public_and_private(
        users, token_for, make_user, monkeypatch):
    """The one database call a join makes (``chat.rooms.join``, run by the consumer through
    ``chat.services.join``), counted on the thread that runs it: a member's join to a private
    room, a staff user's, and a refused one cost no more than one query over a public join."""
    from asgiref.sync import sync_to_async
    from django.db import connections
    from django.test.utils import CaptureQueriesContext

    from chat import rooms

    alice, bob, _ = users
    await sync_to_async(make_join_rooms)(alice, bob)
    await sync_to_async(make_user)("root", staff=True)
    await sync_to_async(make_user)("dave")
    counted: list[tuple[str, int, list[str]]] = []
    original = rooms.join

    def join(name, user, **kwargs):
        with CaptureQueriesContext(connections["default"]) as queries:
            joined = original(name, user, **kwargs)
        counted.append((name, len(queries), [q["sql"] for q in queries]))
        return joined

    monkeypatch.setattr(rooms, "join", join)
    await join_statements("warm", token_for("alice"))
    cost = {}
    for label, room, who in (("public", "pub", "alice"), ("private member", "priv", "alice"),
                             ("private staff", "priv", "root"), ("public staff", "pub", "root")):
        counted.clear()
        await join_statements(room, token_for(who))
        ((_, cost[label], _),) = counted
    counted.clear()
    chat, _, _ = await open_chat("priv", token_for("dave"), join=False)  # refused: 4004
    assert (await chat.receive_output(5))["code"] == 4004
    ((_, cost["private refused"], _),) = counted
    print("queries of the join's database call:", cost)
    assert cost["private member"] <= cost["public"] + 1, cost
    assert cost["private staff"] <= cost["public staff"] + 1, cost
    assert cost["private refused"] <= cost["public"], cost
