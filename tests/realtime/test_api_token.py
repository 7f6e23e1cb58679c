"""``POST /api/token`` (PROTOCOL.md "Identity"): password for JWT, with login throttling.

Each test uses its own client addresses, so the per-address counters of one test
never reach another (the failure counters live in the cache, Redis under CI).
"""

import asyncio
import itertools
import json
import secrets
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest
from django.test import Client, override_settings

from realtime import throttle, tokens

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "correct horse battery staple"
_addresses = itertools.count(1)


def client() -> Client:
    """A client from an address no other test uses."""
    n = next(_addresses)
    return Client(REMOTE_ADDR=f"10.{secrets.randbelow(250)}.{n // 250}.{n % 250 + 1}")


def post(c: Client, body, *, raw: bool = False, **extra):
    data = body if raw else json.dumps(body)
    return c.post("/api/token", data=data, content_type="application/json", **extra)


@pytest.fixture(autouse=True)
def fast_hasher(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def alice(make_user) -> str:
    """The name of an active user with PASSWORD, new to the failure counters; also 'dormant'."""
    make_user("dormant", active=False, password=PASSWORD)
    name = "alice-" + secrets.token_hex(4)
    make_user(name, password=PASSWORD)
    return name


def assert_error(response, status: int, code: str) -> None:
    assert response.status_code == status, response.content
    body = response.json()
    assert body["error"] == code
    assert isinstance(body["message"], str) and body["message"]


def test_good_password_gets_a_token(alice):
    """The right password gets 200 with a token for the user and its expires_at."""
    response = post(client(), {"username": alice, "password": PASSWORD})
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"token", "expires_at"}
    claims = tokens.decode(body["token"])
    assert claims.user_id == alice
    assert body["expires_at"] == claims.expires_at.isoformat().replace("+00:00", "Z")


@pytest.mark.parametrize(
    "body",
    [{"username": "ALICE", "password": "wrong"}, {"username": "nobody", "password": PASSWORD},
     {"username": "dormant", "password": PASSWORD}, {"username": "", "password": ""},
     {"username": "ALICE", "password": PASSWORD}],
)
def test_bad_credentials_get_401(alice, body):
    """A wrong password, an unknown or inactive user: 401 unauthorized."""
    body = {**body, "username": body["username"].replace("ALICE", alice)}
    if body["password"] == PASSWORD and body["username"] == alice:
        body["username"] = alice.upper()  # usernames are case-sensitive
    assert_error(post(client(), body), 401, "unauthorized")


@pytest.mark.parametrize("raw", ["", "not json", "{", "\xff", '{"username": "a",}'])
def test_body_that_is_not_json_gets_400_invalid_json(alice, raw):
    """A body that is not JSON gets 400 invalid_json."""
    assert_error(post(client(), raw, raw=True), 400, "invalid_json")


@pytest.mark.parametrize(
    "body",
    [[], "alice", 5, None, {}, {"username": "alice"}, {"password": PASSWORD},
     {"username": 5, "password": PASSWORD}, {"username": "alice", "password": None},
     {"username": ["alice"], "password": PASSWORD}, {"username": "alice", "password": 1234}],
)
def test_body_without_string_username_and_password_gets_400_invalid_body(alice, body):
    """A JSON body that is not an object with string username and password: 400 invalid_body."""
    assert_error(post(client(), body), 400, "invalid_body")


@pytest.mark.parametrize("username", ["\ud800", "a\udfffb", "nul\x00", "\x00"])
def test_username_that_cannot_exist_gets_an_answer_not_a_500(alice, username):
    """A username with a lone surrogate or NUL is answered 400 or 401, never a server error."""
    response = post(client(), {"username": username, "password": PASSWORD})
    assert response.status_code in (400, 401), response.content
    assert response.json()["error"] in ("invalid_body", "unauthorized")


def test_other_methods_get_405(alice):
    """GET on /api/token is 405 method_not_allowed."""
    assert_error(client().get("/api/token"), 405, "method_not_allowed")


