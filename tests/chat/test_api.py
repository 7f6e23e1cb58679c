"""GET /api/rooms/<room>/messages: the history frame's rules over HTTP."""

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from chat.models import Message, Room

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def room_with_messages(make_user):
    alice, bob, carol = make_user("alice"), make_user("bob"), make_user("carol")
    room = Room.objects.create(name="api")
    ids = [Message.objects.create(room=room, sender=alice, content=f"m{i}").pk for i in range(5)]
    private = Message.objects.create(room=room, sender=alice, recipient=bob, content="p").pk
    return {"ids": ids, "private": private, "users": (alice, bob, carol)}


def get(path: str, token: str | None = None):
    headers = {"HTTP_AUTHORIZATION": f"Bearer {token}"} if token else {}
    return Client().get(path, **headers)


def test_latest_messages_visible_to_the_user(room_with_messages, token_for):
    """Without before: the latest visible messages, oldest first; PRIV only for its parties."""
    ids, private = room_with_messages["ids"], room_with_messages["private"]
    response = get("/api/rooms/api/messages", token_for("bob"))
    assert response.status_code == 200
    body = response.json()
    assert body["room"] == "api" and body["truncated"] is False
    assert [m["id"] for m in body["messages"]] == [*ids, private]
    assert body["messages"][-1]["type"] == "private"
    carol = get("/api/rooms/api/messages", token_for("carol")).json()
    assert [m["id"] for m in carol["messages"]] == ids


def test_paging_with_before_and_limit(room_with_messages, token_for):
    """before/limit page back; truncated says older ones remain."""
    ids = room_with_messages["ids"]
    body = get(f"/api/rooms/api/messages?before={ids[3]}&limit=2", token_for("carol")).json()
    assert [m["id"] for m in body["messages"]] == ids[1:3] and body["truncated"] is True


def test_unknown_room_is_an_empty_list(room_with_messages, token_for):
    """A valid but unknown room name gives 200 with no messages."""
    body = get("/api/rooms/nowhere/messages", token_for("carol")).json()
    assert body == {"room": "nowhere", "messages": [], "truncated": False}


def test_room_name_outside_the_pattern_is_404(room_with_messages, token_for):
    """A name outside [A-Za-z0-9_-]{1,64} is not_found."""
    response = get("/api/rooms/" + "x" * 65 + "/messages", token_for("carol"))
    assert response.status_code == 404 and response.json()["error"] == "not_found"


@pytest.mark.parametrize("query", ["before=abc", "before=-1", "before=0", "limit=0",
                                   "limit=101", "limit=x", "before=1.5"])
def test_bad_query_is_invalid_query(room_with_messages, token_for, query):
    """Bad before/limit give 400 invalid_query."""
    response = get(f"/api/rooms/api/messages?{query}", token_for("carol"))
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_query"


def test_authentication_is_required(room_with_messages):
    """Without credentials: 401 unauthorized with the error body."""
    response = get("/api/rooms/api/messages")
    assert response.status_code == 401
    assert set(response.json()) == {"error", "message"}


def test_session_user_may_read(room_with_messages):
    """A logged-in session reads history without a token (GET needs no CSRF)."""
    client = Client()
    client.force_login(get_user_model().objects.get(username="carol"))
    assert client.get("/api/rooms/api/messages").status_code == 200


def test_post_is_method_not_allowed(room_with_messages, token_for):
    """Only GET: other methods get 405."""
    response = Client().post("/api/rooms/api/messages",
                             HTTP_AUTHORIZATION=f"Bearer {token_for('carol')}")
    assert response.status_code == 405 and response.json()["error"] == "method_not_allowed"


def test_unknown_api_path_is_json_404(room_with_messages):
    """Any unknown /api/ path answers 404 not_found as JSON."""
    response = Client().get("/api/nothing/here")
    assert response.status_code == 404 and response.json()["error"] == "not_found"


@pytest.mark.parametrize("path", ["/api/rooms", "/api/rooms/api/messages"])
def test_the_database_down_is_503_unavailable(room_with_messages, token_for, monkeypatch,
                                               caplog, path):
    """A request the database cannot serve gets the API's error body with 503, not an
    HTML 500; the error is logged."""
    from django.db import OperationalError

    from chat import services

    token = token_for("bob")  # the token's user is looked up before the failure

    def database_down(*args, **kwargs):
        raise OperationalError("the database is down")

    monkeypatch.setattr(services.rooms, "room_history", database_down)
    monkeypatch.setattr(services.rooms, "rooms_overview", database_down)
    response = get(path, token)
    assert response.status_code == 503
    assert response.json() == {"error": "unavailable",
                               "message": "the service is unavailable; try again"}
    assert f"could not serve GET {path}" in caplog.text


def test_a_database_error_that_is_a_bug_is_not_answered_try_again(room_with_messages,
                                                                  token_for, monkeypatch):
    """Only a database that cannot serve is 503 "try again"; a refused statement (an
    IntegrityError escaping a view, a DataError) is a bug: Django's 500 and error log."""
    from django.db import IntegrityError

    from chat import services

    token = token_for("bob")

    def refused(*args, **kwargs):
        raise IntegrityError("a constraint the view did not expect")

    monkeypatch.setattr(services.rooms, "rooms_overview", refused)
    with pytest.raises(IntegrityError):
        get("/api/rooms", token)
