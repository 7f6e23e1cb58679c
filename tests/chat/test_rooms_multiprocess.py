"""Rooms across processes: two daphne processes sharing Redis and the database.

PROTOCOL.md, "Rooms: access, moderation, read state": removing a member or banning a
user closes each of that user's connections to the room with 4004 at once, on every
server process; the room then gets ``user_left`` (over HTTP on either process, and from
a process that is no daphne: the service called directly, and the admin).

The rest of the sentences that say "on every server process" are checked in
test_rooms_multiprocess_deletions.py and test_rooms_multiprocess_typing_reads.py.
"""

import asyncio
import time

import pytest
import websockets

from tests.chat.across_processes import (
    AT_ONCE,
    api,
    close_code,
    frames_until_pong,
    in_a_thread,
    join,
    private_room,
    recv_type,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.daphne, pytest.mark.redis]


# --- Removed and banned: 4004 on every process ---------------------------------------------


async def test_a_member_removed_on_a_is_closed_with_4004_on_both_processes(two_servers, people):
    """DELETE members/bob on process A: bob's sockets on A and on B close with 4004 at once;
    the room gets user_left for bob (once), and alice's sockets stay open."""
    server_a, server_b = two_servers
    await private_room(server_a, "team", "alice", ["bob"], people)
    alice, _ = await join(server_a, "team", people["alice"])
    bob_b, _ = await join(server_b, "team", people["bob"])
    bob_a, joined = await join(server_a, "team", people["bob"])
    assert joined["users"] == ["alice", "bob"]
    watcher, _ = await join(server_b, "team", people["alice"])
    assert (await recv_type(alice, "user_joined"))["user_id"] == "bob"

    status, body = await api("DELETE", server_a, "/api/rooms/team/members/bob", people["alice"])
    assert status == 204, body
    answered = time.monotonic()
    codes = await asyncio.gather(close_code(bob_a), close_code(bob_b))
    assert codes == [4004, 4004]
    print(f"removed: both sockets closed {time.monotonic() - answered:.3f} s after the 204")
    assert time.monotonic() - answered < AT_ONCE, "bob's sockets were not closed at once"
    for ws in (alice, watcher):  # both processes announce it, once
        left = await recv_type(ws, "user_left", timeout=AT_ONCE + 1)
        assert left["user_id"] == "bob" and left["users"] == ["alice"]
        assert "user_left" not in [f["type"] for f in await frames_until_pong(ws)]
    # And bob is refused there from now on, on either process.
    for server in (server_a, server_b):
        ws = await websockets.connect(f"{server.ws_url}/ws/chat/team/?token={people['bob']}")
        assert await close_code(ws) == 4004
    await alice.close()
    await watcher.close()


async def test_a_member_leaving_on_b_closes_their_socket_on_a(two_servers, people):
    """A member who removes themselves (DELETE members/<self>) on B is closed on A too."""
    server_a, server_b = two_servers
    await private_room(server_b, "desk", "alice", ["bob"], people)
    alice, _ = await join(server_b, "desk", people["alice"])
    bob, _ = await join(server_a, "desk", people["bob"])
    status, body = await api("DELETE", server_b, "/api/rooms/desk/members/bob", people["bob"])
    assert status == 204, body
    answered = time.monotonic()
    assert await close_code(bob) == 4004
    assert time.monotonic() - answered < AT_ONCE
    left = await recv_type(alice, "user_left", timeout=AT_ONCE + 1)
    assert left["user_id"] == "bob" and left["users"] == ["alice"]
    await alice.close()


