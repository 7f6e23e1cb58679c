"""Small helpers for talking to the chat endpoint through WebsocketCommunicator."""

import json

from channels.testing import WebsocketCommunicator

from project.asgi import application


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
