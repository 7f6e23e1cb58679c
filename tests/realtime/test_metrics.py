"""GET /metrics: this process's counters after real traffic, for staff or the metrics token."""

import json
import re

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.db import connections
from django.test import AsyncClient, override_settings

from project.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)

SAMPLE = re.compile(r"^([a-z_]+)(\{[^}]*\})? (\S+)$")


def parse(text: str) -> dict[str, float]:
    """Prometheus text to ``{'name{labels}': value}``; every non-comment line must parse."""
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = SAMPLE.match(line)
        assert match, f"not a Prometheus sample: {line!r}"
        samples[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    return samples


async def scrape(token: str) -> dict[str, float]:
    response = await AsyncClient().get("/metrics", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    return parse(response.content.decode())


@pytest.fixture
def staff_token(make_user, token_for) -> str:
    make_user("ops", staff=True)
    return token_for("ops")


async def test_metrics_count_real_traffic(staff_token, make_user, token_for):
    """A chat connection, its frames, a stored message and an auth failure show in /metrics."""
    await database_sync_to_async(make_user)("alice")
    before = await scrape(staff_token)

    chat = WebsocketCommunicator(application, f"/ws/chat/metrics/?token={token_for('alice')}")
    assert (await chat.connect(timeout=5))[0]
    assert json.loads(await chat.receive_from(timeout=5))["type"] == "history"
    assert json.loads(await chat.receive_from(timeout=5))["type"] == "user_joined"
    await chat.send_to(text_data=json.dumps({"type": "message", "content": "hello"}))
    assert json.loads(await chat.receive_from(timeout=5))["type"] == "message"
    await chat.send_to(text_data="not json")
    assert json.loads(await chat.receive_from(timeout=5))["code"] == "invalid_json"

    bad = WebsocketCommunicator(application, "/ws/chat/metrics/?token=garbage")
    assert (await bad.connect(timeout=5))[0]
    assert (await bad.receive_output(timeout=5))["code"] == 4002
    await bad.disconnect()

    during = await scrape(staff_token)
    await chat.disconnect()
    after = await scrape(staff_token)

    def delta(key: str, now: dict[str, float] = during) -> float:
        return now.get(key, 0) - before.get(key, 0)

    assert delta('realtime_connections_total{endpoint="chat"}') == 1
    assert delta('realtime_connections_open{endpoint="chat"}') == 1
    assert delta('realtime_connections_open{endpoint="chat"}', after) == 0
    assert delta('realtime_frames_in_total{endpoint="chat"}') == 2
    # history, user_joined, message, error
    assert delta('realtime_frames_out_total{endpoint="chat"}') == 4
    assert delta("realtime_messages_stored_total") == 1
    assert delta('realtime_errors_total{code="invalid_json"}') == 1
    assert delta('realtime_auth_failures_total{code="4002"}') == 1
    assert during["realtime_process_start_time_seconds"] > 0


async def test_echo_frames_are_counted(staff_token):
    """Frames on the echo endpoint count under endpoint="echo"."""
    before = await scrape(staff_token)
    echo = WebsocketCommunicator(application, "/ws/echo/")
    assert (await echo.connect(timeout=5))[0]
    await echo.send_to(text_data="hi")
    assert await echo.receive_from(timeout=5) == "Echo: hi"
    await echo.disconnect()
    after = await scrape(staff_token)
    key = 'realtime_frames_in_total{endpoint="echo"}'
    assert after.get(key, 0) - before.get(key, 0) == 1


async def test_anonymous_request_is_401():
    """Without credentials /metrics answers 401 and names the Bearer scheme."""
    response = await AsyncClient().get("/metrics")
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Bearer"


async def test_non_staff_user_is_403(make_user, token_for):
    """A valid token of a user who is not staff gets 403."""
    await database_sync_to_async(make_user)("bob")
    response = await AsyncClient().get(
        "/metrics", headers={"Authorization": f"Bearer {token_for('bob')}"})
    assert response.status_code == 403


async def test_staff_session_may_read(make_user):
    """A logged-in staff session reads /metrics without a token."""
    client = AsyncClient()
    user = await database_sync_to_async(make_user)("admin", staff=True)
    await database_sync_to_async(client.force_login)(user)
    response = await client.get("/metrics")
    # The test client skips request_finished's connection cleanup; the session
    # lookup's connection would outlive the test database otherwise.
    await database_sync_to_async(connections.close_all)()
    assert response.status_code == 200
    assert "# TYPE realtime_connections_open gauge" in response.content.decode()


async def test_metrics_token_grants_access_when_set():
    """With METRICS_TOKEN set, that bearer token reads /metrics; another one is refused."""
    with override_settings(METRICS_TOKEN="scrape-secret"):
        assert (await scrape("scrape-secret"))
        wrong = await AsyncClient().get(
            "/metrics", headers={"Authorization": "Bearer scrape-wrong"})
        assert wrong.status_code == 401


async def test_metrics_token_unset_grants_nothing():
    """Without METRICS_TOKEN an empty bearer is no way in."""
    with override_settings(METRICS_TOKEN=""):
        response = await AsyncClient().get("/metrics", headers={"Authorization": "Bearer "})
        assert response.status_code == 401
