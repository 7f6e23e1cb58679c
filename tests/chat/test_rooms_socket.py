"""PROTOCOL.md, "Rooms: access, moderation, read state": the chat socket, on a real daphne.

Each test names the sentences it checks. One daphne per test (the database is per
test), so each test covers a paragraph of the contract, refusals included. "Nothing
arrives" is checked with a later frame that must come first (a barrier), not by
waiting. The sentences about several processes are tested in another module.
"""

import asyncio
import json
import time
from datetime import datetime
from types import SimpleNamespace

import pytest

from tests.chat.rooms_live import (
    Http,
    after_messages,
    close_all,
    close_code,
    grant_moderation,
    join,
    nothing_came,
    recv,
    recv_skipping_presence,
    recv_type,
    refusal,
    request,
    say,
    whisper,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.daphne]

USERS = ("alice", "bob", "carol", "mod", "ops")


@pytest.fixture
def team(daphne_server, make_user, token_for):
    """A server, a token and an API caller per user: alice, bob, carol (plain users), mod
    (holds ``chat.moderate_room``), ops (staff)."""
    for name in USERS:
        make_user(name, staff=name == "ops")
    grant_moderation("mod")
    server = daphne_server()
    tokens = {name: token_for(name) for name in USERS}
    return SimpleNamespace(server=server, token=tokens,
                           api={name: Http(server, tokens[name]) for name in USERS})


async def http(team, who: str, method: str, path: str, body=None):
    caller = team.api[who]
    if body is None:
        return await asyncio.to_thread(caller, method, path)
    return await asyncio.to_thread(caller, method, path, body)


async def create(team, owner: str, name: str, *, private: bool, members=()) -> None:
    answer = await http(team, owner, "POST", "/api/rooms", {"name": name, "private": private})
    assert answer.status == 201, answer.raw
    for member in members:
        answer = await http(team, owner, "POST", f"/api/rooms/{name}/members",
                            {"user_id": member})
        assert answer.status == 200, answer.raw


async def ban(team, who: str, room: str, user: str) -> None:
    answer = await http(team, who, "POST", f"/api/rooms/{room}/bans", {"user_id": user})
    assert answer.status == 204, answer.raw


async def enter(team, room: str, who: str, since: int | None = None):
    """``who`` joins ``room``: the socket and its history frame."""
    ws, history, _ = await join(team.server, room, team.token[who], since)
    return ws, history


def assert_time(text: str) -> None:
    assert text.endswith(("Z", "+00:00")), text
    datetime.fromisoformat(text.replace("Z", "+00:00"))


def deleted_frame(frame: dict, room: str, message_id: int) -> None:
    """Exactly {"type": "message_deleted", "room": R, "id": N, "timestamp": T}."""
    assert set(frame) == {"type", "room", "id", "timestamp"}, frame
    assert (frame["type"], frame["room"], frame["id"]) == ("message_deleted", room, message_id)
    assert_time(frame["timestamp"])


def assert_error_frame(frame: dict, code: str) -> None:
    assert set(frame) == {"type", "code", "message"}, frame
    assert (frame["type"], frame["code"]) == ("error", code), frame
    assert isinstance(frame["message"], str) and frame["message"]


def ids_of(messages: list[dict]) -> list[int]:
    return [m["id"] for m in messages]


# --- Access -----------------------------------------------------------------------------------


async def test_a_private_room_closes_outsiders_with_4004_and_no_other_frame(team):
    """A private room is visible to its members and to staff only; for anyone else a
    WebSocket to it is accepted and then closed with 4004, no other frame (a moderator
    who is no member included, and with ?since= too). Staff may read and join every room."""
    await create(team, "alice", "hq", private=True, members=["bob"])
    bob, _ = await enter(team, "hq", "bob")
    said = await say(bob, "members only")
    for outsider in ("carol", "mod"):
        assert await refusal(team.server, "hq", team.token[outsider]) == 4004
        assert await refusal(team.server, "hq", team.token[outsider], since=0) == 4004
    await nothing_came(bob)  # the refused never showed up in the room
    staff, staff_history = await enter(team, "hq", "ops")
    assert ids_of(staff_history["messages"]) == [said["id"]]
    joined = await recv(bob)
    assert (joined["type"], joined["user_id"], joined["users"]) == (
        "user_joined", "ops", ["bob", "ops"])
    owner, owner_history = await enter(team, "hq", "alice")
    assert ids_of(owner_history["messages"]) == [said["id"]]
    await close_all(bob, staff, owner)


