"""``manage.py issue_token USERNAME [--create] [--staff] [--ttl SECONDS]`` (PROTOCOL.md)."""

import os
import subprocess
import sys
from io import StringIO

import jwt
import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command

from realtime import tokens
from tests.conftest import ROOT, database_env

pytestmark = pytest.mark.django_db(transaction=True)


def issue(*args: str) -> str:
    """Run the command; return its last stdout line."""
    out, err = StringIO(), StringIO()
    call_command("issue_token", *args, stdout=out, stderr=err)
    return out.getvalue().strip().splitlines()[-1]


def lifetime(token: str) -> int:
    payload = jwt.decode(token, options={"verify_signature": False})
    return payload["exp"] - payload["iat"]


def test_prints_a_token_for_an_existing_user(make_user):
    """For an existing user the last stdout line is a valid token naming it, valid one hour."""
    make_user("alice")
    token = issue("alice")
    assert tokens.decode(token).user_id == "alice"
    assert lifetime(token) == 3600


def test_unknown_user_without_create_fails(db):
    """An unknown user without --create is an error, and no user is made."""
    with pytest.raises(CommandError):
        issue("ghost")
    assert not get_user_model().objects.filter(username="ghost").exists()


def test_create_makes_an_active_user_without_usable_password(db):
    """--create makes the missing user (active, not staff, no usable password)."""
    token = issue("newbie", "--create")
    user = get_user_model().objects.get(username="newbie")
    assert user.is_active and not user.is_staff and not user.has_usable_password()
    assert tokens.decode(token).user_id == "newbie"
    assert issue("newbie", "--create")  # a second --create reuses the user
    assert get_user_model().objects.filter(username="newbie").count() == 1


def test_staff_marks_the_user_staff(make_user):
    """--staff marks the user staff, new or existing."""
    make_user("alice")
    issue("alice", "--staff")
    assert get_user_model().objects.get(username="alice").is_staff
    issue("boss", "--create", "--staff")
    assert get_user_model().objects.get(username="boss").is_staff


def test_ttl_sets_the_lifetime(make_user):
    """--ttl SECONDS sets exp - iat."""
    make_user("alice")
    assert lifetime(issue("alice", "--ttl", "120")) == 120


@pytest.mark.parametrize("ttl", ["0", "-5", "soon"])
def test_bad_ttl_fails(make_user, ttl):
    """A ttl that is not a positive integer is an error."""
    make_user("alice")
    with pytest.raises((CommandError, SystemExit)):
        issue("alice", "--ttl", ttl)


def test_inactive_user_gets_a_warning(make_user):
    """For an inactive user the command warns on stderr that the token will be refused."""
    make_user("dormant", active=False)
    out, err = StringIO(), StringIO()
    call_command("issue_token", "dormant", stdout=out, stderr=err)
    assert "inactive" in err.getvalue()


async def test_printed_token_opens_a_websocket(make_user):
    """The printed token authenticates a WebSocket as its user."""
    from channels.db import database_sync_to_async

    from tests.realtime.support import communicator, receive_json

    token = await database_sync_to_async(issue)("wsuser", "--create")
    comm = communicator(f"/ws/test/?token={token}")
    await comm.connect()
    assert await receive_json(comm) == {"type": "hello", "user_id": "wsuser"}
    await comm.disconnect()


def test_real_command_prints_the_token_alone_on_the_last_line(transactional_db):
    """Run as a process, the token is alone on stdout's last line; notes go to stderr."""
    env = {**os.environ, **database_env()}
    result = subprocess.run(
        [sys.executable, "manage.py", "issue_token", "procuser", "--create", "--ttl", "60"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    last = result.stdout.rstrip("\n").splitlines()[-1]
    assert last == last.strip()
    assert tokens.decode(last).user_id == "procuser"
    assert lifetime(last) == 60
    assert "created" in result.stderr


@pytest.mark.parametrize("username", ["bad name", "x" * 151, "semi;colon", ""])
def test_create_refuses_a_username_django_would_refuse(db, username):
    """--create applies Django's username rules: a bad name is an error, not a user."""
    with pytest.raises(CommandError):
        issue(username, "--create")
    assert not get_user_model().objects.filter(username=username).exists()


def test_absurd_ttl_is_an_error_not_a_crash(make_user):
    """A ttl beyond the calendar is a command error."""
    make_user("alice")
    with pytest.raises(CommandError):
        issue("alice", "--ttl", str(10**12))
