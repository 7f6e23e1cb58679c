"""The lean path of the notification API (``notifications.edge``), through ``project.asgi``.

Bearer-authenticated ``POST /api/notify/<user>`` and ``POST /api/broadcast``
are answered before Django's stack. Every answer must be the one Django's
view gives (PROTOCOL.md "HTTP API"): each case below is sent both ways and
compared, and requests the edge does not take must reach Django unchanged.
"""

import asyncio
import contextlib
import json

import pytest
from channels.testing import HttpCommunicator
from django.db import OperationalError
from django.test import AsyncClient
from django.urls import Resolver404, include, path, resolve

from notifications import consumers, edge, views
from notifications.models import Notification
from project.asgi import application
from realtime import tokens
from realtime.protocol import API_MAX_BODY_BYTES
from tests.notifications.conftest import receive

pytestmark = pytest.mark.django_db(transaction=True)

NOTIFY, BROADCAST = "/api/notify/bea", "/api/broadcast"
#: Headers Django's middlewares add to an API answer; the edge must add them too.
SECURITY_HEADERS = {"x-frame-options", "x-content-type-options", "referrer-policy",
                    "cross-origin-opener-policy"}


@pytest.fixture
async def staff(amake_user):
    """A staff user 'boss', an ordinary user 'bea' and an inactive staff user 'gone'."""
    await amake_user("bea")
    await amake_user("gone", staff=True, active=False)
    return await amake_user("boss", staff=True)


async def via_edge(path: str, body: bytes | str = b"{}", *, method: str = "POST",
                   authorization: str | None = None, host: str = "127.0.0.1",
                   **headers: str) -> tuple[int, dict, dict[str, str]]:
    """Status, JSON body and headers of a request through the ASGI application."""
    raw = body.encode() if isinstance(body, str) else body
    pairs = [(b"host", host.encode()), (b"content-type", b"application/json"),
             (b"content-length", str(len(raw)).encode())]
    if authorization is not None:
        pairs.append((b"authorization", authorization.encode()))
    pairs += [(name.lower().encode(), value.encode()) for name, value in headers.items()]
    communicator = HttpCommunicator(application, method, path, raw, pairs)
    response = await communicator.get_response(timeout=5)
    names = {name.decode().lower(): value.decode() for name, value in response["headers"]}
    return response["status"], json.loads(response["body"]), names


async def via_django(path: str, body: bytes | str = b"{}", *, method: str = "POST",
                     authorization: str | None = None) -> tuple[int, dict, dict[str, str]]:
    """The same request through Django's handler (the view behind ``api_view``)."""
    headers = {"Authorization": authorization} if authorization is not None else {}
    client = AsyncClient()
    if method == "POST":
        response = await client.post(path, data=body, content_type="application/json",
                                     headers=headers)
    else:
        response = await client.generic(method, path, headers=headers)
    names = {name.lower(): value for name, value in response.headers.items()}
    return response.status_code, response.json(), names


def bearer(username: str, ttl: int | None = None) -> str:
    return "Bearer " + tokens.issue(username, ttl)[0]


def sized(size: int) -> str:
    body = '{"k":"' + "x" * (size - 8) + '"}'
    assert len(body.encode()) == size
    return body


