"""The chat page in a real Chromium against a real daphne.

Each test logs users in through the login form, so the page's WebSockets are
authenticated by the session cookie exactly as in production.
"""

import asyncio
import json
import os
import re
import sys
import urllib.request
from datetime import timedelta

import pytest
from channels.db import database_sync_to_async
from django.utils import timezone
from playwright.async_api import expect

from chat.models import Message, Room
from notifications.models import Notification
from tests.browser.conftest import DOCS, PASSWORD
from tests.browser.pages import WsChat, contents, say, shown_once, wait_live

pytestmark = [pytest.mark.browser, pytest.mark.daphne, pytest.mark.once]

# Every test uses its own room: under Redis, presence left behind by a daphne that a
# previous test stopped lasts until the registry reaps it (HUB_DEAD_AFTER_SECONDS).

expect.set_options(timeout=20_000)


@pytest.fixture
def live(daphne_server, users):
    """One daphne for the test, with the users already in the database.

    The per-user connection cap is raised: under Redis, connections of daphnes that
    earlier tests stopped still count for alice until the registry reaps them
    (HUB_DEAD_AFTER_SECONDS), and would close her pages with 4013. The cap itself is
    tested below with a user of its own.
    """
    return daphne_server(WS_MAX_CONNECTIONS_PER_USER="100")


async def assert_ids_unique_and_sorted(page) -> list[int]:
    ids = [int(i) for i in await page.locator("#messages > li").evaluate_all(
        "nodes => nodes.map(n => n.dataset.id)")]
    assert ids == sorted(set(ids)), ids
    assert ids == await page.evaluate("chatDebug.ids()")
    return ids


async def test_two_users_chat_both_ways(live, open_page):
    """Two logged-in users see each other, and each one's messages reach both."""
    alice = await open_page(live, "alice", "/chat/both-ways/")
    bob = await open_page(live, "bob", "/chat/both-ways/")
    await wait_live(alice)
    await wait_live(bob)
    await expect(alice.locator("#people [data-user=bob]")).to_have_count(1)
    await expect(bob.locator("#people [data-user=alice]")).to_have_count(1)

    await say(alice, "hi bob")
    await shown_once(bob, "hi bob")
    await say(bob, "hello alice\nsecond line")
    await shown_once(alice, "hello alice\nsecond line")
    await shown_once(alice, "hi bob")
    await shown_once(bob, "hello alice\nsecond line")

    on_bob = bob.locator("#messages .msg").filter(has_text="hi bob")
    await expect(on_bob.locator(".msg-author")).to_have_text("alice")
    await expect(on_bob.locator("time")).to_have_attribute("datetime", re.compile(r"^\d{4}-"))
    await expect(on_bob).not_to_have_class(re.compile(r"\bmine\b"))
    await expect(alice.locator("#messages .msg.mine")).to_have_count(1)
    await expect(alice.locator("#pending > li")).to_have_count(0)

    # A page opened later gets both from the history frame, in order.
    carol = await open_page(live, "carol", "/chat/both-ways/")
    await wait_live(carol)
    await expect(contents(carol)).to_have_text(["hi bob", "hello alice\nsecond line"])
    await assert_ids_unique_and_sorted(carol)
    for page in (alice, bob, carol):
        assert page.errors == page.console_errors == [], (page.errors, page.console_errors)