async def test_a_banned_user_is_closed_with_4004_until_unbanned(team):
    """A user banned from a room is refused the same way there: 4004 on the socket, no
    other frame; for rooms made by a join or over the API, public or private."""
    await create(team, "alice", "plaza", private=False)
    await create(team, "alice", "den", private=True, members=["carol"])
    bob, _ = await enter(team, "walk-in", "bob")  # made by this join, owner null
    said = await say(bob, "hello")
    await ban(team, "alice", "plaza", "carol")
    await ban(team, "alice", "den", "carol")
    await ban(team, "ops", "walk-in", "carol")
    for room in ("plaza", "den", "walk-in"):
        assert await refusal(team.server, room, team.token["carol"]) == 4004
        assert await refusal(team.server, room, team.token["carol"], since=1) == 4004
    await nothing_came(bob)  # not even a user_joined/user_left of carol

    answer = await http(team, "mod", "DELETE", "/api/rooms/walk-in/bans/carol")
    assert answer.status == 204
    carol, history = await enter(team, "walk-in", "carol")
    assert ids_of(history["messages"]) == [said["id"]]
    await close_all(bob, carol)


async def test_removing_a_member_closes_their_connections_with_4004_at_once(team):
    """Removing a member (by the owner, or the member leaving) closes each of that user's
    connections to the room with 4004 at once; the room then gets user_left as for any last
    connection. Their connections to other rooms stay; a new one to the room gets 4004."""
    await create(team, "alice", "crew", private=True, members=["bob", "carol"])
    alice, _ = await enter(team, "crew", "alice")
    bob1, _ = await enter(team, "crew", "bob")
    bob2, _ = await enter(team, "crew", "bob")
    carol, _ = await enter(team, "crew", "carol")
    elsewhere, _ = await enter(team, "elsewhere", "bob")

    answer = await http(team, "alice", "DELETE", "/api/rooms/crew/members/bob")
    assert answer.status == 204
    started = time.monotonic()
    for ws in (bob1, bob2):
        code, frames = await close_code(ws, timeout=2)
        assert code == 4004
        assert all(f["type"] in {"user_joined", "user_left"} for f in frames), frames
    assert time.monotonic() - started < 2
    for watcher in (alice, carol):
        left = await recv_type(watcher, "user_left")
        assert (left["user_id"], left["users"]) == ("bob", ["alice", "carol"])
        assert_time(left["timestamp"])
    await nothing_came(elsewhere)
    assert await refusal(team.server, "crew", team.token["bob"]) == 4004

    answer = await http(team, "carol", "DELETE", "/api/rooms/crew/members/carol")  # leaving
    assert answer.status == 204
    code, _ = await close_code(carol, timeout=2)
    assert code == 4004
    left = await recv_type(alice, "user_left")
    assert (left["user_id"], left["users"]) == ("carol", ["alice"])
    await nothing_came(alice)  # user_left came once
    await close_all(alice, elsewhere)


async def test_a_ban_closes_the_users_connections_with_4004_at_once(team):
    """Banning a user closes each of that user's connections to the room with 4004 at once,
    public and private rooms, by the owner, staff or a moderator; the room gets user_left."""
    await create(team, "alice", "forum", private=False)
    await create(team, "alice", "club", private=True, members=["bob", "carol"])
    bob, _ = await enter(team, "forum", "bob")
    carol1, _ = await enter(team, "forum", "carol")
    carol2, _ = await enter(team, "forum", "carol")
    club_bob, _ = await enter(team, "club", "bob")
    club_carol, _ = await enter(team, "club", "carol")

    await ban(team, "mod", "forum", "carol")
    started = time.monotonic()
    for ws in (carol1, carol2):
        code, _ = await close_code(ws, timeout=2)
        assert code == 4004
    assert time.monotonic() - started < 2
    left = await recv_type(bob, "user_left")
    assert (left["user_id"], left["users"]) == ("carol", ["bob"])
    await nothing_came(club_carol)  # her connection to another room stays

    await ban(team, "alice", "club", "carol")
    code, _ = await close_code(club_carol, timeout=2)
    assert code == 4004
    left = await recv_type(club_bob, "user_left")
    assert (left["user_id"], left["users"]) == ("carol", ["bob"])

    await ban(team, "ops", "club", "bob")
    code, _ = await close_code(club_bob, timeout=2)
    assert code == 4004
    await nothing_came(bob)
    await close_all(bob)


