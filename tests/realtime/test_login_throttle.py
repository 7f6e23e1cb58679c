"""One login throttle for every password check: ``/accounts/login/``, ``/admin/login/``
and ``POST /api/token`` (PROTOCOL.md "Identity"; docs/security.md "Login throttle").

Each test uses client addresses of its own and a fresh username, so counters of
one test never reach another.
"""

import itertools
import json
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.contrib.auth.backends import ModelBackend
from django.test import Client, override_settings

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "correct horse battery staple"
THROTTLED = b"Too many failed logins"
_addresses = itertools.count(1)


def client() -> Client:
    n = next(_addresses)
    return Client(REMOTE_ADDR=f"10.{200 + secrets.randbelow(50)}.{n // 250}.{n % 250 + 1}")


@pytest.fixture(autouse=True)
def fast_hasher(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def staff(make_user) -> str:
    name = "staff-" + secrets.token_hex(4)
    make_user(name, staff=True, password=PASSWORD)
    return name


@pytest.fixture
def checks(monkeypatch) -> list[str]:
    """The passwords actually checked (one entry per check)."""
    seen: list[str] = []
    original = ModelBackend.authenticate

    def counting(self, request, username=None, password=None, **kwargs):
        seen.append(password)
        time.sleep(0.01)  # a real hash takes long enough for requests to overlap
        return original(self, request, username=username, password=password, **kwargs)

    monkeypatch.setattr(ModelBackend, "authenticate", counting)
    return seen


def login_page(c: Client, path: str, username: str, password: str):
    return c.post(path, {"username": username, "password": password})


def logged_in(c: Client) -> bool:
    return "_auth_user_id" in c.session


@pytest.mark.parametrize("path", ["/accounts/login/", "/admin/login/"])
@override_settings(LOGIN_MAX_FAILURES=3)
def test_login_pages_are_throttled_with_a_clear_error(staff, path):
    """After LOGIN_MAX_FAILURES wrong passwords the right one is refused on the page,
    with an error that says why (not a 500), and no session is made."""
    c = client()
    for i in range(3):
        response = login_page(c, path, staff, f"wrong{i}")
        assert response.status_code == 200
        assert THROTTLED not in response.content
    response = login_page(c, path, staff, PASSWORD)
    assert response.status_code == 200
    assert THROTTLED in response.content
    assert not logged_in(c)
    # Another address is refused too (the username's counter), and nothing is checked.
    other = client()
    assert THROTTLED in login_page(other, path, staff, PASSWORD).content
    assert not logged_in(other)


@pytest.mark.parametrize("path", ["/accounts/login/", "/admin/login/"])
@override_settings(LOGIN_MAX_FAILURES=3)
def test_one_address_is_throttled_on_the_login_pages(staff, path):
    """Failures from one address for other usernames block it for every username."""
    c = client()
    for i in range(3):
        login_page(c, path, f"{staff}-nobody{i}", "wrong")
    assert THROTTLED in login_page(c, path, staff, PASSWORD).content
    assert not logged_in(c)
    fresh = client()
    login_page(fresh, path, staff, PASSWORD)
    assert logged_in(fresh)


@override_settings(LOGIN_MAX_FAILURES=3)
def test_login_page_failures_count_for_the_api_and_back(staff, make_user):
    """The pages and /api/token share the counters: failures on one throttle the other."""
    for i in range(3):
        login_page(client(), "/admin/login/", staff, f"wrong{i}")
    response = client().post("/api/token", json.dumps({"username": staff, "password": PASSWORD}),
                             content_type="application/json")
    assert response.status_code == 429
    assert response.json()["error"] == "throttled"

    other = "other-" + secrets.token_hex(4)
    make_user(other, password=PASSWORD)
    for _ in range(3):
        response = client().post("/api/token", json.dumps({"username": other, "password": "x"}),
                                 content_type="application/json")
        assert response.status_code == 401
    c = client()
    assert THROTTLED in login_page(c, "/accounts/login/", other, PASSWORD).content
    assert not logged_in(c)


@pytest.mark.parametrize("path", ["/accounts/login/", "/admin/login/"])
@override_settings(LOGIN_MAX_FAILURES=3)
def test_parallel_login_page_attempts_check_at_most_the_limit(staff, checks, path):
    """20 simultaneous page logins from one address, the right password in slot 18:
    at most LOGIN_MAX_FAILURES wrong passwords are checked."""
    address = client().defaults["REMOTE_ADDR"]
    barrier = threading.Barrier(20)

    def attempt(i: int) -> bool:
        c = Client(REMOTE_ADDR=address)
        barrier.wait()
        login_page(c, path, staff, PASSWORD if i == 18 else f"wrong{i}")
        return logged_in(c)

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(attempt, range(20)))
    assert len([p for p in checks if p != PASSWORD]) <= 3, checks
    assert results.count(True) <= 1
    if not results[18]:
        assert THROTTLED in login_page(client(), path, staff, PASSWORD).content


def test_a_good_login_still_works(staff):
    """Below the limit both pages log in as before."""
    for path in ("/accounts/login/", "/admin/login/"):
        c = client()
        login_page(c, path, staff, "wrong")
        response = login_page(c, path, staff, PASSWORD)
        assert response.status_code == 302
        assert logged_in(c)
