"""The chat endpoint, frame by frame, as PROTOCOL.md describes it."""

import asyncio
import json

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from chat import fanout, presence, store
from chat.models import Message, Room
from chat.sequencer import RoomsWriter
from project.asgi import application
from realtime import consumers
from realtime.hub import get_hub
from tests.chat.helpers import open_chat, receive, receive_type, request, send
from tests.conftest import wait_for
from tests.realtime.support import hold

pytestmark = pytest.mark.django_db(transaction=True)


def store_messages(room: str, username: str, count: int,
                   recipient: str | None = None) -> list[int]:
    from django.contrib.auth import get_user_model

    users = get_user_model().objects
    room_row, _ = Room.objects.get_or_create(name=room)
    sender = users.get(username=username)
    target = users.get(username=recipient) if recipient else None
    return [
        Message.objects.create(room=room_row, sender=sender, recipient=target,
                               content=f"m{i}").pk
        for i in range(count)
    ]


# --- Joining -------------------------------------------------------------------


async def test_join_sends_empty_history_then_user_joined(alice):
    """A first visit gets an empty history, then user_joined listing the user."""
    chat, history, joined = await open_chat("lobby", alice)
    assert history == {"type": "history", "room": "lobby", "messages": [], "truncated": False}
    assert joined["user_id"] == "alice" and joined["users"] == ["alice"]
    assert joined["timestamp"].endswith(("Z", "+00:00"))
    await chat.disconnect()


async def test_history_on_join_is_the_last_50_oldest_first(alice):
    """With 55 stored messages, history holds the newest 50, oldest first, truncated."""
    ids = await database_sync_to_async(store_messages)("big", "alice", 55)
    chat, history, _ = await open_chat("big", alice)
    assert [m["id"] for m in history["messages"]] == ids[-50:]
    assert history["truncated"] is True
    first = history["messages"][0]
    assert set(first) == {"type", "id", "room", "user_id", "content", "timestamp"}
    assert first["type"] == "message" and first["user_id"] == "alice" and first["room"] == "big"
    await chat.disconnect()


async def test_since_returns_everything_after_the_id(alice):
    """?since=ID gives every visible message with id > ID, not truncated."""
    ids = await database_sync_to_async(store_messages)("since", "alice", 60)
    chat, history, _ = await open_chat("since", alice, since=ids[4])
    assert [m["id"] for m in history["messages"]] == ids[5:]
    assert history["truncated"] is False
    await chat.disconnect()


async def test_since_is_capped_at_1000_newest(alice):
    """More than 1000 messages after since: the newest 1000, truncated."""
    ids = await database_sync_to_async(store_messages)("flood", "alice", 1003)
    chat, history, _ = await open_chat("flood", alice, since=0)
    assert [m["id"] for m in history["messages"]] == ids[-1000:]
    assert history["truncated"] is True
    await chat.disconnect()


async def test_empty_since_counts_as_absent(alice):
    """An empty since= behaves like no since: the last 50."""
    ids = await database_sync_to_async(store_messages)("emptysince", "alice", 3)
    chat, history, _ = await open_chat("emptysince", alice, since="")
    assert [m["id"] for m in history["messages"]] == ids
    await chat.disconnect()


@pytest.mark.parametrize("since", ["-1", "abc", "1.5", "+3", "%20" + "3", "٣"])
async def test_bad_since_is_refused_at_the_handshake(alice, since):
    """A since that is not a plain decimal integer >= 0 refuses the handshake."""
    communicator = WebsocketCommunicator(application, f"/ws/chat/r/?token={alice}&since={since}")
    connected, _ = await communicator.connect()
    assert not connected
    await communicator.disconnect()


@pytest.mark.parametrize("path", ["/ws/chat/has space/", "/ws/chat/" + "x" * 65 + "/",
                                  "/ws/chat/dot.ted/", "/ws/chat//", "/ws/chat/a/b/", "/ws/nope/"])
async def test_invalid_room_names_are_refused_at_the_handshake(alice, path):
    """Paths outside the room pattern are refused before accept."""
    communicator = WebsocketCommunicator(application, f"{path}?token={alice}")
    connected, _ = await communicator.connect()
    assert not connected
    await communicator.disconnect()