# --- delete ----------------------------------------------------------------------------------


async def test_the_author_deletes_and_every_connection_gets_message_deleted(team):
    """{"type": "delete", "id": N} by the message's author: every connection to the room that
    could see it gets {"type": "message_deleted", "room": R, "id": N, "timestamp": T}; it is
    gone from every later history frame, API answer and ?since= recovery."""
    alice1, _ = await enter(team, "talk", "alice")
    alice2, _ = await enter(team, "talk", "alice")
    bob, _ = await enter(team, "talk", "bob")
    carol, _ = await enter(team, "talk", "carol")
    first = (await say(alice1, "take this back"))["id"]
    second = (await say(bob, "reply"))["id"]
    third = (await say(alice1, "stays"))["id"]

    await alice1.send(json.dumps({"type": "delete", "id": first}))
    for ws in (alice1, alice2, bob, carol):  # after the messages each had still to read
        deleted_frame(await after_messages(ws, "message_deleted"), "talk", first)

    later, history = await enter(team, "talk", "carol")
    assert ids_of(history["messages"]) == [second, third]
    for since in (0, first - 1, first):
        ws, history = await enter(team, "talk", "bob", since=since)
        assert ids_of(history["messages"]) == [second, third], since
        await ws.close()
    page = await request(later, {"type": "history"})
    assert ids_of(page["messages"]) == [second, third]
    page = await request(later, {"type": "history", "before": second, "limit": 1})
    assert (page["messages"], page["truncated"]) == ([], False)
    answer = await http(team, "bob", "GET", "/api/rooms/talk/messages")
    assert ids_of(answer.body["messages"]) == [second, third]
    answer = await http(team, "bob", "GET", f"/api/rooms/talk/messages?before={second}")
    assert answer.body == {"room": "talk", "messages": [], "truncated": False}

    assert_error_frame(await request(alice1, {"type": "delete", "id": first}), "not_found")
    await close_all(alice1, alice2, bob, carol, later)


async def test_the_owner_staff_and_moderators_delete_anyones_message_others_are_forbidden(team):
    """delete by the room's owner or staff (brief: or a holder of chat.moderate_room) works
    on anyone's message; anyone else gets error forbidden and nothing is deleted."""
    await create(team, "alice", "hall", private=False)
    await create(team, "alice", "backroom", private=True, members=["bob", "carol"])
    for room in ("hall", "backroom"):
        bob, _ = await enter(team, room, "bob")
        carol, _ = await enter(team, room, "carol")
        ids = [(await say(bob, f"{room} {i}"))["id"] for i in range(3)]
        for message_id in ids:
            assert (await recv_type(carol, "message"))["id"] == message_id

        assert_error_frame(await request(carol, {"type": "delete", "id": ids[2]}), "forbidden")
        deleters = [("alice", ids[0]), ("ops", ids[1])]
        if room == "hall":  # mod cannot see the private backroom
            deleters.append(("mod", ids[2]))
        for who, message_id in deleters:  # the first deletion bob hears is alice's
            ws, _ = await enter(team, room, who)
            await ws.send(json.dumps({"type": "delete", "id": message_id}))
            for watcher in (ws, bob, carol):
                deleted_frame(await recv_type(watcher, "message_deleted"), room, message_id)
            await ws.close()
        answer = await http(team, "bob", "GET", f"/api/rooms/{room}/messages")
        assert ids_of(answer.body["messages"]) == ids[len(deleters):]
        await close_all(bob, carol)

    bob, _ = await enter(team, "made-by-join", "bob")  # no owner: only staff and moderators
    carol, _ = await enter(team, "made-by-join", "carol")
    # Presence goes through the layer, a message to this process's members does not: on
    # Redis carol's user_joined could reach bob after his own message, and then come
    # before the pong below.
    assert (await recv_type(bob, "user_joined"))["user_id"] == "carol"
    said = (await say(bob, "mine"))["id"]
    assert (await recv_type(carol, "message"))["id"] == said
    assert_error_frame(await request(carol, {"type": "delete", "id": said}), "forbidden")
    await nothing_came(bob)
    mod, _ = await enter(team, "made-by-join", "mod")
    await mod.send(json.dumps({"type": "delete", "id": said}))
    for watcher in (mod, bob, carol):
        deleted_frame(await recv_type(watcher, "message_deleted"), "made-by-join", said)
    await close_all(bob, carol, mod)


