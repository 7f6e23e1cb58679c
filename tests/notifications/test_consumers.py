"""/ws/notifications/ over the ASGI application: queue, acks, live NOTEs, frames, errors."""

import asyncio
import json
from datetime import UTC, datetime

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from notifications import api, consumers, store, writer
from notifications import protocol as note_protocol
from project.asgi import application
from realtime.hub import get_hub
from tests.notifications.conftest import (
    PATH,
    assert_closed,
    joined,
    receive,
    receive_notes,
    send,
)

pytestmark = pytest.mark.django_db(transaction=True)


# --- Authentication -------------------------------------------------------------------


async def test_no_token_closes_4003(amake_user):
    """Without credentials the server accepts, then closes with 4003 and sends nothing."""
    communicator = WebsocketCommunicator(application, PATH)
    assert (await communicator.connect())[0]
    await assert_closed(communicator, 4003)
    await communicator.disconnect()


async def test_bad_token_closes_4002(amake_user, connect):
    """A token that is not a valid JWT closes with 4002."""
    await assert_closed(await connect(token="garbage"), 4002)


async def test_expired_token_closes_4001(amake_user, connect):
    """A validly signed but expired token closes with 4001."""
    from realtime import tokens

    await amake_user("bea")
    token, _ = tokens.issue("bea", -10)
    await assert_closed(await connect(token=token), 4001)


# --- Queue on connect, acks ---------------------------------------------------------------


async def test_queued_while_offline_then_delivered_in_order_on_connect(amake_user, connect):
    """Notifications posted while offline arrive on connect as NOTEs, oldest first."""
    bob = await amake_user("bea")
    posted = [await api.anotify(bob, {"n": n}) for n in range(3)]
    assert [status for _, status in posted] == ["queued"] * 3
    communicator = await connect("bea")
    frames = await receive_notes(communicator, 3)
    assert [frame["id"] for frame in frames] == [note_id for note_id, _ in posted]
    assert [frame["data"] for frame in frames] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert await communicator.receive_nothing(0.2)


async def test_note_frame_is_exactly_the_contract(amake_user, connect):
    """A NOTE has exactly type, id, data (as posted) and a UTC ISO 8601 timestamp."""
    bob = await amake_user("bea")
    data = {"text": "héllo ✓", "nested": {"list": [1, 2.5, None, True]}, "empty": {}}
    before = datetime.now(UTC)
    note_id, _ = await api.anotify(bob, data)
    frame = await receive(await connect("bea"))
    assert set(frame) == {"type", "id", "data", "timestamp"}
    assert (frame["type"], frame["id"], frame["data"]) == ("notification", note_id, data)
    assert frame["timestamp"].endswith("Z")
    moment = datetime.fromisoformat(frame["timestamp"])
    assert moment.utcoffset().total_seconds() == 0
    assert before.replace(microsecond=0) <= moment <= datetime.now(UTC)


async def test_ack_stops_redelivery(amake_user, connect):
    """Acknowledged notifications do not come again on the next connect."""
    bob = await amake_user("bea")
    ids = [(await api.anotify(bob, {"n": n}))[0] for n in range(3)]
    first = await connect("bea")
    await receive_notes(first, 3)
    await send(first, {"type": "ack", "ids": ids[:2]})
    await send(first, {"type": "ping"})  # frames are handled in order: the ack is done
    assert await receive(first) == {"type": "pong"}
    await first.disconnect()
    second = await connect("bea")
    assert [frame["id"] for frame in await receive_notes(second, 1)] == ids[2:]
    assert await second.receive_nothing(0.2)


async def test_no_ack_means_redelivery_on_next_connect(amake_user, connect):
    """Unacknowledged notifications, live ones included, come again on the next connect."""
    bob = await amake_user("bea")
    queued_id, _ = await api.anotify(bob, {"n": 0})
    first = await connect("bea")
    await receive_notes(first, 1)
    live_id, status = await api.anotify(bob, {"n": 1})
    assert status == "sent"
    assert (await receive(first))["id"] == live_id
    await first.disconnect()
    second = await connect("bea")
    assert [f["id"] for f in await receive_notes(second, 2)] == [queued_id, live_id]


