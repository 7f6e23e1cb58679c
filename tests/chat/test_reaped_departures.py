"""A killed process's users in one room and in several: every one of them leaves, and
every member of each room on the survivor gets a ``user_left`` for each."""

import json

import pytest
from channels.db import database_sync_to_async

from tests.chat.across_processes import join, recv, recv_type

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.daphne, pytest.mark.redis]


async def test_every_user_of_a_killed_process_leaves_every_room(two_servers, make_user,
                                                                 token_for):
    """bob, carol and dave only on B, in rooms "north" and "south"; alice watches "north" and
    erin "south" from A. After B's SIGKILL each watcher gets a user_left per user of B."""
    server_a, server_b = two_servers
    for name in ("alice", "erin", "bob", "carol", "dave"):
        await database_sync_to_async(make_user)(name)
    alice, _ = await join(server_a, "north", token_for("alice"))
    erin, _ = await join(server_a, "south", token_for("erin"))
    on_b = []
    for name in ("bob", "carol", "dave"):
        for room in ("north", "south"):
            ws, _ = await join(server_b, room, token_for(name))
            on_b.append(ws)
    for watcher in (alice, erin):
        for _ in range(3):
            assert (await recv(watcher))["type"] == "user_joined"
    server_b.kill()
    for watcher, me in ((alice, "alice"), (erin, "erin")):
        left = [await recv_type(watcher, "user_left", timeout=30) for _ in range(3)]
        assert sorted(frame["user_id"] for frame in left) == ["bob", "carol", "dave"]
        assert left[-1]["users"] == [me]
        for frame in left:  # no list names a user who has already left
            gone = {f["user_id"] for f in left[:left.index(frame) + 1]}
            assert me in frame["users"] and not gone & set(frame["users"])
        await watcher.send(json.dumps({"type": "ping"}))
        assert await recv(watcher) == {"type": "pong"}, "nothing else was announced"
    # A fresh join on the survivor lists only the live users.
    again, joined = await join(server_a, "north", token_for("erin"))
    assert joined["users"] == ["alice", "erin"]
    for ws in (alice, erin, again):
        await ws.close()