async def test_delete_of_what_the_user_cannot_see_or_that_does_not_exist_is_not_found(team):
    """delete: an id that does not exist, belongs to another room, or that the user cannot
    see gets error not_found; a private message is seen by its sender and target only, so
    only its sender may delete it (the target: forbidden; anyone else, staff and the owner
    included: not_found); its message_deleted goes only to whoever could see it."""
    await create(team, "alice", "here", private=False)
    alice, _ = await enter(team, "here", "alice")
    bob, _ = await enter(team, "here", "bob")
    carol, _ = await enter(team, "here", "carol")
    ops, _ = await enter(team, "here", "ops")
    other, _ = await enter(team, "there", "alice")
    elsewhere = (await say(other, "in another room"))["id"]
    secret = (await whisper(bob, "carol", "between us"))["id"]
    assert (await recv_type(carol, "private"))["id"] == secret

    for ws, message_id in ((alice, elsewhere), (alice, elsewhere + 1000), (alice, secret),
                           (ops, secret), (ops, elsewhere)):
        assert_error_frame(await request(ws, {"type": "delete", "id": message_id}),
                           "not_found")
    assert_error_frame(await request(carol, {"type": "delete", "id": secret}), "forbidden")

    await bob.send(json.dumps({"type": "delete", "id": secret}))
    for ws in (bob, carol):
        deleted_frame(await recv_type(ws, "message_deleted"), "here", secret)
    after = (await say(bob, "after"))["id"]
    for ws in (alice, ops):  # the deletion of a private message they never saw: nothing
        assert (await recv_type(ws, "message"))["id"] == after

    answer = await http(team, "alice", "GET", "/api/rooms/there/messages")
    assert ids_of(answer.body["messages"]) == [elsewhere]  # still there
    await close_all(alice, bob, carol, ops, other)


async def test_delete_and_read_without_a_good_id_are_invalid_message(team):
    """delete and read need a positive integer id (brief: invalid_message otherwise, the
    connection stays)."""
    alice, _ = await enter(team, "strict", "alice")
    said = (await say(alice, "x"))["id"]
    for kind in ("delete", "read"):
        for frame in ({}, {"id": None}, {"id": str(said)}, {"id": 0}, {"id": -1},
                      {"id": 1.5}, {"id": True}, {"id": [said]}):
            answer = await request(alice, {"type": kind, **frame})
            assert_error_frame(answer, "invalid_message")
    await nothing_came(alice)
    await alice.close()


# --- read -------------------------------------------------------------------------------------