async def test_a_member_removed_by_the_service_outside_daphne_is_closed(servers_on_this_layer,
                                                                        people):
    """Removed from the test process itself (as the admin or a script would, on no daphne at
    all): bob's sockets on both processes close with 4004."""
    from django.contrib.auth import get_user_model

    from chat import services

    server_a, server_b = servers_on_this_layer
    await private_room(server_a, "ops", "alice", ["bob"], people)
    alice, _ = await join(server_a, "ops", people["alice"])
    bob_a, _ = await join(server_a, "ops", people["bob"])
    bob_b, _ = await join(server_b, "ops", people["bob"])
    owner = await get_user_model().objects.aget(username="alice")
    remove = getattr(services, "remove_member", None)
    if remove is None:
        pytest.fail("chat.services has no remove_member (the name the brief's core gives)")
    await remove("ops", owner, "bob")
    answered = time.monotonic()
    assert await asyncio.gather(close_code(bob_a), close_code(bob_b)) == [4004, 4004]
    assert time.monotonic() - answered < AT_ONCE
    left = await recv_type(alice, "user_left", timeout=AT_ONCE + 1)
    assert left["user_id"] == "bob"
    await alice.close()


async def test_a_user_banned_on_a_is_closed_with_4004_on_b(two_servers, people):
    """POST bans on A in a public room: carol's sockets on both processes close with 4004 at
    once; the room gets user_left; she is refused on both processes after."""
    server_a, server_b = two_servers
    status, body = await api("POST", server_a, "/api/rooms", people["alice"], {"name": "hall"})
    assert status == 201, body
    alice, _ = await join(server_a, "hall", people["alice"])
    bob, _ = await join(server_b, "hall", people["bob"])
    carol_b, _ = await join(server_b, "hall", people["carol"])
    carol_a, joined = await join(server_a, "hall", people["carol"])
    assert joined["users"] == ["alice", "bob", "carol"]
    elsewhere, _ = await join(server_b, "corridor", people["carol"])  # another room

    status, body = await api("POST", server_a, "/api/rooms/hall/bans", people["alice"],
                             {"user_id": "carol"})
    assert status == 204, body
    answered = time.monotonic()
    assert await asyncio.gather(close_code(carol_a), close_code(carol_b)) == [4004, 4004]
    print(f"banned: both sockets closed {time.monotonic() - answered:.3f} s after the 204")
    assert time.monotonic() - answered < AT_ONCE, "carol's sockets were not closed at once"
    for ws in (alice, bob):
        left = await recv_type(ws, "user_left", timeout=AT_ONCE + 1)
        assert left["user_id"] == "carol" and left["users"] == ["alice", "bob"]
    # Her connection to another room stays.
    assert await frames_until_pong(elsewhere) == []
    await elsewhere.close()
    for server in (server_a, server_b):
        ws = await websockets.connect(f"{server.ws_url}/ws/chat/hall/?token={people['carol']}")
        assert await close_code(ws) == 4004
        status, body = await api("GET", server, "/api/rooms/hall/messages", people["carol"])
        assert status == 404 and body["error"] == "not_found"
    await alice.close()
    await bob.close()


async def test_a_member_banned_from_a_private_room_is_closed_everywhere(two_servers, people):
    """Banning a member of a private room (which also removes them) closes them on B."""
    server_a, server_b = two_servers
    await private_room(server_a, "vault", "alice", ["bob", "carol"], people)
    alice, _ = await join(server_b, "vault", people["alice"])
    bob, _ = await join(server_b, "vault", people["bob"])
    status, body = await api("POST", server_a, "/api/rooms/vault/bans", people["alice"],
                             {"user_id": "bob"})
    assert status == 204, body
    answered = time.monotonic()
    assert await close_code(bob) == 4004
    assert time.monotonic() - answered < AT_ONCE
    assert (await recv_type(alice, "user_left", timeout=AT_ONCE + 1))["user_id"] == "bob"
    status, body = await api("GET", server_b, "/api/rooms/vault", people["alice"])
    assert status == 200 and body["members"] == ["alice", "carol"]
    await alice.close()


