"""A graceful stop (SIGTERM) of a real daphne (and uvicorn): acks stored, sockets
closed with 4012, every request it read answered (issue 18, item 10)."""

import asyncio
import http.client
import json
import signal
import threading

import pytest
import websockets
from asgiref.sync import sync_to_async

from notifications.models import Notification
from tests.conftest import UVICORN, wait_for
from tests.notifications.conftest import apost, recv_json, ws_url

pytestmark = [pytest.mark.daphne, pytest.mark.django_db(transaction=True),
              pytest.mark.parametrize("command", [None, UVICORN], ids=["daphne", "uvicorn"])]


def sigterm(server, timeout: float = 20) -> None:
    """SIGTERM, then wait for the server to exit (uvicorn exits by the signal it got)."""
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=timeout) in (0, -signal.SIGTERM), server.output()


async def close_code(ws) -> int | None:
    """Read until the server closes; the code of its close frame (``None``: none came)."""
    try:
        while True:
            await asyncio.wait_for(ws.recv(), 15)
    except websockets.ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd else None


async def test_acks_taken_just_before_sigterm_are_stored(daphne_server, command, amake_user,
                                                          token_for):
    """Acked, then SIGTERM within a millisecond (inside the writer's 50 ms ack delay):
    after the stop the notes are delivered, and the socket got 4012."""
    await amake_user("boss", staff=True)
    carol = await amake_user("carol")
    server = daphne_server(command=command)
    ids = []
    for n in range(5):
        status, body = await apost(server, "/api/notify/carol", {"n": n}, token_for("boss"))
        assert (status, body["status"]) == (202, "queued")
        ids.append(body["id"])
    async with websockets.connect(ws_url(server, token_for("carol"))) as ws:
        assert [(await recv_json(ws))["id"] for _ in ids] == ids
        await ws.send(json.dumps({"type": "ack", "ids": ids}))
        await ws.send("ping")
        assert await recv_json(ws) == {"type": "pong"}  # the ack is in the writer now
        stopped = asyncio.create_task(asyncio.to_thread(sigterm, server))
        code = await close_code(ws)
    await stopped
    undelivered = await sync_to_async(
        lambda: Notification.objects.filter(user=carol, delivered_at__isnull=True).count())()
    assert undelivered == 0
    assert code == 4012


async def test_sigterm_closes_chat_and_notification_sockets_with_4012(
        daphne_server, command, amake_user, token_for):
    await amake_user("alice")
    server = daphne_server(command=command)
    token = token_for("alice")
    async with websockets.connect(f"{server.ws_url}/ws/chat/lobby/?token={token}") as chat, \
            websockets.connect(ws_url(server, token)) as feed, \
            websockets.connect(f"{server.ws_url}/ws/echo/") as echo:
        for ws in (chat, feed):
            await ws.send("ping")
        await echo.send("hi")
        assert await recv_json(feed) == {"type": "pong"}
        assert await asyncio.wait_for(echo.recv(), 5) == "Echo: hi"
        stopped = asyncio.create_task(asyncio.to_thread(sigterm, server))
        codes = await asyncio.gather(close_code(chat), close_code(feed), close_code(echo))
    await stopped
    assert codes == [4012, 4012, 4012]


class Poster(threading.Thread):
    """Posts over one keep-alive connection until the server stops answering 202."""

    def __init__(self, port: int, token: str, name: str, answered: dict, counter) -> None:
        super().__init__(daemon=True)
        self.port, self.token, self.tag, self.answered, self.counter = (
            port, token, name, answered, counter)
        self.failures: list[str] = []

    def run(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        for n in range(100000):
            key = f"{self.tag}-{n}"
            try:
                connection.request("POST", "/api/notify/dave", json.dumps({"k": key}), headers)
                response = connection.getresponse()
                body = response.read()
            except (OSError, http.client.HTTPException) as exc:
                self.failures.append(f"{key}: {type(exc).__name__}")
                return
            if response.status != 202:
                self.failures.append(f"{key}: {response.status} {body[:80]!r}")
                return
            self.answered[key] = json.loads(body)["id"]
            next(self.counter)


async def test_sigterm_answers_every_post_it_stored(daphne_server, command, amake_user,
                                                    token_for):
    """Posts in flight on 16 keep-alive connections, SIGTERM in the middle: every
    stored post was answered 202 (a failure or a 5xx only for one not stored)."""
    await amake_user("boss", staff=True)
    dave = await amake_user("dave")
    server = daphne_server(command=command, NOTIFICATIONS_QUEUE_LIMIT="1000000", ACCESS_LOG="false")
    answered: dict[str, int] = {}
    counter = iter(range(10**9))
    posters = [Poster(server.port, token_for("boss"), f"p{i}", answered, counter)
               for i in range(16)]
    for poster in posters:
        poster.start()
    await wait_for(lambda: len(answered) >= 600, 30)
    await asyncio.to_thread(sigterm, server)
    for poster in posters:
        await asyncio.to_thread(poster.join, 20)
    stored = await sync_to_async(lambda: {
        row.data["k"]: row.pk for row in Notification.objects.filter(user=dave)})()
    unanswered = sorted(set(stored) - set(answered))
    assert not unanswered, (unanswered, [p.failures for p in posters])
    assert all(stored.get(key) == pk for key, pk in answered.items())  # a 202 means stored
    assert len(answered) >= 600
