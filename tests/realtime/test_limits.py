"""Limits of every endpoint (PROTOCOL.md "Errors and limits") and token refresh/expiry.

Run under WebsocketCommunicator: echo for the limits that need no user, the test
endpoint of ``tests.realtime.support`` for the ones that do.
"""

import asyncio
import contextlib
import json
import secrets
import time
from datetime import UTC, datetime
from types import SimpleNamespace

import jwt
import pytest
from channels.testing import WebsocketCommunicator
from django.test import override_settings

from project.asgi import application
from realtime import consumers, limits
from realtime.echo import EchoConsumer
from realtime.hub import get_hub
from tests.realtime.support import close_code, communicator, forge, hold, receive_json

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def users(make_user) -> dict:
    """Active alice and bob, inactive dormant."""
    return {"alice": make_user("alice"), "bob": make_user("bob"),
            "dormant": make_user("dormant", active=False)}


async def echo() -> WebsocketCommunicator:
    comm = WebsocketCommunicator(application, "/ws/echo/")
    connected, _ = await comm.connect()
    assert connected
    return comm


async def send(comm: WebsocketCommunicator, text: str | None = None,
               data: bytes | None = None) -> None:
    """Send a frame the way daphne delivers it."""
    if text is not None:
        await comm.send_input({"type": "websocket.receive", "text": text})
    else:
        await comm.send_input({"type": "websocket.receive", "bytes": data})


async def expect_closed(comm: WebsocketCommunicator, code: int) -> None:
    assert await close_code(comm) == code
    await send(comm, "after the close")
    assert await comm.receive_nothing(timeout=0.1)
    await comm.disconnect()


# --- Message size ------------------------------------------------------------------


@override_settings(WS_MAX_MESSAGE_BYTES=10)
@pytest.mark.parametrize(
    "frame",
    [{"text": "a" * 10}, {"text": "é" * 5}, {"text": "€" * 3}, {"text": "🎉" * 2},
     {"data": b"\x00" * 10}],
)
async def test_frame_of_exactly_the_limit_is_used(frame):
    """A frame of exactly WS_MAX_MESSAGE_BYTES UTF-8 bytes is handled normally."""
    comm = await echo()
    await send(comm, **frame)
    output = await comm.receive_output(timeout=3)
    if "text" in frame:
        assert output["text"] == "Echo: " + frame["text"]
    else:
        assert output["bytes"] == frame["data"]
    await comm.disconnect()


@override_settings(WS_MAX_MESSAGE_BYTES=10)
@pytest.mark.parametrize(
    "frame",
    [{"text": "a" * 11}, {"text": "é" * 6}, {"text": "a" * 9 + "é"}, {"text": "🎉" * 3},
     {"data": b"\x00" * 11}, {"text": "x" * 100_000}],
)
async def test_frame_over_the_limit_closes_4009(frame):
    """A frame over WS_MAX_MESSAGE_BYTES UTF-8 bytes (not code points) closes 4009, unanswered."""
    comm = await echo()
    await send(comm, **frame)
    await expect_closed(comm, 4009)


@override_settings(WS_MAX_MESSAGE_BYTES=10)
async def test_oversized_frame_is_closed_before_it_is_parsed(users, token_for):
    """On a JSON endpoint an oversized frame closes 4009 instead of an invalid_json error."""
    comm = communicator(f"/ws/test/?token={token_for('alice')}")
    await comm.connect()
    assert (await receive_json(comm))["type"] == "hello"
    await send(comm, "{not json at all")
    await expect_closed(comm, 4009)


@override_settings(WS_MAX_MESSAGE_BYTES=0)
async def test_size_limit_zero_disables_it():
    """WS_MAX_MESSAGE_BYTES=0 lets any frame through."""
    comm = await echo()
    await send(comm, "x" * 200_000)
    assert await comm.receive_from() == "Echo: " + "x" * 200_000
    await comm.disconnect()


