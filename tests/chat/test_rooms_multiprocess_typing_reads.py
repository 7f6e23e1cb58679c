"""Rooms across processes: typing and read markers on two daphne processes.

PROTOCOL.md, "Rooms: access, moderation, read state": typing relays across processes,
at most once every 2 s per user and room; a read marker moved on one process reaches
the user's connections on the other.
"""

import asyncio
import json
import time

import pytest

from tests.chat.across_processes import (
    AT_ONCE,
    api,
    join,
    kinds_until_pong,
    recv_type,
    say,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.daphne, pytest.mark.redis]


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
    ids = [await say(bob, f"n{n}") for n in range(3)]
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
    ids = [await say(bob, f"n{n}") for n in range(6)]
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
