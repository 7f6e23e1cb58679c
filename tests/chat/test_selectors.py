"""chat.selectors: history pages, read the way the database can answer them at any size."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from chat import selectors
from chat.models import Message, Room

pytestmark = pytest.mark.django_db


def test_a_history_page_reads_the_room_by_its_id(make_user):
    """One query finds the room, the next reads its messages by ``room_id``, not by a join.

    Joined by the room's name, PostgreSQL's planner walked the whole messages table
    backwards by id for a room whose messages were far back (hundreds of
    thousands of rows for one page).
    """
    alice = make_user("alice")
    room = Room.objects.create(name="far")
    Message.objects.create(room=room, sender=alice, content="hi")
    with CaptureQueriesContext(connection) as queries:
        items, truncated = selectors.history_page("far", alice, limit=10)
    assert ([item["content"] for item in items], truncated) == (["hi"], False)
    reads = [query["sql"] for query in queries if "chat_message" in query["sql"]]
    assert len(reads) == 1
    assert '"chat_room"' not in reads[0] and '"room_id" = ' in reads[0]


def test_a_room_that_does_not_exist_reads_no_messages(make_user):
    alice = make_user("alice")
    with CaptureQueriesContext(connection) as queries:
        assert selectors.history_page("nowhere", alice, limit=10) == ([], False)
    assert not [query for query in queries if "chat_message" in query["sql"]]