@override_settings(WS_MAX_MESSAGE_BYTES=10)
@pytest.mark.parametrize("text", ["\ud800", "\udfff" * 3, "a\ud83d", "\ud800" * 20])
async def test_lone_surrogates_in_text_do_not_crash_the_size_check(text):
    """Text that is not valid Unicode (only possible in-process) is echoed or closed 4009."""
    comm = await echo()
    await send(comm, text)
    output = await comm.receive_output(timeout=3)
    assert output in ({"type": "websocket.send", "text": "Echo: " + text},
                      {"type": "websocket.close", "code": 4009})
    await comm.disconnect()


# --- Rate limit ------------------------------------------------------------------------


@pytest.fixture
def clock(monkeypatch):
    """Freeze the token bucket's clock; ``clock.advance(s)`` moves it."""
    state = SimpleNamespace(now=1000.0)
    state.advance = lambda seconds: setattr(state, "now", state.now + seconds)
    monkeypatch.setattr(limits, "time", SimpleNamespace(monotonic=lambda: state.now))
    return state


async def rate_limited(comm: WebsocketCommunicator) -> None:
    frame = await receive_json(comm)
    assert frame["type"] == "error" and frame["code"] == "rate_limited", frame
    assert isinstance(frame["message"], str)


@override_settings(WS_RATE_LIMIT=1, WS_RATE_BURST=3)
async def test_flood_gets_rate_limited_then_closed_4008(clock):
    """Past the burst every frame is dropped with rate_limited; BURST drops in a row close 4008."""
    comm = await echo()
    for i in range(3):
        await send(comm, str(i))
        assert await comm.receive_from() == f"Echo: {i}"
    for _ in range(3):
        await send(comm, "dropped")
        await rate_limited(comm)
    await expect_closed(comm, 4008)


@override_settings(WS_RATE_LIMIT=1, WS_RATE_BURST=3)
async def test_an_accepted_frame_resets_the_drop_count(clock):
    """Drops in a row count from the last accepted frame: 2 drops, 1 accepted, 2 drops stay open."""
    comm = await echo()
    for i in range(3):
        await send(comm, str(i))
        assert await comm.receive_from() == f"Echo: {i}"
    for _round in range(3):
        for _ in range(2):
            await send(comm, "dropped")
            await rate_limited(comm)
        clock.advance(1.0)  # one token back
        await send(comm, "accepted")
        assert await comm.receive_from() == "Echo: accepted"
    await send(comm, "dropped")
    await rate_limited(comm)
    clock.advance(0.5)  # half a token: still dropped
    await send(comm, "dropped")
    await rate_limited(comm)
    await send(comm, "dropped")
    await rate_limited(comm)
    await expect_closed(comm, 4008)


@override_settings(WS_RATE_LIMIT=2, WS_RATE_BURST=4)
async def test_bucket_refills_at_the_rate_up_to_the_burst(clock):
    """Tokens come back at WS_RATE_LIMIT per second, never more than WS_RATE_BURST."""
    comm = await echo()
    for _ in range(4):
        await send(comm, "x")
        assert await comm.receive_from() == "Echo: x"
    clock.advance(60)  # a minute idle refills only up to the burst
    for _ in range(4):
        await send(comm, "y")
        assert await comm.receive_from() == "Echo: y"
    await send(comm, "z")
    await rate_limited(comm)
    clock.advance(0.5)  # one token at 2/s
    await send(comm, "w")
    assert await comm.receive_from() == "Echo: w"
    await comm.disconnect()


