"""A Redis restart (all data lost) under two daphne processes: service returns, nothing is lost.

The test runs its own ``redis-server`` on a free loopback port, so it can kill
and restart it without touching the Redis that other tests (and CI) share.
"""

import asyncio
import contextlib
import json
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import websockets
from channels.db import database_sync_to_async

from chat.models import Message
from tests.conftest import free_port

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.daphne]

ROOM = "outage"


class RedisServer:
    """A throwaway ``redis-server`` without persistence: a restart loses everything."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.directory = directory
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(
                ("127.0.0.1", self.port), timeout=0.2
            ) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def redis_server(tmp_path):
    if not shutil.which("redis-server"):
        pytest.skip("redis-server is not installed")
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.kill()


class Client:
    """A chat WebSocket whose frames a background task collects."""

    def __init__(self, name: str, ws) -> None:
        self.name, self.ws = name, ws
        self.frames: list[dict] = []
        self.arrived: list[float] = []  # time.monotonic() of each frame
        self.changed = asyncio.Event()
        self.reader = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, server, name: str, token: str, since: int | None = None) -> "Client":
        query = f"?token={token}" + (f"&since={since}" if since is not None else "")
        ws = await websockets.connect(f"{server.ws_url}/ws/chat/{ROOM}/{query}")
        client = cls(name, ws)
        await client.wait(lambda f: f["type"] == "user_joined")
        return client

    async def _read(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for text in self.ws:
                self.frames.append(json.loads(text))
                self.arrived.append(time.monotonic())
                self.changed.set()

    async def wait(self, match, timeout: float = 10, start: int = 0) -> dict:
        """The first frame from index ``start`` on that ``match`` accepts."""
        deadline = time.monotonic() + timeout
        while True:
            for frame in self.frames[start:]:
                if match(frame):
                    return frame
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{self.name}: no matching frame in {timeout} s")
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), remaining)

    async def send_message(self, content: str, timeout: float = 20) -> dict:
        """Send a message; its own MSG (matched by ref) or the ``error`` frame that answers it."""
        start = len(self.frames)
        await self.ws.send(json.dumps({"type": "message", "content": content, "ref": content}))
        return await self.wait(
            lambda f: (f["type"] == "message" and f.get("ref") == content) or f["type"] == "error",
            timeout, start,
        )

    def message_ids(self) -> set[int]:
        ids = {f["id"] for f in self.frames if f["type"] == "message"}
        for frame in self.frames:
            if frame["type"] == "history":
                ids |= {m["id"] for m in frame["messages"]}
        return ids

    async def close(self) -> None:
        await self.ws.close()
        await self.reader


async def fetch_json(url: str, token: str) -> dict:
    def get() -> dict:
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    return await asyncio.to_thread(get)


@database_sync_to_async
def stored_messages() -> dict[int, str]:
    return dict(Message.objects.filter(room__name=ROOM).values_list("pk", "content"))


@pytest.mark.parametrize("layer", ["core", "pubsub"])
async def test_servers_recover_from_a_redis_restart_without_losing_stored_messages(
    layer, redis_server, daphne_server, make_user, token_for
):
    """After Redis restarts empty, both processes serve again and every stored message is found."""
    env = {"REDIS_URL": redis_server.url, "REDIS_LAYER": layer, "HUB_HEARTBEAT_SECONDS": "1",
           "HUB_DEAD_AFTER_SECONDS": "3"}
    server_a, server_b = daphne_server(**env), daphne_server(**env)
    for name in ("alice", "bob", "carol"):
        await database_sync_to_async(make_user)(name)
    alice = await Client.connect(server_a, "alice", token_for("alice"))
    bob = await Client.connect(server_b, "bob", token_for("bob"))

    before = await alice.send_message("before")
    assert before["type"] == "message"
    await bob.wait(lambda f: f.get("id") == before["id"])
    last_seen = before["id"]

    # --- The outage: Redis dies while both users keep sending. ---------------------
    redis_server.kill()
    outcomes: dict[str, dict] = {}

    async def keep_sending(client: Client, count: int) -> None:
        for i in range(count):
            content = f"{client.name}-during-{i}"
            try:
                outcomes[content] = await client.send_message(content)
            except AssertionError as unanswered:
                # What the servers were doing is the only clue to an unanswered send.
                raise AssertionError(
                    f"{content} got no answer: {unanswered}\n--- A:\n"
                    f"{server_a.output()[-4000:]}\n--- B:\n{server_b.output()[-4000:]}"
                ) from None
            await asyncio.sleep(0.3)

    # About 4 s of sending: 2 s of outage, then the restart and the recovery.
    sending = asyncio.gather(keep_sending(alice, 12), keep_sending(bob, 12))
    await asyncio.sleep(2)
    redis_server.start()
    restarted = time.monotonic()
    await sending
    for content, frame in outcomes.items():
        assert frame["type"] == "message" or frame.get("code") == "unavailable", (content, frame)

    # --- Recovery: messages cross processes again within a bounded time. -----------
    recovered_after = None
    for attempt in range(40):
        content = f"probe-{attempt}"
        answer = await alice.send_message(content)
        if answer["type"] == "message":
            with contextlib.suppress(AssertionError):
                await bob.wait(lambda f, c=content: f.get("content") == c, timeout=1)
                recovered_after = time.monotonic() - restarted
                break
        await asyncio.sleep(0.5)
    assert recovered_after is not None, (
        "messages did not cross processes again within 20 s of the restart:\n"
        + server_a.output()[-3000:]
    )
    first_across = min(t for f, t in zip(bob.frames, bob.arrived, strict=True)
                       if f["type"] == "message" and f["user_id"] == "alice"
                       and f["id"] > last_seen)
    errors = sum(1 for f in outcomes.values() if f["type"] == "error")
    print(f"\n{errors} of {len(outcomes)} sends answered unavailable; a message crossed processes"
          f" again {first_across - restarted:.1f} s after the restart")
    back = await bob.send_message("bob-after")
    assert back["type"] == "message"
    await alice.wait(lambda f: f.get("id") == back["id"])

    # New connections work on both processes, and presence was restored.
    carol = await Client.connect(server_b, "carol", token_for("carol"))
    joined = await carol.wait(lambda f: f["type"] == "user_joined")
    assert joined["users"] == ["alice", "bob", "carol"]
    await alice.wait(lambda f: f["type"] == "user_joined" and f["user_id"] == "carol")
    carol_on_a = await Client.connect(server_a, "carol2", token_for("carol"))

    # --- Nothing stored is missing. -----------------------------------------------
    stored = await stored_messages()
    for content, frame in outcomes.items():
        if frame["type"] == "message":
            assert stored.get(frame["id"]) == content, f"{content} was echoed but not stored"
    assert set(stored.values()) <= {"before", "bob-after", *outcomes,
                                    *(f"probe-{i}" for i in range(40))}
    # The full history holds every stored message.
    history = await fetch_json(f"{server_b.url}/api/rooms/{ROOM}/messages?limit=100",
                               token_for("carol"))
    assert {m["id"] for m in history["messages"]} == set(stored)
    # Each user who was there recovers by reconnecting with ?since= its last id
    # from before the outage: what it saw plus what comes back is everything.
    for client, server in ((alice, server_a), (bob, server_b)):
        again = await Client.connect(server, client.name, token_for(client.name),
                                     since=last_seen)
        recovered = next(f for f in again.frames if f["type"] == "history")
        assert {m["id"] for m in recovered["messages"]} == {i for i in stored if i > last_seen}
        assert client.message_ids() <= set(stored)
        await again.close()
    for client in (alice, bob, carol, carol_on_a):
        await client.close()
    for server in (server_a, server_b):
        assert server.process.poll() is None, server.output()[-3000:]
