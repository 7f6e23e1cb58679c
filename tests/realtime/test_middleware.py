"""WebSocket identity (PROTOCOL.md "Identity"): credentials, their order, the outcomes.

Run under WebsocketCommunicator against ``tests.realtime.support.AuthedConsumer``, a
minimal endpoint that needs a user, behind the project's ``WebSocketAuthStack``.
"""

import asyncio
import time

import pytest
from channels.db import database_sync_to_async
from django.contrib.auth import get_user_model
from django.test import Client

from tests.realtime.support import (
    close_code,
    communicator,
    forge,
    raw_token,
    receive_json,
    unsigned,
)

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning"),
]


def now() -> int:
    return int(time.time())


def bearer(token: str) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", f"Bearer {token}".encode())]


def _login(user) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


async def session_cookie(user) -> list[tuple[bytes, bytes]]:
    """The Cookie header of a browser logged in as ``user``."""
    session_id = await database_sync_to_async(_login)(user)
    return [(b"cookie", f"sessionid={session_id}".encode())]


@pytest.fixture
def alice(make_user):
    """Alice, with active Bob and Carol and an inactive 'dormant' beside her."""
    for name in ("bob", "carol", "sleepy"):
        make_user(name)
    make_user("dormant", active=False)
    return make_user("alice")


async def expect_user(comm, username: str) -> None:
    """The connection is accepted and authenticated as ``username``."""
    connected, _ = await comm.connect()
    assert connected
    assert await receive_json(comm) == {"type": "hello", "user_id": username}
    await comm.send_to(text_data="ping")
    assert await receive_json(comm) == {"type": "pong"}
    await comm.disconnect()


async def expect_close(comm, code: int) -> None:
    """Accepted, then closed with ``code``; no frame before, none after a client frame."""
    connected, _ = await comm.connect()
    assert connected, "auth failures are accepted first, then closed"
    assert await close_code(comm) == code
    await comm.send_to(text_data="ping")
    assert await comm.receive_nothing(timeout=0.2)
    await comm.disconnect()


async def test_valid_token_in_query(alice, token_for):
    """A valid token in ?token= authenticates its user."""
    await expect_user(communicator(f"/ws/test/?token={token_for('alice')}"), "alice")


async def test_valid_token_in_bearer_header(alice, token_for):
    """A valid token in 'Authorization: Bearer' authenticates its user."""
    await expect_user(communicator(headers=bearer(token_for("alice"))), "alice")


async def test_session_cookie_authenticates(alice):
    """The Django session cookie of a logged-in browser authenticates its user."""
    await expect_user(communicator(headers=await session_cookie(alice)), "alice")


async def test_expired_token_closes_4001(alice):
    """A validly signed but expired token: accept, then close 4001."""
    token = forge({"user_id": "alice", "iat": now() - 100, "exp": now() - 10})
    await expect_close(communicator(f"/ws/test/?token={token}"), 4001)


async def test_expired_token_of_unknown_user_closes_4001():
    """An expired token closes 4001 whoever it names, even a user that does not exist."""
    token = forge({"user_id": "nobody", "iat": now() - 100, "exp": now() - 10})
    await expect_close(communicator(headers=bearer(token)), 4001)


BAD_TOKENS = {
    "bad-signature": lambda: forge({"user_id": "alice", "iat": now(), "exp": now() + 60},
                                   key="another-secret-" + "q" * 40),
    "alg-none": lambda: unsigned({"user_id": "alice", "iat": now(), "exp": now() + 60}),
    "hs512": lambda: forge({"user_id": "alice", "iat": now(), "exp": now() + 60},
                           algorithm="HS512"),
    "rs256-header": lambda: raw_token({"alg": "RS256", "typ": "JWT"},
                                      {"user_id": "alice", "iat": now(), "exp": now() + 60}),
    "no-iat": lambda: forge({"user_id": "alice", "exp": now() + 60}),
    "no-exp": lambda: forge({"user_id": "alice", "iat": now()}),
    "no-user_id": lambda: forge({"iat": now(), "exp": now() + 60}),
    "unknown-user": lambda: forge({"user_id": "nobody", "iat": now(), "exp": now() + 60}),
    "inactive-user": lambda: forge({"user_id": "dormant", "iat": now(), "exp": now() + 60}),
    "garbage": lambda: "garbage",
}