async def test_longest_room_name_is_accepted(alice):
    """A 64-character room name is valid."""
    chat, history, _ = await open_chat("r" * 64, alice)
    assert history["room"] == "r" * 64
    await chat.disconnect()


async def test_no_credentials_close_4003_without_frames():
    """Without a token or session the connection is accepted then closed with 4003."""
    communicator = WebsocketCommunicator(application, "/ws/chat/lobby/")
    connected, _ = await communicator.connect()
    assert connected
    assert await communicator.receive_output(timeout=2) == {"type": "websocket.close",
                                                            "code": 4003}
    await communicator.disconnect()


# --- Presence ------------------------------------------------------------------


async def test_second_user_joining_is_announced_to_the_room(alice, bob):
    """When bob joins, alice gets user_joined with both users, sorted."""
    a, _, _ = await open_chat("pres", alice)
    b, _, joined = await open_chat("pres", bob)
    assert joined["users"] == ["alice", "bob"]
    seen = await receive(a)
    assert seen["type"] == "user_joined" and seen["user_id"] == "bob"
    assert seen["users"] == ["alice", "bob"]
    await b.disconnect()
    left = await receive(a)
    assert left["type"] == "user_left" and left["user_id"] == "bob" and left["users"] == ["alice"]
    await a.disconnect()


async def test_two_tabs_count_once_and_leave_after_the_last(alice, bob):
    """A second tab gets user_joined alone; user_left comes only after both tabs close."""
    b, _, _ = await open_chat("tabs", bob)
    tab1, _, _ = await open_chat("tabs", alice)
    assert (await receive(b))["user_id"] == "alice"
    tab2, _, joined = await open_chat("tabs", alice)
    assert joined["users"] == ["alice", "bob"]
    assert await b.receive_nothing(timeout=0.3)
    assert await tab1.receive_nothing(timeout=0.1), await tab1.receive_from()
    await tab1.disconnect()
    assert await b.receive_nothing(timeout=0.3)
    await tab2.disconnect()
    left = await receive(b)
    assert left == {**left, "type": "user_left", "user_id": "alice", "users": ["bob"]}
    await b.disconnect()


async def hold_presence(monkeypatch, method: str, *, after_call: bool):
    """Make this process's presence ``method`` (``room_join``, ``room_leave``) stop at a
    gate (:func:`tests.realtime.support.hold`)."""
    present = type(presence.of((await get_hub()).registry))
    return hold(monkeypatch, present, method, after_call=after_call)


@pytest.mark.parametrize("cancelled", ["while it leaves", "before it reads its close"])
async def test_a_connection_the_server_cancels_still_leaves_the_room(alice, bob, monkeypatch,
                                                                     cancelled):
    """daphne cancels an application whose close takes longer than its close timeout (a
    backlog after thousands of sockets closed at once), whether or not it has read its
    disconnect yet. The connection still leaves: the room gets user_left, and its users
    no longer list it."""
    b, _, _ = await open_chat("cut", bob)
    a, _, _ = await open_chat("cut", alice)
    assert (await receive(b))["user_id"] == "alice"
    entered, gate = await hold_presence(monkeypatch, "room_leave", after_call=False)
    if cancelled == "while it leaves":
        await a.send_input({"type": "websocket.disconnect", "code": 1001})
        await asyncio.wait_for(entered.wait(), 5)
    a.future.cancel()  # what daphne's application checker does
    gate.set()
    left = await receive(b)
    assert left == {**left, "type": "user_left", "user_id": "alice", "users": ["bob"]}
    tab, _, joined = await open_chat("cut", bob)
    assert joined["users"] == ["bob"]
    await tab.disconnect()
    await b.disconnect()


async def test_a_connection_the_server_cancels_while_it_joins_leaves_no_user_behind(
        alice, bob, monkeypatch):
    """Cancelled once the room's presence holds it but before its user_joined went out,
    a connection is taken out of the presence again: the room's users do not keep it."""
    b, _, _ = await open_chat("cut", bob)
    entered, gate = await hold_presence(monkeypatch, "room_join", after_call=True)
    a, _, _ = await open_chat("cut", alice, join=False)
    await asyncio.wait_for(entered.wait(), 5)
    a.future.cancel()  # what daphne's application checker does
    gate.set()
    monkeypatch.undo()  # bob's next tab joins without the gate
    left = await receive(b)  # the room never saw alice join, but it did hold her
    assert left == {**left, "type": "user_left", "user_id": "alice", "users": ["bob"]}
    tab, _, joined = await open_chat("cut", bob)
    assert joined["users"] == ["bob"]
    await tab.disconnect()
    await b.disconnect()


