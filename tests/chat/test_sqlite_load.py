"""The embedded configuration (SQLite + in-memory layer) under 20 concurrent senders loses nothing.

When the test run itself uses PostgreSQL (CI), the daphne under test gets a fresh
SQLite file of its own, so this configuration is exercised in every run.
"""

import asyncio
import contextlib
import json
import os
import random
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import websockets
from django.conf import settings

from tests.conftest import ROOT

# `once`: on any stack it serves its own embedded SQLite, so one pass is the whole check.
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.daphne, pytest.mark.once]

ROOM = "load"
USERS = 5
CONNECTIONS_PER_USER = 4  # 20 senders, within WS_MAX_CONNECTIONS_PER_USER
SEND_SECONDS = 10.0
PACE_SECONDS = 0.1


def manage(env: dict[str, str], *args: str) -> str:
    """Run ``manage.py`` with ``env``; its stdout."""
    done = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture
def embedded_server(daphne_server, make_user, token_for, tmp_path):
    """A daphne on SQLite with the in-memory layer, its database file and a token per user."""
    names = [f"load{i}" for i in range(USERS)]
    db = settings.DATABASES["default"]
    if db["ENGINE"].endswith("sqlite3"):
        for name in names:
            make_user(name)
        server = daphne_server(REDIS_URL="")
        return server, Path(db["NAME"]), {name: token_for(name) for name in names}
    path = tmp_path / "embedded.sqlite3"
    env = {**os.environ, "SQLITE_PATH": str(path), "DATABASE_URL": "", "REDIS_URL": ""}
    manage(env, "migrate", "--no-input", "-v", "0")
    tokens = {name: manage(env, "issue_token", name, "--create").strip().splitlines()[-1]
              for name in names}
    server = daphne_server(SQLITE_PATH=str(path), DATABASE_URL="", REDIS_URL="")
    return server, path, tokens


class Sender:
    """One chat connection that sends paced messages and records every frame it gets."""

    def __init__(self, key: str, ws) -> None:
        self.key, self.ws = key, ws
        self.frames: list[dict] = []
        self.sent = 0
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for text in self.ws:
                self.frames.append(json.loads(text))

    async def send_for(self, seconds: float) -> None:
        await asyncio.sleep(random.uniform(0, PACE_SECONDS))
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            await self.ws.send(json.dumps({
                "type": "message", "content": f"{self.key} #{self.sent}",
                "ref": f"{self.key}:{self.sent}",
            }))
            self.sent += 1
            await asyncio.sleep(PACE_SECONDS)

    def messages(self) -> list[dict]:
        return [f for f in self.frames if f["type"] == "message"]

    def own_ids(self) -> set[int]:
        return {f["id"] for f in self.messages() if f.get("ref", "").startswith(self.key + ":")}


def stored_ids(path: Path) -> set[int]:
    with contextlib.closing(sqlite3.connect(path, timeout=20)) as connection:
        rows = connection.execute(
            "SELECT m.id FROM chat_message m JOIN chat_room r ON m.room_id = r.id"
            " WHERE r.name = ?", (ROOM,),
        ).fetchall()
    return {row[0] for row in rows}


async def test_twenty_concurrent_senders_on_sqlite_lose_nothing(embedded_server):
    """20 paced senders for 10 s: no error, no 'database is locked', every stored id delivered."""
    server, path, tokens = embedded_server
    senders = []
    for name, token in tokens.items():
        for n in range(CONNECTIONS_PER_USER):
            ws = await websockets.connect(f"{server.ws_url}/ws/chat/{ROOM}/?token={token}",
                                          max_queue=None)
            senders.append(Sender(f"{name}.{n}", ws))
    for sender in senders:
        await wait_until(lambda s=sender: any(f["type"] == "user_joined" for f in s.frames))

    await asyncio.gather(*(sender.send_for(SEND_SECONDS) for sender in senders))
    total = sum(sender.sent for sender in senders)
    print(f"\n{len(senders)} senders sent {total} messages in {SEND_SECONDS:.0f} s")
    # Every connection gets every message of the room; wait until all have arrived.
    await wait_until(lambda: all(len(s.messages()) >= total for s in senders), timeout=60)
    for sender in senders:
        await sender.ws.close()
        await sender.reader

    stored = await asyncio.to_thread(stored_ids, path)
    errors = [f for s in senders for f in s.frames if f["type"] == "error"]
    assert errors == [], errors[:5]
    assert "database is locked" not in server.output()
    assert len(stored) == total
    assert set().union(*(s.own_ids() for s in senders)) == stored
    for sender in senders:
        assert len(sender.own_ids()) == sender.sent, sender.key
        ids = [f["id"] for f in sender.messages()]
        assert ids == sorted(stored), f"{sender.key} saw a gap, a repeat or a reordering"


async def wait_until(predicate, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)