@override_settings(WS_RATE_LIMIT=1, WS_RATE_BURST=2)
async def test_pings_and_binary_frames_count_too(clock, users, token_for):
    """Every client frame counts: pings on a JSON endpoint, binary frames on echo."""
    comm = communicator(f"/ws/test/?token={token_for('alice')}")
    await comm.connect()
    assert (await receive_json(comm))["type"] == "hello"
    for _ in range(2):
        await send(comm, "ping")
        assert await receive_json(comm) == {"type": "pong"}
    await send(comm, '{"type": "ping"}')
    await rate_limited(comm)
    await comm.disconnect()

    comm = await echo()
    for _ in range(2):
        await send(comm, data=b"\x01")
        assert (await comm.receive_output(timeout=3))["bytes"] == b"\x01"
    await send(comm, data=b"\x01")
    await rate_limited(comm)
    await comm.disconnect()


@override_settings(WS_RATE_LIMIT=0, WS_RATE_BURST=3)
async def test_rate_limit_zero_disables_it():
    """WS_RATE_LIMIT=0 lets any number of frames through."""
    comm = await echo()
    for i in range(50):
        await send(comm, str(i))
    assert [await comm.receive_from() for _ in range(50)] == [f"Echo: {i}" for i in range(50)]
    await comm.disconnect()


# --- Connection caps ---------------------------------------------------------------------


@override_settings(WS_MAX_CONNECTIONS=2)
async def test_process_connection_cap_closes_4013_after_accept():
    """Over WS_MAX_CONNECTIONS a connection is accepted, then closed 4013; a freed slot works."""
    first, second = await echo(), await echo()
    third = WebsocketCommunicator(application, "/ws/echo/")
    connected, _ = await third.connect()
    assert connected
    await expect_closed(third, 4013)
    for comm in (first, second):
        await send(comm, "ok")
        assert await comm.receive_from() == "Echo: ok"
    await first.disconnect()
    fourth = await echo()
    await send(fourth, "ok")
    assert await fourth.receive_from() == "Echo: ok"
    await second.disconnect()
    await fourth.disconnect()


@pytest.fixture
def own_users(make_user) -> tuple[str, str]:
    """Two active users no other test uses: under Redis the registry outlives a test,
    and daphne processes of earlier tests may not have unregistered their sockets yet."""
    names = ("cap-a-" + secrets.token_hex(3), "cap-b-" + secrets.token_hex(3))
    for name in names:
        make_user(name)
    return names


@override_settings(WS_MAX_CONNECTIONS_PER_USER=2)
async def test_per_user_cap_closes_4013_across_endpoints(own_users, token_for):
    """Over WS_MAX_CONNECTIONS_PER_USER (all endpoints) a user's connection closes 4013."""
    name, other = own_users
    token = token_for(name)
    first = communicator(f"/ws/test/?token={token}")
    await first.connect()
    assert (await receive_json(first))["type"] == "hello"
    notes = WebsocketCommunicator(application, f"/ws/notifications/?token={token}")
    connected, _ = await notes.connect()
    assert connected
    await send(notes, "ping")
    assert await receive_json(notes) == {"type": "pong"}

    third = communicator(f"/ws/test/?token={token}")
    await third.connect()
    await expect_closed(third, 4013)

    second_user = communicator(f"/ws/test/?token={token_for(other)}")
    await second_user.connect()
    assert await receive_json(second_user) == {"type": "hello", "user_id": other}
    unauthenticated = await echo()  # echo connections are not the user's

    await notes.disconnect()
    again = communicator(f"/ws/test/?token={token}")
    await again.connect()
    assert await receive_json(again) == {"type": "hello", "user_id": name}
    for comm in (first, second_user, again, unauthenticated):
        await comm.disconnect()


@override_settings(WS_MAX_CONNECTIONS_PER_USER=1)
async def test_failed_auth_does_not_use_a_slot(own_users, token_for):
    """Connections closed for bad credentials count against no cap."""
    name, _ = own_users
    for token in ("garbage", forge({"user_id": name, "iat": 1, "exp": 2})):
        bad = communicator(f"/ws/test/?token={token}")
        await bad.connect()
        assert await close_code(bad) in (4001, 4002)
        await bad.disconnect()
    good = communicator(f"/ws/test/?token={token_for(name)}")
    await good.connect()
    assert (await receive_json(good))["type"] == "hello"
    await good.disconnect()


