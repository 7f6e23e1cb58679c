"""``/ws/notifications/``: the queue on connect, then live NOTEs, acks and pings.

Each process holds one hub listener (a :class:`Feed`) of the notifications
group, shared by every local connection: an event carries the NOTEs of one
batch, each serialised once and addressed to a user (or to everyone), and
the feed hands each to that user's local connections. A user's ten tabs cost
one layer delivery and no extra encoding.

No gap at connect (:mod:`realtime.gapless`): the connection holds live NOTEs
back and the hub has joined the group *before* the handshake is answered (a
broadcast is stored for nobody) and so before the undelivered notifications
are read. A notification stored before that read is in it; one pushed after the
join is held back. The queue goes out first, oldest first, then the held-back
NOTEs that were not in it, then live ones.
"""

import asyncio
import logging

from notifications import writer
from notifications.protocol import EVENT_KIND, FEED_GROUP, NOTIFICATIONS, parse_ack
from realtime import protocol
from realtime.consumers import ProtocolConsumer
from realtime.gapless import Gapless
from realtime.hub import Hub
from realtime.limits import drain
from realtime.protocol import ErrorCode

logger = logging.getLogger(__name__)

#: How long the queue waits for a client to take what the server holds for it.
DRAIN_SECONDS = 10.0


class Feed:
    """The hub listener of one group on this process, shared by its local connections."""

    def __init__(self, hub: Hub) -> None:
        #: The connections fed by this group (everyone's, for broadcasts).
        self.consumers: set[NotificationConsumer] = set()
        #: This endpoint's connections by username: the hub's own index, for NOTEs
        #: addressed to one user (one feed group, so every one of them is fed here).
        self.by_user: dict[str, set[NotificationConsumer]] = hub.users_on(NOTIFICATIONS)
        self.subscribed: asyncio.Future | None = None

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
        feed = feeds[group] = Feed(hub)
        feed.subscribed = asyncio.ensure_future(hub.subscribe(group, feed))
    feed.consumers.add(consumer)
    try:
        await asyncio.shield(feed.subscribed)
    except Exception:
        feed.consumers.discard(consumer)
        if feeds.get(group) is feed:
            del feeds[group]  # the next connection tries again
        raise


async def detach(hub: Hub, group: str, consumer: "NotificationConsumer") -> None:
    """Stop feeding ``consumer``; the hub leaves the group with the last one."""
    feeds = hub_feeds(hub)
    feed = feeds.get(group)
    if feed is None or consumer not in feed.consumers:
        return
    feed.consumers.discard(consumer)
    if not feed.consumers:
        del feeds[group]
        await hub.unsubscribe(group, feed)


class NotificationConsumer(Gapless, ProtocolConsumer):
    """``/ws/notifications/`` (auth): NOTE frames, ``ack``, ``ping``, ``auth``.

    Live NOTEs are held back (as ``(id, frame)``) while the queue is sent.
    """

    endpoint = NOTIFICATIONS

    #: Ids sent from the queue: a late live copy of one of them is dropped.
    _queued_ids: frozenset[int] = frozenset()
    _groups: tuple[str, ...] = ()
    #: The client took nothing for DRAIN_SECONDS while the queue was sent.
    _stalled = False
    #: Joining the feeds failed (the layer is down): told to the client in connect().
    _feed_error: Exception | None = None

    async def join(self) -> None:
        """Hold live NOTEs and join the feeds, before the handshake is answered.

        Broadcasts are queued for nobody: a connection that joined after its
        handshake would miss one posted in between.
        """
        self.hold()
        self._groups = (FEED_GROUP,)
        try:
            for group in self._groups:
                await attach(self.hub, group, self)
        except Exception as exc:
            self._feed_error = exc  # the client hears of it once the handshake is answered

    async def connect(self) -> None:
        """Send the queue, then the held-back live NOTEs."""
        try:
            if self._feed_error is not None:
                raise self._feed_error
            queue = await writer.aundelivered_frames(self.user.pk)
        except Exception:
            logger.exception("could not start a notifications connection")
            await self.send(
                protocol.error(ErrorCode.UNAVAILABLE, "notifications are unavailable; reconnect")
            )
            self.closing = True
            await self.close()
            return
        self._queued_ids = frozenset(note_id for note_id, _ in queue)
        for note in queue:
            await self._send_drained(note)
        await self.release(lambda note: note[0] in self._queued_ids, self._send_drained)

    async def _send_drained(self, note: tuple[int, str]) -> None:
        await self.send(note[1])
        await self._drain()

    async def _drain(self) -> None:
        """Let the server write the queue out before adding more to its buffer.

        A full queue is up to ``NOTIFICATIONS_QUEUE_LIMIT`` x 64 KB (6.4 MB by
        default), more than the server holds for a client that does not read
        (``WS_MAX_SEND_BUFFER_BYTES``, then 4010): sent in one burst it would close
        a healthy client on every connect. So wait while half the limit is
        pending, as long as the client keeps taking some
        (:func:`realtime.limits.drain`). After ``DRAIN_SECONDS`` without progress
        the queue stops waiting, and ``send`` closes the stalled client as it
        closes any other.
        """
        if not self._stalled and not await drain(self, DRAIN_SECONDS):
            self._stalled = True

    async def disconnect(self, code: int | None) -> None:
        """Write the acks this connection sent before it goes."""
        await writer.flush_acks(self.user.pk)

    async def leave(self) -> None:
        """Leave the feeds; the hub leaves a group with its last local connection."""
        for group in self._groups:
            await detach(self.hub, group, self)

    async def deliver(self, note_id: int, frame: str) -> None:
        """A live NOTE from a feed: held back while connecting, else sent."""
        if not self.offer((note_id, frame)) and note_id not in self._queued_ids:
            await self.send(frame)

    async def on_ack(self, frame: dict) -> None:
        """``ack`` marks notifications delivered.

        Coalesced with the other acks of this process (one UPDATE per batch);
        written before this connection's disconnect completes.
        """
        writer.acknowledge_later(self.user.pk, parse_ack(frame).ids)
