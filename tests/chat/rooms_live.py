"""Helpers of the rooms tests on a real daphne: HTTP with urllib, chat sockets with websockets.

Everything here speaks the wire contract only (PROTOCOL.md), as an outside client would.
"""

import asyncio
import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

import websockets
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client
from websockets.exceptions import ConnectionClosed

#: A body that is not sent at all (``None`` would be sent as JSON ``null``).
NO_BODY = object()
#: Frames that may come at any time in a room (someone joining or leaving).
PRESENCE = frozenset({"user_joined", "user_left"})


@dataclass
class Answer:
    status: int
    raw: bytes

    @property
    def body(self) -> Any:
        return json.loads(self.raw) if self.raw else None


class Http:
    """A caller of a live server's API: by Bearer token, by session cookie (with or
    without a CSRF token), or with no credentials at all."""

    def __init__(self, server, token: str | None = None, *, session: str | None = None,
                 csrf: str | None = None) -> None:
        self.server = server
        self.headers = {"Content-Type": "application/json"}
        if token is not None:
            self.headers["Authorization"] = f"Bearer {token}"
        cookies = []
        if session is not None:
            cookies.append(f"sessionid={session}")
        if csrf is not None:
            cookies.append(f"csrftoken={csrf}")
            self.headers["X-CSRFToken"] = csrf
        if cookies:
            self.headers["Cookie"] = "; ".join(cookies)

    def __call__(self, method: str, path: str, body: Any = NO_BODY, *,
                 raw: bytes | None = None) -> Answer:
        data = raw if raw is not None else (None if body is NO_BODY else json.dumps(body).encode())
        request = urllib.request.Request(self.server.url + path, data=data, method=method,
                                         headers=self.headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return Answer(response.status, response.read())
        except urllib.error.HTTPError as error:
            with error:
                return Answer(error.code, error.read())

    def get(self, path: str) -> Answer:
        return self("GET", path)

    def post(self, path: str, body: Any = NO_BODY, **kwargs) -> Answer:
        return self("POST", path, body, **kwargs)

    def delete(self, path: str) -> Answer:
        return self("DELETE", path)


def assert_error(answer: Answer, status: int, code: str) -> None:
    """The contract's error answer: that status, and exactly ``{"error": code, "message": S}``."""
    assert answer.status == status, (answer.status, answer.raw)
    body = answer.body
    assert set(body) == {"error", "message"}, body
    assert body["error"] == code, body
    assert isinstance(body["message"], str) and body["message"], body


def session_of(username: str) -> str:
    """A logged-in session's cookie value for the user (sessions live in the database)."""
    client = Client()
    client.force_login(get_user_model().objects.get(username=username))
    return client.cookies["sessionid"].value


def grant_moderation(username: str) -> None:
    """Give a user the ``chat.moderate_room`` permission (delete and ban in every room)."""
    user = get_user_model().objects.get(username=username)
    user.user_permissions.add(Permission.objects.get(codename="moderate_room",
                                                     content_type__app_label="chat"))


# --- Sockets -------------------------------------------------------------------------


def chat_url(server, room: str, token: str, since: int | None = None) -> str:
    url = f"{server.ws_url}/ws/chat/{room}/?token={token}"
    return url if since is None else f"{url}&since={since}"


async def recv(ws, timeout: float = 5) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def recv_skipping_presence(ws, timeout: float = 5) -> dict:
    """The next frame that is not user_joined/user_left."""
    deadline = time.monotonic() + timeout
    while True:
        frame = await recv(ws, max(0.05, deadline - time.monotonic()))
        if frame["type"] not in PRESENCE:
            return frame


async def recv_type(ws, kind: str, timeout: float = 5,
                    skip: frozenset[str] = PRESENCE) -> dict:
    """The next frame of ``kind``; only frames of the ``skip`` types may come before it."""
    deadline = time.monotonic() + timeout
    while True:
        frame = await recv(ws, max(0.05, deadline - time.monotonic()))
        if frame["type"] == kind:
            return frame
        assert frame["type"] in skip, f"{frame} before a {kind!r} frame"


async def after_messages(ws, kind: str, timeout: float = 5) -> dict:
    """The next frame of ``kind``, passing over room messages, PRIVs and presence."""
    return await recv_type(ws, kind, timeout, skip=PRESENCE | {"message", "private"})


async def join(server, room: str, token: str, since: int | None = None):
    """Open a chat socket; returns it with its history and user_joined frames."""
    ws = await websockets.connect(chat_url(server, room, token, since))
    history = await recv(ws)
    assert history["type"] == "history", history
    joined = await recv(ws)
    assert joined["type"] == "user_joined", joined
    return ws, history, joined


async def refusal(server, room: str, token: str, since: int | None = None,
                  timeout: float = 5) -> int:
    """Connect and return the close code, asserting that no frame came before it."""
    async with websockets.connect(chat_url(server, room, token, since)) as ws:
        try:
            frame = await asyncio.wait_for(ws.recv(), timeout)
        except ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd else 1006
        raise AssertionError(f"a frame before the close: {frame}")


async def close_code(ws, timeout: float = 2) -> tuple[int, list[dict]]:
    """Read until the server closes ``ws`` (within ``timeout``): its code and the frames before."""
    frames = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"not closed within {timeout} s; got {frames}"
            frames.append(json.loads(await asyncio.wait_for(ws.recv(), remaining)))
    except ConnectionClosed as closed:
        return (closed.rcvd.code if closed.rcvd else 1006), frames
    except TimeoutError:
        raise AssertionError(f"not closed within {timeout} s; got {frames}") from None


async def say(ws, content: str) -> dict:
    """Send a room message and return the sender's own copy (its MSG, with ``ref``)."""
    await ws.send(json.dumps({"type": "message", "content": content, "ref": content[:64]}))
    while True:
        frame = await recv_skipping_presence(ws)
        assert frame["type"] in {"message", "private", "typing", "message_deleted"}, frame
        if frame["type"] == "message" and frame.get("ref") == content[:64]:
            return frame


async def whisper(ws, target: str, content: str) -> dict:
    """Send a private message and return the sender's own PRIV copy."""
    await ws.send(json.dumps({"type": "private", "target": target, "content": content}))
    while True:
        frame = await recv_skipping_presence(ws)
        assert frame["type"] in {"message", "private"}, frame
        if frame["type"] == "private" and frame["content"] == content:
            return frame


async def request(ws, frame: dict) -> dict:
    """Send a frame and return the next frame that is not presence."""
    await ws.send(json.dumps(frame))
    return await recv_skipping_presence(ws)


async def nothing_came(ws) -> None:
    """A ping, and its pong as the very next frame: nothing at all was waiting."""
    await ws.send(json.dumps({"type": "ping"}))
    frame = await recv(ws)
    assert frame == {"type": "pong"}, f"{frame} came before the pong"


async def close_all(*sockets) -> None:
    for ws in sockets:
        await ws.close()