async def test_private_message_reaches_only_its_target(live, open_page):
    """A private message shows (marked private) to sender and target, not to a third user."""
    alice = await open_page(live, "alice", "/chat/lounge/")
    bob = await open_page(live, "bob", "/chat/lounge/")
    carol = await open_page(live, "carol", "/chat/lounge/")
    for page in (alice, bob, carol):
        await wait_live(page)
        await expect(page.locator("#people > li")).to_have_count(3)

    await say(alice, "Morning all! Stand-up in 5 minutes.")
    await say(carol, "On my way ☕")
    await shown_once(alice, "On my way ☕")
    await alice.click("#people button[data-user=bob], #people [data-user=bob] button")
    await expect(alice.locator("#recipient")).to_have_value("bob")
    await say(alice, "psst bob: the release notes are ready for review")
    await shown_once(bob, "psst bob: the release notes are ready for review")
    await shown_once(alice, "psst bob: the release notes are ready for review")
    for page, tag in ((alice, "private to bob"), (bob, "private to you")):
        private = page.locator("#messages .msg.private")
        await expect(private).to_have_count(1)
        await expect(private.locator(".msg-private-tag")).to_have_text(tag)

    # A later room message has a higher id: once carol has it, she would have had
    # the private one before it.
    await alice.select_option("#recipient", "")
    await say(alice, "Thanks everyone")
    await shown_once(carol, "Thanks everyone")
    await expect(carol.locator("#messages .msg.private")).to_have_count(0)
    assert "psst" not in await carol.locator("#messages").inner_text()
    await shown_once(bob, "Thanks everyone")
    await say(bob, "Will do, thanks!")
    await shown_once(alice, "Will do, thanks!")

    # The README's screenshot: written when missing, or on request
    # (UPDATE_SCREENSHOT=1), so a test run leaves the work tree clean.
    screenshot = DOCS / "screenshot-chat.png"
    if os.environ.get("UPDATE_SCREENSHOT") or not screenshot.exists():
        DOCS.mkdir(exist_ok=True)
        await alice.locator("#message-input").fill("Great, see you there")
        await alice.screenshot(path=str(screenshot))
    assert alice.errors == bob.errors == carol.errors == []


async def test_private_message_to_someone_who_left_shows_the_error(live, open_page):
    """The server's not_in_room error frame is shown, and nothing is stored."""
    alice = await open_page(live, "alice", "/chat/gone/")
    bob = await open_page(live, "bob", "/chat/gone/")
    await wait_live(alice)
    await wait_live(bob)
    await alice.select_option("#recipient", "bob")
    await alice.fill("#message-input", "are you there?")
    await bob.close()
    await expect(alice.locator("#people > li")).to_have_count(1)
    await expect(alice.locator("#recipient")).to_have_value("")
    await expect(alice.locator("#alerts")).to_contain_text("bob left")
    # alice's page moved her back to "everyone" when bob left; force a private
    # frame to bob as a stale page would send it.
    await alice.evaluate("""() => {
        const select = document.getElementById('recipient');
        const option = document.createElement('option');
        option.value = 'bob'; option.textContent = 'bob';
        select.appendChild(option); select.value = 'bob';
    }""")
    await alice.press("#message-input", "Enter")
    await expect(alice.locator("#alerts [data-code=not_in_room]")).to_have_count(1)
    await expect(alice.locator("#message-input")).to_have_value("are you there?")
    stored = Message.objects.filter(content="are you there?")
    assert await database_sync_to_async(stored.count)() == 0


async def test_markup_in_a_message_is_shown_as_text(live, open_page):
    """HTML in content is rendered as text: no element is created, no script runs."""
    payloads = [
        "<img src=x onerror=alert(1)>",
        "<script>alert(2)</script>",
        '<b onmouseover="alert(3)">bold?</b> & &amp; "quotes"',
    ]
    alice = await open_page(live, "alice", "/chat/xss/")
    bob = await open_page(live, "bob", "/chat/xss/")
    await wait_live(alice)
    await wait_live(bob)
    for payload in payloads:
        await say(alice, payload)
    for page in (alice, bob):
        for payload in payloads:
            await shown_once(page, payload)
    # And through the history frame, on a fresh page.
    carol = await open_page(live, "carol", "/chat/xss/")
    await wait_live(carol)
    await expect(contents(carol)).to_have_text(payloads)
    await carol.hover("#messages .msg-content >> nth=2")
    await asyncio.sleep(0.5)
    for page in (alice, bob, carol):
        assert await page.locator("#messages img, #messages script, #messages b").count() == 0
        assert await page.locator("img").count() == 0
        assert page.dialogs == [], page.dialogs
        assert page.errors == page.console_errors == [], (page.errors, page.console_errors)