# --- Token refresh and expiry -------------------------------------------------------------


async def authed(token: str) -> WebsocketCommunicator:
    comm = communicator(f"/ws/test/?token={token}")
    connected, _ = await comm.connect()
    assert connected
    assert (await receive_json(comm))["type"] == "hello"
    return comm


async def auth(comm: WebsocketCommunicator, frame: dict) -> dict:
    await send(comm, json.dumps(frame))
    return await receive_json(comm)


def expected_expiry(token: str) -> str:
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(exp))


async def test_refresh_with_a_valid_token_gets_auth_ok(users, token_for):
    """An auth frame with a valid token of the same user gets auth_ok with its expiry."""
    comm = await authed(token_for("alice"))
    fresh = token_for("alice", ttl=7200)
    assert await auth(comm, {"type": "auth", "token": fresh}) == {
        "type": "auth_ok", "expires_at": expected_expiry(fresh)
    }
    await comm.disconnect()


async def test_refresh_with_a_bad_token_gets_invalid_token(users, token_for):
    """Expired, invalid, another user's or an inactive user's token: error invalid_token."""
    comm = await authed(token_for("alice"))
    now = int(time.time())
    for token in [
        forge({"user_id": "alice", "iat": now - 100, "exp": now - 10}),
        forge({"user_id": "alice", "iat": now, "exp": now + 60}, key="other-secret-" + "k" * 40),
        forge({"user_id": "alice", "exp": now + 60}),
        token_for("bob"),
        token_for("dormant"),
        token_for("ghost"),
        "garbage",
        "",
        "\ud800",
    ]:
        answer = await auth(comm, {"type": "auth", "token": token})
        assert answer["type"] == "error" and answer["code"] == "invalid_token", token
    await send(comm, "ping")
    assert await receive_json(comm) == {"type": "pong"}
    await comm.disconnect()


@pytest.mark.parametrize("frame", [{"type": "auth"}, {"type": "auth", "token": None},
                                   {"type": "auth", "token": 5},
                                   {"type": "auth", "token": ["x"]}])
async def test_auth_frame_without_a_string_token_gets_invalid_message(users, token_for,
                                                                      frame):
    """An auth frame without a string token gets invalid_message; the connection stays."""
    comm = await authed(token_for("alice"))
    answer = await auth(comm, frame)
    assert answer["type"] == "error" and answer["code"] == "invalid_message"
    await comm.disconnect()


async def test_token_expiry_closes_4001_unless_refreshed(users, token_for):
    """A token's connection closes 4001 within 5 s of expiry; failed refreshes keep the old
    token, a successful one keeps the connection past the first token's expiry."""
    short = token_for("alice", ttl=2)
    exp = jwt.decode(short, options={"verify_signature": False})["exp"]
    plain, failed, refreshed = await authed(short), await authed(short), await authed(short)
    answer = await auth(failed, {"type": "auth", "token": token_for("bob")})
    assert answer["code"] == "invalid_token"
    assert (await auth(refreshed, {"type": "auth", "token": token_for("alice", 60)}))["type"] \
        == "auth_ok"

    for comm in (plain, failed):
        assert await close_code(comm) == 4001
        assert time.time() < exp + 5
    await asyncio.sleep(max(0.0, exp + 0.5 - time.time()))
    await send(refreshed, "ping")
    assert await receive_json(refreshed) == {"type": "pong"}
    for comm in (plain, failed, refreshed):
        await comm.disconnect()


async def test_session_connection_does_not_expire(users):
    """A session-cookie connection has no token expiry to close it."""
    from channels.db import database_sync_to_async
    from django.test import Client

    user = users["alice"]

    def login() -> str:
        client = Client()
        client.force_login(user)
        return client.cookies["sessionid"].value

    session = await database_sync_to_async(login)()
    comm = communicator(headers=[(b"cookie", f"sessionid={session}".encode())])
    await comm.connect()
    assert (await receive_json(comm))["user_id"] == "alice"
    consumer_expiry = [c._expiry for c in _consumers_of("alice")]
    assert consumer_expiry == [None]
    await comm.disconnect()