async def test_ack_with_ids_of_another_user_is_ignored(amake_user, connect):
    """Ids in an ack that belong to another user leave that user's queue untouched."""
    await amake_user("bea")
    carol = await amake_user("cyd")
    carol_id, _ = await api.anotify(carol, {"for": "cyd"})
    communicator = await connect("bea")
    await send(communicator, {"type": "ack", "ids": [carol_id, 999999]})
    await send(communicator, {"type": "ping"})
    assert await receive(communicator) == {"type": "pong"}
    queues = await database_sync_to_async(store.undelivered)([carol.pk])
    assert [row.pk for row in queues[carol.pk]] == [carol_id]


async def test_queue_limit_keeps_the_newest_on_connect(amake_user, connect, settings):
    """With NOTIFICATIONS_QUEUE_LIMIT=2, only the two newest offline notifications arrive."""
    settings.NOTIFICATIONS_QUEUE_LIMIT = 2
    bob = await amake_user("bea")
    ids = [(await api.anotify(bob, {"n": n}))[0] for n in range(5)]
    communicator = await connect("bea")
    assert [frame["id"] for frame in await receive_notes(communicator, 2)] == ids[-2:]
    assert await communicator.receive_nothing(0.2)


# --- Live delivery ---------------------------------------------------------------------------


async def test_two_tabs_both_get_a_live_notification(amake_user, connect):
    """Both connections of a user get the same NOTE, through one hub listener."""
    bob = await amake_user("bea")
    await amake_user("cyd")
    tabs = [await connect("bea"), await connect("bea")]
    other = await connect("cyd")
    note_id, status = await api.anotify(bob, {"text": "live"})
    assert status == "sent"
    texts = [await tab.receive_from(timeout=3) for tab in tabs]
    assert texts[0] == texts[1]
    assert json.loads(texts[0])["id"] == note_id
    assert await other.receive_nothing(0.2), "another user's connection gets nothing"
    hub = await get_hub()
    feed = consumers.hub_feeds(hub)[note_protocol.FEED_GROUP]
    assert hub.groups[note_protocol.FEED_GROUP] == {feed}, "one hub listener for every connection"
    assert len(hub.users_on(consumers.NOTIFICATIONS)["bea"]) == 2
    for tab in tabs:
        await tab.disconnect()
    assert "bea" not in hub.users_on(consumers.NOTIFICATIONS)
    assert note_protocol.FEED_GROUP in hub.groups, "cyd's connection still needs the feed"
    await other.disconnect()
    assert note_protocol.FEED_GROUP not in hub.groups, "the hub leaves with the last connection"


@pytest.mark.parametrize("moment", ["before_subscribe", "before_query", "after_query"])
async def test_notification_posted_while_connecting_arrives_exactly_once(
    amake_user, connect, monkeypatch, moment
):
    """A notification posted while a connection joins arrives once, in order.

    Before the feed is joined the handshake is not answered yet and the connection not
    registered, so the post is ``queued``; later it is ``sent``. Either way it arrives once.
    """
    bob = await amake_user("bea")
    posted: list[tuple[int, str]] = []
    original_attach, original_query = consumers.attach, writer.aundelivered_frames

    async def post() -> None:
        posted.append(await api.anotify(bob, {"during": moment}))

    async def hooked_attach(hub, group, consumer):
        if moment == "before_subscribe" and not posted:
            await post()
        await original_attach(hub, group, consumer)

    async def hooked_query(user_id):
        if moment == "before_query":
            await post()
            await asyncio.sleep(0.05)  # let the live copy reach the held-back list
        frames = await original_query(user_id)
        if moment == "after_query":
            await post()
            await asyncio.sleep(0.05)
        return frames

    monkeypatch.setattr(consumers, "attach", hooked_attach)
    monkeypatch.setattr(writer, "aundelivered_frames", hooked_query)
    communicator = await connect("bea")
    first = await receive(communicator)
    [(note_id, status)] = posted
    assert status == ("queued" if moment == "before_subscribe" else "sent")
    assert first["id"] == note_id
    # A later live NOTE comes next: a duplicate of the first would come before it.
    later_id, _ = await api.anotify(bob, {"after": True})
    assert (await receive(communicator))["id"] == later_id
    assert await communicator.receive_nothing(0.2)


