"""The contract over a real daphne (``manage.py serve``) and a real WebSocket client.

Auth outcomes use ``/ws/notifications/``, the routing's endpoint that needs a user;
limits use ``/ws/echo/``. Each test starts one server and shares it between cases.
"""

import asyncio
import json
import secrets
import time

import pytest
from django.test import Client
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.realtime.support import forge, raw_token, unsigned

pytestmark = [
    pytest.mark.daphne,
    pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning"),
]

PING = json.dumps({"type": "ping"})


def now() -> int:
    return int(time.time())


async def outcome(url: str, headers: dict[str, str] | None = None,
                  origin: str | None = None) -> object:
    """What a client sees: the handshake's HTTP status, a close code, or the first frame."""
    try:
        async with connect(url, additional_headers=headers, origin=origin,
                           compression=None, open_timeout=10) as ws:
            try:
                await ws.send(PING)
                return ("frame", await asyncio.wait_for(ws.recv(), 5))
            except ConnectionClosed as exc:
                return exc.rcvd.code if exc.rcvd else None
    except InvalidStatus as exc:
        return exc.response.status_code


@pytest.fixture
def people(make_user):
    """A user of this test only, with a browser session cookie, and an inactive user.

    Under Redis the connection registry outlives a daphne process that is stopped
    before it unregisters its sockets, so no other test shares this user.
    """
    alice = make_user("daphne-" + secrets.token_hex(3))
    make_user("dormant", active=False)
    client = Client()
    client.force_login(alice)
    return {"cookie": f"sessionid={client.cookies['sessionid'].value}", "name": alice.username}


async def test_auth_outcomes_over_daphne(daphne_server, people, token_for):
    """Over daphne: valid query/header/session connect; bad ones get 4001/4002/4003 only.

    Mostly on /ws/notifications/, a few cases on /ws/chat/<room>/.

    The server runs at LOG_LEVEL=DEBUG, and its whole log holds none of the tokens
    used, no session id and no traceback.
    """
    server = daphne_server(LOG_LEVEL="DEBUG")
    name = people["name"]
    notes = server.ws_url + "/ws/notifications/"
    good = token_for(name)
    pong = ("frame", json.dumps({"type": "pong"}, separators=(",", ":")))
    tokens_used = [good]

    assert await outcome(f"{notes}?token={good}") == pong
    assert await outcome(notes, {"Authorization": f"Bearer {good}"}) == pong
    assert await outcome(notes, {"Cookie": people["cookie"]}) == pong
    assert await outcome(f"{notes}?token=", {"Authorization": f"Bearer {good}"}) == pong

    expired = forge({"user_id": name, "iat": now() - 100, "exp": now() - 10})
    expired_ghost = forge({"user_id": "ghost", "iat": now() - 100, "exp": now() - 10})
    bad = {
        "bad-signature": forge({"user_id": name, "iat": now(), "exp": now() + 60},
                               key="another-secret-" + "q" * 40),
        "alg-none": unsigned({"user_id": name, "iat": now(), "exp": now() + 60}),
        "hs512": forge({"user_id": name, "iat": now(), "exp": now() + 60},
                       algorithm="HS512"),
        "rs256": raw_token({"alg": "RS256", "typ": "JWT"},
                           {"user_id": name, "iat": now(), "exp": now() + 60}),
        "no-iat": forge({"user_id": name, "exp": now() + 60}),
        "no-exp": forge({"user_id": name, "iat": now()}),
        "no-user_id": forge({"iat": now(), "exp": now() + 60}),
        "unknown-user": forge({"user_id": "ghost", "iat": now(), "exp": now() + 60}),
        "inactive-user": forge({"user_id": "dormant", "iat": now(), "exp": now() + 60}),
    }
    tokens_used += [expired, expired_ghost, *bad.values()]

    assert await outcome(f"{notes}?token={expired}") == 4001
    assert await outcome(notes, {"Authorization": f"Bearer {expired_ghost}"}) == 4001
    for kind, token in bad.items():
        assert await outcome(f"{notes}?token={token}") == 4002, kind
        assert await outcome(notes, {"Authorization": f"Bearer {token}"}) == 4002, kind
    assert await outcome(notes, {"Authorization": f"Token {good}"}) == 4002
    assert await outcome(notes, {"Authorization": "Bearer"}) == 4002
    assert await outcome(f"{notes}?token=garbage", {"Authorization": f"Bearer {good}"}) == 4002
    assert await outcome(notes, {"Authorization": "Bearer x", "Cookie": people["cookie"]}) == 4002
    assert await outcome(notes) == 4003
    assert await outcome(f"{notes}?token=") == 4003

    chat = server.ws_url + "/ws/chat/lobby/"  # the same rules on the other endpoint
    first = await outcome(f"{chat}?token={good}")
    assert first[0] == "frame" and json.loads(first[1])["type"] == "history"
    assert await outcome(f"{chat}?token={expired}") == 4001
    assert await outcome(chat, {"Authorization": f"Bearer {bad['alg-none']}"}) == 4002
    assert await outcome(chat, {"Cookie": people["cookie"], "Authorization": "Basic x"}) == 4002
    assert await outcome(chat) == 4003

    log = server.output()
    assert "WSCONNECT" in log or "notifications" in log  # the log is really there
    for token in tokens_used:
        assert token not in log
        signature = token.split(".")[2]
        assert not signature or signature not in log  # not even the signature
    assert people["cookie"].partition("=")[2] not in log  # nor the session id
    assert "Traceback" not in log