def test_body_over_65536_bytes_gets_413(alice):
    """A body over 65536 bytes gets 413 too_large."""
    body = json.dumps({"username": alice, "password": "x" * 70000})
    assert_error(post(client(), body, raw=True), 413, "too_large")


@override_settings(LOGIN_MAX_FAILURES=3)
def test_failures_for_one_username_throttle_it_from_anywhere(alice, make_user):
    """After LOGIN_MAX_FAILURES failures for a username it gets 429, right password included."""
    make_user("bob-" + alice, password=PASSWORD)
    for _ in range(3):
        assert_error(post(client(), {"username": alice, "password": "wrong"}), 401,
                     "unauthorized")
    assert_error(post(client(), {"username": alice, "password": PASSWORD}), 429, "throttled")
    assert_error(post(client(), {"username": alice, "password": "wrong"}), 429, "throttled")
    assert post(client(), {"username": "bob-" + alice, "password": PASSWORD}).status_code == 200


@override_settings(LOGIN_MAX_FAILURES=3)
def test_two_failures_do_not_throttle(alice):
    """Fewer than LOGIN_MAX_FAILURES failures leave the right password working."""
    c = client()
    for _ in range(2):
        assert post(c, {"username": alice, "password": "wrong"}).status_code == 401
    assert post(c, {"username": alice, "password": PASSWORD}).status_code == 200


@override_settings(LOGIN_MAX_FAILURES=3)
def test_failures_from_one_address_throttle_it_for_every_username(alice):
    """After LOGIN_MAX_FAILURES failures from a client address it gets 429 for any username."""
    c = client()
    for name in (alice + "x1", alice + "x2", alice + "x3"):
        assert post(c, {"username": name, "password": "wrong"}).status_code == 401
    assert_error(post(c, {"username": alice, "password": PASSWORD}), 429, "throttled")
    assert post(client(), {"username": alice, "password": PASSWORD}).status_code == 200


@pytest.fixture
def clock(monkeypatch):
    """Freeze the throttle's clock; ``clock.now`` can be moved."""
    state = SimpleNamespace(now=1_000_000.0)
    monkeypatch.setattr(throttle, "time", SimpleNamespace(time=lambda: state.now))
    return state


@override_settings(LOGIN_MAX_FAILURES=3)
def test_throttle_lasts_the_window_after_the_last_failure(alice, clock):
    """The block lasts until LOGIN_FAILURE_WINDOW (5 min) has passed since the last failure."""
    c = client()
    for offset in (0, 100, 200):  # three failures within five minutes
        clock.now = 1_000_000.0 + offset
        assert post(c, {"username": alice, "password": "wrong"}).status_code == 401
    clock.now = 1_000_000.0 + 350  # 5 min after the first failure, not after the last
    assert_error(post(c, {"username": alice, "password": PASSWORD}), 429, "throttled")
    clock.now = 1_000_000.0 + 499
    assert_error(post(c, {"username": alice, "password": PASSWORD}), 429, "throttled")
    clock.now = 1_000_000.0 + 501
    assert post(c, {"username": alice, "password": PASSWORD}).status_code == 200


@override_settings(LOGIN_MAX_FAILURES=3)
def test_failures_spread_over_more_than_the_window_do_not_throttle(alice, clock):
    """Failures further apart than the window never add up to a block."""
    c = client()
    for offset in (0, 301, 602, 903):
        clock.now = 1_000_000.0 + offset
        assert post(c, {"username": alice, "password": "wrong"}).status_code == 401
    assert post(c, {"username": alice, "password": PASSWORD}).status_code == 200


@override_settings(LOGIN_MAX_FAILURES=2, LOGIN_FAILURE_WINDOW=1)
def test_throttle_unblocks_after_a_short_window(alice):
    """With a one-second window the block is gone a second after the last failure."""
    c = client()
    for _ in range(2):
        assert post(c, {"username": alice, "password": "wrong"}).status_code == 401
    assert_error(post(c, {"username": alice, "password": PASSWORD}), 429, "throttled")
    time.sleep(1.2)
    assert post(c, {"username": alice, "password": PASSWORD}).status_code == 200


