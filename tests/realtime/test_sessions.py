"""Session-cookie WebSockets last as long as their session (PROTOCOL.md "Identity"):
logout, expiry or flush closes them with 4001 within 5 s, on every process; a
token-authenticated socket of the same user stays open.
"""

import asyncio
import http.cookiejar
import json
import re
import time
import urllib.parse
import urllib.request
from datetime import timedelta

import pytest
import websockets
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.sessions.models import Session
from django.test import Client
from django.utils import timezone

from project.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "correct horse battery staple"
#: The contract's bound, plus the time a loaded machine takes to deliver the close.
WITHIN = 5.5


@pytest.fixture
def alice(make_user):
    return make_user("alice", password=PASSWORD)


async def logged_in(user) -> Client:
    client = Client()
    await database_sync_to_async(client.force_login)(user)
    return client


async def chat(headers=None, query: str = "") -> WebsocketCommunicator:
    comm = WebsocketCommunicator(application, f"/ws/chat/sess/{query}", headers=headers or [])
    assert (await comm.connect())[0]
    for kind in ("history", "user_joined"):
        assert json.loads(await comm.receive_from(timeout=5))["type"] == kind
    return comm


async def session_socket(client: Client) -> WebsocketCommunicator:
    return await chat([(b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode())])


async def assert_closed_4001(comm: WebsocketCommunicator, started: float) -> None:
    output = await comm.receive_output(timeout=WITHIN)
    assert output == {"type": "websocket.close", "code": 4001}
    assert time.monotonic() - started < WITHIN
    await comm.disconnect()


async def assert_open(comm: WebsocketCommunicator) -> None:
    assert await comm.receive_nothing(timeout=0.2)
    await comm.send_to(text_data="ping")
    assert json.loads(await comm.receive_from(timeout=5)) == {"type": "pong"}
    await comm.disconnect()


async def test_logout_closes_the_session_socket_with_4001(alice, token_for):
    """POST /accounts/logout/ closes the socket of that session; a token socket and the
    socket of another session of the same user stay open."""
    client, other = await logged_in(alice), await logged_in(alice)
    ws, ws_other = await session_socket(client), await session_socket(other)
    token_ws = await chat(query=f"?token={token_for('alice')}")
    started = time.monotonic()
    response = await sync_to_async(client.post)("/accounts/logout/")
    assert response.status_code == 302
    await assert_closed_4001(ws, started)
    await assert_open(token_ws)
    await assert_open(ws_other)


@pytest.mark.parametrize("how", ["flush", "expire"])
async def test_a_session_that_ends_without_logout_closes_its_socket(alice, token_for, how):
    """A session deleted (flush, clearsessions) or past its expiry: 4001 within 5 s."""
    client = await logged_in(alice)
    ws = await session_socket(client)
    token_ws = await chat(query=f"?token={token_for('alice')}")
    sessions = Session.objects.filter(session_key=client.cookies["sessionid"].value)
    started = time.monotonic()
    if how == "flush":
        await sessions.adelete()
    else:
        await sessions.aupdate(expire_date=timezone.now() - timedelta(seconds=1))
    await assert_closed_4001(ws, started)
    await assert_open(token_ws)


# --- Real daphne processes ------------------------------------------------------------


class Browser:
    """Cookies and CSRF against a real server, with urllib."""

    def __init__(self, server) -> None:
        self.server = server
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))

    def cookie(self, name: str) -> str:
        return next(c.value for c in self.jar if c.name == name)

    def post(self, path: str, fields: dict, server=None) -> None:
        server = server or self.server
        request = urllib.request.Request(
            server.url + path, data=urllib.parse.urlencode(fields).encode(),
            headers={"X-CSRFToken": self.cookie("csrftoken")},
        )
        self.opener.open(request, timeout=10).close()

    def log_in(self, username: str) -> None:
        with self.opener.open(self.server.url + "/accounts/login/", timeout=10) as page:
            assert re.search(rb'name="csrfmiddlewaretoken"', page.read())
        self.post("/accounts/login/", {"username": username, "password": PASSWORD})
        self.cookie("sessionid")

    async def socket(self, server=None):
        server = server or self.server
        ws = await websockets.connect(
            f"{server.ws_url}/ws/chat/sess/",
            additional_headers={"Cookie": f"sessionid={self.cookie('sessionid')}"},
        )
        for kind in ("history", "user_joined"):
            assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == kind
        return ws


@pytest.fixture
def slow_hash_alice(alice, settings):
    """Alice's password hashed with a hasher the servers know (not the tests' fast one)."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.PBKDF2PasswordHasher"]
    alice.set_password(PASSWORD)
    alice.save()
    return alice


async def closed_code(ws, started: float) -> int:
    with pytest.raises(websockets.ConnectionClosed) as closed:
        while True:
            await asyncio.wait_for(ws.recv(), WITHIN)
    assert time.monotonic() - started < WITHIN
    return closed.value.rcvd.code


async def still_open(ws) -> None:
    await ws.send("ping")
    assert json.loads(await asyncio.wait_for(ws.recv(), 5)) == {"type": "pong"}
    await ws.close()


@pytest.mark.daphne
async def test_logout_over_daphne_closes_the_session_socket(
    daphne_server, slow_hash_alice, token_for
):
    """Logged in and out through a real daphne's pages: the socket closes with 4001."""
    server = daphne_server(SESSION_SWEEP_SECONDS="60")  # the signal alone must do it
    browser = Browser(server)
    await sync_to_async(browser.log_in)("alice")
    ws = await browser.socket()
    async with websockets.connect(f"{server.ws_url}/ws/chat/sess/?token={token_for('alice')}") \
            as token_ws:
        await token_ws.recv()
        await token_ws.recv()
        started = time.monotonic()
        await sync_to_async(browser.post)("/accounts/logout/", {})
        assert await closed_code(ws, started) == 4001
        await still_open(token_ws)


@pytest.mark.daphne
async def test_flushed_session_over_daphne_closes_the_session_socket(
    daphne_server, slow_hash_alice
):
    """A session deleted behind the server's back: the sweep closes it with 4001 in 5 s."""
    server = daphne_server()  # the default SESSION_SWEEP_SECONDS
    browser = Browser(server)
    await sync_to_async(browser.log_in)("alice")
    ws = await browser.socket()
    started = time.monotonic()
    await Session.objects.filter(session_key=browser.cookie("sessionid")).adelete()
    assert await closed_code(ws, started) == 4001


@pytest.mark.daphne
@pytest.mark.parametrize("layer", ["core", "pubsub"])
async def test_logout_on_one_process_closes_the_socket_on_another(
    daphne_server, redis_url, slow_hash_alice, token_for, layer
):
    """Two processes on Redis: logging out on A closes the session's socket on B at once."""
    env = {"REDIS_URL": redis_url, "REDIS_LAYER": layer, "SESSION_SWEEP_SECONDS": "60"}
    server_a, server_b = daphne_server(**env), daphne_server(**env)
    browser = Browser(server_a)
    await sync_to_async(browser.log_in)("alice")
    ws_b = await browser.socket(server_b)
    async with websockets.connect(f"{server_b.ws_url}/ws/chat/sess/?token={token_for('alice')}") \
            as token_ws:
        await token_ws.recv()
        await token_ws.recv()
        started = time.monotonic()
        await sync_to_async(browser.post)("/accounts/logout/", {})
        assert await closed_code(ws_b, started) == 4001
        await still_open(token_ws)