async def test_origin_and_unknown_paths_over_daphne(daphne_server):
    """Over daphne: foreign and null Origins and unknown paths get 403/404 at the handshake."""
    server = daphne_server()
    echo = server.ws_url + "/ws/echo/"
    echoed = ("frame", "Echo: " + PING)
    port = server.port

    assert await outcome(echo) == echoed
    assert await outcome(echo, origin=f"http://127.0.0.1:{port}") == echoed
    assert await outcome(echo, origin="http://localhost:1234") == echoed
    assert await outcome(echo, origin="http://evil.example") == 403
    assert await outcome(echo, origin=f"http://127.0.0.1.evil.example:{port}") == 403
    assert await outcome(echo, origin="null") == 403
    # Unparsable: refused at the handshake (autobahn itself answers 400), never a 500.
    assert await outcome(echo, origin="http://[::1") in (400, 403)
    assert await outcome(server.ws_url + "/ws/notifications/", origin="http://evil.example") \
        == 403

    for path in ["/ws/nowhere/", "/ws/echo", "/ws/echo/extra/", "/ws/", "/elsewhere/",
                 "/ws/chat/", "/ws/chat/" + "x" * 65 + "/", "/ws/chat/a%20b/",
                 "/ws/notifications/x/"]:
        assert await outcome(server.ws_url + path) in (403, 404), path

    # The server still serves, and nothing above produced a 500 or a traceback.
    assert await outcome(echo) == echoed
    log = server.output()
    assert "Traceback" not in log
    assert " 500 " not in log


async def recv_all(ws, timeout: float = 5) -> tuple[list, int | None]:
    """Every frame until the server closes, and the close code."""
    frames = []
    try:
        while True:
            frames.append(await asyncio.wait_for(ws.recv(), timeout))
    except ConnectionClosed as exc:
        return frames, exc.rcvd.code if exc.rcvd else None


async def test_message_size_limits_over_daphne(daphne_server):
    """Over daphne: <= WS_MAX_MESSAGE_BYTES UTF-8 bytes echo; more closes 4009; > 4x drops."""
    server = daphne_server(WS_MAX_MESSAGE_BYTES="1000")
    echo = server.ws_url + "/ws/echo/"

    async with connect(echo, compression=None) as ws:
        await ws.send(b"")  # an empty binary frame gets nothing back
        await ws.send("after empty")
        assert await ws.recv() == "Echo: after empty"
        await ws.send("a" * 1000)
        assert await ws.recv() == "Echo: " + "a" * 1000
        await ws.send("é" * 500)  # 500 code points, 1000 bytes
        assert await ws.recv() == "Echo: " + "é" * 500
        await ws.send(b"\x01" * 1000)
        assert await ws.recv() == b"\x01" * 1000

    for frame in ["a" * 1001, "é" * 501, "🎉" * 251, b"\x01" * 1001]:
        async with connect(echo, compression=None) as ws:
            await ws.send(frame)
            assert await recv_all(ws) == ([], 4009), repr(frame[:3])

    async with connect(echo, compression=None) as bystander:
        async with connect(echo, compression=None) as ws:
            await ws.send("a" * 4001)  # beyond daphne's ceiling of 4x the limit
            frames, _code = await recv_all(ws)
            assert frames == []
        await bystander.send("still served")
        assert await bystander.recv() == "Echo: still served"
    async with connect(echo, compression=None) as ws:
        await ws.send("new client")
        assert await ws.recv() == "Echo: new client"
    assert "Traceback" not in server.output()