@pytest.mark.parametrize("source", ["query", "header"])
@pytest.mark.parametrize("kind", list(BAD_TOKENS))
async def test_invalid_token_closes_4002(alice, kind, source):
    """A bad signature, another algorithm, a missing claim, an unknown or inactive user: 4002."""
    token = BAD_TOKENS[kind]()
    if source == "query":
        comm = communicator(f"/ws/test/?token={token}")
    else:
        comm = communicator(headers=bearer(token))
    await expect_close(comm, 4002)


@pytest.mark.parametrize(
    "value",
    ["Basic YWxpY2U6cHc=", "Bearer", "Bearer ", "Token {token}", "{token}", "Bearer: {token}"],
)
async def test_authorization_header_not_bearer_closes_4002(alice, token_for, value):
    """An Authorization header that is not 'Bearer <token>' is bad credentials: 4002."""
    header = value.format(token=token_for("alice")).encode()
    await expect_close(communicator(headers=[(b"authorization", header)]), 4002)


async def test_bad_query_token_is_not_skipped_for_a_valid_header(alice, token_for):
    """A present but bad ?token= decides (4002) even with a valid Bearer header."""
    comm = communicator("/ws/test/?token=garbage", headers=bearer(token_for("alice")))
    await expect_close(comm, 4002)


async def test_expired_query_token_is_not_skipped_for_a_valid_header(alice, token_for):
    """A present but expired ?token= decides (4001) even with a valid Bearer header."""
    token = forge({"user_id": "alice", "iat": now() - 100, "exp": now() - 10})
    comm = communicator(f"/ws/test/?token={token}", headers=bearer(token_for("alice")))
    await expect_close(comm, 4001)


async def test_bad_header_is_not_skipped_for_a_valid_session(alice):
    """A present but bad Authorization header decides (4002) even with a valid session."""
    comm = communicator(headers=[*bearer("garbage"), *await session_cookie(alice)])
    await expect_close(comm, 4002)


async def test_query_token_comes_before_header_and_session(alice, token_for):
    """With several valid credentials the query token wins, then the header."""
    comm = communicator(
        f"/ws/test/?token={token_for('carol')}",
        headers=[*bearer(token_for("bob")), *await session_cookie(alice)],
    )
    await expect_user(comm, "carol")
    comm = communicator(headers=[*bearer(token_for("bob")), *await session_cookie(alice)])
    await expect_user(comm, "bob")


async def test_empty_query_token_counts_as_absent(alice, token_for):
    """An empty ?token= is no credential: the header is used, or 4003 without one."""
    await expect_user(communicator("/ws/test/?token=", headers=bearer(token_for("alice"))),
                      "alice")
    await expect_close(communicator("/ws/test/?token="), 4003)


async def test_no_credentials_closes_4003():
    """No token, no Authorization header and no session: accept, then close 4003."""
    await expect_close(communicator(), 4003)


async def test_session_cookie_without_login_closes_4003():
    """A session cookie that names no logged-in user is no credential: 4003."""
    await expect_close(communicator(headers=[(b"cookie", b"sessionid=nonsense")]), 4003)


async def test_inactive_users_session_does_not_authenticate(alice):
    """The session of a user made inactive since login does not authenticate (4003)."""
    user = await get_user_model().objects.aget(username="sleepy")
    headers = await session_cookie(user)
    user.is_active = False
    await _save(user)
    await expect_close(communicator(headers=headers), 4003)


async def _save(user) -> None:
    await database_sync_to_async(user.save)()


# --- Origin --------------------------------------------------------------------------


async def origin_outcome(origin: bytes | None) -> tuple[bool, object]:
    headers = [(b"origin", origin)] if origin is not None else []
    comm = communicator("/ws/echo/", headers=headers, app=_echo_app())
    connected, code = await comm.connect()
    if connected:
        await comm.send_to(text_data="x")
        assert await comm.receive_from() == "Echo: x"
        await comm.disconnect()
    return connected, code


