"""``/ws/notifications/``: the queue on connect, then live NOTEs, acks and pings.

Each process holds one hub listener (a :class:`Feed`) of the notifications
group, shared by every local connection: an event carries the NOTEs of one
batch, each serialised once and addressed to a user (or to everyone), and
the feed hands each to that user's local connections. A user's ten tabs cost
one layer delivery and no extra encoding.

No gap at connect: the connection joins the feed (holding live NOTEs back)
and the hub has joined the group *before* the undelivered notifications are
read. A notification stored before that read is in it; one pushed after the
join is held back. The queue goes out first, oldest first, then the held-back
NOTEs that were not in it, then live ones.
"""

import asyncio
import logging
import time

from django.conf import settings

from notifications import writer
from notifications.protocol import EVENT_KIND, FEED_GROUP, NOTIFICATIONS, Ack, parse_frame
from realtime import protocol
from realtime.consumers import ProtocolConsumer
from realtime.hub import Hub
from realtime.protocol import Auth, ErrorCode, Ping

logger = logging.getLogger(__name__)

#: How long the queue waits for a client to take what the server holds for it.
DRAIN_SECONDS = 10.0


class Feed:
    """The hub listener of one group on this process, shared by its local connections."""

    def __init__(self) -> None:
        self.consumers: set[NotificationConsumer] = set()
        #: The same connections by username, for NOTEs addressed to one user.
        self.by_user: dict[str, set[NotificationConsumer]] = {}
        self.subscribed: asyncio.Future | None = None

    def add(self, consumer: "NotificationConsumer") -> None:
        self.consumers.add(consumer)
        self.by_user.setdefault(consumer.user.get_username(), set()).add(consumer)

    def discard(self, consumer: "NotificationConsumer") -> None:
        self.consumers.discard(consumer)
        username = consumer.user.get_username()
        mine = self.by_user.get(username)
        if mine is not None:
            mine.discard(consumer)
            if not mine:
                del self.by_user[username]

    async def hub_event(self, event: dict) -> None:
        """Hand each NOTE, serialised once by the publisher, to the connections it is for."""
        if event.get("kind") != EVENT_KIND:
            return
        for item in event["items"]:
            user = item["user"]
            audience = self.consumers if user is None else self.by_user.get(user, ())
            for consumer in list(audience):
                await consumer.deliver(item["id"], item["frame"])


def hub_feeds(hub: Hub) -> dict[str, Feed]:
    """The feeds of this process's hub, by group (per-process app state lives on the hub)."""
    return hub.apps.setdefault("notifications.feeds", {})


async def attach(hub: Hub, group: str, consumer: "NotificationConsumer") -> None:
    """Feed ``group`` to ``consumer``; returns once the hub has joined the group."""
    feeds = hub_feeds(hub)
    feed = feeds.get(group)
    if feed is None:
        feed = feeds[group] = Feed()
        feed.subscribed = asyncio.ensure_future(hub.subscribe(group, feed))
    feed.add(consumer)
    try:
        await asyncio.shield(feed.subscribed)
    except Exception:
        feed.discard(consumer)
        if feeds.get(group) is feed:
            del feeds[group]  # the next connection tries again
        raise


async def detach(hub: Hub, group: str, consumer: "NotificationConsumer") -> None:
    """Stop feeding ``consumer``; the hub leaves the group with the last one."""
    feeds = hub_feeds(hub)
    feed = feeds.get(group)
    if feed is None or consumer not in feed.consumers:
        return
    feed.discard(consumer)
    if not feed.consumers:
        del feeds[group]
        await hub.unsubscribe(group, feed)


class NotificationConsumer(ProtocolConsumer):
    """``/ws/notifications/`` (auth): NOTE frames, ``ack``, ``ping``, ``auth``."""

    endpoint = NOTIFICATIONS

    #: Live NOTEs held back while the queue is sent; ``None`` once live.
    _held: list[tuple[int, str]] | None = None
    #: Ids sent from the queue: a late live copy of one of them is dropped.
    _queued_ids: frozenset[int] = frozenset()
    _groups: tuple[str, ...] = ()
    #: The client took nothing for DRAIN_SECONDS while the queue was sent.
    _stalled = False

    async def joined(self) -> None:
        """Join the feeds, send the queue, then the held-back live NOTEs."""
        self._held = []
        self._groups = (FEED_GROUP,)
        try:
            for group in self._groups:
                await attach(self.hub, group, self)
            queue = await writer.aundelivered_frames(self.user.pk)
        except Exception:
            logger.exception("could not start a notifications connection")
            await self.send_frame(
                protocol.error(ErrorCode.UNAVAILABLE, "notifications are unavailable; reconnect")
            )
            self.closing = True
            await self.close()
            return
        self._queued_ids = frozenset(note_id for note_id, _ in queue)
        for _, frame in queue:
            await self.send_frame(frame)
            await self._drain()
        while self._held:
            note_id, frame = self._held.pop(0)
            if note_id not in self._queued_ids:
                await self.send_frame(frame)
                await self._drain()
        self._held = None

    async def _drain(self) -> None:
        """Let the server write the queue out before adding more to its buffer.

        A full queue is up to ``NOTIFICATIONS_QUEUE_LIMIT`` x 64 KB (6.4 MB by
        default), more than the server holds for a client that does not read
        (``WS_MAX_SEND_BUFFER_BYTES``, then 4010): sent in one burst it would close
        a healthy client on every connect. So wait while half the limit is
        pending, as long as the client keeps taking some. After ``DRAIN_SECONDS``
        without progress the queue stops waiting, and ``send_frame`` closes the
        stalled client as it closes any other.
        """
        limit = settings.WS_MAX_SEND_BUFFER_BYTES // 2
        if not limit or self._stalled:
            return
        least, deadline = None, time.monotonic() + DRAIN_SECONDS
        while True:
            pending = self.unsent_bytes()
            if pending <= limit or self.closing:
                return
            if least is None or pending < least:
                least, deadline = pending, time.monotonic() + DRAIN_SECONDS
            elif time.monotonic() > deadline:
                self._stalled = True
                return
            await asyncio.sleep(0.005)  # the transport has no "drained" event to await

    async def left(self) -> None:
        """Leave the feeds, and write the acks this connection sent before it goes.

        The hub leaves a group with its last local connection.
        """
        for group in self._groups:
            await detach(self.hub, group, self)
        if self._groups:
            await writer.flush_acks(self.user.pk)

    async def deliver(self, note_id: int, frame: str) -> None:
        """A live NOTE from a feed: held back while connecting, else sent."""
        if self._held is not None:
            self._held.append((note_id, frame))
        elif note_id not in self._queued_ids:
            await self.send_frame(frame)

    async def receive_frame(self, text: str | None, data: bytes | None) -> None:
        """``ping`` -> ``pong``; ``auth`` refreshes the token; ``ack`` marks delivered."""
        frame = parse_frame(text, data)
        if isinstance(frame, Ping):
            await self.send_frame(protocol.PONG)
        elif isinstance(frame, Auth):
            await self.refresh_token(frame.token)
        elif isinstance(frame, Ack):
            # Coalesced with the other acks of this process (one UPDATE per batch);
            # written before this connection's disconnect completes.
            writer.acknowledge_later(self.user.pk, frame.ids)