async def test_flood_over_daphne(daphne_server):
    """Over daphne: a flood gets echoes, then rate_limited errors, then close 4008."""
    server = daphne_server(WS_RATE_LIMIT="1", WS_RATE_BURST="3")
    echo = server.ws_url + "/ws/echo/"
    async with connect(echo, compression=None) as ws:
        for i in range(30):
            try:
                await ws.send(str(i))
            except ConnectionClosed:
                break
        frames, code = await recv_all(ws)
    assert code == 4008
    echoes = [f for f in frames if f.startswith("Echo: ")]
    errors = [json.loads(f) for f in frames if not f.startswith("Echo: ")]
    assert len(echoes) >= 3
    assert frames[: len(echoes)] == echoes, "echoes come first, then the errors"
    assert errors and all(e["type"] == "error" and e["code"] == "rate_limited" for e in errors)
    assert len(errors) <= 3
    async with connect(echo, compression=None) as ws:
        await ws.send("calm")
        assert await ws.recv() == "Echo: calm"


async def test_token_expiry_and_refresh_over_daphne(daphne_server, people, token_for):
    """Over daphne: a token's connection closes 4001 after expiry unless refreshed."""
    server = daphne_server()
    name = people["name"]
    notes = server.ws_url + "/ws/notifications/"
    started = time.time()
    short = token_for(name, ttl=2)
    expires = json.loads(
        json.dumps(__import__("jwt").decode(short, options={"verify_signature": False}))
    )["exp"]
    async with (
        connect(f"{notes}?token={short}") as plain,
        connect(f"{notes}?token={short}") as refreshed,
        connect(notes, additional_headers={"Cookie": people["cookie"]}) as by_session,
    ):
        await refreshed.send(json.dumps({"type": "auth", "token": token_for(name, ttl=60)}))
        answer = json.loads(await refreshed.recv())
        assert answer["type"] == "auth_ok"
        await plain.send(json.dumps({"type": "auth", "token": "garbage"}))
        answer = json.loads(await plain.recv())
        assert answer["type"] == "error" and answer["code"] == "invalid_token"

        frames, code = await recv_all(plain, timeout=10)
        assert (frames, code) == ([], 4001)
        assert time.time() < expires + 5
        assert time.time() > started + 0.5
        for ws in (refreshed, by_session):
            await ws.send(PING)
            assert json.loads(await ws.recv()) == {"type": "pong"}


@pytest.fixture
def span_user(make_user, token_for) -> str:
    """The token of a user of this test only."""
    return token_for(make_user("span-" + secrets.token_hex(3)).username)


async def test_per_user_cap_spans_processes(daphne_server, redis_url, span_user):
    """With Redis, WS_MAX_CONNECTIONS_PER_USER counts the user's sockets on every process."""
    servers = [daphne_server(WS_MAX_CONNECTIONS_PER_USER="2") for _ in range(2)]
    urls = [f"{s.ws_url}/ws/notifications/?token={span_user}" for s in servers]
    async with connect(urls[0]) as one, connect(urls[1]) as two:
        for ws in (one, two):
            await ws.send(PING)
            assert json.loads(await ws.recv()) == {"type": "pong"}
        assert await outcome(urls[0]) == 4013
        assert await outcome(urls[1]) == 4013
    # The closed sockets are unregistered asynchronously: a slot frees up shortly.
    results = []
    for _ in range(50):
        results.append(await outcome(urls[1]))
        if results[-1] != 4013:
            break
        await asyncio.sleep(0.2)
    assert results[-1] == ("frame", json.dumps({"type": "pong"}, separators=(",", ":"))), results
