"""The rooms features of the page (issue 19) in a real Chromium against a real daphne:
private rooms and members, bans, deleting messages, typing, unread badges.

As in test_chat_page.py, users log in through the login form; every test uses
rooms of its own.
"""

import asyncio
import json
import os
import urllib.error
import urllib.request

import pytest
from playwright.async_api import expect

from tests.browser.conftest import DOCS
from tests.browser.pages import WsChat, contents, exactly, say, shown_once, wait_live

pytestmark = [pytest.mark.browser, pytest.mark.daphne, pytest.mark.once]

NO_ACCESS = "You do not have access to this room (it is private, or you were removed or banned)"

expect.set_options(timeout=20_000)


@pytest.fixture
def live(daphne_server, users):
    """One daphne with the users in the database (the per-user cap raised, as in
    test_chat_page.py: connections of daphnes stopped earlier may still count)."""
    return daphne_server(WS_MAX_CONNECTIONS_PER_USER="100")


def call_api(server, token: str, method: str, path: str, body: dict | None = None):
    """``(status, body)`` of a JSON API call authenticated by a Bearer token."""
    request = urllib.request.Request(
        f"{server.url}{path}",
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method=method,
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


async def api(server, token: str, method: str, path: str, body: dict | None = None):
    return await asyncio.to_thread(call_api, server, token, method, path, body)


def message(page, text: str):
    return page.locator("#messages .msg").filter(
        has=page.locator(".msg-content", has_text=exactly(text)))


async def delete(page, text: str) -> None:
    """Delete a message as a person would: "Delete", then "Confirm delete"."""
    button = message(page, text).locator(".msg-delete")
    await button.click()
    await expect(button).to_have_text("Confirm delete")
    await button.click()


async def test_private_room_opens_for_a_member_only_and_closes_on_removal(live, open_page):
    """alice creates a private room from the lobby; bob gets 404 until she invites him, then
    chats there; removed, his open page says he has no access and stops reconnecting."""
    alice = await open_page(live, "alice", "/")
    await alice.fill("#create-name", "team-secret")
    await expect(alice.locator("#create-private")).to_be_checked()
    await alice.click("#create-room button[type=submit]")
    await alice.wait_for_url(f"{live.url}/chat/team-secret/")
    await wait_live(alice)
    await expect(alice.locator("#room-title .tag-private")).to_have_text("private")
    await expect(alice.locator("#members > li")).to_have_count(1)
    await expect(alice.locator("#members [data-user=alice]")).to_contain_text("(owner)")

    bob = await open_page(live, "bob", "/")
    await expect(bob.locator("#room-list [data-room=team-secret]")).to_have_count(0)
    refused = await bob.goto(f"{live.url}/chat/team-secret/")
    assert refused.status == 404

    # Refusals are shown from the API's error body.
    await alice.fill("#invite-user", "nobody")
    await alice.click("#invite-form button")
    await expect(alice.locator("#members-error")).to_contain_text("not_found")

    await alice.fill("#invite-user", "bob")
    await alice.click("#invite-form button")
    await expect(alice.locator("#members [data-user=bob]")).to_have_count(1)
    await expect(alice.locator("#members-error")).to_be_empty()

    await bob.goto(f"{live.url}/")
    await expect(bob.locator("#room-list [data-room=team-secret] .tag-private")).to_have_count(1)
    await bob.click("#room-list [data-room=team-secret] a")
    await bob.wait_for_url(f"{live.url}/chat/team-secret/")
    await wait_live(bob)
    await expect(bob.locator("#members > li")).to_have_count(2)
    await expect(bob.locator("#invite-form, .member-remove")).to_have_count(0)
    await say(alice, "welcome bob")
    await shown_once(bob, "welcome bob")

    sockets: list[str] = []
    bob.on("websocket", lambda ws: sockets.append(ws.url))
    await alice.click("#members [data-user=bob] .member-remove")
    await expect(alice.locator("#members [data-user=bob]")).to_have_count(0)
    await expect(bob.locator("#alerts")).to_contain_text(NO_ACCESS)
    await expect(bob.locator("#conn-state")).to_have_attribute("data-state", "offline")
    await expect(bob.locator("#conn-state")).to_contain_text("No access")
    await expect(bob.locator("#send-button")).to_be_disabled()
    await asyncio.sleep(3)
    assert [url for url in sockets if "/ws/chat/" in url] == [], sockets
    # The one failed load is the refused invite of "nobody" (404).
    assert alice.errors == [], alice.errors
    assert [e for e in alice.console_errors if "status of 404" not in e] == []
    assert bob.errors == []


async def test_ban_closes_the_banned_users_page(live, open_page, token_for):
    """The owner of a public room bans carol from the page: carol's open page is told she
    has no access; banning a staff user is refused with the API's message."""
    status, _ = await api(live, token_for("alice"), "POST", "/api/rooms",
                          {"name": "ban-here", "private": False})
    assert status == 201
    alice = await open_page(live, "alice", "/chat/ban-here/")
    carol = await open_page(live, "carol", "/chat/ban-here/")
    await wait_live(alice)
    await wait_live(carol)
    await expect(alice.locator("#members-panel")).to_have_count(0)  # public: no members
    await expect(carol.locator("#ban-form")).to_have_count(0)

    await alice.fill("#ban-user", "ops")
    await alice.click("#ban-form button")
    await expect(alice.locator("#ban-error")).to_contain_text("invalid_body")

    await alice.fill("#ban-user", "carol")
    await alice.click("#ban-form button")
    await expect(alice.locator("#admin-status")).to_have_text("carol is banned from this room.")
    await expect(carol.locator("#alerts")).to_contain_text(NO_ACCESS)
    await expect(carol.locator("#conn-state")).to_have_attribute("data-state", "offline")
    assert (await carol.goto(f"{live.url}/chat/ban-here/")).status == 404


async def test_deleted_message_disappears_from_every_page(live, open_page):
    """bob deletes his own message: it goes from alice's page too. alice may not delete
    bob's messages; staff may delete anyone's, and it goes from every page."""
    alice = await open_page(live, "alice", "/chat/deletions/")
    bob = await open_page(live, "bob", "/chat/deletions/")
    ops = await open_page(live, "ops", "/chat/deletions/")
    for page in (alice, bob, ops):
        await wait_live(page)
    await say(bob, "oops, wrong room")
    await say(alice, "hello")
    await say(bob, "a keeper")
    for page in (alice, bob, ops):
        await expect(contents(page)).to_have_text(["oops, wrong room", "hello", "a keeper"])

    await expect(message(alice, "oops, wrong room").locator(".msg-delete")).to_have_count(0)
    await expect(message(alice, "hello").locator(".msg-delete")).to_have_count(1)
    await expect(message(ops, "a keeper").locator(".msg-delete")).to_have_count(1)

    await delete(bob, "oops, wrong room")
    for page in (alice, bob, ops):
        await expect(contents(page)).to_have_text(["hello", "a keeper"])

    await delete(ops, "hello")
    for page in (alice, bob, ops):
        await expect(contents(page)).to_have_text(["a keeper"])

    # A page opened later gets a history without them.
    carol = await open_page(live, "carol", "/chat/deletions/")
    await wait_live(carol)
    await expect(contents(carol)).to_have_text(["a keeper"])
    for page in (alice, bob, ops, carol):
        assert page.errors == page.console_errors == [], (page.errors, page.console_errors)
        await expect(page.locator("#alerts .alert")).to_have_count(0)


async def test_typing_shows_who_is_typing(live, open_page):
    """Typing shows "alice is typing…" to the others (never to alice), then both names when
    two type, and goes away a few seconds after they stop."""
    alice = await open_page(live, "alice", "/chat/typing/")
    bob = await open_page(live, "bob", "/chat/typing/")
    carol = await open_page(live, "carol", "/chat/typing/")
    for page in (alice, bob, carol):
        await wait_live(page)
        await expect(page.locator("#people > li")).to_have_count(3)

    await alice.locator("#message-input").press_sequentially("hel")
    await expect(bob.locator("#typing")).to_have_text("alice is typing…")
    await expect(carol.locator("#typing")).to_have_text("alice is typing…")
    await carol.locator("#message-input").press_sequentially("me t")
    await expect(bob.locator("#typing")).to_have_text("alice and carol are typing…")
    await expect(alice.locator("#typing")).to_have_text("carol is typing…")
    await expect(bob.locator("#typing")).to_have_text("", timeout=8000)

    # A message from the typist ends its indicator at once.
    await alice.locator("#message-input").press_sequentially("done")
    await expect(bob.locator("#typing")).to_have_text("alice is typing…")
    await alice.press("#message-input", "Enter")
    await shown_once(bob, "heldone")
    await expect(bob.locator("#typing")).to_have_text("", timeout=1000)


async def test_unread_badge_clears_when_the_room_is_read_in_another_tab(
        live, open_page, token_for):
    """bob writes in a private room alice is a member of: her lobby shows the unread count
    (polled); she opens the room in another tab and the badge clears at once (the tabs
    talk over a BroadcastChannel: the lobby's polling is stopped first)."""
    bob_token = token_for("bob")
    status, _ = await api(live, bob_token, "POST", "/api/rooms",
                          {"name": "release-plans", "private": True})
    assert status == 201
    status, _ = await api(live, bob_token, "POST", "/api/rooms/release-plans/members",
                          {"user_id": "alice"})
    assert status == 200

    lobby = await open_page(live, "alice", "/")
    item = lobby.locator("#room-list [data-room=release-plans]")
    await expect(item.locator(".tag-private")).to_have_count(1)
    await expect(item.locator(".badge")).to_be_hidden()

    general = await WsChat.open(live, token_for("carol"), "general")
    bob = await WsChat.open(live, bob_token, "release-plans")
    try:
        await general.say("Deploy window is 14:00 UTC")
        for text in ("Draft notes are in the doc", "Can you review by noon?",
                     "Tagging v2.4 after that"):
            await bob.say(text)
    finally:
        await general.close()
        await bob.close()
    await expect(item.locator(".badge")).to_have_text("3")  # within one poll
    await expect(lobby.locator("#room-list > li").first).to_have_attribute(
        "data-room", "release-plans")

    screenshot = DOCS / "screenshot-rooms.png"
    if os.environ.get("UPDATE_SCREENSHOT") or not screenshot.exists():
        DOCS.mkdir(exist_ok=True)
        await lobby.locator("#create-name").fill("incident-review")
        await lobby.screenshot(path=str(screenshot))

    await lobby.evaluate("lobbyDebug.stopPolling()")
    room_tab = await lobby.context.new_page()
    room_tab.errors, room_tab.console_errors = [], []
    room_tab.on("pageerror", lambda error: room_tab.errors.append(str(error)))
    room_tab.on("console", lambda message: message.type == "error"
                and room_tab.console_errors.append(message.text))
    await room_tab.goto(f"{live.url}/chat/release-plans/")
    await wait_live(room_tab)
    await shown_once(room_tab, "Tagging v2.4 after that")
    await expect(item.locator(".badge")).to_be_hidden(timeout=3000)

    # The server agrees: a refresh from GET /api/rooms keeps it cleared.
    await lobby.evaluate("lobbyDebug.refresh()")
    await expect(item.locator(".badge")).to_be_hidden()
    status, rooms = await api(live, token_for("alice"), "GET", "/api/rooms")
    counts = {room["room"]: room["unread"] for room in rooms["rooms"]}
    assert counts["release-plans"] == 0
    for page in (lobby, room_tab):
        assert page.errors == page.console_errors == [], (page.errors, page.console_errors)


async def test_create_room_refusal_is_shown(live, open_page, token_for):
    """A name that is taken (here by a private room alice cannot see) is refused with the
    API's conflict message, on the lobby, without leaving it."""
    status, _ = await api(live, token_for("bob"), "POST", "/api/rooms",
                          {"name": "hidden-name", "private": True})
    assert status == 201
    alice = await open_page(live, "alice", "/")
    await alice.fill("#create-name", "hidden-name")
    await alice.click("#create-room button[type=submit]")
    await expect(alice.locator("#create-error")).to_contain_text("conflict")
    await expect(alice.locator("#create-name")).to_have_attribute("aria-invalid", "true")
    await alice.fill("#create-name", "bad name!")
    await alice.click("#create-room button[type=submit]")
    await expect(alice.locator("#create-error")).to_contain_text("invalid_body")
    assert alice.url == f"{live.url}/"


async def test_message_deleted_while_the_page_was_away_is_gone_after_it_reconnects(
        live, open_page, token_for):
    """alice's page shows bob's messages, then loses its connection; meanwhile bob deletes
    three of them (one in the middle, a private one to alice, the newest) and sends one
    more. Back online (?since= brings only the new one), the page asks for the latest
    messages again and drops the deleted ones; the others stay, once each. Then again
    (every reconnect) with the page's newest message deleted and nothing new: it goes too."""
    alice = await open_page(live, "alice", "/chat/deleted-away/")
    await wait_live(alice)
    bob = await WsChat.open(live, token_for("bob"), "deleted-away")
    try:
        async def delete_while_away(message_ids: list[int]) -> None:
            await alice.evaluate("chatDebug.dropSocket({hold: true})")
            await expect(alice.locator("#conn-state")).to_have_attribute(
                "data-state", "reconnecting")
            for message_id in message_ids:
                await bob.ws.send(json.dumps({"type": "delete", "id": message_id}))
                while (frame := await bob.recv())["type"] != "message_deleted":
                    assert frame["type"] != "error", frame
                assert frame["id"] == message_id

        kept = [await bob.say("keep 1")]
        gone = [await bob.say("gone 1")]
        await bob.ws.send(json.dumps(
            {"type": "private", "target": "alice", "content": "gone private"}))
        while (frame := await bob.recv())["type"] != "private":
            assert frame["type"] != "error", frame
        gone.append(frame["id"])
        kept.append(await bob.say("keep 2"))
        gone.append(await bob.say("gone newest"))
        await shown_once(alice, "gone newest")
        await shown_once(alice, "gone private")

        await delete_while_away(gone)
        kept.append(await bob.say("keep 3, sent while away"))
        await alice.evaluate("chatDebug.resume()")
        await wait_live(alice)
        await expect(contents(alice)).to_have_text(
            ["keep 1", "keep 2", "keep 3, sent while away"])

        last = await bob.say("gone last")
        await shown_once(alice, "gone last")
        await delete_while_away([last])
        await alice.evaluate("chatDebug.resume()")
        await wait_live(alice)
        await expect(contents(alice)).to_have_text(
            ["keep 1", "keep 2", "keep 3, sent while away"])
    finally:
        await bob.close()
    assert await alice.evaluate("chatDebug.ids()") == kept
    # The sweep's answer is not taken for a page of "Load earlier messages".
    await expect(alice.locator("#history-start")).to_be_visible()
    await expect(alice.locator("#load-earlier")).to_be_hidden()
    assert alice.errors == alice.console_errors == [], (alice.errors, alice.console_errors)
    await expect(alice.locator("#alerts .alert")).to_have_count(0)
