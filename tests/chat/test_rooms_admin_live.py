"""PROTOCOL.md, Rooms: "Deleting a message in the Django admin has the same effect", on a
real daphne: a staff user's admin session deletes, and the sockets of the room hear of it.
"""

import asyncio
import json
import re
import urllib.parse
import urllib.request

import pytest
from channels.db import database_sync_to_async

from tests.chat.rooms_live import after_messages, close_all, join, say, session_of

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.daphne]


def admin_post(server, session: str, path: str, fields: list[tuple[str, str]]) -> int:
    """POST an admin form as a browser would: the CSRF token from the form's page."""
    cookie = f"sessionid={session}"
    with urllib.request.urlopen(urllib.request.Request(
            server.url + path, headers={"Cookie": cookie}), timeout=10) as page:
        csrf_cookie = re.search(r"csrftoken=([^;]+)", page.headers["Set-Cookie"]).group(1)
        form_token = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', page.read())
    data = urllib.parse.urlencode(
        [("csrfmiddlewaretoken", form_token.group(1).decode()), *fields]).encode()
    request = urllib.request.Request(server.url + path, data=data, method="POST", headers={
        "Cookie": f"{cookie}; csrftoken={csrf_cookie}", "Referer": server.url + path,
        "Origin": server.url})

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    try:
        with urllib.request.build_opener(NoRedirect).open(request, timeout=10) as answer:
            return answer.status
    except urllib.error.HTTPError as error:
        return error.code


async def test_the_admin_delete_action_and_page_remove_messages_from_every_socket(
        daphne_server, make_user, token_for):
    """One message deleted on its admin page and two with "Delete selected messages":
    each reaches both sockets of the room as message_deleted; later history lacks them."""
    server = daphne_server()
    for name in ("alice", "bob"):
        await database_sync_to_async(make_user)(name)
    moderator = await database_sync_to_async(make_user)("mod", staff=True)
    moderator.is_superuser = True  # the admin's own permission to delete messages
    await database_sync_to_async(moderator.save)()
    session = await database_sync_to_async(session_of)("mod")
    alice, _, _ = await join(server, "hall", token_for("alice"))
    bob, _, _ = await join(server, "hall", token_for("bob"))
    ids = [(await say(alice, f"m{n}"))["id"] for n in range(4)]

    status = await asyncio.to_thread(admin_post, server, session,
                                     f"/admin/chat/message/{ids[0]}/delete/", [("post", "yes")])
    assert status == 302
    status = await asyncio.to_thread(admin_post, server, session, "/admin/chat/message/", [
        ("action", "delete_selected"), ("post", "yes"),
        ("_selected_action", str(ids[1])), ("_selected_action", str(ids[2]))])
    assert status == 302
    for ws in (alice, bob):
        gone = [await after_messages(ws, "message_deleted") for _ in range(3)]
        assert sorted(frame["id"] for frame in gone) == ids[:3]
        assert all(frame["room"] == "hall" and frame["timestamp"] for frame in gone)
    await alice.send(json.dumps({"type": "history"}))
    history = await after_messages(alice, "history")
    assert [m["id"] for m in history["messages"]] == ids[3:]
    await close_all(alice, bob)