def _echo_app():
    from project.asgi import application

    return application


@pytest.mark.parametrize(
    "origin",
    [b"http://evil.example", b"https://localhost.evil.example", b"null", b"",
     b"localhost", b"http://127.0.0.2:8000", b"file://", b"//localhost",
     b"http://[::1", b"http://[", b"http://a]b", b"\xff\xfe", b"http://local host"],
)
async def test_foreign_or_null_origin_is_refused_at_handshake(origin):
    """An Origin whose host is not in ALLOWED_HOSTS, or 'null', is refused before accept."""
    connected, _ = await origin_outcome(origin)
    assert not connected


@pytest.mark.parametrize(
    "origin",
    [b"http://localhost", b"http://localhost:8000", b"https://127.0.0.1:9999", b"http://[::1]:80",
     b"HTTP://LOCALHOST:1"],
)
async def test_allowed_origin_is_accepted_whatever_the_port(origin):
    """An Origin whose host matches ALLOWED_HOSTS is accepted, port ignored."""
    connected, _ = await origin_outcome(origin)
    assert connected


async def test_a_foreign_origin_beside_an_allowed_one_is_refused():
    """Two Origin headers (no browser sends that) must both be allowed."""
    comm = communicator("/ws/echo/", app=_echo_app(),
                        headers=[(b"origin", b"http://localhost"), (b"origin", b"http://evil.example")])
    connected, _ = await comm.connect()
    assert not connected


async def test_no_origin_is_accepted():
    """A handshake without Origin (a non-browser client) is accepted."""
    connected, _ = await origin_outcome(None)
    assert connected


async def test_handshakes_made_together_share_the_user_query_and_get_users_of_their_own(
    alice, monkeypatch
):
    """One query for the users of handshakes that arrive together; each gets its own object."""
    from realtime import middleware

    calls, original = [], middleware.ACTIVE_USERS.fetch
    monkeypatch.setattr(middleware.ACTIVE_USERS, "fetch",
                        lambda names: calls.append(sorted(names)) or original(names))
    first, second, dormant, nobody = await asyncio.gather(
        *(middleware.get_active_user(name) for name in ("alice", "alice", "dormant", "nobody")))
    assert calls == [["alice", "dormant", "nobody"]]
    assert first.username == second.username == "alice" and first is not second
    assert dormant is None and nobody is None


@pytest.mark.parametrize("source", ["query", "session"])
async def test_a_handshake_the_database_cannot_authenticate_closes_4013(alice, token_for,
                                                                      monkeypatch, caplog,
                                                                      source):
    """The database is unreachable: the handshake is accepted and closed with 4013 ("try
    again later"), not refused with an HTTP 500; one warning says why."""
    from django.db import OperationalError

    from realtime import middleware

    cookie = await session_cookie(alice) if source == "session" else None

    async def database_down(*args, **kwargs):
        raise OperationalError("the database is down")

    monkeypatch.setattr(middleware.ACTIVE_USERS, "get", database_down)
    monkeypatch.setattr(middleware, "get_user", database_down)
    comm = (communicator(f"/ws/test/?token={token_for('alice')}") if source == "query"
            else communicator(headers=cookie))
    await expect_close(comm, 4013)
    assert "could not authenticate a WebSocket: the database is down" in caplog.text


async def test_a_database_error_that_is_a_bug_is_raised_not_closed_4013(alice, token_for,
                                                                       monkeypatch):
    """Only a database that cannot serve closes 4013 "try again later"; a statement it
    refuses is a bug, raised to the server (its error log and HTTP 500)."""
    from django.db import ProgrammingError

    from realtime import middleware

    async def refused(*args, **kwargs):
        raise ProgrammingError("no such column")

    monkeypatch.setattr(middleware.ACTIVE_USERS, "get", refused)
    comm = communicator(f"/ws/test/?token={token_for('alice')}")
    with pytest.raises(ProgrammingError):
        await comm.connect()