async def test_live_notes_held_back_during_queue_are_sent_after_it(amake_user, connect,
                                                                   monkeypatch):
    """Live NOTEs that arrive while the queue is read come after the queue, oldest first."""
    bob = await amake_user("bea")
    queued_id, _ = await api.anotify(bob, {"queued": True})
    original_query = writer.aundelivered_frames
    live: list[int] = []

    async def hooked_query(user_id):
        frames = await original_query(user_id)
        for n in range(3):
            live.append((await api.anotify(bob, {"live": n}))[0])
        await asyncio.sleep(0.05)
        return frames

    monkeypatch.setattr(writer, "aundelivered_frames", hooked_query)
    communicator = await connect("bea")
    assert [f["id"] for f in await receive_notes(communicator, 4)] == [queued_id, *live]
    assert await communicator.receive_nothing(0.2)


# --- Broadcasts ---------------------------------------------------------------------------------


async def test_broadcast_reaches_every_connected_user_and_is_never_resent(amake_user, connect):
    """A broadcast reaches every connection with broadcast: true, needs no ack, never returns."""
    for name in ("alma", "bea", "cyd"):
        await amake_user(name)
    alice, bob_tabs = await connect("alma"), [await connect("bea"), await connect("bea")]
    note_id, status = await api.abroadcast({"maintenance": "tonight"})
    assert status == "broadcast"
    for communicator in (alice, *bob_tabs):
        frame = await receive(communicator)
        assert frame == {"type": "notification", "id": note_id,
                         "data": {"maintenance": "tonight"},
                         "timestamp": frame["timestamp"], "broadcast": True}
    await alice.disconnect()
    again = await connect("alma")
    late = await connect("cyd")
    assert await again.receive_nothing(0.3), "a broadcast is not re-sent without an ack"
    assert await late.receive_nothing(0.1), "a broadcast is not queued for the offline"


# --- Other frames ------------------------------------------------------------------------------


async def test_ping_gets_pong(amake_user, connect):
    """Both {"type": "ping"} and the plain text ping get {"type": "pong"}."""
    await amake_user("bea")
    communicator = await connect("bea")
    await send(communicator, {"type": "ping"})
    assert await receive(communicator) == {"type": "pong"}
    await communicator.send_to(text_data="ping")
    assert await receive(communicator) == {"type": "pong"}