async def test_leaving_a_room_one_never_joined_announces_nothing(bob):
    """A leave of a connection the room's presence does not hold changes nothing: no
    user_left, even for a user who is there with another connection."""
    b, _, _ = await open_chat("quiet", bob)
    room_presence = presence.of((await get_hub()).registry)
    change = await room_presence.room_leave("quiet", "no-such-connection")
    assert change.user_present
    joined = await room_presence.room_join("quiet", "another-connection", "carol")
    assert joined.users == ["bob", "carol"]
    await room_presence.room_leave("quiet", "another-connection")
    await b.disconnect()


# --- Messages ------------------------------------------------------------------


async def test_message_is_stored_then_sent_to_the_whole_room(alice, bob):
    """A message reaches every member, sender included; ref only in the sender's copy."""
    a, _, _ = await open_chat("talk", alice)
    b, _, _ = await open_chat("talk", bob)
    await receive(a)  # bob joined
    mine = await request(a, {"type": "message", "content": "hello", "ref": "c1"})
    theirs = await receive(b)
    assert mine["ref"] == "c1"
    assert {k: v for k, v in mine.items() if k != "ref"} == theirs
    assert theirs["type"] == "message" and theirs["content"] == "hello"
    assert theirs["user_id"] == "alice" and theirs["room"] == "talk"
    stored = await Message.objects.aget(pk=theirs["id"])
    assert stored.content == "hello" and stored.recipient_id is None
    await a.disconnect()
    await b.disconnect()


def held_store(monkeypatch) -> tuple[asyncio.Event, asyncio.Event, list[list[int]]]:
    """Hold the rooms' transactions at a gate (``entered``, ``gate``), and record each
    transaction's batch sizes, one per room."""
    entered, gate = hold(monkeypatch, RoomsWriter, "store", after_call=False)
    sizes: list[list[int]] = []
    real = store.insert_batches

    def insert_batches(batches):
        sizes.append([len(batch) for _, batch in batches])
        return real(batches)

    monkeypatch.setattr(store, "insert_batches", insert_batches)
    return entered, gate, sizes


async def test_a_connections_next_messages_are_read_while_its_last_is_stored(
        alice, monkeypatch):
    """While a connection's message waits for its transaction, its next messages are read
    and queued behind it: they are stored together, in the order sent, and each one
    comes back to the sender, in that order."""
    a, _, _ = await open_chat("busy", alice)
    entered, gate, sizes = held_store(monkeypatch)
    local = fanout.local_rooms(await get_hub())["busy"]
    await send(a, {"type": "message", "content": "m0", "ref": "r0"})
    await asyncio.wait_for(entered.wait(), 5)
    for n in (1, 2):
        await send(a, {"type": "message", "content": f"m{n}", "ref": f"r{n}"})
    await wait_for(lambda: len(local.sequencer.queue) == 2)
    gate.set()
    echoes = [await receive_type(a, "message") for _ in range(3)]
    assert [echo["ref"] for echo in echoes] == ["r0", "r1", "r2"]
    assert [echo["id"] for echo in echoes] == sorted(echo["id"] for echo in echoes)
    assert sizes == [[1], [2]]
    await a.disconnect()


async def test_a_connection_has_at_most_max_frames_in_flight(alice, monkeypatch):
    """Past MAX_FRAMES_IN_FLIGHT messages being stored, the connection's next frame waits
    for the oldest; every message is still stored, in order."""
    monkeypatch.setattr(consumers, "MAX_FRAMES_IN_FLIGHT", 3)
    a, _, _ = await open_chat("capped", alice)
    entered, gate, sizes = held_store(monkeypatch)
    local = fanout.local_rooms(await get_hub())["capped"]
    await send(a, {"type": "message", "content": "m0", "ref": "r0"})
    await asyncio.wait_for(entered.wait(), 5)
    for n in range(1, 6):
        await send(a, {"type": "message", "content": f"m{n}", "ref": f"r{n}"})
    await wait_for(lambda: len(local.sequencer.queue) == 2)
    await asyncio.sleep(0.2)  # a fourth would be queued by now if it had been read
    assert len(local.sequencer.queue) == 2
    gate.set()
    echoes = [await receive_type(a, "message") for _ in range(6)]
    assert [echo["ref"] for echo in echoes] == [f"r{n}" for n in range(6)]
    assert sum(map(sum, sizes)) == 6
    await a.disconnect()


