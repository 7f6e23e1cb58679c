"""Rooms across processes: two daphne processes sharing Redis and the database.

PROTOCOL.md, "Rooms: access, moderation, read state", the sentences that say
"on every server process" or that a frame reaches "every connection":

* removing a member or banning a user closes each of that user's connections to
  the room with 4004 at once, on every process; the room then gets ``user_left``
  (over HTTP on either process, and from a process that is no daphne: the
  service called directly, and the admin);
* ``message_deleted`` reaches every connection that could see the message, on
  every process, in the room's order (the same place among the messages on every
  connection), also for a deletion made in the admin;
* typing relays across processes, at most once every 2 s per user and room;
* a read marker moved on one process reaches the user's connections on the other.
"""

import asyncio
import json
import time
import urllib.error
import urllib.request

import pytest
import websockets
from django.conf import settings
from websockets.exceptions import ConnectionClosed

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.daphne, pytest.mark.redis]

#: "At once": the removed user's sockets are closed within this long after the answer.
AT_ONCE = 1.0


# --- Helpers ------------------------------------------------------------------------------


async def recv(ws, timeout: float = 10) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def recv_type(ws, kind: str, timeout: float = 10) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        frame = await recv(ws, max(0.1, deadline - time.monotonic()))
        if frame["type"] == kind:
            return frame


async def frames_until_pong(ws, timeout: float = 10) -> list[dict]:
    """Send a ping; every frame that came before its pong."""
    await ws.send(json.dumps({"type": "ping"}))
    frames = []
    while True:
        frame = await recv(ws, timeout)
        if frame == {"type": "pong"}:
            return frames
        frames.append(frame)


async def kinds_until_pong(ws) -> list[str]:
    """The types of the frames before a pong, presence left out."""
    return [frame["type"] for frame in await frames_until_pong(ws)
            if frame["type"] not in {"user_joined", "user_left"}]


async def join(server, room: str, token: str):
    ws = await websockets.connect(f"{server.ws_url}/ws/chat/{room}/?token={token}")
    history = await recv(ws)
    assert history["type"] == "history", history
    joined = await recv(ws)
    assert joined["type"] == "user_joined", joined
    return ws, joined


async def close_code(ws, timeout: float = 10) -> int | None:
    """Read until the server closes; its close code."""
    try:
        while True:
            await asyncio.wait_for(ws.recv(), timeout)
    except ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd else None


