"""The application served by uvicorn, the documented alternative to daphne (README).

The contract does not depend on the server: the same consumers write their
frames to uvicorn's transport instead of daphne's socket (``realtime.wire``).
One server, started with the README's command, answers every case.
"""

import asyncio
import json

import pytest
from channels.db import database_sync_to_async
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.conftest import UVICORN

pytest.importorskip("uvicorn")

pytestmark = [pytest.mark.daphne]


@pytest.fixture
def uvicorn_server(daphne_server):
    return daphne_server(command=UVICORN)


async def test_the_contract_holds_under_uvicorn(uvicorn_server, make_user, token_for):
    server = uvicorn_server
    async with connect(f"{server.ws_url}/ws/echo/") as echo:
        await echo.send("hi")
        assert await asyncio.wait_for(echo.recv(), 5) == "Echo: hi"
        await echo.send(b"\x00\x01")
        assert await asyncio.wait_for(echo.recv(), 5) == b"\x00\x01"

    async with connect(f"{server.ws_url}/ws/echo/") as echo:
        await echo.send("x" * 65537)  # above WS_MAX_MESSAGE_BYTES, below uvicorn's ceiling
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(echo.recv(), 5)
        assert closed.value.rcvd.code == 4009

    async with connect(f"{server.ws_url}/ws/chat/lobby/") as anonymous:
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(anonymous.recv(), 5)
        assert closed.value.rcvd.code == 4003

    await database_sync_to_async(make_user)("uvi")
    url = f"{server.ws_url}/ws/chat/lobby/?token={token_for('uvi')}"
    async with connect(url) as chat:
        assert json.loads(await asyncio.wait_for(chat.recv(), 5))["type"] == "history"
        assert json.loads(await asyncio.wait_for(chat.recv(), 5))["type"] == "user_joined"
        await chat.send(json.dumps({"type": "message", "content": "over uvicorn", "ref": "r1"}))
        frame = json.loads(await asyncio.wait_for(chat.recv(), 5))
        assert (frame["type"], frame["content"], frame["ref"]) == ("message", "over uvicorn", "r1")


async def test_the_notification_api_answers_on_a_kept_alive_connection(
    uvicorn_server, make_user, token_for
):
    """The edge writes each answer in one piece; uvicorn then serves the next request."""
    server = uvicorn_server
    await database_sync_to_async(make_user)("boss", staff=True)
    await database_sync_to_async(make_user)("uvi")
    host, port = server.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    ids = []
    try:
        for n in (1, 2):
            body = json.dumps({"n": n}).encode()
            writer.write(
                f"POST /api/notify/uvi HTTP/1.1\r\nHost: {host}\r\n"
                f"Authorization: Bearer {token_for('boss')}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            status_line, *lines = head.decode("latin-1").split("\r\n")[:-2]
            headers = dict(line.lower().split(": ", 1) for line in lines)
            answer = json.loads(await reader.readexactly(int(headers["content-length"])))
            assert status_line == "HTTP/1.1 202 Accepted"
            assert {"date", "server", "content-type", "x-frame-options"} <= set(headers)
            assert answer["status"] == "queued"
            ids.append(answer["id"])
    finally:
        writer.close()
    assert ids[1] > ids[0]
    async with connect(f"{server.ws_url}/ws/notifications/?token={token_for('uvi')}") as ws:
        frames = [json.loads(await asyncio.wait_for(ws.recv(), 5)) for _ in ids]
    assert [(f["id"], f["data"]) for f in frames] == [(ids[0], {"n": 1}), (ids[1], {"n": 2})]