async def held_message_then(a: WebsocketCommunicator, monkeypatch, frame: dict | str) -> dict:
    """Send a message that is held in its transaction, then ``frame``: nothing comes back
    until the transaction goes on; then the message's echo, which this returns."""
    entered, gate, _ = held_store(monkeypatch)
    await send(a, {"type": "message", "content": "first", "ref": "r"})
    await send(a, frame)
    await asyncio.wait_for(entered.wait(), 5)
    await asyncio.sleep(0.2)
    assert await a.receive_nothing(0.1)
    gate.set()
    echo = await receive(a)
    assert echo["type"] == "message" and echo["ref"] == "r"
    return echo


@pytest.mark.parametrize(("frame", "answer"), [
    ({"type": "history"}, "history"),
    ("{not json", "invalid_json"),
    ({"type": "nope"}, "unknown_type"),
])
async def test_a_frame_of_another_type_waits_for_the_messages_before_it(
        alice, monkeypatch, frame, answer):
    """A frame sent after a message is answered after that message is stored, a bad
    frame too, as when each frame waited for the one before; a history holds it."""
    a, _, _ = await open_chat("ordered", alice)
    echo = await held_message_then(a, monkeypatch, frame)
    then = await receive(a)
    if answer == "history":
        assert then["type"] == "history" and then["messages"][-1]["id"] == echo["id"]
    else:
        assert then["type"] == "error" and then["code"] == answer
    await a.disconnect()


async def test_a_frame_too_large_closes_the_connection_after_the_messages_before_it(
        alice, monkeypatch, settings):
    """4009 for an oversized frame comes after the messages sent before it are stored."""
    a, _, _ = await open_chat("big", alice)
    await held_message_then(a, monkeypatch, "x" * (settings.WS_MAX_MESSAGE_BYTES + 1))
    assert await a.receive_output(5) == {"type": "websocket.close", "code": 4009}
    await a.disconnect()


async def test_a_connection_that_closes_has_its_last_messages_sent_before_it_leaves(
        alice, bob, monkeypatch):
    """A connection that closes while its messages are being stored: the room gets
    those messages, then its user_left."""
    b, _, _ = await open_chat("bye", bob)
    a, _, _ = await open_chat("bye", alice)
    assert (await receive(b))["type"] == "user_joined"
    entered, gate, _ = held_store(monkeypatch)
    await send(a, {"type": "message", "content": "last words"})
    await asyncio.wait_for(entered.wait(), 5)
    await a.send_input({"type": "websocket.disconnect", "code": 1000})
    await asyncio.sleep(0.2)
    gate.set()
    said = await receive(b)
    assert said["type"] == "message" and said["content"] == "last words"
    left = await receive(b)
    assert left["type"] == "user_left" and left["user_id"] == "alice"
    await a.wait()
    await b.disconnect()


async def test_message_without_ref_has_no_ref(alice):
    """Without a ref, the sender's copy has no ref key."""
    a, _, _ = await open_chat("noref", alice)
    mine = await request(a, {"type": "message", "content": "x"})
    assert "ref" not in mine
    await a.disconnect()


@pytest.mark.parametrize("content", ["", " ", "\n\t\u3000", "x" * 4001, None, 5, ["x"]])
async def test_bad_content_is_refused_and_nothing_stored(alice, content):
    """Content must be 1..4000 code points with a non-space; else invalid_message."""
    a, _, _ = await open_chat("bad", alice)
    error = await request(a, {"type": "message", "content": content})
    assert error["type"] == "error" and error["code"] == "invalid_message"
    assert await Message.objects.acount() == 0
    assert (await request(a, {"type": "ping"})) == {"type": "pong"}
    await a.disconnect()


async def test_content_of_4000_code_points_is_accepted(alice):
    """4000 code points (even 4-byte ones) are within the limit."""
    a, _, _ = await open_chat("long", alice)
    content = "\U0001f600" * 4000
    assert (await request(a, {"type": "message", "content": content}))["content"] == content
    await a.disconnect()


