"""The HTML pages: login, lobby, room, and their static files under daphne."""

import logging
import re
import urllib.request

import pytest
from django.contrib.staticfiles import finders
from django.test import Client

from chat.models import Message, Room, RoomBan, RoomMember

PASSWORD = "correct horse battery staple"


@pytest.fixture
def alice(make_user):
    return make_user("alice", password=PASSWORD)


@pytest.fixture
def client_alice(alice) -> Client:
    client = Client()
    client.force_login(alice)
    return client


@pytest.mark.parametrize("path", ["/", "/chat/general/"])
def test_pages_need_login(alice, path):
    """An anonymous visitor is sent to the login page, with a way back."""
    response = Client().get(path)
    assert response.status_code == 302
    assert response["Location"] == f"/accounts/login/?next={path}"


def test_login_form_logs_in_and_returns_to_next(alice):
    """The styled login form signs in with Django's auth and follows ?next=."""
    client = Client()
    page = client.get("/accounts/login/?next=/chat/general/")
    assert page.status_code == 200
    assert b'name="username"' in page.content and b'for="id_password"' in page.content
    response = client.post(
        "/accounts/login/",
        {"username": "alice", "password": PASSWORD, "next": "/chat/general/"},
    )
    assert response.status_code == 302
    assert response["Location"] == "/chat/general/"
    assert client.get("/chat/general/").status_code == 200


def test_login_with_a_bad_password_says_so(alice):
    """A wrong password re-renders the form with an alert, not a redirect."""
    response = Client().post("/accounts/login/", {"username": "alice", "password": "nope"})
    assert response.status_code == 200
    assert b'role="alert"' in response.content


def test_logout_is_a_post(client_alice):
    """Logging out takes a POST (the page's form) and ends the session."""
    response = client_alice.post("/accounts/logout/")
    assert response.status_code == 302
    assert client_alice.get("/").status_code == 302


def test_lobby_lists_rooms_newest_activity_first(client_alice, alice):
    """The lobby lists the rooms of ``GET /api/rooms``: newest visible message first, then
    the user's private rooms without messages; a room with none visible is left out."""
    old, empty, fresh = (Room.objects.create(name=name) for name in ("old", "empty", "fresh"))
    Message.objects.create(room=old, sender=alice, content="first")
    Message.objects.create(room=fresh, sender=alice, content="second")
    mine = Room.objects.create(name="mine", private=True, owner=alice)
    RoomMember.objects.create(room=mine, user=alice)
    response = client_alice.get("/")
    assert response.status_code == 200
    html = response.content.decode()
    names = re.findall(r'href="/chat/([^/"]+)/"', html)
    assert names == ["fresh", "old", "mine"]
    assert empty.name not in names


def test_lobby_form_opens_a_valid_room(client_alice):
    """Submitting a valid name redirects to that room's page."""
    response = client_alice.get("/", {"room": "new-room_1"})
    assert response.status_code == 302
    assert response["Location"] == "/chat/new-room_1/"


@pytest.mark.parametrize("name", ["", "has space", "a/b", "x" * 65, "ünï"])
def test_lobby_form_refuses_a_bad_room_name(client_alice, name):
    """A name outside the room pattern is shown back with an error, no redirect."""
    response = client_alice.get("/", {"room": name})
    assert response.status_code == 400
    assert b'id="room-errors"' in response.content


def test_room_page_renders_for_a_valid_name(client_alice):
    """The room page carries the room, the user and the WebSocket path; no token."""
    response = client_alice.get("/chat/Room_1-x/")
    assert response.status_code == 200
    html = response.content.decode()
    assert 'data-room="Room_1-x"' in html
    assert 'data-user="alice"' in html
    assert 'data-ws-path="/ws/chat/Room_1-x/"' in html
    assert 'aria-live="polite"' in html
    assert "eyJ" not in html  # no JWT (they all start with a base64 '{"')
    assert "token=" not in html
    assert "/static/js/chat.js" in html and "/static/js/notifications.js" in html
    assert "script-src 'self';" in html  # the Content-Security-Policy meta tag
    assert "<script>" not in html  # so no inline script, which it would block


@pytest.mark.parametrize("path", ["/chat/bad%20name/", "/chat/" + "x" * 65 + "/",
                                  "/chat/%C3%BC/", "/chat/a.b/"])
def test_room_page_404_for_an_invalid_name(client_alice, path):
    """A name the WebSocket route would refuse has no page either."""
    assert client_alice.get(path).status_code == 404


