"""``/ws/echo/`` (PROTOCOL.md): no auth, text comes back prefixed, bytes as they are."""

import pytest
from channels.testing import WebsocketCommunicator

from project.asgi import application


async def connect_echo(path: str = "/ws/echo/", headers=None) -> WebsocketCommunicator:
    comm = WebsocketCommunicator(application, path, headers=headers or [])
    connected, _ = await comm.connect()
    assert connected
    return comm


async def send_text(comm: WebsocketCommunicator, text: str) -> None:
    """Send a text frame the way daphne delivers it (the communicator refuses '')."""
    await comm.send_input({"type": "websocket.receive", "text": text})


@pytest.mark.parametrize("text", ["hi", "", " ", "Echo: x", '{"type":"ping"}', "ping",
                                  "héllo wörld ✓ 🎉", "a\nb\tc", "\x00"])
async def test_text_frame_comes_back_prefixed(text):
    """A text frame X gets back the text frame 'Echo: X'."""
    comm = await connect_echo()
    await send_text(comm, text)
    assert await comm.receive_from() == "Echo: " + text
    await comm.disconnect()


@pytest.mark.parametrize("data", [b"\x00", b"hello", bytes(range(256)), b"\xff" * 1000])
async def test_binary_frame_comes_back_unchanged(data):
    """A non-empty binary frame gets back the same bytes, as a binary frame."""
    comm = await connect_echo()
    await comm.send_to(bytes_data=data)
    output = await comm.receive_output(timeout=3)
    assert output == {"type": "websocket.send", "bytes": data}
    await comm.disconnect()


async def test_empty_binary_frame_gets_nothing_back():
    """An empty binary frame gets no answer, and the connection keeps working."""
    comm = await connect_echo()
    await comm.send_input({"type": "websocket.receive", "bytes": b""})
    assert await comm.receive_nothing(timeout=0.2)
    await comm.send_to(text_data="still here")
    assert await comm.receive_from() == "Echo: still here"
    await comm.disconnect()


async def test_frames_come_back_in_order():
    """Frames sent in a row are echoed in the order they were sent."""
    comm = await connect_echo()
    for i in range(20):
        await comm.send_to(text_data=str(i))
    assert [await comm.receive_from() for _ in range(20)] == [f"Echo: {i}" for i in range(20)]
    await comm.disconnect()


async def test_echo_needs_no_credentials_and_ignores_bad_ones():
    """Echo is open: no token and even an invalid token still get echoes."""
    comm = await connect_echo("/ws/echo/?token=garbage")
    await comm.send_to(text_data="x")
    assert await comm.receive_from() == "Echo: x"
    await comm.disconnect()


async def test_unknown_path_is_refused_at_handshake():
    """A WebSocket path without a route is refused before accept."""
    comm = WebsocketCommunicator(application, "/ws/nowhere/")
    connected, _ = await comm.connect()
    assert not connected