@in_a_thread
def admin_change_room(name: str, *, remove_member: str | None = None,
                      ban: str | None = None) -> None:
    """The admin's room change form, saved from this (non-daphne) process: one member's
    inline row deleted, or one ban row added."""
    from django.contrib.auth import get_user_model
    from django.test import Client

    from chat.models import Room, RoomBan, RoomMember

    users = get_user_model().objects
    root, _ = users.get_or_create(username="root", defaults={"is_staff": True,
                                                            "is_superuser": True})
    client = Client()
    client.force_login(root)
    room = Room.objects.get(name=name)
    data = {
        "name": room.name, "owner": room.owner_id or "",
        "created_at_0": room.created_at.strftime("%Y-%m-%d"),
        "created_at_1": room.created_at.strftime("%H:%M:%S"),
        "last_message_at_0": "", "last_message_at_1": "",
    }
    if room.private:
        data["private"] = "on"
    members = list(RoomMember.objects.filter(room=room).order_by("pk"))
    bans = list(RoomBan.objects.filter(room=room).order_by("pk"))
    for prefix, rows, extra in (("memberships", members, None),
                                ("bans", bans, ban)):
        data.update({f"{prefix}-TOTAL_FORMS": len(rows) + (1 if extra else 0),
                     f"{prefix}-INITIAL_FORMS": len(rows),
                     f"{prefix}-MIN_NUM_FORMS": 0, f"{prefix}-MAX_NUM_FORMS": 1000})
        for n, row in enumerate(rows):
            data.update({f"{prefix}-{n}-id": row.pk, f"{prefix}-{n}-room": room.pk,
                         f"{prefix}-{n}-user": row.user_id})
            if prefix == "memberships" and row.user.username == remove_member:
                data[f"{prefix}-{n}-DELETE"] = "on"
        if extra:
            data.update({f"{prefix}-{len(rows)}-room": room.pk,
                         f"{prefix}-{len(rows)}-user": users.get(username=extra).pk})
    response = client.post(f"/admin/chat/room/{room.pk}/change/", data)
    if response.status_code != 302:
        errors = [form.errors for form in [response.context["adminform"].form]]
        errors += [formset.errors for formset in response.context["inline_admin_formsets"]]
        pytest.fail(f"the admin refused the change: {errors}")


async def test_a_member_removed_in_the_admin_is_closed_on_both_processes(
        servers_on_this_layer, people):
    """Deleting bob's member row in the admin (no daphne): his sockets on both processes
    close with 4004 at once, and the room gets user_left."""
    server_a, server_b = servers_on_this_layer
    await private_room(server_a, "adminpriv", "alice", ["bob"], people)
    alice, _ = await join(server_b, "adminpriv", people["alice"])
    bob_a, _ = await join(server_a, "adminpriv", people["bob"])
    bob_b, _ = await join(server_b, "adminpriv", people["bob"])
    await asyncio.to_thread(admin_change_room, "adminpriv", remove_member="bob")
    answered = time.monotonic()
    assert await asyncio.gather(close_code(bob_a), close_code(bob_b)) == [4004, 4004]
    assert time.monotonic() - answered < AT_ONCE
    left = await recv_type(alice, "user_left", timeout=AT_ONCE + 1)
    assert left["user_id"] == "bob" and left["users"] == ["alice"]
    await alice.close()


async def test_a_user_banned_in_the_admin_is_closed_on_both_processes(
        servers_on_this_layer, people):
    """A ban row added in the admin (no daphne): carol's sockets on both processes close
    with 4004 at once; the room gets user_left."""
    server_a, server_b = servers_on_this_layer
    status, body = await api("POST", server_a, "/api/rooms", people["alice"],
                             {"name": "adminpub"})
    assert status == 201, body
    alice, _ = await join(server_a, "adminpub", people["alice"])
    carol_a, _ = await join(server_a, "adminpub", people["carol"])
    carol_b, _ = await join(server_b, "adminpub", people["carol"])
    await asyncio.to_thread(admin_change_room, "adminpub", ban="carol")
    answered = time.monotonic()
    assert await asyncio.gather(close_code(carol_a), close_code(carol_b)) == [4004, 4004]
    assert time.monotonic() - answered < AT_ONCE
    left = await recv_type(alice, "user_left", timeout=AT_ONCE + 1)
    assert left["user_id"] == "carol" and left["users"] == ["alice"]
    await alice.close()