async def test_read_moves_the_marker_and_tells_the_users_other_connections(team):
    """{"type": "read", "id": N} moves the user's read marker in the room to N; the user's
    other connections to the room get {"type": "read", "room": R, "id": N} (not the one that
    sent it, nor other users); GET /api/rooms counts unread from it; an N at or below the
    marker changes nothing and sends nothing."""
    alice1, _ = await enter(team, "book", "alice")
    alice2, _ = await enter(team, "book", "alice")
    bob, _ = await enter(team, "book", "bob")
    other_room, _ = await enter(team, "other-book", "alice")
    ids = [(await say(bob, f"b{i}"))["id"] for i in range(4)]
    for ws in (alice1, alice2):
        for message_id in ids:
            assert (await recv_type(ws, "message"))["id"] == message_id

    await alice1.send(json.dumps({"type": "read", "id": ids[1]}))
    assert await recv_skipping_presence(alice2) == {"type": "read", "room": "book", "id": ids[1]}
    await alice1.send(json.dumps({"type": "read", "id": ids[0]}))  # below: nothing
    await alice1.send(json.dumps({"type": "read", "id": ids[1]}))  # at: nothing
    await nothing_came(alice1)  # no echo to the sender, no error
    rooms = (await http(team, "alice", "GET", "/api/rooms")).body["rooms"]
    assert rooms == [{"room": "book", "private": False, "last_id": ids[3], "read_id": ids[1],
                      "unread": 2}]

    await alice2.send(json.dumps({"type": "read", "id": ids[2]}))
    assert await recv_skipping_presence(alice1) == {"type": "read", "room": "book", "id": ids[2]}
    last = (await say(bob, "after the reads"))["id"]
    for ws in (alice1, alice2):  # no other read frame came before this message
        assert (await recv_type(ws, "message"))["id"] == last
    await nothing_came(bob)  # another user hears nothing of alice's reads
    await nothing_came(other_room)  # nor does her connection to another room
    rooms = (await http(team, "alice", "GET", "/api/rooms")).body["rooms"]
    assert rooms == [{"room": "book", "private": False, "last_id": last, "read_id": ids[2],
                      "unread": 2}]

    # A deleted message is no longer visible: not the last_id, not unread; a room whose
    # only message was deleted has no visible message and leaves the list.
    await bob.send(json.dumps({"type": "delete", "id": last}))
    assert (await recv_type(alice1, "message_deleted"))["id"] == last
    only = (await say(other_room, "soon gone"))["id"]
    await other_room.send(json.dumps({"type": "delete", "id": only}))
    assert (await recv_type(other_room, "message_deleted"))["id"] == only
    rooms = (await http(team, "alice", "GET", "/api/rooms")).body["rooms"]
    assert rooms == [{"room": "book", "private": False, "last_id": ids[3], "read_id": ids[2],
                      "unread": 1}]
    await close_all(alice1, alice2, bob, other_room)


async def book_of(team, who: str) -> dict:
    rooms = (await http(team, who, "GET", "/api/rooms")).body["rooms"]
    return next(entry for entry in rooms if entry["room"] == "book")


async def test_read_of_an_id_that_is_not_visible_in_this_room_is_not_found(team):
    """read: N must be a visible id of this room, else not_found (missing, another room's,
    a private message between others, a deleted one); the marker does not move. A private
    message to the user is visible, so it may be read."""
    alice1, _ = await enter(team, "book", "alice")
    alice2, _ = await enter(team, "book", "alice")
    bob, _ = await enter(team, "book", "bob")
    carol, _ = await enter(team, "book", "carol")
    elsewhere_ws, _ = await enter(team, "not-book", "bob")
    elsewhere = (await say(elsewhere_ws, "elsewhere"))["id"]
    gone = (await say(bob, "to be deleted"))["id"]
    await bob.send(json.dumps({"type": "delete", "id": gone}))
    deleted_frame(await recv_type(bob, "message_deleted"), "book", gone)
    between = (await whisper(bob, "carol", "not for alice"))["id"]
    to_alice = (await whisper(bob, "alice", "for alice"))["id"]
    for ws in (alice1, alice2):  # what they still had to read, up to the PRIV to alice
        assert (await after_messages(ws, "message_deleted"))["id"] == gone
        assert (await recv_type(ws, "private"))["id"] == to_alice

    for message_id in (elsewhere, gone, between, to_alice + 1000):
        assert_error_frame(await request(alice1, {"type": "read", "id": message_id}),
                           "not_found")
    await nothing_came(alice2)
    assert (await book_of(team, "alice"))["read_id"] is None

    await alice1.send(json.dumps({"type": "read", "id": to_alice}))
    assert await recv(alice2) == {"type": "read", "room": "book", "id": to_alice}
    assert await book_of(team, "alice") == {"room": "book", "private": False,
                                            "last_id": to_alice, "read_id": to_alice,
                                            "unread": 0}
    await close_all(alice1, alice2, bob, carol, elsewhere_ws)


# --- typing -----------------------------------------------------------------------------------


