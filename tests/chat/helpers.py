"""Small helpers for talking to the chat endpoint through WebsocketCommunicator."""

import asyncio
import json
import time

import websockets
from channels.testing import WebsocketCommunicator

from project.asgi import application
from realtime.gapless import Gapless
from tests.conftest import connect_slow_client


async def open_chat(room: str, token: str, *, since: str | int | None = None,
                    join: bool = True) -> tuple[WebsocketCommunicator, dict, dict]:
    """Connect to a room; with ``join`` read the history and user_joined frames."""
    path = f"/ws/chat/{room}/?token={token}"
    if since is not None:
        path += f"&since={since}"
    communicator = WebsocketCommunicator(application, path)
    connected, _ = await communicator.connect(timeout=5)
    assert connected
    if not join:
        return communicator, {}, {}
    history = await receive(communicator)
    assert history["type"] == "history", history
    joined = await receive(communicator)
    assert joined["type"] == "user_joined", joined
    return communicator, history, joined


async def receive(communicator: WebsocketCommunicator, timeout: float = 5) -> dict:
    return json.loads(await communicator.receive_from(timeout=timeout))


async def send(communicator: WebsocketCommunicator, frame: dict | str) -> None:
    await communicator.send_to(text_data=frame if isinstance(frame, str) else json.dumps(frame))


async def request(communicator: WebsocketCommunicator, frame: dict | str) -> dict:
    await send(communicator, frame)
    return await receive(communicator)


async def receive_type(communicator: WebsocketCommunicator, kind: str, timeout: float = 5) -> dict:
    """Skip presence frames until a frame of ``kind`` arrives."""
    while True:
        frame = await receive(communicator, timeout)
        if frame["type"] == kind:
            return frame
        assert frame["type"] in {"user_joined", "user_left"}, frame


async def stall_a_reader(server, room: str, stalled_token: str, talker_token: str, *,
                         compression: str | None = "deflate"):
    """Open a reader that never reads, and send to its room until the server drops it.

    Returns the stalled connection (to read its close) and the talker, still open.
    """
    path = f"/ws/chat/{room}/?token="
    stalled = await connect_slow_client(server, path + stalled_token, max_queue=1,
                                        max_size=None, compression=compression)
    talker = await websockets.connect(server.ws_url + path + talker_token, max_size=None)
    deadline = time.monotonic() + 30
    sent = 0
    while "stopped reading" not in server.output():
        assert time.monotonic() < deadline, "the stalled reader was never dropped"
        ref = str(sent)
        await talker.send(json.dumps({"type": "message", "content": "x" * 4000, "ref": ref}))
        while json.loads(await asyncio.wait_for(talker.recv(), 5)).get("ref") != ref:
            pass
        sent += 1
    return stalled, talker


class Silent(Gapless):
    """A member that records frames instead of sending them."""

    def __init__(self, conn: str, username: str) -> None:
        self.conn, self.username = conn, username
        self.last_id = self.presence_version = 0
        self.frames: list[str] = []

    async def send(self, text_data: str, *, encoded: bytes | None = None) -> None:
        self.frames.append(text_data)

    def send_now(self, encoded: bytes, frames: int = 1) -> bool:
        return False