async def test_issued_token_opens_a_websocket(alice):
    """The token from /api/token authenticates a WebSocket."""
    from django.test import AsyncClient

    from tests.realtime.support import communicator, receive_json

    response = await AsyncClient(REMOTE_ADDR="10.255.0.1").post(
        "/api/token", {"username": alice, "password": PASSWORD},
        content_type="application/json",
    )
    assert response.status_code == 200
    comm = communicator(f"/ws/test/?token={response.json()['token']}")
    await comm.connect()
    assert await receive_json(comm) == {"type": "hello", "user_id": alice}
    await comm.disconnect()


@pytest.mark.parametrize(
    "raw",
    ['{"username": "a", "password": "\\ud800"}', '{"\\udfff": 1, "username": "a", "password": "b"}',
     '{"username": "a", "password": "b", "x": ["\\u0000"]}'],
)
def test_json_strings_that_cannot_be_stored_are_invalid_body(alice, raw):
    """API bodies whose strings hold a lone surrogate or NUL anywhere get 400 invalid_body."""
    assert_error(post(client(), raw, raw=True), 400, "invalid_body")


async def _parallel_logins(alice: str, right_slot: int, count: int) -> list[int]:
    """``count`` simultaneous POSTs from one address, the right password only in ``right_slot``."""
    from django.test import AsyncClient

    c = AsyncClient(REMOTE_ADDR=client().defaults["REMOTE_ADDR"])
    responses = await asyncio.gather(*(
        c.post("/api/token", {"username": alice,
                              "password": PASSWORD if i == right_slot else f"wrong{i}"},
               content_type="application/json")
        for i in range(count)
    ))
    return [r.status_code for r in responses]


@override_settings(LOGIN_MAX_FAILURES=5)
async def test_parallel_attempts_get_at_most_the_limit_of_password_checks(alice, monkeypatch):
    """40 simultaneous attempts, the right password in slot 38: at most 5 wrong passwords
    are checked (401), every other wrong one gets 429; afterwards the user is throttled
    unless the right one was among the checked. (A right password that was checked and
    settled early frees its place, as it would have come first one at a time.)"""
    from django.contrib.auth.backends import ModelBackend

    wrong_checked = 0
    original = ModelBackend.authenticate

    def counting(self, *args, **kwargs):
        nonlocal wrong_checked
        wrong_checked += kwargs.get("password") != PASSWORD
        time.sleep(0.01)  # a real hash takes long enough for requests to overlap
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ModelBackend, "authenticate", counting)
    codes = await _parallel_logins(alice, 38, 40)
    assert set(codes) <= {200, 401, 429}
    assert codes.count(401) <= 5 and codes.count(200) <= 1, codes
    assert wrong_checked <= 5
    if 200 not in codes:
        again = await _parallel_logins(alice, 0, 1)
        assert again == [429]


@pytest.mark.daphne
def test_parallel_attempts_over_daphne_are_throttled(daphne_server, alice, settings):
    """Against a real daphne, 40 simultaneous attempts from threads: at most 5 wrong
    passwords checked."""
    from django.contrib.auth import get_user_model

    # The server checks with the project's hashers, which do not include the fast one.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.PBKDF2PasswordHasher"]
    user = get_user_model().objects.get(username=alice)
    user.set_password(PASSWORD)
    user.save()
    server = daphne_server(LOGIN_MAX_FAILURES="5")

    def attempt(i: int) -> int:
        password = PASSWORD if i == 38 else f"wrong{i}"
        request = urllib.request.Request(
            f"{server.url}/api/token", method="POST",
            data=json.dumps({"username": alice, "password": password}).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status
        except urllib.error.HTTPError as error:
            return error.code

    barrier = threading.Barrier(40)

    def at_once(i: int) -> int:
        barrier.wait()
        return attempt(i)

    with ThreadPoolExecutor(40) as pool:
        codes = list(pool.map(at_once, range(40)))
    assert set(codes) <= {200, 401, 429}
    assert codes.count(401) <= 5 and codes.count(200) <= 1, codes
