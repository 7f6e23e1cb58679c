"""Notification bodies that parse but cannot be stored and sent (issue 18, items 8 and 9).

A body is refused with 400 ``invalid_body`` before anything is stored when the
database or the NOTE frame could not take it: ``NaN``/``Infinity``, a number
beyond a double (``1e400``), nesting deeper than ``API_MAX_JSON_DEPTH``. The
same on every way in: the edge (Bearer), Django with a chunked body, Django
with a session. A 202 means stored, a 5xx means not stored; one bad post never
fails another post or an ack. Run on SQLite and on PostgreSQL (``DATABASE_URL``).
"""

import asyncio
import json
import math

import pytest
from channels.testing import HttpCommunicator
from django.test import AsyncClient

from notifications import api, errors, views, writer
from notifications.models import Notification
from project.asgi import application
from realtime import protocol, tokens
from tests.notifications.conftest import receive, send, undelivered_ids

pytestmark = pytest.mark.django_db(transaction=True)

NOTIFY = "/api/notify/bea"


@pytest.fixture
async def staff(amake_user):
    """A staff user 'boss' and an ordinary user 'bea'."""
    await amake_user("bea")
    return await amake_user("boss", staff=True)


def nested(depth: int) -> str:
    """A JSON object whose objects and arrays nest ``depth`` (>= 2) levels (the body is 1)."""
    inner = depth - 1
    return '{"a":' + "[" * inner + "]" * inner + "}"


def deep_data(depth: int) -> dict:
    """``json.loads(nested(depth))``, built without recursion."""
    value: list = []
    for _ in range(depth - 2):
        value = [value]
    return {"a": value}


def test_nested_counts_the_body_as_level_one():
    assert json.loads(nested(3)) == {"a": [[]]} == deep_data(3)


# Bodies that are JSON for Python's json module but that no database stores as such
# (or that no NOTE frame can carry), by name.
UNSTORABLE = {
    "nan": '{"x": NaN}',
    "infinity": '{"x": Infinity}',
    "minus-infinity": '{"x": [1, -Infinity]}',
    "1e400": '{"a": 1e400}',
    "-1e400": '{"a": {"b": -1e400}}',
    "400-digit-float": '{"a": 1' + "0" * 400 + '.5}',
    "nested-975": nested(975),
    "objects-100": '{"a":' * 100 + "1" + "}" * 100,
}


async def via_edge(path: str, body: str, authorization: str, *,
                   chunked: bool = False) -> tuple[int, dict]:
    """Through the ASGI application: the edge, or Django for a chunked body."""
    raw = body.encode()
    headers = [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"),
               (b"authorization", authorization.encode())]
    headers.append((b"transfer-encoding", b"chunked") if chunked
                   else (b"content-length", str(len(raw)).encode()))
    communicator = HttpCommunicator(application, "POST", path, raw, headers)
    response = await communicator.get_response(timeout=10)
    try:
        return response["status"], json.loads(response["body"])
    except ValueError:
        return response["status"], {"body": response["body"][:200]}


async def via_session(path: str, body: str, user) -> tuple[int, dict]:
    """Through Django with a staff session (the test client skips CSRF)."""
    client = AsyncClient()
    await client.aforce_login(user)
    response = await client.post(path, data=body, content_type="application/json")
    try:
        return response.status_code, response.json()
    except ValueError:
        return response.status_code, {"body": response.content[:200]}


def bearer(username: str) -> str:
    return "Bearer " + tokens.issue(username)[0]


async def post_by(way: str, path: str, body: str, user) -> tuple[int, dict]:
    if way == "session":
        return await via_session(path, body, user)
    return await via_edge(path, body, bearer(user.username), chunked=way == "chunked")


WAYS = ["edge", "chunked", "session"]


@pytest.mark.parametrize("way", WAYS)
@pytest.mark.parametrize("body", UNSTORABLE.values(), ids=UNSTORABLE.keys())
async def test_an_unstorable_body_is_400_and_nothing_is_stored(staff, way, body):
    """NaN, infinities, overflowing numbers, deep nesting: 400 invalid_body, no row."""
    status, answer = await post_by(way, NOTIFY, body, staff)
    assert (status, answer.get("error")) == (400, "invalid_body"), answer
    assert answer["message"]
    assert await Notification.objects.acount() == 0