async def test_auth_refresh(amake_user, connect, token_for):
    """auth with a token of the same user gets auth_ok; another user's token invalid_token."""
    await amake_user("bea")
    await amake_user("cyd")
    communicator = await connect("bea")
    await send(communicator, {"type": "auth", "token": token_for("bea")})
    frame = await receive(communicator)
    assert frame["type"] == "auth_ok"
    assert datetime.fromisoformat(frame["expires_at"]) > datetime.now(UTC)
    await send(communicator, {"type": "auth", "token": token_for("cyd")})
    assert (await receive(communicator))["code"] == "invalid_token"
    await send(communicator, {"type": "auth", "token": "garbage"})
    assert (await receive(communicator))["code"] == "invalid_token"
    await send(communicator, {"type": "auth"})
    assert (await receive(communicator))["code"] == "invalid_message"


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("not json", "invalid_json"),
        ("[1, 2]", "invalid_message"),
        ('{"no": "type"}', "invalid_message"),
        ('{"type": 3}', "invalid_message"),
        ('{"type": "message", "content": "hi"}', "unknown_type"),
        ('{"type": "ack"}', "invalid_message"),
        ('{"type": "ack", "ids": "1"}', "invalid_message"),
        ('{"type": "ack", "ids": [0]}', "invalid_message"),
        ('{"type": "ack", "ids": [true]}', "invalid_message"),
        ('{"type": "ack", "ids": [1.5]}', "invalid_message"),
        (b"\x01binary", "invalid_message"),
    ],
)
async def test_bad_frames_get_an_error_and_keep_the_connection(amake_user, connect, frame,
                                                               code):
    """A frame the server cannot use gets an error frame; the connection stays open."""
    await amake_user("bea")
    communicator = await connect("bea")
    if isinstance(frame, bytes):
        await communicator.send_to(bytes_data=frame)
    else:
        await communicator.send_to(text_data=frame)
    answer = await receive(communicator)
    assert answer["type"] == "error" and answer["code"] == code
    assert isinstance(answer["message"], str) and answer["message"]
    await send(communicator, {"type": "ping"})
    assert await receive(communicator) == {"type": "pong"}


async def test_empty_ack_is_accepted(amake_user, connect):
    """An ack with an empty id list is valid and answered by nothing."""
    await amake_user("bea")
    communicator = await connect("bea")
    await send(communicator, {"type": "ack", "ids": []})
    assert await communicator.receive_nothing(0.2)


async def test_oversized_frame_closes_4009(amake_user, connect, settings):
    """A client frame larger than WS_MAX_MESSAGE_BYTES closes the connection with 4009."""
    settings.WS_MAX_MESSAGE_BYTES = 100
    await amake_user("bea")
    communicator = await connect("bea")
    await communicator.send_to(text_data=json.dumps({"type": "ack", "ids": [1] * 40}))
    await assert_closed(communicator, 4009)


async def test_rate_limit_then_4008(amake_user, connect, settings):
    """Frames over the rate get rate_limited; the WS_RATE_BURST-th drop in a row closes 4008."""
    settings.WS_RATE_LIMIT, settings.WS_RATE_BURST = 1, 2
    await amake_user("bea")
    communicator = await connect("bea")
    for _ in range(3):
        await communicator.send_to(text_data="ping")
    assert [(await receive(communicator))["type"] for _ in range(3)] == [
        "pong", "pong", "error"]
    await communicator.send_to(text_data="ping")
    assert (await receive(communicator))["code"] == "rate_limited"
    await assert_closed(communicator, 4008)


# --- Pacing the queue -------------------------------------------------------------------------


async def test_queue_waits_while_the_client_has_much_unread(amake_user, connect, settings,
                                                            monkeypatch):
    """While half WS_MAX_SEND_BUFFER_BYTES is unread, the next queued NOTE waits."""
    settings.WS_MAX_SEND_BUFFER_BYTES = 1000
    bob = await amake_user("bea")
    ids = [(await api.anotify(bob, {"n": n}))[0] for n in range(2)]
    loop = asyncio.get_running_loop()
    backlog_until = loop.time() + 0.3
    monkeypatch.setattr(consumers.NotificationConsumer, "unsent_bytes",
                        lambda self: 900 if loop.time() < backlog_until else 0)
    communicator = await connect("bea")
    assert (await receive(communicator))["id"] == ids[0]
    assert loop.time() < backlog_until
    assert (await receive(communicator))["id"] == ids[1]
    assert loop.time() >= backlog_until


async def test_queue_stops_waiting_for_a_stalled_client(amake_user, connect, settings,
                                                        monkeypatch):
    """A client that takes nothing for DRAIN_SECONDS gets the rest of the queue unpaced."""
    settings.WS_MAX_SEND_BUFFER_BYTES = 1000
    monkeypatch.setattr(consumers, "DRAIN_SECONDS", 0.2)
    monkeypatch.setattr(consumers.NotificationConsumer, "unsent_bytes", lambda self: 900)
    bob = await amake_user("bea")
    ids = [(await api.anotify(bob, {"n": n}))[0] for n in range(10)]
    loop = asyncio.get_running_loop()
    started = loop.time()
    communicator = await connect("bea")
    assert [f["id"] for f in await receive_notes(communicator, 10)] == ids
    assert loop.time() - started < 1.0, "waited once, not once per NOTE"


