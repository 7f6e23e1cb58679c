"""chat.selectors: history pages, read the way the database can answer them at any size."""

import random

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from chat import rooms, selectors
from chat.models import Message, Room

pytestmark = pytest.mark.django_db


def test_a_join_reads_the_room_then_its_messages_by_its_id(make_user):
    """One query finds the room, the next reads its messages by ``room_id``, not by a join.

    Joined by the room's name, PostgreSQL's planner walked the whole messages table
    backwards by id for a room whose messages were far back (hundreds of
    thousands of rows for one page).
    """
    alice = make_user("alice")
    room = Room.objects.create(name="far")
    Message.objects.create(room=room, sender=alice, content="hi")
    with CaptureQueriesContext(connection) as queries:
        joined = rooms.join("far", alice, after=None, limit=10)
    assert ([item["content"] for item in joined.items], joined.truncated) == (["hi"], False)
    assert len(queries) == 2
    reads = [query["sql"] for query in queries if "chat_message" in query["sql"]]
    assert len(reads) == 1
    assert '"chat_room"' not in reads[0] and '"room_id" = ' in reads[0]


def test_a_room_that_does_not_exist_reads_no_messages(make_user):
    alice = make_user("alice")
    with CaptureQueriesContext(connection) as queries:
        assert rooms.room_history("nowhere", alice, before=None, limit=10) == ([], False)
    assert not [query for query in queries if "chat_message" in query["sql"]]


@pytest.mark.parametrize("seed", range(5))
def test_pages_hold_exactly_what_each_reader_may_see(make_user, seed):
    """Against the rule itself, on random rooms: the room's messages, plus the private
    ones from or to the reader; the newest ``limit`` in the range, oldest first."""
    rng = random.Random(seed)
    users = [make_user(f"u{n}") for n in range(4)]
    rooms = [Room.objects.create(name=f"r{n}") for n in range(2)]
    for n in range(60):
        recipient = rng.choice([None, None, *users])  # a few to their own sender, too
        Message.objects.create(room=rng.choice(rooms), sender=rng.choice(users),
                               recipient=recipient, content=f"m{n}")
    everything = list(Message.objects.order_by("id"))
    ids = [message.pk for message in everything]
    for _ in range(40):
        reader, room = rng.choice(users), rng.choice(rooms)
        after = rng.choice([None, rng.choice(ids)])
        before = rng.choice([None, rng.choice(ids)])
        limit = rng.choice([1, 3, 10, 100])
        visible = [
            m.content for m in everything
            if m.room_id == room.pk
            and (m.recipient_id is None or reader.pk in (m.sender_id, m.recipient_id))
            and (after is None or m.pk > after) and (before is None or m.pk < before)
        ]
        items, truncated = selectors.history_page(room.pk, room.name, reader, after=after,
                                                  before=before, limit=limit)
        assert [item["content"] for item in items] == visible[-limit:]
        assert truncated == (len(visible) > limit)