async def test_page_recovers_what_was_sent_while_its_socket_was_down(
        live, open_page, token_for):
    """After a drop the page reconnects with ?since= and shows each missed message once."""
    alice = await open_page(live, "alice", "/chat/page-recover/")
    sockets: list[str] = []
    alice.on("websocket", lambda ws: sockets.append(ws.url))
    bob = await WsChat.open(live, token_for("bob"), "page-recover")
    try:
        before = [await bob.say(f"before {i}") for i in range(3)]
        await wait_live(alice)
        await shown_once(alice, "before 2")
        assert await alice.evaluate("chatDebug.lastId()") == before[-1]

        await alice.evaluate("chatDebug.dropSocket({hold: true})")
        await expect(alice.locator("#conn-state")).to_have_attribute("data-state", "reconnecting")
        await expect(alice.locator("#send-button")).to_be_disabled()
        missed = [await bob.say(f"missed {i}") for i in range(5)]

        await alice.evaluate("chatDebug.resume()")
        await wait_live(alice)
        for i in range(5):
            await shown_once(alice, f"missed {i}")
        after = await bob.say("after")
        await shown_once(alice, "after")
    finally:
        await bob.close()
    ids = await assert_ids_unique_and_sorted(alice)
    assert ids == [*before, *missed, after]
    assert sockets[-1].endswith(f"/ws/chat/page-recover/?since={before[-1]}"), sockets
    assert all("token" not in url for url in sockets)
    assert alice.errors == []


async def test_page_shows_offline_and_reconnects_when_the_network_returns(live, open_page):
    """Without network the page says "Offline"; the browser's online event reconnects it."""
    alice = await open_page(live, "alice", "/chat/offline/")
    await wait_live(alice)
    await alice.context.set_offline(True)
    await alice.evaluate("chatDebug.dropSocket()")
    state = alice.locator("#conn-state")
    await expect(state).to_have_attribute("data-state", "offline")
    await expect(state).to_contain_text("no network")
    await expect(alice.locator("#send-button")).to_be_disabled()
    await alice.context.set_offline(False)
    await wait_live(alice)
    await say(alice, "back from the tunnel")
    await shown_once(alice, "back from the tunnel")


async def test_page_survives_a_server_restart(live, daphne_server, open_page, token_for,
                                              monkeypatch):
    """daphne is killed and started again on its port: the page comes back, no gap, no dupes."""
    alice = await open_page(live, "alice", "/chat/restart/")
    await wait_live(alice)
    sockets: list[str] = []
    alice.on("websocket", lambda ws: sockets.append(ws.url))
    bob = await WsChat.open(live, token_for("bob"), "restart")
    first = await bob.say("before the crash")
    await bob.close()
    await shown_once(alice, "before the crash")

    live.kill()
    await expect(alice.locator("#conn-state")).to_have_attribute("data-state", "reconnecting")
    # Start the new process on the same port (the fixture picks the port by calling
    # its module's free_port).
    monkeypatch.setattr(sys.modules[type(live).__module__], "free_port", lambda: live.port)
    restarted = await asyncio.to_thread(daphne_server)
    assert restarted.port == live.port
    bob = await WsChat.open(restarted, token_for("bob"), "restart")
    try:
        later = [await bob.say(f"while coming back {i}") for i in range(3)]
        await wait_live(alice)
        for i in range(3):
            await shown_once(alice, f"while coming back {i}")
    finally:
        await bob.close()
    await shown_once(alice, "before the crash")
    assert await assert_ids_unique_and_sorted(alice) == [first, *later]
    chat_sockets = [url for url in sockets if "/ws/chat/" in url]
    assert chat_sockets and all(url.endswith(f"?since={first}") for url in chat_sockets), sockets
    await say(alice, "back online")
    await shown_once(alice, "back online")


def store_messages(room_name: str, sender, count: int) -> list[int]:
    """Write messages straight to the database, as if sent while the page was away."""
    room = Room.objects.get(name=room_name)
    Message.objects.bulk_create(
        Message(room=room, sender=sender, content=f"while away {i}") for i in range(count)
    )
    return list(Message.objects.filter(room=room).order_by("id").values_list("id", flat=True))