@pytest.mark.parametrize("way", WAYS)
async def test_one_level_too_deep_is_400_and_the_limit_itself_is_stored(staff, way, connect):
    """A body nested API_MAX_JSON_DEPTH levels is stored and sent; one more is refused."""
    limit = protocol.API_MAX_JSON_DEPTH
    status, answer = await post_by(way, "/api/broadcast", nested(limit + 1), staff)
    assert (status, answer.get("error")) == (400, "invalid_body"), answer
    tab = await connect("bea")
    await send(tab, {"type": "ping"})
    assert (await receive(tab))["type"] == "pong"
    status, answer = await post_by(way, NOTIFY, nested(limit), staff)
    assert (status, answer["status"]) == (202, "sent"), answer
    frame = await receive(tab)
    assert (frame["id"], frame["data"]) == (answer["id"], deep_data(limit))


@pytest.mark.parametrize("way", WAYS)
async def test_a_broadcast_with_nan_is_400(staff, way):
    status, answer = await post_by(way, "/api/broadcast", '{"x": NaN}', staff)
    assert (status, answer.get("error")) == (400, "invalid_body"), answer
    assert await Notification.objects.acount() == 0


@pytest.mark.parametrize("body", ['{"x": NaN', '{"x": Infinity,}', "[NaN"])
async def test_broken_json_with_nan_in_it_is_still_invalid_json(staff, body):
    """invalid_body is for JSON that cannot be stored; what is not JSON stays invalid_json."""
    status, answer = await via_edge(NOTIFY, body, bearer("boss"))
    assert (status, answer.get("error")) == (400, "invalid_json"), answer


async def test_numbers_that_round_trip_are_stored_as_posted(staff):
    """Finite floats, tiny ones, big integers: stored and answered 202, the same values."""
    body = '{"f": 1.5e300, "tiny": 1e-400, "int": 1' + "0" * 300 + ', "neg": -0.0}'
    status, answer = await via_edge(NOTIFY, body, bearer("boss"))
    assert status == 202, answer
    row = await Notification.objects.aget(pk=answer["id"])
    # jsonb writes 1.5e300 back as its 301 digits: the same JSON number for a client.
    assert float(row.data["f"]) == 1.5e300 and row.data["tiny"] == 0.0
    assert row.data["int"] == 10**300


@pytest.mark.parametrize("way", ["edge", "chunked"])
@pytest.mark.parametrize("target", ["x\x00y", "x\ud800y"])
async def test_a_non_staff_token_gets_403_whatever_the_target(staff, way, target):
    """The staff check answers before any lookup of the target: a NUL in it is no 500."""
    path = "/api/notify/" + target
    status, answer = await via_edge(path, "{}", bearer("bea"), chunked=way == "chunked")
    assert (status, answer.get("error")) == (403, "forbidden"), answer


@pytest.mark.parametrize("way", ["edge", "chunked"])
async def test_a_staff_token_gets_404_for_a_target_no_user_can_have(staff, way):
    """A username with a NUL names nobody: 404, after the body's checks."""
    status, answer = await via_edge("/api/notify/x\x00y", "{}", bearer("boss"),
                                    chunked=way == "chunked")
    assert (status, answer.get("error")) == (404, "not_found"), answer
    status, answer = await via_edge("/api/notify/x\x00y", "[]", bearer("boss"),
                                    chunked=way == "chunked")
    assert (status, answer.get("error")) == (400, "invalid_body"), answer
    assert await Notification.objects.acount() == 0


async def test_a_session_post_to_a_nul_target_is_404(staff):
    client = AsyncClient()
    await client.aforce_login(staff)
    response = await client.post("/api/notify/x%00y", data="{}",
                                 content_type="application/json")
    assert response.status_code == 404, response.content
    assert response.json()["error"] == "not_found"


# --- One bad post in a batch --------------------------------------------------------


async def test_bad_posts_beside_good_posts_and_acks_lose_nothing(staff, amake_user,
                                                                 monkeypatch):
    """Carol's acks ride with a batch where bad posts came too: all applied, good ones 202."""
    monkeypatch.setattr(writer, "ACK_DELAY_SECONDS", 3600)  # the acks wait for the posts
    carol = await amake_user("carol")
    ids = [(await api.anotify(carol, {"n": n}))[0] for n in range(5)]
    await views.ensure_hub()
    writer.acknowledge_later(carol.pk, ids)
    good = bearer("boss")
    answers = await asyncio.gather(
        via_edge(NOTIFY, '{"x": NaN}', good),
        via_edge("/api/notify/x\x00y", "{}", bearer("bea")),
        via_edge(NOTIFY, '{"a": 1e400}', good),
        # Too deep, but not near the interpreter's recursion limit: a collection that
        # runs there fails every finalizer it calls, which pytest counts against the
        # test (seen once in CI). The limit's own path has its test in UNSTORABLE.
        via_edge(NOTIFY, '{"a":' * 100 + "1" + "}" * 100, good),
        via_edge(NOTIFY, '{"ok": 1}', good),
        via_edge("/api/notify/carol", '{"ok": 2}', good),
    )
    assert [status for status, _ in answers] == [400, 403, 400, 400, 202, 202], answers
    await writer.flush_acks()
    assert await undelivered_ids(carol) == [answers[5][1]["id"]], "the acks were applied"
    stored = [row.data async for row in Notification.objects.filter(id__gt=ids[-1])]
    assert stored == [{"ok": 1}, {"ok": 2}]