async def test_connecting_during_a_stream_of_posts_gets_each_exactly_once(amake_user, connect):
    """Connections opened while notifications keep coming get every one once, in id order."""
    bea = await amake_user("bea")
    posted: list[int] = []

    async def poster() -> None:
        for n in range(40):
            posted.append((await api.anotify(bea, {"n": n}))[0])
            await asyncio.sleep(0.002)

    task = asyncio.create_task(poster())
    communicators = []
    for _ in range(4):
        await asyncio.sleep(0.01)
        communicators.append(await connect("bea"))
    await task
    for communicator in communicators:
        received = [frame["id"] for frame in await receive_notes(communicator, len(posted))]
        assert received == posted
        assert await communicator.receive_nothing(0.1)


async def test_database_down_at_connect_gives_unavailable_and_closes(amake_user, connect,
                                                                     monkeypatch):
    """If the queue cannot be read, the client gets error 'unavailable' and a close, no NOTE."""
    await amake_user("bea")

    async def broken(user_id):
        raise ConnectionError("database down")

    monkeypatch.setattr(writer, "aundelivered_frames", broken)
    communicator = await connect("bea")
    frame = await receive(communicator)
    assert (frame["type"], frame["code"]) == ("error", "unavailable")
    output = await communicator.receive_output(timeout=3)
    assert output["type"] == "websocket.close"
    await communicator.disconnect()
    hub = await get_hub()
    assert note_protocol.FEED_GROUP not in hub.groups, "the failed connection left its feed"


async def test_layer_down_at_join_gives_unavailable_and_closes(amake_user, connect,
                                                               monkeypatch):
    """If the feed cannot be joined, the handshake is still answered, then 'unavailable' and
    a close: the client is told, as when the queue cannot be read."""
    await amake_user("bea")

    async def broken(hub, group, consumer):
        raise ConnectionError("layer down")

    monkeypatch.setattr(consumers, "attach", broken)
    communicator = await connect("bea")
    frame = await receive(communicator)
    assert (frame["type"], frame["code"]) == ("error", "unavailable")
    assert (await communicator.receive_output(timeout=3))["type"] == "websocket.close"


async def test_bad_credentials_never_join_the_feed(amake_user, connect, monkeypatch):
    """Only a connection whose credentials passed joins the feed before its handshake."""
    joins: list[str] = []
    original = consumers.attach

    async def counted(hub, group, consumer):
        joins.append(group)
        await original(hub, group, consumer)

    monkeypatch.setattr(consumers, "attach", counted)
    await assert_closed(await connect(token="garbage"), 4002)
    assert joins == []
    await amake_user("bea")
    await connect("bea")
    assert joins == [note_protocol.FEED_GROUP], "joined before its handshake was answered"


async def test_a_connection_refused_after_joining_leaves_the_feed(amake_user, connect,
                                                                  settings):
    """Past the per-user cap the connection has joined the feed (before its handshake) and
    is then closed with 4013: it leaves the feed, and the hub leaves with the last one."""
    settings.WS_MAX_CONNECTIONS_PER_USER = 1
    await amake_user("bea")
    first = await connect("bea")
    await joined(first)
    refused = await connect("bea")
    await assert_closed(refused, 4013)
    await refused.disconnect()  # as the server tells the application once the close is done
    hub = await get_hub()
    feed = consumers.hub_feeds(hub)[note_protocol.FEED_GROUP]
    assert len(feed.consumers) == 1, "the refused connection left the feed"
    await first.disconnect()
    assert note_protocol.FEED_GROUP not in hub.groups