# (path, body, method, authorization) -> the expected status and error code.
ERROR_CASES = [
    pytest.param(NOTIFY, "{}", "GET", lambda: bearer("boss"), 405, "method_not_allowed",
                 id="get-405"),
    pytest.param(BROADCAST, "{}", "PUT", lambda: "Bearer garbage", 405, "method_not_allowed",
                 id="method-before-token"),
    pytest.param(NOTIFY, "{}", "POST", lambda: "Bearer garbage", 401, "unauthorized",
                 id="bad-token"),
    pytest.param(NOTIFY, "{}", "POST", lambda: "Basic YWRtaW46eA==", 401, "unauthorized",
                 id="not-bearer"),
    pytest.param(NOTIFY, "{}", "POST", lambda: "Bearer ", 401, "unauthorized",
                 id="empty-bearer"),
    pytest.param(NOTIFY, "{}", "POST", lambda: bearer("boss", -10), 401, "unauthorized",
                 id="expired"),
    pytest.param(NOTIFY, "{}", "POST", lambda: bearer("nobody"), 401, "unauthorized",
                 id="unknown-user"),
    pytest.param(NOTIFY, "{}", "POST", lambda: bearer("gone"), 401, "unauthorized",
                 id="inactive-staff"),
    pytest.param(BROADCAST, "{}", "POST", lambda: bearer("bea"), 403, "forbidden",
                 id="not-staff"),
    pytest.param(NOTIFY, "not json", "POST", lambda: bearer("bea"), 403, "forbidden",
                 id="staff-check-before-body"),
    pytest.param(NOTIFY, "not json", "POST", lambda: "Bearer garbage", 401, "unauthorized",
                 id="token-check-before-body"),
    pytest.param("/api/notify/nobody", "{}", "POST", lambda: bearer("boss"), 404, "not_found",
                 id="unknown-target"),
    pytest.param("/api/notify/nobody", "[1]", "POST", lambda: bearer("boss"), 400,
                 "invalid_body", id="body-before-target"),
    pytest.param(NOTIFY, "{\"a\": ", "POST", lambda: bearer("boss"), 400, "invalid_json",
                 id="invalid-json"),
    pytest.param(BROADCAST, b"\xff\xfe", "POST", lambda: bearer("boss"), 400, "invalid_json",
                 id="not-utf8"),
    pytest.param(BROADCAST, "[1, 2]", "POST", lambda: bearer("boss"), 400, "invalid_body",
                 id="not-an-object"),
    pytest.param(NOTIFY, "{\"a\": \"\\u0000\"}", "POST", lambda: bearer("boss"), 400,
                 "invalid_body", id="nul"),
    pytest.param(NOTIFY, "{\"a\": \"\\ud800\"}", "POST", lambda: bearer("boss"), 400,
                 "invalid_body", id="lone-surrogate"),
    # The UTF-8 bytes of a surrogate, no escape: json.loads decodes them ("surrogatepass").
    pytest.param(NOTIFY, b'{"a": "\xed\xa0\x80"}', "POST", lambda: bearer("boss"), 400,
                 "invalid_body", id="encoded-surrogate"),
    pytest.param(BROADCAST, sized(API_MAX_BODY_BYTES + 1), "POST", lambda: bearer("boss"), 413,
                 "too_large", id="65537-bytes"),
]


@pytest.mark.parametrize(("path", "body", "method", "authorization", "status", "code"),
                         ERROR_CASES)
async def test_every_error_is_the_one_django_gives(staff, path, body, method, authorization,
                                                    status, code):
    """Each refused request gets Django's status, body and security headers; nothing is stored."""
    credentials = authorization()
    answer = await via_edge(path, body, method=method, authorization=credentials)
    reference = await via_django(path, body, method=method, authorization=credentials)
    assert answer[:2] == reference[:2]
    assert answer[0] == status and answer[1]["error"] == code
    assert set(answer[1]) == {"error", "message"} and answer[1]["message"]
    assert SECURITY_HEADERS <= set(answer[2])
    assert {name: answer[2][name] for name in SECURITY_HEADERS} == {
        name: reference[2][name] for name in SECURITY_HEADERS}
    assert answer[2]["content-type"] == "application/json"
    assert await Notification.objects.acount() == 0


@pytest.mark.parametrize("path", [NOTIFY, BROADCAST])
async def test_a_post_the_database_cannot_store_is_503_unavailable(staff, path, monkeypatch):
    """The database is down: both ways answer 503 ``unavailable`` with an error body
    (not an HTML 500), and nothing is stored."""
    from notifications import writer

    def database_down(posts, acks):
        raise OperationalError("the database is down")

    monkeypatch.setattr(writer, "store_batch", database_down)
    credentials = bearer("boss")
    answer = await via_edge(path, '{"k": 1}', authorization=credentials)
    reference = await via_django(path, '{"k": 1}', authorization=credentials)
    assert answer[:2] == reference[:2]
    assert answer[0] == 503 and answer[1]["error"] == "unavailable"
    assert set(answer[1]) == {"error", "message"} and answer[1]["message"]
    assert answer[2]["content-type"] == "application/json"
    monkeypatch.undo()
    assert await Notification.objects.acount() == 0


async def test_a_client_gone_before_its_body_ended_gets_nothing_stored(staff):
    """A disconnect in the middle of the body: no answer, no notification (as Django)."""
    headers = [(b"host", b"127.0.0.1"), (b"authorization", bearer("boss").encode())]
    communicator = HttpCommunicator(application, "POST", BROADCAST, b"", headers)
    await communicator.send_input({"type": "http.request", "body": b'{"a": 1}',
                                   "more_body": True})
    await communicator.send_input({"type": "http.disconnect"})
    await communicator.wait(timeout=5)
    assert await communicator.receive_nothing()
    assert await Notification.objects.acount() == 0


