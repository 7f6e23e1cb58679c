"""POST /api/notify/<user_id> and POST /api/broadcast: statuses and every error answer."""

import asyncio
import json

import pytest
from django.test import AsyncClient

from notifications.models import Notification
from realtime.protocol import API_MAX_BODY_BYTES
from tests.notifications.conftest import receive

pytestmark = pytest.mark.django_db(transaction=True)

ENDPOINTS = ["/api/notify/bea", "/api/broadcast"]


@pytest.fixture
async def staff(amake_user):
    """A staff user 'boss' and an ordinary user 'bea'."""
    await amake_user("bea")
    return await amake_user("boss", staff=True)


async def post(path: str, body, token: str | None = None, client: AsyncClient | None = None,
               **headers: str):
    """POST a body (a JSON-encoded object, or raw text/bytes) with an optional Bearer token."""
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    raw = body if isinstance(body, str | bytes) else json.dumps(body)
    return await (client or AsyncClient()).post(
        path, data=raw, content_type="application/json", headers=headers
    )


def assert_error(response, status: int, code: str) -> None:
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"error", "message"}
    assert body["error"] == code and isinstance(body["message"], str) and body["message"]


async def test_notify_offline_user_is_queued(staff, token_for):
    """POST /api/notify/<user> for an offline user answers 202 queued with the stored id."""
    response = await post("/api/notify/bea", {"text": "hi"}, token_for("boss"))
    assert response.status_code == 202
    body = response.json()
    assert body == {"status": "queued", "id": body["id"]}
    row = await Notification.objects.select_related("user").aget(pk=body["id"])
    assert (row.user.username, row.data, row.delivered_at) == ("bea", {"text": "hi"}, None)


async def test_notify_connected_user_is_sent_and_arrives(staff, token_for, connect):
    """POST /api/notify/<user> for a connected user answers 202 sent; the NOTE arrives."""
    communicator = await connect("bea")
    response = await post("/api/notify/bea", {"text": "live"}, token_for("boss"))
    assert response.status_code == 202
    body = response.json()
    assert body == {"status": "sent", "id": body["id"]}
    frame = await receive(communicator)
    assert (frame["type"], frame["id"], frame["data"]) == ("notification", body["id"],
                                                           {"text": "live"})


async def test_broadcast_reaches_connections(staff, token_for, connect):
    """POST /api/broadcast answers 202 broadcast; every connection gets the NOTE."""
    tabs = [await connect("bea"), await connect("boss")]
    response = await post("/api/broadcast", {"all": True}, token_for("boss"))
    assert response.status_code == 202
    body = response.json()
    assert body == {"status": "broadcast", "id": body["id"]}
    for tab in tabs:
        frame = await receive(tab)
        assert (frame["id"], frame["data"], frame["broadcast"]) == (body["id"], {"all": True},
                                                                    True)


async def test_unknown_user_is_404(staff, token_for):
    """Notifying a user that does not exist answers 404 not_found and stores nothing."""
    assert_error(await post("/api/notify/nobody", {"x": 1}, token_for("boss")), 404,
                 "not_found")
    assert await Notification.objects.acount() == 0


async def test_inactive_user_is_notified_for_later(staff, amake_user, token_for):
    """An inactive user exists, so a notification is stored and queued for a later login."""
    await amake_user("sleeper", active=False)
    response = await post("/api/notify/sleeper", {"x": 1}, token_for("boss"))
    assert response.status_code == 202
    assert response.json()["status"] == "queued"


@pytest.mark.parametrize("path", ENDPOINTS)
async def test_get_is_405(staff, token_for, path):
    """GET answers 405 method_not_allowed."""
    response = await AsyncClient().get(path, headers={"Authorization": "Bearer "
                                                      + token_for("boss")})
    assert_error(response, 405, "method_not_allowed")


@pytest.mark.parametrize("path", ENDPOINTS)
async def test_without_credentials_is_401(staff, path):
    """A POST without token or session answers 401 unauthorized."""
    assert_error(await post(path, {}), 401, "unauthorized")


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize("authorization", ["Bearer garbage", "Basic YWRtaW46eA==", "Bearer "])
async def test_bad_token_is_401(staff, path, authorization):
    """A bad token or a non-Bearer Authorization header answers 401 unauthorized."""
    response = await post(path, {}, Authorization=authorization)
    assert_error(response, 401, "unauthorized")