def http(method: str, url: str, token: str, body: dict | None = None) -> tuple[int, dict | None]:
    request = urllib.request.Request(
        url, method=method, data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as error:
        raw = error.read()
        return error.code, json.loads(raw) if raw else None


async def api(method: str, server, path: str, token: str, body: dict | None = None):
    return await asyncio.to_thread(http, method, server.url + path, token, body)


def in_a_thread(func):
    """Run ``func`` in a worker thread (``asyncio.to_thread``) and close the database
    connections it opened there, which would otherwise keep PostgreSQL's test database
    from being dropped at the end of the run."""
    import functools

    from django.db import connections

    @functools.wraps(func)
    def run(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        finally:
            connections.close_all()

    return run


@pytest.fixture(params=["core", "pubsub"])
def two_servers(request, daphne_server, redis_url):
    """Two processes on one Redis, with each of the two channel layers (REDIS_LAYER)."""
    env = {"REDIS_URL": redis_url, "REDIS_LAYER": request.param,
           "HUB_HEARTBEAT_SECONDS": "1", "HUB_DEAD_AFTER_SECONDS": "3",
           "WS_RATE_LIMIT": "0"}  # the ordering test sends in bursts
    return daphne_server(**env), daphne_server(**env)


@pytest.fixture
def people(make_user, token_for):
    """Tokens of alice, bob and carol (plain users)."""
    for name in ("alice", "bob", "carol"):
        make_user(name)
    return {name: token_for(name) for name in ("alice", "bob", "carol")}


async def private_room(server, name: str, owner: str, members: list[str], tokens) -> None:
    status, body = await api("POST", server, "/api/rooms", tokens[owner],
                             {"name": name, "private": True})
    assert status == 201, body
    for member in members:
        status, body = await api("POST", server, f"/api/rooms/{name}/members", tokens[owner],
                                 {"user_id": member})
        assert status == 200, body


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


@pytest.fixture
def servers_on_this_layer(daphne_server, redis_url):
    """Two processes on the channel layer this test process uses, so that it can publish
    to them itself (as the admin or a script does)."""
    env = {"REDIS_URL": redis_url, "REDIS_LAYER": settings.REDIS_LAYER,
           "HUB_HEARTBEAT_SECONDS": "1", "HUB_DEAD_AFTER_SECONDS": "3"}
    return daphne_server(**env), daphne_server(**env)


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


# --- message_deleted across processes --------------------------------------------------------


async def events(ws, until_id: int, timeout: float = 10) -> list[tuple[str, int]]:
    """``("message", id)`` and ``("message_deleted", id)`` in the order they arrive, until
    the message ``until_id`` has arrived."""
    seen = []
    deadline = time.monotonic() + timeout
    while True:
        frame = await recv(ws, max(0.1, deadline - time.monotonic()))
        if frame["type"] in {"message", "private", "message_deleted"}:
            seen.append((frame["type"], frame["id"]))
            if frame["type"] != "message_deleted" and frame["id"] == until_id:
                return seen


async def test_a_deletion_reaches_both_processes_in_the_rooms_order(two_servers, people):
    """alice (A) sends m1, then m2 and the deletion of m1 back to back, then m3: every
    connection, on both processes, gets m2, then message_deleted m1, then m3."""
    server_a, server_b = two_servers
    alice, _ = await join(server_a, "del", people["alice"])
    others = [(await join(server, "del", people[name]))[0]
              for server, name in ((server_b, "bob"), (server_a, "carol"), (server_b, "carol"))]
    await alice.send(json.dumps({"type": "message", "content": "m1"}))
    m1 = await recv_type(alice, "message")
    for ws in others:
        assert (await recv_type(ws, "message"))["id"] == m1["id"]

    await alice.send(json.dumps({"type": "message", "content": "m2"}))
    await alice.send(json.dumps({"type": "delete", "id": m1["id"]}))
    await alice.send(json.dumps({"type": "message", "content": "m3"}))
    ids = []
    for _ in range(2):
        frame = await recv_type(alice, "message")
        ids.append(frame["id"])
    m2, m3 = ids
    assert m1["id"] < m2 < m3
    for ws in others:
        got = await events(ws, m3)
        assert got == [("message", m2), ("message_deleted", m1["id"]), ("message", m3)], got
    for ws in (alice, *others):
        await ws.close()


async def test_a_message_from_the_other_process_just_before_a_deletion_comes_first(
        two_servers, people):
    """bob (B) has his message X back; at that moment alice (A) deletes m1. X was in the
    room before the deletion was asked: every connection, on both processes, gets X
    before message_deleted m1 (even those of A, where X may still be on its way)."""
    server_a, server_b = two_servers
    alice, _ = await join(server_a, "race", people["alice"])
    bob, _ = await join(server_b, "race", people["bob"])
    carol_a, _ = await join(server_a, "race", people["carol"])
    carol_b, _ = await join(server_b, "race", people["carol"])
    await alice.send(json.dumps({"type": "message", "content": "m1"}))
    m1 = (await recv_type(alice, "message"))["id"]
    for ws in (bob, carol_a, carol_b):
        assert (await recv_type(ws, "message"))["id"] == m1
    for round_ in range(5):
        await alice.send(json.dumps({"type": "message", "content": f"victim{round_}"}))
        victim = (await recv_type(alice, "message"))["id"]
        await bob.send(json.dumps({"type": "message", "content": f"x{round_}"}))
        while (frame := await recv_type(bob, "message"))["content"] != f"x{round_}":
            pass
        x = frame["id"]
        await alice.send(json.dumps({"type": "delete", "id": victim}))
        for ws in (alice, bob, carol_a, carol_b):
            got = [] if ws is bob else await events(ws, x)  # bob has x already
            assert ("message_deleted", victim) not in got, f"round {round_}: {got}"
            assert (await recv_type(ws, "message_deleted"))["id"] == victim
    for ws in (alice, bob, carol_a, carol_b):
        await ws.close()


async def test_deletions_amid_a_burst_keep_one_order_on_every_connection(two_servers, people):
    """bob (B) and carol (A) send a burst while alice (A, the author) deletes her messages
    one by one: every connection on both processes gets the same sequence of messages and
    deletions, ids rising, and each deletion after the message it deletes."""
    server_a, server_b = two_servers
    alice, _ = await join(server_a, "mix", people["alice"])
    bob, _ = await join(server_b, "mix", people["bob"])
    carol, _ = await join(server_a, "mix", people["carol"])
    watchers = [alice, bob, carol, (await join(server_b, "mix", people["alice"]))[0]]
    mine = []
    for n in range(10):
        await alice.send(json.dumps({"type": "message", "content": f"a{n}"}))
        mine.append((await recv_type(alice, "message"))["id"])

    async def burst(ws, name):
        for n in range(30):
            await ws.send(json.dumps({"type": "message", "content": f"{name}{n}"}))

    async def delete_all():
        for message_id in mine:
            await alice.send(json.dumps({"type": "delete", "id": message_id}))

    await asyncio.gather(burst(bob, "b"), burst(carol, "c"), delete_all())
    # Once one watcher has seen both bursts end and every deletion, all of it has its
    # place in the room's order; alice's "last" comes after all of it.
    observer = watchers[-1]
    observed, waiting = [], {"b29", "c29"}
    while waiting or len([k for k, _ in observed if k == "message_deleted"]) < len(mine):
        frame = await recv(observer)
        if frame["type"] == "message_deleted":
            observed.append(("message_deleted", frame["id"]))
        elif frame["type"] == "message" and frame["id"] > mine[-1]:
            observed.append(("message", frame["id"]))
            waiting.discard(frame["content"])
    await alice.send(json.dumps({"type": "message", "content": "last"}))
    sequences, contents = [], {}
    for ws in watchers:
        seen = observed if ws is observer else []
        while True:
            frame = await recv(ws)
            if frame["type"] == "message_deleted":
                seen.append(("message_deleted", frame["id"]))
            elif frame["type"] == "message" and frame["id"] > mine[-1]:
                seen.append(("message", frame["id"]))
                contents[frame["id"]] = frame["content"]
                if frame["content"] == "last":
                    break
        sequences.append(seen)
    for seen in sequences:
        sent = [item_id for kind, item_id in seen if kind == "message"]
        assert sent == sorted(sent), "ids do not rise"
        assert sorted(i for kind, i in seen if kind == "message_deleted") == mine
        assert len(sent) == 61
        for kind, message_id in seen:
            assert kind == "message" or message_id in mine
    def around_deletions(seen):  # what came just before each deletion
        return [contents.get(seen[i - 1][1], "del") if i else "-"
                for i, (kind, _) in enumerate(seen) if kind == "message_deleted"]
    assert all(seen == sequences[0] for seen in sequences), (
        "connections disagree on the order; before each deletion came "
        f"(on A: alice, carol; on B: bob, alice): {[around_deletions(s) for s in sequences]}")
    for ws in watchers:
        await ws.close()


async def test_an_owner_on_b_deletes_a_message_sent_on_a(two_servers, people):
    """The owner deletes someone else's message from the other process; both processes'
    connections get message_deleted, and it is gone from history on both."""
    server_a, server_b = two_servers
    status, body = await api("POST", server_a, "/api/rooms", people["alice"], {"name": "own"})
    assert status == 201, body
    bob, _ = await join(server_a, "own", people["bob"])
    alice, _ = await join(server_b, "own", people["alice"])
    await bob.send(json.dumps({"type": "message", "content": "oops"}))
    message = await recv_type(bob, "message")
    assert (await recv_type(alice, "message"))["id"] == message["id"]
    await alice.send(json.dumps({"type": "delete", "id": message["id"]}))
    for ws in (alice, bob):
        deleted = await recv_type(ws, "message_deleted")
        assert deleted["id"] == message["id"] and deleted["room"] == "own"
        assert deleted["timestamp"].endswith(("Z", "+00:00"))
        assert set(deleted) == {"type", "room", "id", "timestamp"}
    for server in (server_a, server_b):
        status, body = await api("GET", server, "/api/rooms/own/messages", people["carol"])
        assert status == 200 and body["messages"] == []
    await alice.close()
    await bob.close()


async def test_a_private_deletion_reaches_only_its_two_users_across_processes(two_servers,
                                                                              people):
    """A PRIV from alice (A) to bob (B), deleted by alice: bob's and alice's connections on
    both processes get message_deleted; carol's (on both) get nothing."""
    server_a, server_b = two_servers
    alice, _ = await join(server_a, "pm", people["alice"])
    alice_b, _ = await join(server_b, "pm", people["alice"])
    bob, _ = await join(server_b, "pm", people["bob"])
    carols = [(await join(server, "pm", people["carol"]))[0] for server in (server_a, server_b)]
    await alice.send(json.dumps({"type": "private", "target": "bob", "content": "psst"}))
    private = await recv_type(alice, "private")
    assert (await recv_type(bob, "private"))["id"] == private["id"]
    await alice.send(json.dumps({"type": "delete", "id": private["id"]}))
    for ws in (alice, alice_b, bob):
        assert (await recv_type(ws, "message_deleted"))["id"] == private["id"]
    # A message after the deletion reaches carol: she got nothing before it.
    await alice.send(json.dumps({"type": "message", "content": "public"}))
    for ws in carols:
        frame = await recv_type(ws, "message")
        assert frame["content"] == "public"
        assert "message_deleted" not in await kinds_until_pong(ws)
    for ws in (alice, alice_b, bob, *carols):
        await ws.close()


@in_a_thread
def admin_delete(message_ids: list[int]) -> None:
    """The admin's delete action on messages, from this (non-daphne) process."""
    from django.contrib.auth import get_user_model
    from django.test import Client

    root = get_user_model().objects.create(username="root", is_staff=True, is_superuser=True)
    client = Client()
    client.force_login(root)
    response = client.post("/admin/chat/message/", {
        "action": "delete_selected", "_selected_action": message_ids, "post": "yes"})
    assert response.status_code == 302, response.content[:500]


async def test_an_admin_deletion_reaches_both_processes(servers_on_this_layer, people):
    """Deleting two messages in the admin (another process than either daphne): every
    connection on both processes gets message_deleted for each."""
    server_a, server_b = servers_on_this_layer
    alice, _ = await join(server_a, "adm", people["alice"])
    bob, _ = await join(server_b, "adm", people["bob"])
    ids = []
    for n in range(3):
        await alice.send(json.dumps({"type": "message", "content": f"spam{n}"}))
        ids.append((await recv_type(alice, "message"))["id"])
    for message_id in ids:
        assert (await recv_type(bob, "message"))["id"] == message_id
    await asyncio.to_thread(admin_delete, ids[:2])
    for ws in (alice, bob):
        got = {(await recv_type(ws, "message_deleted", timeout=AT_ONCE + 2))["id"]
               for _ in range(2)}
        assert got == set(ids[:2])
    for server in (server_a, server_b):
        status, body = await api("GET", server, "/api/rooms/adm/messages", people["carol"])
        assert status == 200 and [m["id"] for m in body["messages"]] == ids[2:]
    await alice.close()
    await bob.close()


# --- typing -------------------------------------------------------------------------------


async def test_typing_relays_across_processes_and_not_to_its_sender(two_servers, people):
    """alice types on A: bob's connections on B and A get typing; alice's own do not."""
    server_a, server_b = two_servers
    alice, _ = await join(server_a, "typ", people["alice"])
    alice_b, _ = await join(server_b, "typ", people["alice"])
    bobs = [(await join(server, "typ", people["bob"]))[0] for server in (server_b, server_a)]
    await alice.send(json.dumps({"type": "typing"}))
    for ws in bobs:
        assert await recv_type(ws, "typing", timeout=5) == {
            "type": "typing", "room": "typ", "user_id": "alice"}
    for ws in (alice, alice_b):
        assert "typing" not in await kinds_until_pong(ws)
    for ws in (alice, alice_b, *bobs):
        await ws.close()


async def test_the_typing_throttle_holds_across_processes(two_servers, people):
    """alice types on A, then at once on B: bob gets one typing. 2 s after the first, a
    typing on B is relayed again."""
    server_a, server_b = two_servers
    alice_a, _ = await join(server_a, "thr", people["alice"])
    alice_b, _ = await join(server_b, "thr", people["alice"])
    bob, _ = await join(server_b, "thr", people["bob"])
    bob_a, _ = await join(server_a, "thr", people["bob"])
    await alice_a.send(json.dumps({"type": "typing"}))
    assert (await recv_type(bob, "typing", timeout=2))["user_id"] == "alice"
    # The server took its 2 s turn before this moment: the turn ends before seen + 2.
    seen = time.monotonic()
    await alice_b.send(json.dumps({"type": "typing"}))
    await alice_a.send(json.dumps({"type": "typing"}))
    # Anything relayed from those would have come by now (well within the 2 s).
    await asyncio.sleep(max(0.0, seen + 1.0 - time.monotonic()))
    assert "typing" not in await kinds_until_pong(bob), "the throttle let a second typing through"
    assert (await kinds_until_pong(bob_a)).count("typing") == 1
    await asyncio.sleep(max(0.0, seen + 2.1 - time.monotonic()))
    await alice_b.send(json.dumps({"type": "typing"}))
    for ws in (bob, bob_a):
        assert (await recv_type(ws, "typing", timeout=2))["user_id"] == "alice"
    for ws in (alice_a, alice_b, bob, bob_a):
        await ws.close()


async def test_the_throttle_is_per_user(two_servers, people):
    """alice's throttle does not hold back bob's typing on the other process."""
    server_a, server_b = two_servers
    alice, _ = await join(server_a, "per", people["alice"])
    bob, _ = await join(server_b, "per", people["bob"])
    carol, _ = await join(server_a, "per", people["carol"])
    await alice.send(json.dumps({"type": "typing"}))
    await bob.send(json.dumps({"type": "typing"}))
    got = {(await recv_type(carol, "typing", timeout=3))["user_id"] for _ in range(2)}
    assert got == {"alice", "bob"}
    for ws in (alice, bob, carol):
        await ws.close()


# --- read markers ---------------------------------------------------------------------------


async def test_a_read_marker_moved_on_a_reaches_the_users_socket_on_b(two_servers, people):
    """alice reads up to N on A: her connection on B gets {"type": "read"}, the one that
    sent it does not, bob gets nothing; GET /api/rooms on B counts unread from it."""
    server_a, server_b = two_servers
    alice_a, _ = await join(server_a, "rd", people["alice"])
    alice_b, _ = await join(server_b, "rd", people["alice"])
    bob, _ = await join(server_b, "rd", people["bob"])
    ids = []
    for n in range(3):
        await bob.send(json.dumps({"type": "message", "content": f"n{n}"}))
        ids.append((await recv_type(bob, "message"))["id"])
    for ws in (alice_a, alice_b):
        for message_id in ids:
            assert (await recv_type(ws, "message"))["id"] == message_id

    status, body = await api("GET", server_b, "/api/rooms", people["alice"])
    assert status == 200
    assert body["rooms"] == [{"room": "rd", "private": False, "last_id": ids[-1],
                              "read_id": None, "unread": 3}]
    await alice_a.send(json.dumps({"type": "read", "id": ids[1]}))
    assert await recv_type(alice_b, "read", timeout=AT_ONCE + 1) == {
        "type": "read", "room": "rd", "id": ids[1]}
    assert "read" not in await kinds_until_pong(alice_a)
    assert "read" not in await kinds_until_pong(bob)
    status, body = await api("GET", server_b, "/api/rooms", people["alice"])
    assert body["rooms"] == [{"room": "rd", "private": False, "last_id": ids[-1],
                              "read_id": ids[1], "unread": 1}]
    # An id at or below the marker sends nothing anywhere.
    await alice_b.send(json.dumps({"type": "read", "id": ids[0]}))
    assert "read" not in await kinds_until_pong(alice_b)
    assert "read" not in await kinds_until_pong(alice_a)
    for ws in (alice_a, alice_b, bob):
        await ws.close()


async def test_reads_from_both_processes_leave_the_highest_marker(two_servers, people):
    """alice's connections on two processes read ids at once (odd positions on A, even on
    B): the marker ends at the highest, and B hears of it, since only A read that one."""
    server_a, server_b = two_servers
    alice_a, _ = await join(server_a, "hi", people["alice"])
    alice_b, _ = await join(server_b, "hi", people["alice"])
    bob, _ = await join(server_a, "hi", people["bob"])
    ids = []
    for n in range(6):
        await bob.send(json.dumps({"type": "message", "content": f"n{n}"}))
        ids.append((await recv_type(bob, "message"))["id"])
    await asyncio.gather(*((alice_a if k % 2 else alice_b).send(
        json.dumps({"type": "read", "id": message_id})) for k, message_id in enumerate(ids)))
    heard = []
    while ids[-1] not in heard:  # B hears of the highest marker: only A read it
        heard.append((await recv_type(alice_b, "read", timeout=3))["id"])
    deadline = time.monotonic() + 5
    while True:
        status, body = await api("GET", server_a, "/api/rooms", people["alice"])
        assert status == 200
        if body["rooms"][0]["read_id"] == ids[-1] or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    assert body["rooms"][0]["read_id"] == ids[-1] and body["rooms"][0]["unread"] == 0
    for ws in (alice_a, alice_b, bob):
        await ws.close()
