"""The Content-Security-Policy goes out as a header on every HTML response,
the admin's included (issue 18 item 14; docs/security.md)."""

import re

import pytest
from django.conf import settings
from django.test import Client

from chat.models import Message, Room

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "correct horse battery staple"


@pytest.fixture
def admin_client(make_user) -> Client:
    user = make_user("boss", staff=True, password=PASSWORD)
    user.is_superuser = True
    user.save()
    room = Room.objects.create(name="general")
    client = Client()
    client.force_login(user)
    client.message = Message.objects.create(room=room, sender=user, content="hello").pk
    return client


def policy(response) -> dict[str, str]:
    header = response.headers.get("Content-Security-Policy")
    assert header, f"no Content-Security-Policy on {response.request['PATH_INFO']}"
    return dict(d.strip().split(" ", 1) for d in header.split(";") if d.strip())


@pytest.mark.parametrize("path", [
    "/", "/chat/general/", "/admin/", "/admin/chat/message/",
    "/admin/chat/message/{message}/change/", "/admin/chat/room/add/",
    "/admin/auth/user/", "/admin/password_change/",
    "/admin/chat/message/?_popup=1&_to_field=id",
])
def test_every_html_page_has_the_header(admin_client, path):
    """Pages and admin pages carry the policy: scripts and styles only from this origin."""
    response = admin_client.get(path.format(message=admin_client.message))
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    directives = policy(response)
    assert directives["script-src"] == "'self'"
    assert directives["style-src"] == "'self'"
    assert directives["object-src"] == "'none'"
    assert directives["frame-ancestors"] == "'none'"


@pytest.mark.parametrize("path", ["/accounts/login/", "/admin/login/", "/accounts/logout/"])
def test_login_and_logout_pages_have_the_header(make_user, path):
    """Anonymous pages too, and a login form re-rendered with an error."""
    if path == "/accounts/logout/":
        client = Client()
        client.force_login(make_user("carol"))
        response = client.post(path, follow=True)
    else:
        response = Client().post(path, {"username": "nobody", "password": "wrong"})
    assert response.status_code == 200
    policy(response)


def test_the_pages_meta_tag_says_the_same(admin_client):
    """base.html's <meta> policy is the header's (less frame-ancestors, which a meta
    tag cannot hold): the two cannot drift apart."""
    response = admin_client.get("/")
    meta = re.search(rb'http-equiv="Content-Security-Policy"\s+content="([^"]+)"',
                     response.content).group(1).decode()
    header = {k: v for k, v in policy(response).items() if k != "frame-ancestors"}
    assert dict(d.strip().split(" ", 1) for d in meta.split(";") if d.strip()) == header
    assert settings.CONTENT_SECURITY_POLICY == response["Content-Security-Policy"]
