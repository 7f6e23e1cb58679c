"""Helpers of the chat tests across two daphne processes (test_multiprocess.py,
test_rooms_multiprocess*.py)."""

import asyncio
import functools
import json
import time
import urllib.error
import urllib.request

import websockets
from django.db import connections
from websockets.exceptions import ConnectionClosed

#: "At once": the removed user's sockets are closed within this long after the answer.
AT_ONCE = 1.0


async def recv(ws, timeout: float = 10) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def recv_type(ws, kind: str, timeout: float = 10) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        frame = await recv(ws, max(0.1, deadline - time.monotonic()))
        if frame["type"] == kind:
            return frame


async def say(ws, content: str) -> int:
    """Send a room message; the id of the next message frame, the sender's own copy while
    nobody else in the room is sending."""
    await ws.send(json.dumps({"type": "message", "content": content}))
    return (await recv_type(ws, "message"))["id"]


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
    @functools.wraps(func)
    def run(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        finally:
            connections.close_all()

    return run


async def private_room(server, name: str, owner: str, members: list[str], tokens) -> None:
    status, body = await api("POST", server, "/api/rooms", tokens[owner],
                             {"name": name, "private": True})
    assert status == 201, body
    for member in members:
        status, body = await api("POST", server, f"/api/rooms/{name}/members", tokens[owner],
                                 {"user_id": member})
        assert status == 200, body
