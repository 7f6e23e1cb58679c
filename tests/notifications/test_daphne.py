"""Notifications over real daphne processes: one process, and two sharing Redis."""

import asyncio
import json
import urllib.parse

import pytest
import websockets
from django.db import connections

from notifications import api, push
from tests.notifications.conftest import apost, recv_json, ws_url

pytestmark = [pytest.mark.daphne, pytest.mark.django_db(transaction=True)]


async def assert_silent(ws, seconds: float = 0.5) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(ws.recv(), seconds)


async def gone(username: str) -> None:
    """Wait until the server has unregistered the user's closed connections.

    Under Redis the registry outlives this test; a connection still counted
    would make a later test's first notification 'sent' instead of 'queued'.
    """
    for _ in range(100):
        if await push.notification_connections(username) == 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{username}'s closed connections are still registered")


async def test_queue_ack_and_live_over_real_daphne(daphne_server, amake_user, token_for):
    """Over daphne: queued offline, delivered on connect, acked, then a live one is sent."""
    await amake_user("boss", staff=True)
    await amake_user("jürgen")
    server = daphne_server()
    admin = token_for("boss")
    path = "/api/notify/" + urllib.parse.quote("jürgen")
    status, queued = await apost(server, path, {"n": 1}, admin)
    assert (status, queued["status"]) == (202, "queued")
    async with websockets.connect(ws_url(server, token_for("jürgen"))) as ws:
        frame = await recv_json(ws)
        assert (frame["type"], frame["id"], frame["data"]) == ("notification", queued["id"],
                                                               {"n": 1})
        await ws.send(json.dumps({"type": "ack", "ids": [queued["id"]]}))
        await ws.send("ping")
        assert await recv_json(ws) == {"type": "pong"}
    async with websockets.connect(ws_url(server, token_for("jürgen"))) as ws:
        await assert_silent(ws)
        status, sent = await apost(server, path, {"n": 2}, admin)
        assert (status, sent["status"]) == (202, "sent")
        assert (await recv_json(ws))["id"] == sent["id"]
    status, error = await apost(server, "/api/notify/nobody", {"n": 3}, admin)
    assert (status, error["error"]) == (404, "not_found")
    await gone("jürgen")


def notify_like_a_management_command(user, data) -> tuple[int, str]:
    """Run notify() in a thread with no event loop at all, as a command or task would."""
    try:
        return api.notify(user, data)
    finally:
        connections.close_all()


@pytest.mark.redis
async def test_two_processes_share_notifications_through_redis(
    daphne_server, redis_url, amake_user, token_for
):
    """Connected to A, posted via B: 'sent' and the NOTE arrives; also broadcasts and notify()."""
    await amake_user("boss", staff=True)
    bob = await amake_user("daphne-bob")
    process_a = daphne_server(REDIS_URL=redis_url)
    process_b = daphne_server(REDIS_URL=redis_url)
    admin = token_for("boss")
    async with websockets.connect(ws_url(process_a, token_for("daphne-bob"))) as ws:
        await ws.send("ping")  # joined: the queue (empty) is sent before any answer
        assert await recv_json(ws) == {"type": "pong"}

        status, body = await apost(process_b, "/api/notify/daphne-bob", {"via": "B"}, admin)
        assert (status, body["status"]) == (202, "sent")
        frame = await recv_json(ws)
        assert (frame["id"], frame["data"]) == (body["id"], {"via": "B"})

        status, body = await apost(process_b, "/api/broadcast", {"all": 1}, admin)
        assert (status, body["status"]) == (202, "broadcast")
        frame = await recv_json(ws)
        assert (frame["id"], frame["broadcast"]) == (body["id"], True)

        note_id, status = await asyncio.to_thread(
            notify_like_a_management_command, bob, {"via": "command"})
        assert status == "sent"
        frame = await recv_json(ws)
        assert (frame["id"], frame["data"]) == (note_id, {"via": "command"})

    # Once the connection is gone, every process answers 'queued'.
    for _ in range(50):
        status, body = await apost(process_b, "/api/notify/daphne-bob", {"after": True}, admin)
        if body["status"] == "queued":
            break
        await asyncio.sleep(0.1)
    assert (status, body["status"]) == (202, "queued")


async def test_full_queue_of_large_notifications_arrives_whole(daphne_server, amake_user,
                                                               token_for):
    """A full queue (100 NOTEs of ~64 KB, 6.4 MB) reaches a reading client, not a close."""
    bob = await amake_user("daphne-big")
    big = {"blob": "x" * 65000}
    ids = [(await api.anotify(bob, big))[0] for _ in range(100)]
    server = daphne_server()
    async with websockets.connect(ws_url(server, token_for("daphne-big")), max_size=2**20) as ws:
        received = [(await recv_json(ws))["id"] for _ in ids]
    assert received == ids
    await gone("daphne-big")


@pytest.mark.redis
async def test_connecting_to_one_process_while_another_posts(daphne_server, redis_url,
                                                             amake_user, token_for):
    """Sockets opened on A while B keeps posting each get every notification once, in order."""
    await amake_user("boss", staff=True)
    await amake_user("daphne-race")
    process_a = daphne_server(REDIS_URL=redis_url)
    process_b = daphne_server(REDIS_URL=redis_url)
    boss = token_for("boss")
    posted: list[int] = []

    async def poster() -> None:
        for n in range(30):
            status, body = await apost(process_b, "/api/notify/daphne-race", {"n": n}, boss)
            assert status == 202
            posted.append(body["id"])

    task = asyncio.create_task(poster())
    sockets = []
    try:
        for _ in range(3):
            await asyncio.sleep(0.05)
            sockets.append(await websockets.connect(ws_url(process_a, token_for("daphne-race"))))
        await task
        for ws in sockets:
            assert [(await recv_json(ws))["id"] for _ in posted] == posted
            await assert_silent(ws, 0.2)
    finally:
        task.cancel()
        for ws in sockets:
            await ws.close()
    await gone("daphne-race")


@pytest.mark.redis
async def test_connections_of_a_killed_process_stop_counting(daphne_server, redis_url,
                                                             amake_user, token_for):
    """After kill -9 of A, B reaps A's connections: notify answers 'queued' again."""
    await amake_user("boss", staff=True)
    await amake_user("daphne-orphan")
    beat = {"REDIS_URL": redis_url, "HUB_HEARTBEAT_SECONDS": "1", "HUB_DEAD_AFTER_SECONDS": "2"}
    process_a, process_b = daphne_server(**beat), daphne_server(**beat)
    boss = token_for("boss")
    ws = await websockets.connect(ws_url(process_a, token_for("daphne-orphan")))
    await ws.send("ping")
    assert await recv_json(ws) == {"type": "pong"}
    status, body = await apost(process_b, "/api/notify/daphne-orphan", {"n": 1}, boss)
    assert (status, body["status"]) == (202, "sent")
    process_a.kill()
    for _ in range(100):
        status, body = await apost(process_b, "/api/notify/daphne-orphan", {"n": 2}, boss)
        if body["status"] == "queued":
            break
        await asyncio.sleep(0.1)
    assert (status, body["status"]) == (202, "queued")
    await ws.close()
