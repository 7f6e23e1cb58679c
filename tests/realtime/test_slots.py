"""Connection slots over a real daphne and a real client (issue 18, item 13).

A socket's slots (the process's, the user's) are free once its close handshake
has completed, even while the server still does its disconnect work.
"""

import asyncio
import json
import secrets
import urllib.request

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

pytestmark = pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")

PING = json.dumps({"type": "ping"})
PONG = json.dumps({"type": "pong"}, separators=(",", ":"))


async def answer(ws, ack: bool = False) -> object:
    """What a socket sees after a ping: ``"pong"`` or its close code.

    Frames before the pong (history, user_joined, NOTEs) are skipped; with
    ``ack`` the NOTEs are acknowledged first (then the ack is pending on the server).
    """
    try:
        await ws.send(PING)
        notes = []
        while True:
            frame = await asyncio.wait_for(ws.recv(), 5)
            if frame.startswith("{") and json.loads(frame)["type"] == "notification":
                notes.append(json.loads(frame)["id"])
            elif frame in (PONG, "Echo: " + PING):
                if not (ack and notes):
                    return "pong"
                await ws.send(json.dumps({"type": "ack", "ids": notes}))
                await ws.send(PING)
                notes = []
    except ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd else None


async def opened(url: str, ack: bool = False, **kwargs):
    ws = await connect(url, compression=None, open_timeout=10, **kwargs)
    assert await answer(ws, ack) == "pong"
    return ws


def notify(server, user: str, staff_token: str) -> None:
    request = urllib.request.Request(
        f"{server.url}/api/notify/{user}", data=b'{"n": 1}', method="POST",
        headers={"Authorization": f"Bearer {staff_token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 202


@pytest.fixture
def names(make_user) -> tuple[str, str, str]:
    """Two users and a staff user of this test only (under Redis the registry outlives
    a test)."""
    tag = secrets.token_hex(3)
    return (make_user("alice-" + tag).username, make_user("bob-" + tag).username,
            make_user("boss-" + tag, staff=True).username)


@pytest.mark.daphne
async def test_closed_slots_are_free_at_once(daphne_server, names, token_for):
    """Open as many sockets as the caps allow, close them all, reconnect at once: no 4013.

    The user's two notification sockets have acked a NOTE, so their disconnect
    writes the acks; the chat socket's leaves its room: the slots are free before that.
    """
    name, _, boss = names
    server = daphne_server(WS_MAX_CONNECTIONS_PER_USER="3", WS_MAX_CONNECTIONS="6")
    token = token_for(name)
    notes = f"{server.ws_url}/ws/notifications/?token={token}"
    urls = [notes, notes, f"{server.ws_url}/ws/chat/slots/?token={token}"]
    urls += [f"{server.ws_url}/ws/echo/"] * 3
    for _ in range(6):
        sockets = [await opened(url) for url in urls]
        await asyncio.to_thread(notify, server, name, token_for(boss))
        assert [await answer(ws, ack=True) for ws in sockets] == ["pong"] * 6
        await asyncio.gather(*(ws.close() for ws in sockets))
        again = await asyncio.gather(*(connect(url, compression=None, open_timeout=10)
                                       for url in urls))
        assert await asyncio.gather(*(answer(ws) for ws in again)) == ["pong"] * 6
        await asyncio.gather(*(ws.close() for ws in again))