@pytest.mark.parametrize("ref", ["", "r" * 65, 7, None])
async def test_bad_ref_is_refused(alice, ref):
    """ref must be a string of 1..64 code points when given (null counts as absent)."""
    a, _, _ = await open_chat("ref", alice)
    answer = await request(a, {"type": "message", "content": "x", "ref": ref})
    if ref is None:
        assert answer["type"] == "message" and "ref" not in answer
    else:
        assert answer["type"] == "error" and answer["code"] == "invalid_message"
    await a.disconnect()


async def test_concurrent_senders_give_everyone_the_same_increasing_ids(make_user, token_for):
    """Five senders at once: each receiver sees every message, ids strictly increasing."""
    names = [f"s{i}" for i in range(5)]
    for name in names:
        await database_sync_to_async(make_user)(name)
    chats = []
    for name in names:
        chat, _, _ = await open_chat("race", token_for(name))
        chats.append(chat)
    per_sender = 20

    async def blast(chat):
        for i in range(per_sender):
            await send(chat, {"type": "message", "content": f"n{i}"})

    await asyncio.gather(*(blast(c) for c in chats))
    total = per_sender * len(chats)
    seen = []
    for chat in chats:
        ids = []
        while len(ids) < total:
            ids.append((await receive_type(chat, "message"))["id"])
        seen.append(ids)
    for ids in seen:
        assert ids == sorted(set(ids)), "ids must rise strictly"
        assert ids == seen[0], "every receiver sees the same messages"
    assert await Message.objects.acount() == total
    for chat in chats:
        await chat.disconnect()


async def test_reconnect_with_since_recovers_exactly_what_was_missed(alice, bob):
    """After a disconnect during which others talked, ?since=last gives each missed one once."""
    a, _, _ = await open_chat("recover", alice)
    b, _, _ = await open_chat("recover", bob)
    await receive(a)
    seen = (await request(b, {"type": "message", "content": "before"}))["id"]
    await receive(a)
    await b.disconnect()
    await receive(a)  # bob left
    sent = [(await request(a, {"type": "message", "content": f"while {i}"}))["id"]
            for i in range(3)]
    b, history, _ = await open_chat("recover", bob, since=seen)
    assert [m["id"] for m in history["messages"]] == sent
    assert (await receive(a))["type"] == "user_joined"
    after = await request(a, {"type": "message", "content": "after"})
    assert (await receive_type(b, "message"))["id"] == after["id"]
    assert await b.receive_nothing(timeout=0.2)
    await a.disconnect()
    await b.disconnect()


# --- Private messages ----------------------------------------------------------


async def test_private_reaches_target_and_sender_only(alice, bob, carol):
    """PRIV goes to every connection of target and sender in the room, never a third user."""
    a, _, _ = await open_chat("priv", alice)
    b, _, _ = await open_chat("priv", bob)
    c, _, _ = await open_chat("priv", carol)
    a2, _, _ = await open_chat("priv", alice)
    for chat, count in ((a, 2), (b, 1)):
        for _ in range(count):
            await receive(chat)
    await send(a, {"type": "private", "target": "bob", "content": "psst"})
    frames = [await receive(a), await receive(b), await receive(a2)]
    assert all(f == frames[0] for f in frames)
    assert frames[0]["type"] == "private" and frames[0]["from"] == "alice"
    assert frames[0]["to"] == "bob" and frames[0]["content"] == "psst"
    assert set(frames[0]) == {"type", "id", "room", "from", "to", "content", "timestamp"}
    assert await c.receive_nothing(timeout=0.3)
    # ... nor in the third user's history, but in the two others'.
    c2, c_history, _ = await open_chat("priv", carol)
    assert c_history["messages"] == []
    b2, b_history, _ = await open_chat("priv", bob)
    assert [m["id"] for m in b_history["messages"]] == [frames[0]["id"]]
    for chat in (a, b, c, a2, c2, b2):
        await chat.disconnect()


async def test_private_to_absent_user_is_not_in_room_and_not_stored(alice, bob):
    """A target with no connection in the room gets not_in_room; nothing is stored."""
    a, _, _ = await open_chat("absent", alice)
    error = await request(a, {"type": "private", "target": "bob", "content": "hi"})
    assert error["type"] == "error" and error["code"] == "not_in_room"
    assert await Message.objects.acount() == 0
    await a.disconnect()


