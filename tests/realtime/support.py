"""Test-only pieces shared by the project tests: an authenticated endpoint and helpers.

No endpoint of the routing needs a user yet when the foundation is tested, so the
auth and limit tests run against ``AuthedConsumer``: a minimal
:class:`~realtime.consumers.ProtocolConsumer` behind the project's own
``WebSocketAuthStack``. On join it sends ``{"type": "hello", "user_id": U}`` so a
test can see who was authenticated; like every JSON endpoint it answers ``ping``
and handles ``auth``, and it takes ``ack`` (and does nothing with it).
"""

import asyncio
import base64
import hashlib
import hmac
import json
from typing import Any

import jwt
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.urls import re_path

from notifications.protocol import parse_ack
from realtime import protocol
from realtime.consumers import ProtocolConsumer
from realtime.middleware import WebSocketAuthStack

TEST_PATH = "/ws/test/"


class AuthedConsumer(ProtocolConsumer):
    """An endpoint that needs a user: hello on join, pong, token refresh."""

    requires_user = True
    endpoint = "test"

    async def connect(self) -> None:
        await self.send(protocol.encode({"type": "hello", "user_id": self.user.username}))

    async def on_ack(self, frame: dict) -> None:
        parse_ack(frame)


authed_application = WebSocketAuthStack(
    URLRouter([re_path(r"^ws/test/$", AuthedConsumer.as_asgi())])
)


def communicator(
    path: str = TEST_PATH, headers: list[tuple[bytes, bytes]] | None = None, app: Any = None
) -> WebsocketCommunicator:
    """A communicator on the test endpoint (or on ``app``)."""
    return WebsocketCommunicator(app or authed_application, path, headers=headers or [])


async def close_code(comm: WebsocketCommunicator) -> int | None:
    """The code of the close that comes next (``None`` for a plain close)."""
    output = await comm.receive_output(timeout=5)
    assert output["type"] == "websocket.close", output
    return output.get("code")


async def receive_json(comm: WebsocketCommunicator, timeout: float = 5) -> dict[str, Any]:
    output = await comm.receive_output(timeout=timeout)
    assert output["type"] == "websocket.send", output
    return json.loads(output["text"])


def forge(payload: dict[str, Any], *, key: str | None = None, algorithm: str = "HS256",
          headers: dict[str, Any] | None = None) -> str:
    """A JWT with exactly ``payload``, signed with ``key`` (the JWT secret by default)."""
    return jwt.encode(payload, key or settings.JWT_SECRET, algorithm=algorithm, headers=headers)


def unsigned(payload: dict[str, Any]) -> str:
    """An ``alg: none`` token (no signature)."""
    return jwt.encode(payload, None, algorithm="none")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def raw_token(header: dict[str, Any], payload: dict[str, Any], key: str | None = None) -> str:
    """A token with any header (say ``alg: RS256``), HMAC-SHA256-signed with ``key``."""
    signing_input = _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(payload).encode())
    secret = (key or settings.JWT_SECRET).encode()
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + _b64(signature)


def hold(monkeypatch, owner: type, method: str, *, after_call: bool
         ) -> tuple[asyncio.Event, asyncio.Event]:
    """Make ``owner.method`` (an async method) stop at a gate, before or after its real
    call, until the test opens it; ``entered`` is set when a call reaches the gate.

    Returns ``(entered, gate)``. ``monkeypatch.undo()`` (or the test's end) restores it.
    """
    real = getattr(owner, method)
    entered, gate = asyncio.Event(), asyncio.Event()

    async def held(self, *args):
        result = await real(self, *args) if after_call else None
        entered.set()
        await gate.wait()
        return result if after_call else await real(self, *args)

    monkeypatch.setattr(owner, method, held)
    return entered, gate
