"""Helpers of the notifications tests: users from async tests, communicators, frames,
and the HTTP API and sockets of a real server."""

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from project.asgi import application

PATH = "/ws/notifications/"


@pytest.fixture
def amake_user(make_user) -> Callable[..., Awaitable[object]]:
    """``make_user`` for async tests (the ORM runs in the thread pool)."""

    async def make(username: str, **kwargs):
        return await database_sync_to_async(make_user)(username, **kwargs)

    return make


@pytest.fixture
async def connect(token_for):
    """Open ``/ws/notifications/`` as a user; every communicator is disconnected after."""
    opened: list[WebsocketCommunicator] = []

    async def open_(username: str | None = None, *, token: str | None = None,
                    query: str | None = None) -> WebsocketCommunicator:
        if query is None:
            query = "?token=" + (token if token is not None else token_for(username))
        communicator = WebsocketCommunicator(application, PATH + query)
        opened.append(communicator)
        connected, _ = await communicator.connect(timeout=5)
        assert connected
        return communicator

    yield open_
    for communicator in opened:
        # A communicator that timed out in receive has had its application cancelled
        # (asgiref does that). Disconnecting it would raise CancelledError, which is no
        # Exception: pytest would then skip the test's other finalizers, the database's
        # teardown among them, and every later test of the worker would fail.
        if not communicator.future.done():
            await communicator.disconnect()


async def joined(communicator: WebsocketCommunicator) -> None:
    """Return once the connection is live: registered, and its queue (which must be empty)
    sent. Its pong comes after its connect."""
    await communicator.send_json_to({"type": "ping"})
    assert await receive(communicator) == {"type": "pong"}


async def receive(communicator: WebsocketCommunicator) -> dict:
    """The next frame (within 3 s), as JSON."""
    return json.loads(await communicator.receive_from(timeout=3))


async def receive_notes(communicator: WebsocketCommunicator, count: int) -> list[dict]:
    frames = [await receive(communicator) for _ in range(count)]
    assert all(frame["type"] == "notification" for frame in frames), frames
    return frames


async def assert_closed(communicator: WebsocketCommunicator, code: int) -> None:
    """The server closed the connection with ``code`` and sent nothing before."""
    output = await communicator.receive_output(timeout=3)
    assert output == {"type": "websocket.close", "code": code}


async def send(communicator: WebsocketCommunicator, frame: dict) -> None:
    await communicator.send_to(text_data=json.dumps(frame))


@pytest.fixture
def batches(monkeypatch) -> list[tuple[int, int]]:
    """Record ``(posts, ack users)`` of every transaction the writer runs."""
    from notifications import store, writer

    seen: list[tuple[int, int]] = []
    original = store.store_batch

    def recording(posts, acks):
        seen.append((len(posts), len(acks)))
        return original(posts, acks)

    monkeypatch.setattr(writer, "store_batch", recording)
    return seen


async def undelivered_ids(user) -> list[int]:
    """The ids of the user's undelivered notifications, oldest first."""
    from notifications import store

    return [row.pk for row in (await database_sync_to_async(store.undelivered)([user.pk]))[user.pk]]


# --- Over a real server (daphne_server) ----------------------------------------------------


def http_post(url: str, body: dict, token: str) -> tuple[int, dict]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


async def apost(server, path: str, body: dict, token: str) -> tuple[int, dict]:
    return await asyncio.to_thread(http_post, server.url + path, body, token)


def ws_url(server, token: str) -> str:
    return f"{server.ws_url}/ws/notifications/?token={token}"


async def recv_json(ws) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), 5))
