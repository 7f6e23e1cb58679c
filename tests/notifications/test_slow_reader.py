"""A notifications client that stops reading is closed; nobody else waits for it."""

import asyncio
import json
import time

import pytest
import websockets

from tests.conftest import UVICORN, connect_slow_client, read_until_closed
from tests.notifications.conftest import apost, recv_json, ws_url

pytestmark = [pytest.mark.daphne, pytest.mark.django_db(transaction=True)]


@pytest.mark.parametrize("command", [None, UVICORN], ids=["daphne", "uvicorn"])
async def test_a_stalled_reader_is_dropped_and_other_users_are_served(
    daphne_server, amake_user, token_for, command
):
    """Past WS_MAX_SEND_BUFFER_BYTES unread the server closes it with 4010; while it
    fills up, another user's notifications keep arriving at once.

    Every process pushes all of its notifications from one feed: a send that
    waited for the stalled client would hold up everyone's.
    """
    await amake_user("boss", staff=True)
    await amake_user("stalled")
    await amake_user("reader")
    server = daphne_server(command=command, WS_MAX_SEND_BUFFER_BYTES="65536", WS_RATE_LIMIT="0")
    admin = token_for("boss")
    stalled = await connect_slow_client(
        server, f"/ws/notifications/?token={token_for('stalled')}", max_queue=1, max_size=None)
    closed_task = asyncio.ensure_future(read_until_closed(server, stalled))
    async with websockets.connect(ws_url(server, token_for("reader"))) as reader:
        deadline = time.monotonic() + 30
        posted = 0
        while "stopped reading" not in server.output():
            assert time.monotonic() < deadline, "the stalled reader was never dropped"
            status, _ = await apost(server, "/api/notify/stalled", {"pad": "x" * 60000}, admin)
            assert status == 202
            status, sent = await apost(server, "/api/notify/reader", {"n": posted}, admin)
            assert (status, sent["status"]) == (202, "sent")
            frame = await recv_json(reader)  # within 5 s, or this fails
            assert (frame["id"], frame["data"]) == (sent["id"], {"n": posted})
            await reader.send(json.dumps({"type": "ack", "ids": [frame["id"]]}))
            posted += 1
        assert posted > 4, "the bound was reached before the buffer could fill"
    closed = await closed_task
    assert closed.rcvd is not None and closed.rcvd.code == 4010

