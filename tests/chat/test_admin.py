"""The admin pages a moderator uses for chat history."""

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from chat.models import Message, Room

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def staff_client(make_user):
    admin = make_user("mod", staff=True)
    admin.is_superuser = True
    admin.save()
    client = Client()
    client.force_login(admin)
    alice = make_user("alice")
    room = Room.objects.create(name="general")
    Message.objects.create(room=room, sender=alice, content="buy cheap watches")
    Message.objects.create(room=room, sender=alice, content="hello all")
    return client


@pytest.mark.parametrize("path", ["/admin/chat/room/", "/admin/chat/message/",
                                  "/admin/chat/message/?kind=private", "/admin/chat/room/add/"])
def test_admin_pages_load_for_staff(staff_client, path):
    """Room and message lists and filters load for a staff user."""
    assert staff_client.get(path).status_code == 200


def test_admin_search_finds_content(staff_client):
    """Searching messages by content finds the abusive one only."""
    page = staff_client.get("/admin/chat/message/?q=watches").content.decode()
    assert "buy cheap watches" in page and "hello all" not in page


def test_admin_deletes_selected_messages(staff_client):
    """The delete action removes an abusive message."""
    target = Message.objects.get(content="buy cheap watches")
    response = staff_client.post("/admin/chat/message/", {
        "action": "delete_selected", "_selected_action": [target.pk], "post": "yes",
    })
    assert response.status_code == 302
    assert not Message.objects.filter(pk=target.pk).exists()


def test_admin_is_closed_to_anonymous_users():
    """Anonymous users are sent to the admin login."""
    assert Client().get("/admin/chat/message/").status_code == 302


@pytest.mark.parametrize("path", ["/admin/chat/message/",
                                  "/admin/notifications/notification/"])
def test_big_lists_read_one_page_and_one_count(staff_client, path):
    """No query over every day (date_hierarchy) or every room (a room filter), no second count:
    at the sizes a chat reaches each was a scan of the whole table on every page load."""
    with CaptureQueriesContext(connection) as queries:
        assert staff_client.get(path).status_code == 200
    table = "chat_message" if "chat" in path else "notifications_notification"
    reads = [query["sql"] for query in queries if f'"{table}"' in query["sql"]]
    assert len(reads) == 2, reads  # the page and its count
    assert not any("DISTINCT" in sql for sql in reads)
    assert not any(sql.startswith('SELECT "chat_room"') for sql in
                   (query["sql"] for query in queries)), "the rooms were listed"