def _consumers_of(username: str) -> list:
    from realtime.hub import _hubs

    hub = _hubs[asyncio.get_running_loop()]
    return list(hub.users_on("test").get(username, ()))


class PausedWriter:
    """A writer whose server's own ``send`` would wait (uvicorn over its high-water mark)."""

    paused = True
    aborted = False

    def abort(self) -> None:
        self.aborted = True


async def test_a_close_that_would_wait_for_a_stalled_reader_goes_on_aside(monkeypatch):
    """The caller (a room's fan-out, the notification feed) does not wait for the close;
    a client that still takes nothing after CLOSE_WAIT_SECONDS is dropped."""
    monkeypatch.setattr(consumers, "CLOSE_WAIT_SECONDS", 0.05)
    consumer = EchoConsumer()
    consumer._direct = PausedWriter()
    closes = []

    async def close_waiting_for_the_reader(code=None):
        closes.append(code)
        await asyncio.Event().wait()

    consumer.close = close_waiting_for_the_reader
    await asyncio.wait_for(consumer.close_with(consumers.CloseCode.SLOW_CONSUMER), 1)
    assert consumer.closing
    await asyncio.wait_for(consumer._closer, 1)
    assert closes == [4010] and consumer._direct.aborted


async def test_the_close_at_token_expiry_is_held_until_it_is_done():
    """Nothing awaits the close that a token's expiry starts, and the event loop holds a
    task only weakly: the consumers module holds it until it has closed."""
    consumer = EchoConsumer()
    consumer._direct = PausedWriter()
    consumer._direct.paused = False
    release, closes = asyncio.Event(), []

    async def close(code=None):
        closes.append(code)
        await release.wait()

    consumer.close = close
    before = set(consumers._closing_down)
    consumer.schedule_expiry(datetime.now(UTC))
    await asyncio.sleep(0.2)  # the timer fires 0.05 s after the expiry
    held = consumers._closing_down - before
    assert closes == [4001] and len(held) == 1
    (closing,) = held
    release.set()
    await asyncio.wait_for(closing, 1)
    assert closing not in consumers._closing_down


async def test_a_close_the_server_can_send_at_once_is_awaited():
    consumer = EchoConsumer()
    consumer._direct = PausedWriter()
    consumer._direct.paused = False
    closes = []

    async def close(code=None):
        closes.append(code)

    consumer.close = close
    await consumer.close_with(consumers.CloseCode.SLOW_CONSUMER)
    assert closes == [4010] and consumer._closer is None and not consumer._direct.aborted


@override_settings(WS_MAX_CONNECTIONS_PER_USER=1)
async def test_a_connection_cancelled_while_it_takes_its_user_slot_gives_it_back(
        own_users, token_for, monkeypatch):
    """daphne cancels an application that outlives its close timeout, also one still in
    its handshake (a backlog). A cancel that lands after the registry took the user's slot,
    before the consumer heard so, still gives the slot back: the user's next connection
    is accepted."""
    name, _ = own_users
    took_it, _ = hold(monkeypatch, type((await get_hub()).registry), "register",
                      after_call=True)
    first = communicator(f"/ws/test/?token={token_for(name)}")
    connecting = asyncio.ensure_future(first.connect())
    await asyncio.wait_for(took_it.wait(), 5)
    first.future.cancel()  # what daphne's application checker does
    with contextlib.suppress(asyncio.CancelledError):
        await connecting
    monkeypatch.undo()  # the next connection registers without the gate
    await asyncio.gather(*consumers._closing_down)
    again = communicator(f"/ws/test/?token={token_for(name)}")
    await again.connect()
    assert await receive_json(again) == {"type": "hello", "user_id": name}
    await again.disconnect()