async def test_declared_length_over_the_limit_is_413(staff):
    """A Content-Length over 65536 answers 413 even if fewer bytes arrive."""
    status, body, _ = await via_edge(BROADCAST, b"{}", authorization=bearer("boss"),
                                     **{"content-length": str(API_MAX_BODY_BYTES + 1)})
    assert (status, body["error"]) == (413, "too_large")


@pytest.mark.parametrize("path", [NOTIFY, BROADCAST])
async def test_body_of_exactly_65536_bytes_is_accepted(staff, path):
    """The limit is inclusive: a JSON object of 65536 bytes is stored (202)."""
    status, body, _ = await via_edge(path, sized(API_MAX_BODY_BYTES),
                                     authorization=bearer("boss"))
    assert status == 202
    assert await Notification.objects.filter(pk=body["id"]).aexists()


async def test_notify_offline_user_is_queued_and_stored(staff):
    """202 queued with the stored id; the row holds the posted object."""
    status, body, headers = await via_edge(NOTIFY, '{"text": "hi"}',
                                           authorization=bearer("boss"))
    assert status == 202 and body == {"status": "queued", "id": body["id"]}
    assert SECURITY_HEADERS <= set(headers)
    row = await Notification.objects.select_related("user").aget(pk=body["id"])
    assert (row.user.username, row.data, row.delivered_at) == ("bea", {"text": "hi"}, None)


async def test_notify_connected_user_is_sent_and_arrives(staff, connect):
    """202 sent; the NOTE with that id and data reaches the user's connection."""
    communicator = await connect("bea")
    status, body, _ = await via_edge(NOTIFY, '{"text": "live"}', authorization=bearer("boss"))
    assert status == 202 and body == {"status": "sent", "id": body["id"]}
    frame = await receive(communicator)
    assert (frame["type"], frame["id"], frame["data"]) == ("notification", body["id"],
                                                           {"text": "live"})


async def test_inactive_user_is_notified_for_later(staff, amake_user):
    """An inactive target exists: stored and queued, like through Django."""
    await amake_user("sleeper", active=False)
    status, body, _ = await via_edge("/api/notify/sleeper", "{}", authorization=bearer("boss"))
    assert (status, body["status"]) == (202, "queued")


async def test_broadcast_reaches_connections(staff, connect):
    """202 broadcast; every connection gets the NOTE with "broadcast": true."""
    tabs = [await connect("bea"), await connect("boss")]
    status, body, _ = await via_edge(BROADCAST, '{"all": true}', authorization=bearer("boss"))
    assert status == 202 and body == {"status": "broadcast", "id": body["id"]}
    for tab in tabs:
        frame = await receive(tab)
        assert (frame["id"], frame["data"], frame["broadcast"]) == (body["id"], {"all": True},
                                                                    True)


async def test_a_broadcast_posted_while_a_connection_joins_reaches_it(staff, connect,
                                                                     monkeypatch):
    """PROTOCOL.md: a broadcast is "one NOTE ... to every connection", from the moment its
    handshake is answered. Joining the feed is slowed here: it waits until the broadcast has
    been pushed (its 202), or 0.5 s if nothing is posted meanwhile. A connection that joined
    after its handshake would miss the broadcast; one that joins before waits those 0.5 s
    for its handshake, and the broadcast, posted after that, reaches it."""
    join = consumers.attach
    pushed = asyncio.Event()

    async def late_join(hub, group, consumer) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(pushed.wait(), 0.5)
        await join(hub, group, consumer)

    monkeypatch.setattr(consumers, "attach", late_join)
    tab = await connect("boss")
    status, body, _ = await via_edge(BROADCAST, '{"late": true}', authorization=bearer("boss"))
    pushed.set()
    assert status == 202
    frame = json.loads(await tab.receive_from(timeout=1))
    assert (frame["id"], frame["data"]) == (body["id"], {"late": True})


async def test_a_username_with_unicode_and_spaces_is_found(staff, amake_user):
    """The path segment is the username as the server decoded it (like Django's route)."""
    await amake_user("zoë k")
    status, body, _ = await via_edge("/api/notify/zoë k", "{}", authorization=bearer("boss"))
    assert status == 202
    row = await Notification.objects.select_related("user").aget(pk=body["id"])
    assert row.user.username == "zoë k"


HOST, BEARER = (b"host", b"127.0.0.1"), (b"authorization", b"Bearer x")