@pytest.mark.parametrize("path", ENDPOINTS)
async def test_expired_token_is_401(staff, path):
    """An expired token answers 401 unauthorized."""
    from realtime import tokens

    assert_error(await post(path, {}, tokens.issue("boss", -10)[0]), 401, "unauthorized")


@pytest.mark.parametrize("path", ENDPOINTS)
async def test_non_staff_is_403(staff, token_for, path):
    """A valid token of a non-staff user answers 403 forbidden and stores nothing."""
    assert_error(await post(path, {"x": 1}, token_for("bea")), 403, "forbidden")
    assert await Notification.objects.acount() == 0


@pytest.mark.parametrize("path", ENDPOINTS)
async def test_session_post_without_csrf_is_403(staff, path):
    """A staff session POST without the CSRF token answers 403 forbidden."""
    client = AsyncClient(enforce_csrf_checks=True)
    await client.aforce_login(staff)
    assert_error(await post(path, {"x": 1}, client=client), 403, "forbidden")
    assert await Notification.objects.acount() == 0


@pytest.mark.parametrize("path", ENDPOINTS)
async def test_session_post_with_csrf_is_accepted(staff, path):
    """A staff session POST with a matching CSRF cookie and header is accepted (202)."""
    client = AsyncClient(enforce_csrf_checks=True)
    await client.aforce_login(staff)
    secret = "a" * 32
    client.cookies["csrftoken"] = secret
    response = await post(path, {"x": 1}, client=client, **{"X-CSRFToken": secret})
    assert response.status_code == 202, response.content


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize("body", ["not json", "{\"a\": ", b"\xff\xfe"])
async def test_invalid_json_is_400(staff, token_for, path, body):
    """A body that is not JSON answers 400 invalid_json."""
    assert_error(await post(path, body, token_for("boss")), 400, "invalid_json")


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize("body", ["[1, 2]", "\"text\"", "3", "null"])
async def test_non_object_body_is_400(staff, token_for, path, body):
    """A JSON body that is not an object answers 400 invalid_body."""
    assert_error(await post(path, body, token_for("boss")), 400, "invalid_body")
    assert await Notification.objects.acount() == 0


def body_of_size(size: int) -> str:
    body = '{"k":"' + "x" * (size - 8) + '"}'
    assert len(body.encode()) == size
    return body


@pytest.mark.parametrize("path", ENDPOINTS)
async def test_body_of_65536_bytes_is_accepted(staff, token_for, path):
    """A JSON object of exactly 65536 bytes is accepted (202)."""
    response = await post(path, body_of_size(API_MAX_BODY_BYTES), token_for("boss"))
    assert response.status_code == 202, response.content


@pytest.mark.parametrize("path", ENDPOINTS)
async def test_body_of_65537_bytes_is_413(staff, token_for, path):
    """A body of 65537 bytes answers 413 too_large and stores nothing."""
    response = await post(path, body_of_size(API_MAX_BODY_BYTES + 1), token_for("boss"))
    assert_error(response, 413, "too_large")
    assert await Notification.objects.acount() == 0


async def test_notify_still_stores_when_the_hub_cannot_start(staff, token_for, monkeypatch):
    """If this process's hub cannot start, the post is still stored and answered 202 queued."""
    from notifications import views

    async def broken_hub():
        raise ConnectionError("redis down")

    monkeypatch.setattr(views, "get_hub", broken_hub)
    response = await post("/api/notify/bea", {"x": 1}, token_for("boss"))
    assert response.status_code == 202
    assert response.json()["status"] == "queued"
    assert await Notification.objects.filter(pk=response.json()["id"]).aexists()


async def test_api_post_starts_the_process_hub(staff, token_for):
    """A post to a process without WebSockets starts its hub (pooled layer, reaping)."""
    from realtime import hub as hub_module

    loop = asyncio.get_running_loop()
    assert loop not in hub_module._hubs
    response = await post("/api/broadcast", {"x": 1}, token_for("boss"))
    assert response.status_code == 202
    assert loop in hub_module._hubs
