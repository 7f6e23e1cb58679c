"""A client that stops reading is closed instead of buffered without limit."""

import asyncio
import json
import socket
import time

import pytest
import websockets
from channels.db import database_sync_to_async

from tests.conftest import UVICORN

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.daphne]


@pytest.mark.parametrize("command", [None, UVICORN], ids=["daphne", "uvicorn"])
async def test_a_stalled_reader_is_dropped_and_the_room_goes_on(daphne_server, make_user,
                                                               token_for, command):
    """Past WS_MAX_SEND_BUFFER_BYTES of unread frames the server closes it; others are served."""
    server = daphne_server(command=command, WS_MAX_SEND_BUFFER_BYTES="65536", WS_RATE_LIMIT="0")
    for name in ("stalled", "talker"):
        await database_sync_to_async(make_user)(name)
    url = f"{server.ws_url}/ws/chat/busy/?token="
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # keep the kernel's share small
    sock.connect(("127.0.0.1", server.port))
    stalled = await websockets.connect(url + token_for("stalled"), sock=sock, max_queue=1,
                                       max_size=None)
    async with websockets.connect(url + token_for("talker"), max_size=None) as talker:
        deadline = time.monotonic() + 30
        sent = 0
        while "stopped reading" not in server.output():
            assert time.monotonic() < deadline, "the stalled reader was never dropped"
            ref = str(sent)
            await talker.send(json.dumps({"type": "message", "content": "x" * 4000, "ref": ref}))
            while json.loads(await talker.recv()).get("ref") != ref:
                pass
            sent += 1
        # The talker is still served after the stalled reader was dropped.
        await talker.send(json.dumps({"type": "ping"}))
        frame = json.loads(await asyncio.wait_for(talker.recv(), 5))
        while frame["type"] != "pong":
            frame = json.loads(await asyncio.wait_for(talker.recv(), 5))
    with pytest.raises(websockets.ConnectionClosed):
        while True:
            await asyncio.wait_for(stalled.recv(), 10)
