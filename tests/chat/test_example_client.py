"""examples/chat_client.py against a real daphne: as a program and as a library."""

import asyncio
import importlib.util
import json
import random
import sys
import urllib.request
from pathlib import Path

import pytest
import websockets
from channels.db import database_sync_to_async

from notifications.models import Notification

ROOT = Path(__file__).resolve().parent.parent.parent
SCRIPT = ROOT / "examples" / "chat_client.py"


def load_client():
    spec = importlib.util.spec_from_file_location("example_chat_client", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


client_module = load_client()


@pytest.fixture
def live(daphne_server, make_user):
    """A daphne with the users; the per-user cap is raised because under Redis the
    connections of daphnes stopped by earlier tests count until reaped."""
    for name in ("alice", "bob", "nora"):
        make_user(name)
    make_user("ops", staff=True)
    return daphne_server(WS_MAX_CONNECTIONS_PER_USER="100")


class Peer:
    """bob, on a plain websockets connection."""

    def __init__(self, ws) -> None:
        self.ws = ws

    @classmethod
    async def open(cls, server, token: str, room: str) -> "Peer":
        ws = await websockets.connect(f"{server.ws_url}/ws/chat/{room}/?token={token}")
        peer = cls(ws)
        assert json.loads(await ws.recv())["type"] == "history"
        assert json.loads(await ws.recv())["type"] == "user_joined"
        return peer

    async def next_of(self, *types: str) -> dict:
        while True:
            frame = json.loads(await asyncio.wait_for(self.ws.recv(), 10))
            if frame["type"] in types:
                return frame

    async def say(self, content: str) -> int:
        await self.ws.send(json.dumps({"type": "message", "content": content, "ref": content}))
        while True:
            frame = await self.next_of("message", "error")
            assert frame["type"] == "message", frame
            if frame.get("ref") == content:
                return frame["id"]


async def read_until(stream: asyncio.StreamReader, needle: str, seen: list[str]) -> None:
    while not any(needle in line for line in seen):
        line = await asyncio.wait_for(stream.readline(), 15)
        assert line, f"output ended before {needle!r}; got {seen}"
        seen.append(line.decode().rstrip("\n"))


def notify(server, user: str, token: str, data: dict) -> dict:
    request = urllib.request.Request(
        f"{server.url}/api/notify/{user}", data=json.dumps(data).encode(), method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_backoff_grows_with_jitter_up_to_the_cap():
    """Delays lie in [ceiling/2, ceiling], ceiling doubling from base up to cap."""
    rng = random.Random(7)
    for attempt, ceiling in [(0, 1), (1, 2), (3, 8), (5, 30), (40, 30)]:
        delays = [client_module.next_delay(attempt, rng=rng) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert max(delays) - min(delays) > ceiling / 4  # jitter, not a constant


def test_typed_lines_become_frames():
    """'/msg USER TEXT' is private, blank lines are nothing, the rest goes to the room."""
    parse = client_module.parse_line
    assert parse("hello there\n") == {"type": "message", "content": "hello there"}
    assert parse("/msg bob  see you\n") == {"type": "private", "target": "bob",
                                           "content": " see you"}
    assert parse("   \n") is None
    assert parse("/msg bob\n") is None
    assert parse("/delete 12\n") == {"type": "delete", "id": 12}
    assert parse("/delete #12\n") == {"type": "delete", "id": 12}
    for bad in ("/delete\n", "/delete x\n", "/delete 0\n", "/delete -3\n", "/delete 1.5\n",
                "/delete ١٢\n"):
        assert parse(bad) is None, bad
    assert client_module.chat_url("ws://h:1/", "r", 0) == "ws://h:1/ws/chat/r/"
    assert client_module.chat_url("ws://h:1", "r", 42) == "ws://h:1/ws/chat/r/?since=42"


def test_typing_and_deletions_are_printed_reads_are_not():
    """typing and message_deleted frames get a line each; a read echo gets none."""
    fmt = client_module.format_frame
    assert fmt({"type": "typing", "room": "r", "user_id": "alice"}) == "* alice is typing…"
    assert fmt({"type": "message_deleted", "room": "r", "id": 12,
                "timestamp": "2026-01-01T00:00:00Z"}) == "* message 12 was deleted"
    assert fmt({"type": "read", "room": "r", "id": 12}) is None


def test_a_bad_delete_line_says_how_to_use_it():
    """'/delete x' is not sent as a message: the client says how to use /delete."""
    status: list[str] = []
    client = client_module.ChatClient("ws://h:1", "t", "r", out=lambda _: None,
                                      status=status.append)
    client.say("/delete x\n")
    assert client.outbox.empty()
    assert status and "/delete ID" in status[0]
    client.say("/delete 7\n")
    assert client.outbox.get_nowait() == {"type": "delete", "id": 7}


@pytest.mark.daphne
async def test_program_chats_from_stdin_and_prints_the_room(live, token_for):
    """Lines typed on stdin reach the room; the room's messages are printed."""
    bob = await Peer.open(live, token_for("bob"), "cli")
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(SCRIPT), "--url", live.ws_url, "--token", token_for("alice"), "cli",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    seen: list[str] = []
    try:
        joined = await bob.next_of("user_joined")
        assert joined["user_id"] == "alice"
        process.stdin.write(b"hello from the terminal\n")
        await process.stdin.drain()
        got = await bob.next_of("message")
        assert (got["user_id"], got["content"]) == ("alice", "hello from the terminal")
        await bob.say("hi back <b>")
        await read_until(process.stdout, "bob: hi back <b>", seen)
        process.stdin.write(b"/msg bob just for you\n")
        await process.stdin.drain()
        private = await bob.next_of("private")
        assert (private["from"], private["to"], private["content"]) == (
            "alice", "bob", "just for you")
        await read_until(process.stdout, "alice -> bob (private): just for you", seen)
        process.stdin.close()
        assert await asyncio.wait_for(process.wait(), 15) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await bob.ws.close()
    rest = (await process.stdout.read()).decode().splitlines()
    lines = seen + rest
    assert sum("hello from the terminal" in line for line in lines) == 1, lines
    assert sum("bob: hi back <b>" in line for line in lines) == 1, lines


@pytest.mark.daphne
async def test_program_stops_on_a_refused_token(live):
    """A bad token closes with 4002: the program says so and exits 2 instead of retrying."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(SCRIPT), "--url", live.ws_url, "--token", "not-a-jwt", "cli",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode == 2
    assert "4002" in stderr.decode()
    assert stderr.decode().count("connecting to") == 1


def create_room(server, token: str, name: str, *, private: bool) -> dict:
    request = urllib.request.Request(
        f"{server.url}/api/rooms", data=json.dumps({"name": name, "private": private}).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 201
        return json.loads(response.read())


@pytest.mark.daphne
@pytest.mark.parametrize("stdin", ["pipe", "closed"])
async def test_program_stops_when_the_room_refuses_it(live, token_for, stdin):
    """A private room closes a non-member's socket with 4004: the program exits 2 at once."""
    await asyncio.to_thread(create_room, live, token_for("bob"), "hideout", private=True)
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(SCRIPT), "--url", live.ws_url, "--token", token_for("nora"),
        "hideout",
        stdin=asyncio.subprocess.PIPE if stdin == "pipe" else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode == 2, stderr.decode()
    assert "4004" in stderr.decode()
    assert stderr.decode().count("connecting to") == 1
    assert stdout == b""


def api_call(server, token: str, method: str, path: str, body: dict | None = None) -> int:
    request = urllib.request.Request(
        f"{server.url}{path}", data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status


@pytest.mark.daphne
async def test_client_stops_when_removed_from_the_room(live, token_for):
    """Removed from a private room while connected (4004): the client stops (Refused), it
    does not reconnect."""
    bob = token_for("bob")
    await asyncio.to_thread(create_room, live, bob, "inner-circle", private=True)
    assert await asyncio.to_thread(api_call, live, bob, "POST", "/api/rooms/inner-circle/members",
                                   {"user_id": "alice"}) == 200
    status: list[str] = []
    client = client_module.ChatClient(live.ws_url, token_for("alice"), "inner-circle",
                                      out=lambda _: None, status=status.append)
    task = asyncio.create_task(client.run())
    try:
        await _wait(lambda: client.heard)
        assert await asyncio.to_thread(api_call, live, bob, "DELETE",
                                       "/api/rooms/inner-circle/members/alice") == 204
        with pytest.raises(client_module.Refused, match="4004"):
            await asyncio.wait_for(task, 10)
    finally:
        task.cancel()
    assert sum("connecting to" in line for line in status) == 1, status


@pytest.mark.daphne
async def test_program_deletes_and_shows_typing_and_deletions(live, token_for):
    """'/delete ID' deletes one's own message; others' typing and every deletion are printed."""
    bob = await Peer.open(live, token_for("bob"), "cli-moderation")
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(SCRIPT), "--url", live.ws_url, "--token", token_for("alice"),
        "cli-moderation",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    seen: list[str] = []
    try:
        await bob.next_of("user_joined")
        process.stdin.write(b"a message to take back\n")
        await process.stdin.drain()
        mine = await bob.next_of("message")
        await read_until(process.stdout, f"#{mine['id']} alice: a message to take back", seen)

        await bob.ws.send(json.dumps({"type": "typing"}))
        await read_until(process.stdout, "* bob is typing…", seen)

        process.stdin.write(f"/delete {mine['id']}\n".encode())
        await process.stdin.drain()
        deleted = await bob.next_of("message_deleted")
        assert (deleted["room"], deleted["id"]) == ("cli-moderation", mine["id"])
        await read_until(process.stdout, f"* message {mine['id']} was deleted", seen)

        theirs = await bob.say("bob's own")
        process.stdin.write(f"/delete {theirs}\n".encode())
        await process.stdin.drain()
        await read_until(process.stdout, "! error forbidden", seen)
        process.stdin.close()
        assert await asyncio.wait_for(process.wait(), 15) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await bob.ws.close()


@pytest.mark.daphne
async def test_program_stops_on_a_refused_token_with_stdin_already_closed(live):
    """With stdin at its end from the start, a refused token still exits 2, not 0."""
    for _ in range(3):  # the end of input and the server's close race: try it a few times
        process = await asyncio.create_subprocess_exec(
            sys.executable, str(SCRIPT), "--url", live.ws_url, "--token", "not-a-jwt", "cli",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, stderr = await asyncio.wait_for(process.communicate(), 20)
        assert process.returncode == 2, stderr.decode()
        assert "4002" in stderr.decode()


@pytest.mark.daphne
async def test_client_recovers_across_a_server_restart(live, daphne_server, token_for,
                                                      monkeypatch):
    """daphne dies and comes back on its port: the client resumes with ?since=, no gap, no dupes."""
    out: list[str] = []
    status: list[str] = []
    client = client_module.ChatClient(live.ws_url, token_for("alice"), "client-crash",
                                      out=out.append, status=status.append)
    task = asyncio.create_task(client.run())
    bob = await Peer.open(live, token_for("bob"), "client-crash")
    try:
        first = await bob.say("before")
        await _wait(lambda: any(line.endswith("bob: before") for line in out))
        await bob.ws.close()

        live.kill()
        await _wait(lambda: any("connection lost" in line for line in status))
        monkeypatch.setattr(sys.modules[type(live).__module__], "free_port", lambda: live.port)
        restarted = await asyncio.to_thread(daphne_server)
        bob = await Peer.open(restarted, token_for("bob"), "client-crash")
        later = [await bob.say(f"after {i}") for i in range(3)]
        await _wait(lambda: any(line.endswith("bob: after 2") for line in out), timeout=30,
                    info=lambda: (out, status))
        client.say("i am back")
        await _wait(lambda: any(line.endswith("alice: i am back") for line in out))
    finally:
        client.finish()
        await asyncio.wait_for(task, 15)
        await bob.ws.close()
    messages = [line for line in out if ": " in line and line.startswith("[")]
    ids = [int(line.split("#", 1)[1].split(" ", 1)[0]) for line in messages]
    assert ids == sorted(set(ids)), messages
    assert ids[:4] == [first, *later]
    assert any(line.endswith(f"/ws/chat/client-crash/?since={first}") for line in status), status


async def _wait(predicate, timeout: float = 15, info=lambda: "") -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, f"condition not met: {info()}"
        await asyncio.sleep(0.05)


@pytest.mark.daphne
# nora, not alice: under Redis, alice's connections on daphnes killed by earlier tests
# still count until reaped, and would make the first notify "sent", not "queued".
async def test_notifications_mode_prints_and_acks(live, token_for):
    """Queued and live notifications are printed once each and acknowledged."""
    ops = token_for("ops")
    queued = await asyncio.to_thread(notify, live, "nora", ops, {"text": "while away"})
    assert queued["status"] == "queued"
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(SCRIPT), "--url", live.ws_url, "--token", token_for("nora"),
        "--notifications",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    seen: list[str] = []
    try:
        await read_until(process.stdout, f"notification #{queued['id']}:", seen)
        sent = await asyncio.to_thread(notify, live, "nora", ops, {"text": "live one"})
        assert sent["status"] == "sent"
        await read_until(process.stdout, f"notification #{sent['id']}:", seen)

        async def delivered() -> int:
            return await database_sync_to_async(
                Notification.objects.filter(id__in=[queued["id"], sent["id"]],
                                            delivered_at__isnull=False).count)()

        for _ in range(100):
            if await delivered() == 2:
                break
            await asyncio.sleep(0.1)
        assert await delivered() == 2, "the client did not acknowledge both"
    finally:
        process.terminate()
        await process.wait()
    assert '"while away"' in seen[0] and '"live one"' in seen[1], seen
