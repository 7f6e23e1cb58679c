"""Connection slots over a real daphne and a real client (issue 18, items 3 and 13).

* A socket's slots (the process's, the user's) are free once its close handshake
  has completed, even while the server still does its disconnect work.
* Anonymous ``/ws/echo/`` sockets have their own, smaller share of the process
  and a per-address cap: they cannot lock users out.
"""

import asyncio
import json
import secrets
import urllib.request

import pytest
from django.test import override_settings
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from realtime.limits import ConnectionSlots

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


async def outcome(url: str, address: str | None = None) -> object:
    """A new socket's answer to a ping, or its close code (closed at once if it got one)."""
    headers = {"X-Forwarded-For": address} if address else None
    ws = await connect(url, compression=None, open_timeout=10, additional_headers=headers)
    seen = await answer(ws)
    if seen != "pong":
        await ws.close()
    return seen, ws


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
    server = daphne_server(WS_MAX_CONNECTIONS_PER_USER="3", WS_MAX_CONNECTIONS="6",
                           WS_MAX_ANONYMOUS_CONNECTIONS="3")
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


@pytest.mark.daphne
async def test_anonymous_sockets_cannot_lock_users_out(daphne_server, names, token_for):
    """Echo sockets past their share of the process, or past their address's cap, get
    4013; users' chat and notifications sockets still connect, up to the process cap."""
    alice, bob, _ = names
    server = daphne_server(WS_MAX_CONNECTIONS="8", WS_MAX_ANONYMOUS_CONNECTIONS="3",
                           WS_MAX_CONNECTIONS_PER_ADDRESS="2", PROXY_HEADERS="true")
    echo = f"{server.ws_url}/ws/echo/"
    held = []

    async def anonymous(address: str) -> object:
        seen, ws = await outcome(echo, address)
        if seen == "pong":
            held.append(ws)
        return seen

    assert [await anonymous("10.0.0.1") for _ in range(3)] == ["pong", "pong", 4013]
    assert [await anonymous("10.0.0.2") for _ in range(2)] == ["pong", 4013]
    assert [await anonymous(f"10.0.1.{i}") for i in range(20)] == [4013] * 20

    chat = f"{server.ws_url}/ws/chat/lobby/?token={token_for(alice)}"
    notes = f"{server.ws_url}/ws/notifications/?token={token_for(bob)}"
    users = [await outcome(url) for url in [chat, notes, chat, notes, chat]]
    assert [seen for seen, _ in users] == ["pong"] * 5  # 3 + 5: the process is full
    assert (await outcome(notes))[0] == 4013
    assert (await anonymous("10.0.0.3")) == 4013

    await held.pop().close()  # users may take any free slot of the process
    users.append(await outcome(notes))
    assert users[-1][0] == "pong"
    assert (await anonymous("10.0.0.3")) == 4013
    await users.pop()[1].close()
    assert (await anonymous("10.0.0.3")) == "pong"
    await asyncio.gather(*(ws.close() for ws in held + [ws for _, ws in users]))


@override_settings(WS_MAX_CONNECTIONS=5, WS_MAX_ANONYMOUS_CONNECTIONS=3,
                   WS_MAX_CONNECTIONS_PER_ADDRESS=2)
def test_connection_slots_count_anonymous_sockets_apart():
    """The caps of ConnectionSlots; an address is forgotten with its last slot."""
    slots = ConnectionSlots()
    assert [slots.take(True, "a") for _ in range(3)] == [None, None, "anonymous connection "
                                                         "cap of one address"]
    assert slots.take(True, "b") is None
    assert slots.take(True, "c") == "anonymous connection cap of this process"
    assert [slots.take(False) for _ in range(3)] == [None, None,
                                                     "connection cap of this process"]
    slots.release(True, "a")
    slots.release(False)
    assert slots.take(False) is None
    for address in ("a", "b"):
        slots.release(True, address)
    assert (slots.total, slots.anonymous, slots.by_address) == (2, 0, {})
    with override_settings(WS_MAX_CONNECTIONS=0, WS_MAX_ANONYMOUS_CONNECTIONS=0,
                           WS_MAX_CONNECTIONS_PER_ADDRESS=0):
        assert all(slots.take(True, "a") is None for _ in range(50))