async def test_long_outage_is_filled_in_by_paging_back(live, users, open_page, token_for):
    """More missed than ?since= resends (1000): the page pages back until the hole is closed."""
    alice = await open_page(live, "alice", "/chat/outage/")
    await wait_live(alice)
    bob = await WsChat.open(live, token_for("bob"), "outage")
    first = await bob.say("before the outage")
    await bob.close()
    await shown_once(alice, "before the outage")

    await alice.evaluate("chatDebug.dropSocket({hold: true})")
    all_ids = await database_sync_to_async(store_messages)("outage", users["bob"], 1100)
    await alice.evaluate("chatDebug.resume()")
    await wait_live(alice)
    await expect(contents(alice)).to_have_count(1101)
    assert await assert_ids_unique_and_sorted(alice) == all_ids
    assert all_ids[0] == first
    await shown_once(alice, "while away 0")
    await shown_once(alice, "while away 1099")


@pytest.fixture
def long_room(users) -> list[int]:
    """A room with 120 stored messages (ids oldest first)."""
    room = Room.objects.create(name="long-history", last_message_at=timezone.now())
    start = timezone.now() - timedelta(hours=2)
    Message.objects.bulk_create(
        Message(room=room, sender=users["bob"], content=f"old message {i}",
                created_at=start + timedelta(seconds=i))
        for i in range(120)
    )
    return list(Message.objects.filter(room=room).values_list("id", flat=True))


async def test_load_earlier_pages_back_to_the_start(long_room, live, open_page):
    """"Load earlier messages" pages back with `before` until `truncated` is false."""
    alice = await open_page(live, "alice", "/chat/long-history/")
    await wait_live(alice)
    await expect(contents(alice)).to_have_count(50)
    button = alice.locator("#load-earlier")
    await expect(button).to_be_visible()
    await expect(alice.locator("#history-start")).to_be_hidden()
    await button.click()
    await expect(contents(alice)).to_have_count(100)
    await button.click()
    await expect(contents(alice)).to_have_count(120)
    await expect(button).to_be_hidden()
    await expect(alice.locator("#history-start")).to_be_visible()
    assert await assert_ids_unique_and_sorted(alice) == long_room
    await expect(contents(alice).first).to_have_text("old message 0")


async def test_start_of_an_empty_room_is_shown_to_everyone(live, open_page):
    """Everyone who opens an empty room sees "This is the start of the room.", before and
    after a first message."""
    alice = await open_page(live, "alice", "/chat/empty-start/")
    bob = await open_page(live, "bob", "/chat/empty-start/")
    for page in (alice, bob):
        await wait_live(page)
        await expect(page.locator("#history-start")).to_be_visible()
        await expect(page.locator("#load-earlier")).to_be_hidden()
    await say(alice, "first words")
    await shown_once(bob, "first words")
    carol = await open_page(live, "carol", "/chat/empty-start/")
    await wait_live(carol)
    for page in (alice, bob, carol):
        await expect(page.locator("#history-start")).to_be_visible()


async def test_open_notification_panel_leaves_the_connection_status_uncovered(live, open_page):
    """With the notification panel open, the room's connection status is still visible, on
    top at its centre and both ends, at desktop widths."""
    alice = await open_page(live, "alice", "/chat/panel-open/")
    await wait_live(alice)
    await alice.click("#notif-toggle")
    await expect(alice.locator("#notif-panel")).to_be_visible()
    status = alice.locator("#conn-state")
    for width in (1100, 1280, 800):
        await alice.set_viewport_size({"width": width, "height": 720})
        await expect(status).to_be_visible()
        on_top = await status.evaluate("""s => {
            const r = s.getBoundingClientRect(), y = r.top + r.height / 2;
            return [r.left + 2, r.left + r.width / 2, r.right - 2].map(
                x => s.contains(document.elementFromPoint(x, y)));
        }""")
        assert on_top == [True, True, True], (width, on_top)
    await expect(alice.locator("#notif-panel")).to_be_visible()


