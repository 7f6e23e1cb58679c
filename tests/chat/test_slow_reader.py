"""A client that stops reading is closed instead of buffered without limit."""

import asyncio
import json

import pytest
import websockets
from channels.db import database_sync_to_async

from tests.chat.helpers import stall_a_reader
from tests.conftest import UVICORN

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.daphne]


@pytest.mark.parametrize("command", [None, UVICORN], ids=["daphne", "uvicorn"])
async def test_a_stalled_reader_is_dropped_and_the_room_goes_on(daphne_server, make_user,
                                                               token_for, command):
    """Past WS_MAX_SEND_BUFFER_BYTES of unread frames the server closes it; others are served."""
    server = daphne_server(command=command, WS_MAX_SEND_BUFFER_BYTES="65536", WS_RATE_LIMIT="0")
    for name in ("stalled", "talker"):
        await database_sync_to_async(make_user)(name)
    stalled, talker = await stall_a_reader(server, "busy", token_for("stalled"),
                                           token_for("talker"))
    async with talker:
        # The talker is still served after the stalled reader was dropped.
        await talker.send(json.dumps({"type": "ping"}))
        frame = json.loads(await asyncio.wait_for(talker.recv(), 5))
        while frame["type"] != "pong":
            frame = json.loads(await asyncio.wait_for(talker.recv(), 5))
    with pytest.raises(websockets.ConnectionClosed):
        while True:
            await asyncio.wait_for(stalled.recv(), 10)
