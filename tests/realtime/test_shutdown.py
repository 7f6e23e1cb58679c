"""realtime.shutdown in-process: the bound of a graceful stop, and what HTTP sees meanwhile."""

import asyncio
import json
import time

import pytest

from realtime import shutdown


@pytest.fixture(autouse=True)
async def fresh_stop():
    """The tests share an event loop: a stopped loop would refuse every later test's work."""
    shutdown._stops.pop(asyncio.get_running_loop(), None)
    yield
    shutdown._stops.pop(asyncio.get_running_loop(), None)


async def test_a_stuck_handler_cannot_hold_the_stop(settings, monkeypatch):
    settings.SHUTDOWN_GRACE_SECONDS = 1
    stuck = asyncio.Event()

    async def never_done() -> None:
        await stuck.wait()

    monkeypatch.setattr(shutdown, "shutdown_handlers", [never_done])
    started = time.monotonic()
    assert await shutdown.graceful_stop() is False
    assert 0.9 < time.monotonic() - started < 2
    assert shutdown.stopping()


def recorder(messages: list[dict]):
    async def send(message: dict) -> None:
        messages.append(message)

    return send


async def test_running_requests_are_answered_and_new_ones_refused(settings):
    settings.SHUTDOWN_GRACE_SECONDS = 5
    release = asyncio.Event()

    async def slow_app(scope, receive, send) -> None:
        await release.wait()
        await send({"type": "http.response.start", "status": 202, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    app = shutdown.TrackRequests(slow_app)
    running: list[dict] = []
    refused: list[dict] = []
    request = asyncio.create_task(app({"type": "http"}, None, recorder(running)))
    await asyncio.sleep(0)
    stop = asyncio.create_task(shutdown.graceful_stop())
    await asyncio.sleep(0.05)
    assert not stop.done()  # waits for the running request
    await app({"type": "http"}, None, recorder(refused))
    assert refused[0]["status"] == 503
    assert (b"connection", b"close") in refused[0]["headers"]
    assert json.loads(refused[1]["body"])["error"] == "unavailable"
    release.set()
    assert await stop is True
    await request
    assert running[0]["status"] == 202