async def test_typing_reaches_every_other_users_connections_only(team):
    """{"type": "typing"}: every other user's connections to the room get {"type": "typing",
    "room": R, "user_id": U}; not the user's own connections; nothing is stored."""
    alice1, _ = await enter(team, "desk", "alice")
    alice2, _ = await enter(team, "desk", "alice")
    bob1, _ = await enter(team, "desk", "bob")
    bob2, _ = await enter(team, "desk", "bob")
    carol, _ = await enter(team, "desk", "carol")
    bob_elsewhere, _ = await enter(team, "not-desk", "bob")

    await alice1.send(json.dumps({"type": "typing"}))
    for ws in (bob1, bob2, carol):
        assert await recv_skipping_presence(ws) == {"type": "typing", "room": "desk",
                                                    "user_id": "alice"}
    await bob2.send(json.dumps({"type": "typing"}))
    for ws in (alice1, alice2, carol):
        assert await recv_skipping_presence(ws) == {"type": "typing", "room": "desk",
                                                    "user_id": "bob"}
    said = (await say(carol, "a message after the typing"))["id"]
    for ws in (alice1, alice2, bob1, bob2):  # no typing of their own came back
        assert (await recv_type(ws, "message"))["id"] == said
    await nothing_came(bob_elsewhere)

    late, history = await enter(team, "desk", "carol")
    assert ids_of(history["messages"]) == [said]
    answer = await http(team, "alice", "GET", "/api/rooms/desk/messages")
    assert ids_of(answer.body["messages"]) == [said]
    alone, _ = await enter(team, "solo", "alice")
    await alone.send(json.dumps({"type": "typing"}))
    await nothing_came(alone)
    rooms = (await http(team, "alice", "GET", "/api/rooms")).body["rooms"]
    assert [r["room"] for r in rooms] == ["desk"]  # typing is no activity
    assert rooms[0]["last_id"] == said
    await close_all(alice1, alice2, bob1, bob2, carol, bob_elsewhere, late, alone)


async def test_typing_is_relayed_at_most_once_every_2_seconds_per_user_and_room(team):
    """typing is relayed at most once every 2 s per user and room; the extra ones are
    dropped silently (no error), whichever of the user's connections sends them."""
    bob, _ = await enter(team, "desk", "bob")
    bob_other, _ = await enter(team, "desk-2", "bob")
    alice1, _ = await enter(team, "desk", "alice")
    alice2, _ = await enter(team, "desk", "alice")
    alice_other, _ = await enter(team, "desk-2", "alice")
    typing = {"type": "typing", "room": "desk", "user_id": "alice"}

    started = time.monotonic()
    await alice1.send(json.dumps({"type": "typing"}))
    assert await recv_skipping_presence(bob) == typing
    for ws in (alice1, alice1, alice2):
        await ws.send(json.dumps({"type": "typing"}))
    await alice_other.send(json.dumps({"type": "typing"}))  # another room: its own count
    assert await recv_skipping_presence(bob_other) == {"type": "typing", "room": "desk-2",
                                                       "user_id": "alice"}
    await nothing_came(alice1)  # dropped silently: no error
    await nothing_came(alice2)
    said = (await say(alice1, "barrier"))["id"]
    assert time.monotonic() - started < 1.8, "too slow to test the throttle"
    assert (await recv_type(bob, "message"))["id"] == said  # no second typing before it
    assert (await recv_type(alice2, "message"))["id"] == said

    await asyncio.sleep(max(0.0, started + 2.3 - time.monotonic()))
    await alice2.send(json.dumps({"type": "typing"}))
    assert await recv_skipping_presence(bob, timeout=2) == typing
    await close_all(alice1, alice2, alice_other, bob, bob_other)


async def test_rooms_features_send_nothing_new_to_a_plain_public_room_client(team):
    """All of this is additive: a client that uses none of it sees no new frame (a public
    room, made by its first join, works as before)."""
    alice, history = await enter(team, "plain", "alice")
    assert history["messages"] == [] and history["truncated"] is False
    bob, _ = await enter(team, "plain", "bob")
    said = await say(bob, "hi")
    frame = await recv_skipping_presence(alice)
    assert (frame["type"], frame["id"]) == ("message", said["id"])
    await nothing_came(alice)
    answer = await http(team, "alice", "GET", "/api/rooms/plain")
    assert answer.body == {"room": "plain", "private": False, "owner": None, "members": []}
    await close_all(alice, bob)