@pytest.mark.parametrize(("path", "headers"), [
    pytest.param(NOTIFY, [HOST], id="no-authorization"),
    pytest.param(NOTIFY + "/", [HOST, BEARER], id="other-path"),
    pytest.param("/api/notify/", [HOST, BEARER], id="no-user"),
    pytest.param(BROADCAST, [HOST, BEARER, BEARER], id="two-authorization-headers"),
    pytest.param(BROADCAST, [BEARER], id="no-host"),
    pytest.param(BROADCAST, [(b"host", b"evil.example"), BEARER], id="foreign-host"),
    pytest.param(BROADCAST, [HOST, BEARER, (b"transfer-encoding", b"chunked")],
                 id="transfer-encoding"),
    pytest.param(BROADCAST, [HOST, BEARER, (b"content-length", b"+2")],
                 id="odd-content-length"),
])
def test_requests_the_edge_does_not_take_go_to_django(path, headers):
    """Without one Authorization header, one allowed Host and a plain body, Django answers."""
    scope = {"type": "http", "path": path, "method": "POST", "headers": headers}
    assert edge.NotifyEdge.route(scope) is edge.DJANGO


def test_the_edge_takes_bearer_posts_to_its_two_paths():
    """The two paths with one Authorization header and an allowed Host are answered here."""
    headers = [(b"host", b"127.0.0.1:8000"), BEARER, (b"content-length", b"2")]
    assert edge.NotifyEdge.route({"type": "http", "path": NOTIFY, "headers": headers}) == "bea"
    assert edge.NotifyEdge.route({"type": "http", "path": BROADCAST, "headers": headers}) is None


async def test_without_authorization_django_answers_through_the_application(staff):
    """No credentials at all: Django's view answers 401 through the same ASGI application."""
    status, body, _ = await via_edge(NOTIFY, "{}")
    assert (status, body["error"]) == (401, "unauthorized")


async def test_settings_that_make_django_redirect_send_requests_to_django(settings):
    """With SECURE_SSL_REDIRECT or HSTS on, Django's SecurityMiddleware answers."""
    scope = {"type": "http", "path": BROADCAST, "headers": [HOST, BEARER]}
    assert edge.NotifyEdge.route(scope) is None
    settings.SECURE_SSL_REDIRECT = True
    assert edge.NotifyEdge.route(scope) is edge.DJANGO


def test_the_security_headers_follow_the_settings(settings):
    """The edge reads its settings once, and again when they change (override_settings)."""
    assert (b"x-frame-options", b"DENY") in edge.response_headers(2)
    settings.X_FRAME_OPTIONS = "SAMEORIGIN"
    settings.SECURE_CROSS_ORIGIN_OPENER_POLICY = None
    headers = edge.response_headers(2)
    assert (b"x-frame-options", b"SAMEORIGIN") in headers
    assert b"cross-origin-opener-policy" not in dict(headers)


@pytest.mark.parametrize("path", [
    "/api/notify/bea", "/api/notify/zoë k", "/api/broadcast", "/api/notify/", "/api/notify",
    "/api/notify/bea/", "/api/notify/a/b", "/api/broadcast/", "/api/broadcasts", "/notify/bea",
])
def test_the_edge_takes_the_paths_django_routes_to_the_two_views(path):
    """The edge's paths are the notification routes of the URLconf, with the same user."""
    try:
        match = resolve(path)
    except Resolver404:
        match = None
    ours = match is not None and match.func in (views.notify_user, views.broadcast)
    target = edge.NotifyEdge.route({"type": "http", "path": path, "headers": [HOST, BEARER]})
    assert target is not edge.DJANGO if ours else target is edge.DJANGO
    if ours:
        assert target == match.kwargs.get("user_id")


#: A URLconf that mounts the notification routes elsewhere.
urlpatterns = [path("v2/", include("notifications.urls"))]


def test_the_edge_follows_where_the_urlconf_mounts_the_routes(settings):
    """Mounted under another prefix, the routes are taken there and no longer under /api/."""
    settings.ROOT_URLCONF = __name__
    route = edge.NotifyEdge.route
    assert route({"type": "http", "path": "/v2/notify/bea", "headers": [HOST, BEARER]}) == "bea"
    assert route({"type": "http", "path": "/v2/broadcast", "headers": [HOST, BEARER]}) is None
    assert route({"type": "http", "path": NOTIFY, "headers": [HOST, BEARER]}) is edge.DJANGO
