"""Several daphne processes sharing Redis and the database serve one set of rooms."""

import asyncio
import json
import time

import pytest
import websockets
from channels.db import database_sync_to_async

from tests.chat.across_processes import join, recv, recv_type

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.daphne, pytest.mark.redis]


async def test_users_on_two_processes_share_a_room(two_servers, make_user, token_for):
    """Messages, presence and private messages cross processes; a third user sees no PRIV."""
    server_a, server_b = two_servers
    for name in ("alice", "bob", "carol"):
        await database_sync_to_async(make_user)(name)
    alice, _ = await join(server_a, "multi", token_for("alice"))
    bob, joined = await join(server_b, "multi", token_for("bob"))
    assert joined["users"] == ["alice", "bob"]
    seen = await recv(alice)
    assert seen["type"] == "user_joined" and seen["users"] == ["alice", "bob"]

    await alice.send(json.dumps({"type": "message", "content": "from A"}))
    assert (await recv_type(alice, "message"))["content"] == "from A"
    assert (await recv_type(bob, "message"))["content"] == "from A"
    await bob.send(json.dumps({"type": "message", "content": "from B"}))
    assert (await recv_type(bob, "message"))["content"] == "from B"
    assert (await recv_type(alice, "message"))["content"] == "from B"

    carol, joined = await join(server_b, "multi", token_for("carol"))
    assert joined["users"] == ["alice", "bob", "carol"]
    await bob.send(json.dumps({"type": "private", "target": "alice", "content": "secret"}))
    private = await recv_type(alice, "private")
    assert private["from"] == "bob" and private["to"] == "alice"
    assert (await recv_type(bob, "private"))["id"] == private["id"]
    await carol.send(json.dumps({"type": "ping"}))
    assert await recv(carol) == {"type": "pong"}, "carol got something before her pong"
    for ws in (alice, bob, carol):
        await ws.close()


async def test_concurrent_senders_on_two_processes_keep_ids_increasing(
    two_servers, make_user, token_for
):
    """Senders on both processes at once: every receiver gets the same strictly rising ids."""
    server_a, server_b = two_servers
    names = [f"u{i}" for i in range(4)]
    for name in names:
        await database_sync_to_async(make_user)(name)
    sockets = []
    for i, name in enumerate(names):
        ws, _ = await join(server_a if i % 2 else server_b, "order", token_for(name))
        sockets.append(ws)
    per_sender = 100

    async def blast(ws):
        for i in range(per_sender):
            await ws.send(json.dumps({"type": "message", "content": f"m{i}"}))

    await asyncio.gather(*(blast(ws) for ws in sockets))
    total = per_sender * len(sockets)
    received = []
    for ws in sockets:
        ids = [(await recv_type(ws, "message"))["id"] for _ in range(total)]
        received.append(ids)
    for ids in received:
        assert ids == sorted(set(ids))
        assert ids == received[0]
    for ws in sockets:
        await ws.close()


async def test_a_killed_process_users_leave_within_60_seconds(two_servers, make_user, token_for):
    """After kill -9 of one process, its users drop out of users and the room gets user_left."""
    server_a, server_b = two_servers
    await database_sync_to_async(make_user)("alice")
    await database_sync_to_async(make_user)("bob")
    alice, _ = await join(server_a, "crash", token_for("alice"))
    bob, _ = await join(server_b, "crash", token_for("bob"))
    await recv(alice)
    server_a.kill()
    started = time.monotonic()
    left = await recv_type(bob, "user_left", timeout=60)
    assert left["user_id"] == "alice" and left["users"] == ["bob"]
    assert time.monotonic() - started < 60
    # A fresh join on the survivor lists only the live user.
    bob2, joined = await join(server_b, "crash", token_for("bob"))
    assert joined["users"] == ["bob"]
    await bob.close()
    await bob2.close()


async def test_a_stopped_process_users_leave_at_the_next_beat(two_servers, make_user, token_for):
    """A process stopped normally (SIGTERM) closes its sockets with 4012 and its users
    leave: the other process sends user_left well before it would reap a dead one."""
    server_a, server_b = two_servers
    await database_sync_to_async(make_user)("alice")
    await database_sync_to_async(make_user)("bob")
    alice, _ = await join(server_a, "stop", token_for("alice"))
    bob, _ = await join(server_b, "stop", token_for("bob"))
    await recv(alice)
    started = time.monotonic()
    # Off the event loop, so that Alice's client answers the server's close: a client
    # that does not answer holds the graceful stop for CLOSE_WAIT_SECONDS.
    stopped = asyncio.create_task(asyncio.to_thread(server_a.stop))
    with pytest.raises(websockets.ConnectionClosed):
        await recv(alice)
    assert alice.close_code == 4012
    # Heartbeats are 1 s and the dead-after time 3 s here: arriving well before the
    # latter shows the departure came from the stopping process, not from a reaper.
    left = await recv_type(bob, "user_left", timeout=2.5)
    assert left["user_id"] == "alice" and left["users"] == ["bob"]
    assert time.monotonic() - started < 2.5
    await stopped
    await bob.close()