async def test_private_to_oneself_is_invalid(alice):
    """target must differ from the sender."""
    a, _, _ = await open_chat("self", alice)
    error = await request(a, {"type": "private", "target": "alice", "content": "hi"})
    assert error["code"] == "invalid_message"
    await a.disconnect()


# --- History paging, ping, errors -------------------------------------------------


async def test_history_paging_with_before_and_limit(alice):
    """history before=ID limit=N gives the N visible messages below ID, oldest first."""
    ids = await database_sync_to_async(store_messages)("page", "alice", 10)
    a, _, _ = await open_chat("page", alice)
    page = await request(a, {"type": "history", "before": ids[5], "limit": 3})
    assert page["type"] == "history" and page["room"] == "page" and page["before"] == ids[5]
    assert [m["id"] for m in page["messages"]] == ids[2:5]
    assert page["truncated"] is True
    first = await request(a, {"type": "history", "before": ids[2], "limit": 100})
    assert [m["id"] for m in first["messages"]] == ids[:2] and first["truncated"] is False
    latest = await request(a, {"type": "history", "before": None})
    assert latest["before"] is None and [m["id"] for m in latest["messages"]] == ids
    await a.disconnect()


@pytest.mark.parametrize("frame", [
    {"type": "history", "limit": 0}, {"type": "history", "limit": 101},
    {"type": "history", "limit": "5"}, {"type": "history", "before": 0},
    {"type": "history", "before": -3}, {"type": "history", "before": True},
    {"type": "history", "before": 2.5},
])
async def test_bad_history_requests_are_invalid(alice, frame):
    """Out-of-range or mistyped before/limit give invalid_message."""
    a, _, _ = await open_chat("hbad", alice)
    assert (await request(a, frame))["code"] == "invalid_message"
    await a.disconnect()


async def test_ping_json_and_plain_get_pong(alice):
    """Both {"type": "ping"} and the text ping get {"type": "pong"}."""
    a, _, _ = await open_chat("ping", alice)
    assert await request(a, {"type": "ping"}) == {"type": "pong"}
    assert await request(a, "ping") == {"type": "pong"}
    await a.disconnect()


@pytest.mark.parametrize(("raw", "code"), [
    ("not json", "invalid_json"), ("[1, 2]", "invalid_message"), ('{"no": "type"}',
    "invalid_message"), ('{"type": 5}', "invalid_message"), ('{"type": "dance"}',
    "unknown_type"), ('{"type": "message"}', "invalid_message"),
    ('{"type": "private", "content": "x"}', "invalid_message"),
    ('{"type": "auth"}', "invalid_message"),
])
async def test_bad_frames_get_the_contract_error_and_the_connection_stays(alice, raw, code):
    """Each unusable frame is answered with its error code; the connection keeps working."""
    a, _, _ = await open_chat("errs", alice)
    error = await request(a, raw)
    assert error["type"] == "error" and error["code"] == code and isinstance(error["message"], str)
    assert await request(a, {"type": "ping"}) == {"type": "pong"}
    await a.disconnect()


async def test_binary_frame_is_invalid_message(alice):
    """A binary frame on the JSON endpoint gives invalid_message."""
    a, _, _ = await open_chat("bin", alice)
    await a.send_to(bytes_data=b"\x00\x01")
    assert (await receive(a))["code"] == "invalid_message"
    await a.disconnect()


async def test_one_failing_connection_does_not_disturb_another(alice, bob, monkeypatch):
    """A handler error on one connection is an error frame there; others go on."""
    a, _, _ = await open_chat("crash", alice)
    b, _, _ = await open_chat("crash", bob)
    await receive(a)
    from chat import consumers

    async def boom(self, frame):
        raise RuntimeError("boom")

    monkeypatch.setattr(consumers.ChatConsumer, "on_history", boom)
    error = await request(b, {"type": "history"})
    assert error["type"] == "error" and error["code"] == "unavailable"
    sent = await request(a, {"type": "message", "content": "still here"})
    assert (await receive(b))["id"] == sent["id"]
    await a.disconnect()
    await b.disconnect()


def test_frames_are_compact_json():
    """Frames are one JSON object per text frame (sanity of the encoder)."""
    from realtime import protocol

    assert json.loads(protocol.PONG) == {"type": "pong"}
