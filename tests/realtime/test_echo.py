"""``/ws/echo/`` (PROTOCOL.md): no auth, text comes back prefixed, bytes as they are."""

import asyncio
import time

import pytest
import websockets
from channels.testing import WebsocketCommunicator

from project.asgi import application
from tests.conftest import UVICORN, connect_slow_client, read_until_closed


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


async def stalled_echo_client(server) -> websockets.ClientConnection:
    """An echo client with a tiny receive buffer that reads nothing."""
    return await connect_slow_client(server, "/ws/echo/", max_queue=1, max_size=None)


async def send_until_closed(server, stalled) -> None:
    """Send binary frames to echo until ``server`` logs that it closed ``stalled``."""
    deadline = time.monotonic() + 30
    while "stopped reading" not in server.output():
        assert time.monotonic() < deadline, "the stalled reader was never closed"
        try:
            await asyncio.wait_for(stalled.send(b"x" * 16384), 1)
        except (TimeoutError, websockets.ConnectionClosed):
            await asyncio.sleep(0.05)


@pytest.mark.daphne
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("command", [None, UVICORN], ids=["daphne", "uvicorn"])
async def test_binary_echo_to_a_stalled_reader_is_bounded(daphne_server, command):
    """Binary echoes that a client leaves unread past WS_MAX_SEND_BUFFER_BYTES close it (4010)."""
    server = daphne_server(command=command, WS_MAX_SEND_BUFFER_BYTES="65536", WS_RATE_LIMIT="0")
    stalled = await stalled_echo_client(server)
    closed_task = asyncio.ensure_future(read_until_closed(server, stalled))
    await send_until_closed(server, stalled)
    closed = await closed_task
    assert closed.rcvd is not None and closed.rcvd.code == 4010


@pytest.mark.daphne
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("command", [None, UVICORN], ids=["daphne", "uvicorn"])
async def test_a_stalled_reader_that_reads_seconds_later_still_gets_4010(daphne_server, command):
    """The server waits CLOSE_WAIT_SECONDS (10 s) for a closed slow reader to take its
    backlog and answer the close, under either server: one that reads 3 s after its
    4010 still finds the close frame (autobahn alone would drop it after 1 s)."""
    server = daphne_server(command=command, WS_MAX_SEND_BUFFER_BYTES="65536", WS_RATE_LIMIT="0")
    stalled = await stalled_echo_client(server)
    await send_until_closed(server, stalled)
    await asyncio.sleep(3)
    closed = await read_until_closed(server, stalled)
    assert closed.rcvd is not None and closed.rcvd.code == 4010


@pytest.mark.daphne
@pytest.mark.django_db(transaction=True)
async def test_masked_frames_of_every_size_and_in_fragments_come_back_whole(daphne_server):
    """Over a real daphne, a client's masked frames (RFC 6455, 5.3) are read back as sent,
    whatever their length (short frames and long ones are unmasked differently) and
    when a message comes in several frames."""
    server = daphne_server(WS_RATE_LIMIT="0")
    async with websockets.connect(f"{server.ws_url}/ws/echo/", max_size=None) as ws:
        for size in (1, 3, 4, 5, 125, 126, 127, 1022, 1023, 1024, 1025, 4096, 20_000):
            data = bytes((i * 7 + size) % 256 for i in range(size))
            await ws.send(data)
            assert await asyncio.wait_for(ws.recv(), 10) == data
            text = ("ü" + "abc" * size)[:size]
            await ws.send(text)
            assert await asyncio.wait_for(ws.recv(), 10) == "Echo: " + text
        await ws.send(["Frag", "mented ✓", " text"])
        assert await asyncio.wait_for(ws.recv(), 10) == "Echo: Fragmented ✓ text"
        await ws.send([b"\x00\x01", b"\x02" * 2000, b"\x03"])
        assert await asyncio.wait_for(ws.recv(), 10) == b"\x00\x01" + b"\x02" * 2000 + b"\x03"
