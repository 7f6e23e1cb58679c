"""The admin pages a moderator uses: chat history, rooms, members and bans."""

import re

import pytest
from channels.db import database_sync_to_async
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from chat.models import Message, Room, RoomBan, RoomMember
from tests.chat.helpers import open_chat, receive_type, send

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


# --- What the admin changes reaches the open connections ------------------------------


async def admin_post(client: Client, path: str, data: dict):
    """A POST through the admin in a worker thread, as the server runs a sync view."""
    response = await database_sync_to_async(client.post)(path, data)
    assert response.status_code == 302, re.findall(rb'class="errorlist[^>]*>(.*?)</ul>',
                                                   response.content)
    return response


async def test_deleting_messages_in_the_admin_removes_them_live(staff_client, bob):
    """The delete action (and the delete page) send message_deleted to the room."""
    chat, history, _ = await open_chat("general", bob)
    ids = [m["id"] for m in history["messages"]]
    await admin_post(staff_client, "/admin/chat/message/", {
        "action": "delete_selected", "_selected_action": ids, "post": "yes"})
    deleted = {(await receive_type(chat, "message_deleted"))["id"] for _ in ids}
    assert deleted == set(ids)
    await send(chat, {"type": "message", "content": "still here"})
    kept = await receive_type(chat, "message")
    await admin_post(staff_client, f"/admin/chat/message/{kept['id']}/delete/", {"post": "yes"})
    gone = await receive_type(chat, "message_deleted")
    assert gone == {"type": "message_deleted", "room": "general", "id": kept["id"],
                    "timestamp": gone["timestamp"]}
    await chat.disconnect()


async def close_code(chat) -> int:
    """The code the connection is closed with (frames before the close are skipped)."""
    while True:
        output = await chat.receive_output(5)
        if output["type"] == "websocket.close":
            return output["code"]


def room_form(room: Room, members: list, bans: list) -> dict:
    """The admin's change form of ``room`` with these member and ban rows."""
    data = {"name": room.name, "private": "on" if room.private else "",
            "owner": room.owner_id or "", "created_at_0": "2026-01-01", "created_at_1": "00:00:00",
            "last_message_at_0": "", "last_message_at_1": ""}
    for prefix, rows in (("memberships", members), ("bans", bans)):
        data[f"{prefix}-TOTAL_FORMS"] = len(rows)
        data[f"{prefix}-INITIAL_FORMS"] = sum(1 for row in rows if row.get("id"))
        data[f"{prefix}-MIN_NUM_FORMS"], data[f"{prefix}-MAX_NUM_FORMS"] = 0, 1000
        for n, row in enumerate(rows):
            for key, value in row.items():
                data[f"{prefix}-{n}-{key}"] = value
            data[f"{prefix}-{n}-room"] = room.pk
    return data


async def test_a_member_removed_or_banned_in_the_admin_is_closed_out(staff_client, bob, carol):
    """Removing a member or banning a user in the admin closes their sockets with 4004."""
    def private_room():
        from django.contrib.auth import get_user_model
        users = get_user_model().objects
        room = Room.objects.create(name="team", private=True, owner=users.get(username="mod"))
        rows = [RoomMember.objects.create(room=room, user=users.get(username=name))
                for name in ("mod", "bob", "carol")]
        return room, rows
    room, rows = await database_sync_to_async(private_room)()
    bob_chat, _, _ = await open_chat("team", bob)
    carol_chat, _, _ = await open_chat("team", carol)
    members = [{"id": row.pk, "user": row.user_id} for row in rows]
    members[1]["DELETE"] = "on"  # bob
    await admin_post(staff_client, f"/admin/chat/room/{room.pk}/change/",
                     room_form(room, members, []))
    assert await close_code(bob_chat) == 4004
    carol_id = rows[2].user_id
    await admin_post(staff_client, f"/admin/chat/room/{room.pk}/change/",
                     room_form(room, [members[0], members[2]], [{"user": carol_id}]))
    assert await close_code(carol_chat) == 4004
    assert not await database_sync_to_async(
        RoomMember.objects.filter(room=room, user_id=carol_id).exists)()


async def test_the_admin_refuses_to_ban_staff_or_the_owner(staff_client):
    """The ban form says why, and nothing is banned."""
    def room_of_mod():
        from django.contrib.auth import get_user_model
        owner = get_user_model().objects.get(username="mod")
        return Room.objects.create(name="owned", owner=owner), owner
    room, owner = await database_sync_to_async(room_of_mod)()
    response = await database_sync_to_async(staff_client.post)(
        f"/admin/chat/room/{room.pk}/change/", room_form(room, [], [{"user": owner.pk}]))
    assert response.status_code == 200
    assert b"cannot be banned" in response.content
    assert not await database_sync_to_async(RoomBan.objects.exists)()
