"""Tokens never reach the logs (docs/security.md "What is logged")."""

import json
import logging
import time

import pytest
from django.test import AsyncClient

from tests.realtime.support import close_code, communicator, forge, receive_json

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "correct horse battery staple"


@pytest.fixture
def everything_logged(caplog):
    """Capture every record at DEBUG, the loggers that do not propagate included."""
    caplog.set_level(logging.DEBUG)
    own = [logging.getLogger(name) for name in ("django", "daphne")]
    saved = [(logger, logger.level) for logger in own]
    for logger in own:
        logger.addHandler(caplog.handler)
        logger.setLevel(logging.DEBUG)
    yield caplog
    for logger, level in saved:
        logger.removeHandler(caplog.handler)
        logger.setLevel(level)


def render(record: logging.LogRecord) -> str:
    """Everything a handler could write for ``record``."""
    parts = [record.getMessage(), repr(record.args), repr(record.__dict__)]
    if record.exc_info:
        parts.append(logging.Formatter().formatException(record.exc_info))
    return "\n".join(parts)


@pytest.fixture
def fast_hasher(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


async def test_no_token_appears_in_any_log_record(everything_logged, fast_hasher, make_user,
                                                  token_for):
    """Auth successes, failures, refreshes and token requests log no token, not even part."""
    await _make(make_user)
    now = int(time.time())
    good, other = token_for("alice"), token_for("alice", ttl=999)
    expired = forge({"user_id": "alice", "iat": now - 100, "exp": now - 10})
    bad_signature = forge({"user_id": "alice", "iat": now, "exp": now + 60},
                          key="another-secret-" + "s" * 40)
    ghost = forge({"user_id": "ghost", "iat": now, "exp": now + 60})
    used = [good, other, expired, bad_signature, ghost]

    comm = communicator(f"/ws/test/?token={good}")
    await comm.connect()
    assert (await receive_json(comm))["type"] == "hello"
    for token in (other, expired, bad_signature, "\ud800" + good):
        await comm.send_input({"type": "websocket.receive",
                               "text": json.dumps({"type": "auth", "token": token})})
        assert (await receive_json(comm))["type"] in ("auth_ok", "error")
    await comm.disconnect()
    for token, code in ((expired, 4001), (bad_signature, 4002), (ghost, 4002)):
        for comm in (communicator(f"/ws/test/?token={token}"),
                     communicator(headers=[(b"authorization", f"Bearer {token}".encode())])):
            await comm.connect()
            assert await close_code(comm) == code
            await comm.disconnect()

    client = AsyncClient(REMOTE_ADDR="10.254.0.1")
    response = await client.post("/api/token", {"username": "alice", "password": PASSWORD},
                                 content_type="application/json")
    assert response.status_code == 200
    used.append(response.json()["token"])
    response = await client.post("/api/token", {"username": "alice", "password": "nope"},
                                 content_type="application/json")
    assert response.status_code == 401
    for token in (bad_signature, expired):
        response = await client.post("/api/broadcast", {"x": 1}, content_type="application/json",
                                     headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 401

    records = everything_logged.records
    assert any("auth failure" in r.getMessage() for r in records), "logging was captured"
    for record in records:
        text = render(record)
        for token in used:
            assert token not in text, record.getMessage()
            assert token.split(".")[2] not in text, record.getMessage()
        assert PASSWORD not in text


async def _make(make_user) -> None:
    from channels.db import database_sync_to_async

    await database_sync_to_async(make_user)("alice", password=PASSWORD)