async def test_a_failed_batch_retries_its_acks_on_their_own(amake_user, batches, monkeypatch):
    """A post the database refuses fails alone; the acks of its batch are still written."""
    monkeypatch.setattr(writer, "ACK_DELAY_SECONDS", 3600)
    bob = await amake_user("bob")
    ids = [(await api.anotify(bob, {"n": n}))[0] for n in range(3)]
    batches.clear()
    writer.acknowledge_later(bob.pk, ids)
    results = await asyncio.gather(
        api.anotify(bob, {"n": 3}), api.anotify(bob, {"bad": object()}),
        api.anotify(bob, {"n": 5}), return_exceptions=True)
    assert isinstance(results[1], errors.ServiceUnavailable)
    assert [status for _, status in (results[0], results[2])] == ["queued", "queued"]
    assert batches[0] == (3, 1)
    assert await undelivered_ids(bob) == [results[0][0], results[2][0]]


async def test_a_failed_batch_of_acks_alone_is_not_retried_in_a_loop(amake_user, batches,
                                                                    monkeypatch):
    """Acks whose own transaction fails are given up (they come again): no endless retry."""
    bob = await amake_user("bob")
    note_id, _ = await api.anotify(bob, {})
    batches.clear()

    def broken(posts, acks):
        batches.append((len(posts), len(acks)))
        raise RuntimeError("database down")

    monkeypatch.setattr(writer, "store_batch", broken)
    writer.acknowledge_later(bob.pk, [note_id])
    await writer.flush_acks(bob.pk)
    assert batches == [(0, 1)]


# --- A 202 means stored, a 5xx means not stored ------------------------------------


async def test_a_row_stored_but_not_encodable_is_answered_as_stored(amake_user, connect,
                                                                    monkeypatch):
    """If a stored row's frame cannot be built, its post is answered (id, queued), not 5xx."""
    bob = await amake_user("bob")
    tab = await connect("bob")
    await send(tab, {"type": "ping"})
    assert (await receive(tab))["type"] == "pong"
    original = writer.note_item

    def fragile(row, username):
        if row.data.get("fragile"):
            raise RecursionError("maximum recursion depth exceeded")
        return original(row, username)

    monkeypatch.setattr(writer, "note_item", fragile)
    results = await asyncio.gather(
        api.anotify(bob, {"n": 0}), api.anotify(bob, {"fragile": 1}), api.anotify(bob, {"n": 2}),
        return_exceptions=True)
    assert [status for _, status in results] == ["sent", "queued", "sent"], results
    assert await Notification.objects.acount() == 3
    frames = [await receive(tab) for _ in range(2)]
    assert [f["id"] for f in frames] == [results[0][0], results[2][0]]


async def test_a_failed_push_after_storing_is_answered_as_stored(amake_user, monkeypatch):
    """Whatever fails after the commit, every stored post gets its id."""
    bob = await amake_user("bob")

    async def broken(items):
        raise RuntimeError("push broke")

    monkeypatch.setattr(writer, "push_notes", broken)
    results = await asyncio.gather(api.anotify(bob, {"n": 0}), api.abroadcast({"n": 1}))
    assert [status for _, status in results] == ["queued", "broadcast"]
    assert await Notification.objects.acount() == 2


# --- The Python API refuses the same data ------------------------------------------


@pytest.mark.parametrize("data", [
    {"x": math.nan}, {"x": [math.inf]}, {"x": {"y": -math.inf}},
    deep_data(975), {"a\x00": 1}, {"a": "\ud800"},
], ids=["nan", "inf", "-inf", "nested-975", "nul-key", "surrogate"])
async def test_anotify_refuses_data_that_cannot_be_stored_and_sent(amake_user, data):
    bob = await amake_user("bob")
    with pytest.raises(ValueError):
        await api.anotify(bob, data)
    with pytest.raises(ValueError):
        await api.abroadcast(data)
    assert await Notification.objects.acount() == 0
