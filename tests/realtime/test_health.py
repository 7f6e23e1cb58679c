"""GET /healthz: the database and the channel layer answer, or 503 names what failed."""

import asyncio

import pytest
from django.test import AsyncClient

from realtime import health

pytestmark = pytest.mark.django_db(transaction=True)


async def test_healthy_process_answers_ok():
    """With the database and the channel layer up, /healthz is 200 with every part ok."""
    response = await AsyncClient().get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok", "channel_layer": "ok"}
    assert response["Cache-Control"] == "no-store"


async def test_no_authentication_is_needed_and_head_works():
    """A load balancer's HEAD probe gets 200 without credentials."""
    response = await AsyncClient().head("/healthz")
    assert response.status_code == 200


async def test_post_is_not_allowed():
    """Only GET and HEAD are served."""
    response = await AsyncClient().post("/healthz")
    assert response.status_code == 405


async def test_database_failure_is_503_naming_the_database(monkeypatch):
    """A failing database query gives 503 with database error and the layer still ok."""

    async def broken() -> None:
        raise OSError("database is down")

    monkeypatch.setitem(health.CHECKS, "database", broken)
    response = await AsyncClient().get("/healthz")
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "database": "error",
                               "channel_layer": "ok"}


async def test_channel_layer_failure_is_503_naming_the_layer(monkeypatch):
    """A channel layer whose send fails gives 503 with channel_layer error."""

    class BrokenLayer:
        async def new_channel(self) -> str:
            return "specific.health!x"

        async def send(self, channel: str, message: dict) -> None:
            raise ConnectionError("layer is down")

    monkeypatch.setattr(health, "get_channel_layer", lambda: BrokenLayer())
    response = await AsyncClient().get("/healthz")
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "database": "ok",
                               "channel_layer": "error"}


async def test_a_hung_dependency_is_503_within_the_check_timeout(monkeypatch):
    """A layer that never delivers makes /healthz answer 503 instead of hanging."""

    class SilentLayer:
        async def new_channel(self) -> str:
            return "specific.health!x"

        async def send(self, channel: str, message: dict) -> None:
            pass

        async def receive(self, channel: str) -> dict:
            await asyncio.Event().wait()
            return {}

    monkeypatch.setattr(health, "get_channel_layer", lambda: SilentLayer())
    monkeypatch.setattr(health, "CHECK_TIMEOUT", 0.2)
    response = await asyncio.wait_for(AsyncClient().get("/healthz"), 5)
    assert response.status_code == 503
    assert response.json()["channel_layer"] == "error"


async def test_database_check_runs_a_query_on_the_connection(monkeypatch):
    """The database check goes through the connection: a cursor that raises makes it fail."""

    class DeadConnection:
        def cursor(self):
            raise OSError("no connection")

    monkeypatch.setattr(health, "connection", DeadConnection())
    response = await AsyncClient().get("/healthz")
    assert response.status_code == 503
    assert response.json()["database"] == "error"