async def test_notification_posted_through_the_api_appears_and_is_acked(
        live, open_page, token_for):
    """POST /api/notify/<user> shows a toast and the badge; the page acks it."""
    alice = await open_page(live, "alice", "/")
    await expect(alice.locator("#notifications")).to_have_attribute("data-state", "live")
    request = urllib.request.Request(
        f"{live.url}/api/notify/alice",
        data=json.dumps({"title": "Deploy", "message": "v2 is <b>live</b>"}).encode(),
        headers={"Authorization": f"Bearer {token_for('ops')}",
                 "Content-Type": "application/json"},
        method="POST",
    )
    answer = await asyncio.to_thread(lambda: json.loads(urllib.request.urlopen(request).read()))
    assert answer["status"] == "sent"
    await expect(alice.locator("#toasts .toast-text")).to_have_text("Deploy: v2 is <b>live</b>")
    await expect(alice.locator("#notif-badge")).to_have_text("1")
    await alice.click("#notif-toggle")
    await expect(alice.locator("#notif-list > li")).to_have_count(1)
    await expect(alice.locator("#notif-badge")).to_be_hidden()
    assert await alice.locator("#notifications b, #toasts b").count() == 0

    async def delivered() -> bool:
        note = await database_sync_to_async(Notification.objects.get)(pk=answer["id"])
        return note.delivered_at is not None

    for _ in range(100):
        if await delivered():
            break
        await asyncio.sleep(0.1)
    assert await delivered(), "the page did not acknowledge the notification"

    # One posted while the page's socket is down arrives when it reconnects, once.
    await alice.evaluate("notificationsDebug.dropSocket({hold: true})")
    request.data = json.dumps({"text": "while you were away"}).encode()
    await asyncio.to_thread(urllib.request.urlopen, request)
    await alice.evaluate("notificationsDebug.resume()")
    await expect(alice.locator("#notif-list > li")).to_have_count(2)
    await expect(alice.locator("#notif-list > li").first).to_contain_text("while you were away")


async def test_logged_out_page_goes_to_login_instead_of_retrying(live, open_page):
    """When the session ends, the next connection is refused (4003): the page goes to login."""
    alice = await open_page(live, "alice", "/chat/logout/")
    await wait_live(alice)
    sockets: list[str] = []
    alice.on("websocket", lambda ws: sockets.append(ws.url))
    other_tab = await alice.context.new_page()
    await other_tab.goto(f"{live.url}/")
    await other_tab.click("text=Log out")
    await other_tab.wait_for_url(re.compile(r"/accounts/login/"))
    await alice.evaluate("chatDebug.dropSocket()")
    await alice.wait_for_url(re.compile(r"/accounts/login/\?next=%2Fchat%2Flogout%2F"))
    chat_attempts = [url for url in sockets if "/ws/chat/" in url]
    assert len(chat_attempts) == 1, chat_attempts


@pytest.fixture
def dave(make_user):
    """A user of its own: under Redis, connections of daphnes stopped by earlier tests
    count against the per-user cap until the registry reaps them."""
    return make_user("dave", password=PASSWORD)


async def test_too_many_connections_waits_instead_of_hammering(dave, daphne_server, open_page,
                                                               token_for):
    """Closed with 4013, the page says why and waits 15 s or more; "Retry now" reconnects."""
    server = daphne_server(WS_MAX_CONNECTIONS_PER_USER="1")
    holder = await WsChat.open(server, token_for("dave"), "crowded")

    async def mute_notifications(context) -> None:
        # Only the chat socket should count against alice's single connection.
        await context.route_web_socket(re.compile(r"/ws/notifications/$"), lambda ws: None)

    alice = await open_page(server, "dave", "/chat/crowded/", before=mute_notifications)
    try:
        await expect(alice.locator("#alerts")).to_contain_text("Too many open connections")
        state = alice.locator("#conn-state")
        await expect(state).to_have_attribute("data-state", "reconnecting")
        wait = re.search(r"Reconnecting in (\d+) s", await state.inner_text())
        assert wait and int(wait.group(1)) >= 14, await state.inner_text()
        attempts: list[str] = []
        alice.on("websocket", lambda ws: attempts.append(ws.url))
        await asyncio.sleep(2)
        assert attempts == []
    finally:
        await holder.close()
    await alice.click("#conn-state .retry")
    await wait_live(alice)
    assert len(attempts) == 1
