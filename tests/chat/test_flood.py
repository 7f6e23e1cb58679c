"""A flooding client is throttled and closed; a bystander in its room misses nothing."""

import asyncio
import json

import pytest
import websockets
from channels.db import database_sync_to_async

from chat.models import Message

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.daphne]


async def test_flood_in_a_room_over_daphne(daphne_server, make_user, token_for):
    """rate_limited, then 4008 for the flooder; the bystander gets every stored message once."""
    server = daphne_server(WS_RATE_LIMIT="5", WS_RATE_BURST="10")
    for name in ("flooder", "bystander"):
        await database_sync_to_async(make_user)(name)
    url = f"{server.ws_url}/ws/chat/flood/?token="
    async with websockets.connect(url + token_for("bystander")) as bystander:
        await bystander.recv()  # history
        await bystander.recv()  # user_joined
        flooder = await websockets.connect(url + token_for("flooder"))
        await flooder.recv()
        await flooder.recv()
        errors = 0
        for i in range(200):
            try:
                await flooder.send(json.dumps({"type": "message", "content": f"spam {i}"}))
            except websockets.ConnectionClosed:
                break
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                frame = json.loads(await asyncio.wait_for(flooder.recv(), 10))
                if frame["type"] == "error":
                    assert frame["code"] == "rate_limited"
                    errors += 1
        assert closed.value.rcvd.code == 4008
        assert errors >= 10
        stored = [m async for m in Message.objects.filter(room__name="flood")
                  .order_by("id").values_list("id", flat=True)]
        assert stored, "the first frames of the burst are accepted"
        received = []
        while len(received) < len(stored):
            frame = json.loads(await asyncio.wait_for(bystander.recv(), 10))
            if frame["type"] == "message":
                received.append(frame["id"])
        assert received == stored
        await bystander.send(json.dumps({"type": "ping"}))
        frame = json.loads(await asyncio.wait_for(bystander.recv(), 5))
        while frame["type"] != "pong":
            assert frame["type"] == "user_left", frame
            frame = json.loads(await asyncio.wait_for(bystander.recv(), 5))