def test_favicon_ico_leads_to_the_icon_without_a_warning(caplog):
    """GET /favicon.ico, which browsers ask for anyway, redirects to the SVG icon and logs
    no "Not Found" warning."""
    logger = logging.getLogger("django.request")  # "django" does not propagate to caplog
    logger.addHandler(caplog.handler)
    try:
        response = Client().get("/favicon.ico")
    finally:
        logger.removeHandler(caplog.handler)
    assert response.status_code == 301
    assert response["Location"] == "/static/favicon.svg"
    assert finders.find("favicon.svg")
    assert [record.getMessage() for record in caplog.records] == []


@pytest.mark.daphne
def test_static_files_are_served_by_daphne_without_debug(daphne_server):
    """With DEBUG=false, daphne alone serves the page's JS and CSS."""
    server = daphne_server()
    for path, needle in [
        ("/static/js/chat.js", b"/ws/chat/"),
        ("/static/js/realtime.js", b"ReconnectingSocket"),
        ("/static/js/notifications.js", b'type: "ack"'),
        ("/static/js/lobby.js", b"/api/rooms"),
        ("/static/js/room-admin.js", b"/members"),
        ("/static/css/app.css", b".messages"),
    ]:
        with urllib.request.urlopen(server.url + path, timeout=10) as response:
            assert response.status == 200
            assert needle in response.read()
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(server.url + "/static/js/missing.js", timeout=10)
    assert missing.value.code == 404


def test_lobby_has_the_create_room_form_and_badges(client_alice, alice, make_user):
    """The lobby offers "Create a room" (private by default; lobby.js posts it) and shows
    each room's unread count as a badge, hidden at zero, and private rooms as such."""
    bob = make_user("bob")
    seen, busy = Room.objects.create(name="seen"), Room.objects.create(name="busy")
    Message.objects.create(room=seen, sender=alice, content="mine")
    Message.objects.create(room=busy, sender=bob, content="one")
    Message.objects.create(room=busy, sender=bob, content="two")
    mine = Room.objects.create(name="mine", private=True, owner=alice)
    RoomMember.objects.create(room=mine, user=alice)
    html = client_alice.get("/").content.decode()
    assert 'id="create-room"' in html and 'id="create-private" checked' in html
    assert "/static/js/lobby.js" in html and "<script>" not in html
    badges = dict(re.findall(r'<li data-room="([^"]+)".*?<span class="badge" data-unread="(\d+)"',
                             html, re.S))
    assert badges == {"busy": "2", "seen": "0", "mine": "0"}
    assert re.search(r'data-unread="0" title="unread messages" hidden', html)
    private = re.search(r'<li data-room="mine".*?</li>', html, re.S).group()
    assert "tag-private" in private


def test_room_page_controls_follow_permissions(alice, make_user):
    """The owner of a private room gets the members list with invite and remove, and the
    ban form; a member gets the list only; a room's page tells chat.js who may delete."""
    bob = make_user("bob")
    room = Room.objects.create(name="team", private=True, owner=alice)
    RoomMember.objects.create(room=room, user=alice)
    RoomMember.objects.create(room=room, user=bob)
    owner, member = Client(), Client()
    owner.force_login(alice)
    member.force_login(bob)

    html = owner.get("/chat/team/").content.decode()
    for needle in ('id="members-panel"', 'id="invite-form"', 'id="ban-form"',
                   'data-can-manage="true"', 'data-can-moderate="true"', 'data-private="true"',
                   'data-owner="alice"', "/static/js/room-admin.js"):
        assert needle in html, needle
    html = member.get("/chat/team/").content.decode()
    assert 'id="members-panel"' in html
    for needle in ('id="invite-form"', 'id="ban-form"'):
        assert needle not in html, needle
    assert 'data-can-moderate="false"' in html

    public = owner.get("/chat/open-room/").content.decode()
    assert 'id="members-panel"' not in public and 'data-private="false"' in public


def test_room_page_404_for_a_private_room_or_a_ban(client_alice, alice, make_user):
    """A private room alice is no member of, and a room she is banned from, have no page."""
    Room.objects.create(name="secret", private=True, owner=make_user("bob"))
    RoomBan.objects.create(room=Room.objects.create(name="banned-here"), user=alice)
    assert client_alice.get("/chat/secret/").status_code == 404
    assert client_alice.get("/chat/banned-here/").status_code == 404
