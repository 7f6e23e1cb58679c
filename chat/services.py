"""Chat actions: join, leave, send; the ordering and fan-out of a room.

**Ordering.** Every message of a room is stored and then published by one
:class:`RoomSequencer` per room per process, under the registry's room lock
(a Redis lock across processes, an ``asyncio.Lock`` on one). Ids are assigned
at insert time, so "stored, then published, in id order" holds across every
process, and each connection receives a room's ids in strictly increasing
order. Messages that wait are stored together in one transaction (a batch),
which keeps the lock and the database round trips few under load; a busy
sequencer keeps the lock from batch to batch (storing the next while the last
is published) until another process asks for it.

**Fan-out.** Each process keeps one :class:`LocalRoom` per room it serves. It is
the hub's only listener for the room's group: a published batch arrives once
per process and its frames, serialised once by the publisher, go to every local
socket that may see them. The publisher's own process does not wait for the
layer: it hands the batch to its sockets first (see :meth:`RoomSequencer.store_batch`).

**No gap on join** (:mod:`realtime.gapless`). A joining connection is registered
with its LocalRoom before history is read, and holds what arrives meanwhile;
after history it drops what history already held (ids up to the last one sent)
and goes live.
"""

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from chat import selectors
from chat.models import Message, Room
from realtime import db, metrics, protocol, wire
from realtime.gapless import Gapless
from realtime.hub import Hub
from realtime.protocol import ErrorCode, ProtocolError
from realtime.registry import Departure, Publication, RoomTurn

logger = logging.getLogger(__name__)

MAX_BATCH = 200
#: How long a sender waits for its process to receive the room's previous batch
#: before sending its own through the channel layer instead of straight to the
#: local members (see :meth:`RoomSequencer.store_batch`).
CATCH_UP_SECONDS = 0.5
#: How long a sequencer keeps its room's lock before it checks whether another
#: process is waiting for it (and gives it up if so).
HOLD_SECONDS = 0.02


class ServiceUnavailable(Exception):
    """The database or the channel layer failed; ``stored_id`` says if it was stored."""

    def __init__(self, message: str, stored_id: int | None = None) -> None:
        super().__init__(message)
        self.stored_id = stored_id


def room_group(room: str) -> str:
    return f"chat.{room}"


# --- Local fan-out ------------------------------------------------------------------


class Member(Gapless):
    """What a LocalRoom needs of a connection (the chat consumer implements it)."""

    conn: str
    username: str
    last_id: int
    presence_version: int

    async def send(self, text_data: str, *, encoded: bytes | None = None) -> None: ...

    def send_now(self, encoded: bytes) -> bool: ...


class LocalRoom:
    """The sockets of one room on this process, and the room's sequencer."""

    def __init__(self, hub: Hub, name: str) -> None:
        self.hub, self.name, self.group = hub, name, room_group(name)
        self.members: dict[str, Member] = {}
        self.sequencer = RoomSequencer(self)
        #: The room's last publication this process has received (or had no need to).
        self.seen: Publication | None = None
        self._catching_up: list[tuple[Publication, asyncio.Future]] = []

    def __repr__(self) -> str:
        return f"<LocalRoom {self.name} members={len(self.members)}>"

    async def hub_event(self, event: dict) -> None:
        kind = event.get("kind")
        if kind == "batch":
            # A batch this process published went to its own members first.
            if event.get("delivered_by") != self.hub.proc_id:
                for item in event["items"]:
                    await self.deliver(item)
            number = event.get("number")
            if number is not None:
                self.note_publication((number[0], number[1]))
        elif kind == "presence":
            await self.deliver(event)

    def note_publication(self, number: Publication) -> None:
        """The room's batches up to ``number`` have reached this process."""
        seen = self.seen
        if seen is None or seen[0] != number[0] or seen[1] < number[1]:
            self.seen = number
        for target, waiter in self._catching_up:
            if not waiter.done() and self.has_seen(target):
                waiter.set_result(None)

    def has_seen(self, publication: Publication | None) -> bool:
        """Whether this process has received ``publication`` (``None``: nothing to receive)."""
        if publication is None or publication[1] == 0:
            return True
        seen = self.seen
        return seen is not None and seen[0] == publication[0] and seen[1] >= publication[1]

    async def catch_up(self, publication: Publication | None) -> bool:
        """Wait until :meth:`has_seen` ``publication``; ``False`` if it has not in
        :data:`CATCH_UP_SECONDS`."""
        if self.has_seen(publication):
            return True
        entry = (publication, asyncio.get_running_loop().create_future())
        self._catching_up.append(entry)
        try:
            async with asyncio.timeout(CATCH_UP_SECONDS):
                await entry[1]
            return True
        except TimeoutError:
            return False
        finally:
            self._catching_up.remove(entry)

    async def deliver(self, item: dict) -> None:
        """Send one item to every member that may see it, or buffer it if joining."""
        audience, skip = item.get("to"), item.get("skip")
        encoded = None
        for member in list(self.members.values()):
            if member.conn == skip or (audience and member.username not in audience):
                continue
            if member.pending is not None:  # Gapless.offer, inlined: joining, hold it
                member.pending.append(item)
                continue
            if encoded is None:
                encoded = wire.text_frame(item["frame"])
            # The common case is a plain write: no coroutine per member.
            if claim(member, item) and (own_ref(member, item) or not member.send_now(encoded)):
                await send_claimed(member, item, encoded)


def claim(member: Member, item: dict) -> bool:
    """Whether ``member`` has yet to see ``item`` (ids and presence versions only rise);
    if so it counts as seen from now on."""
    item_id = item.get("id")
    if item_id is not None:
        if item_id <= member.last_id:
            return False
        member.last_id = item_id
    version = item.get("version")
    if version is not None:
        if version <= member.presence_version:
            return False
        member.presence_version = version
    return True


def own_ref(member: Member, item: dict) -> bool:
    """Whether ``item`` is the member's own message, sent back with its ``ref``."""
    return "frame_ref" in item and item.get("origin") == member.conn


async def send_claimed(member: Member, item: dict, encoded: bytes | None = None) -> None:
    if own_ref(member, item):
        await member.send(item["frame_ref"])
    else:
        await member.send(item["frame"], encoded=encoded)


def local_rooms(hub: Hub) -> dict[str, LocalRoom]:
    return hub.apps.setdefault("chat.rooms", {})


async def join(hub: Hub, room: str, member: Member) -> LocalRoom:
    """Attach ``member`` to this process's room, buffering until :func:`go_live`."""
    rooms = local_rooms(hub)
    local = rooms.get(room)
    if local is None:
        local = rooms[room] = LocalRoom(hub, room)
    member.hold()
    local.members[member.conn] = member
    # Returns once the layer delivers the room's events here, so nothing published
    # after the history query below can be missed.
    await hub.subscribe(local.group, local)
    if local.seen is None:
        # What was published before the subscription is for history, not for here.
        published = await hub.registry.room_publication(room)
        if published is not None:
            local.note_publication(published)
    return local


async def announce_join(local: LocalRoom, member: Member) -> None:
    """Register presence; tell the room if the user is new there, else only the member."""
    change = await local.hub.registry.room_join(local.name, member.conn, member.username)
    frame = protocol.presence(
        "user_joined", member.username, change.users, protocol.now_timestamp()
    )
    member.presence_version = change.version
    await member.send(frame)
    if not change.user_present:
        await local.hub.publish(local.group, {
            "kind": "presence", "frame": frame, "skip": member.conn, "version": change.version,
        })


async def go_live(member: Member) -> None:
    """Send what arrived while joining (minus what history held), then stream."""
    await member.release(lambda item: not claim(member, item),
                         lambda item: send_claimed(member, item))


async def leave(hub: Hub, room: str, member: Member, *, announced: bool) -> None:
    """Detach ``member``; tell the room if it was the user's last connection there."""
    rooms = local_rooms(hub)
    local = rooms.get(room)
    if local is not None and local.members.get(member.conn) is member:
        del local.members[member.conn]
        if not local.members:
            rooms.pop(room, None)
            await hub.unsubscribe(local.group, local)
    if not announced:
        return
    change = await hub.registry.room_leave(room, member.conn)
    if not change.user_present:
        frame = protocol.presence(
            "user_left", member.username, change.users, protocol.now_timestamp()
        )
        await hub.publish(
            room_group(room), {"kind": "presence", "frame": frame, "version": change.version}
        )


async def announce_departures(hub: Hub, departures: list[Departure]) -> None:
    """``user_left`` for the users of a dead process (see ``Hub`` maintenance)."""
    moment = protocol.now_timestamp()
    for departure in departures:
        frame = protocol.presence("user_left", departure.user, departure.users, moment)
        await hub.publish(room_group(departure.room),
                          {"kind": "presence", "frame": frame, "version": departure.version})


# --- Sending ---------------------------------------------------------------------------


@dataclass
class Outgoing:
    sender: Any
    content: str
    origin: str | None = None
    ref: str | None = None
    recipient: str | None = None
    done: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class RoomSequencer:
    """Stores and publishes a room's messages one batch at a time, in id order."""

    def __init__(self, local: LocalRoom) -> None:
        self.local = local
        self.queue: list[Outgoing] = []
        self.task: asyncio.Task | None = None
        #: The publication of a batch that was not delivered here first, while it
        #: may be out: the next batch waits for it instead of overtaking it here.
        self.through_layer: asyncio.Task | None = None

    async def submit(self, outgoing: Outgoing) -> int:
        self.queue.append(outgoing)
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self.run(), name=f"sequencer-{self.local.name}")
        return await outgoing.done

    async def run(self) -> None:
        local = self.local
        while self.queue:
            try:
                async with local.hub.registry.room_lock(local.name) as turn:
                    await self.take_turn(turn)
            except Exception:
                # No lock (Redis is down): what waits now cannot be stored in order.
                waiting, self.queue = self.queue, []
                if waiting:
                    self.fail(waiting)
                else:
                    logger.exception("giving back the lock of room %s failed", local.name)

    async def take_turn(self, turn: RoomTurn) -> None:
        """Store and publish batches while this process holds the room's lock.

        A batch is stored, and handed to the local members, while the one
        before it is still being published, so that the database and the
        channel layer work at the same time; publications go out one after
        another, in id order. Every :data:`HOLD_SECONDS` the lock is given up if
        another process is waiting for it.
        """
        publishing: asyncio.Task | None = None
        since = time.monotonic()
        try:
            while self.queue:
                batch, self.queue = self.queue[:MAX_BATCH], self.queue[MAX_BATCH:]
                publishing = await self.store(batch, turn, publishing)
                if self.queue and time.monotonic() - since >= HOLD_SECONDS:
                    if publishing is not None:
                        await publishing
                        publishing = None
                    if not await turn.keep():
                        return
                    since = time.monotonic()
        finally:
            if publishing is not None:
                await publishing

    async def store(self, batch: list[Outgoing], turn: RoomTurn,
                    publishing: asyncio.Task | None) -> asyncio.Task | None:
        """:meth:`store_batch`, and one by one if the batch fails; the last publication."""
        try:
            return await self.store_batch(batch, turn, publishing)
        except Exception:
            if len(batch) == 1:
                self.fail(batch)
                return publishing
        # One bad message must not sink the others: store them one by one.
        logger.warning("a batch in room %s failed; storing its messages one by one",
                       self.local.name)
        for outgoing in batch:
            if outgoing.done.done():
                continue
            try:
                publishing = await self.store_batch([outgoing], turn, publishing)
            except Exception:
                self.fail([outgoing])
        return publishing

    def fail(self, batch: list["Outgoing"]) -> None:
        logger.exception("storing or publishing in room %s failed", self.local.name)
        for outgoing in batch:
            if not outgoing.done.done():
                outgoing.done.set_exception(ServiceUnavailable("message could not be stored"))

    async def store_batch(self, batch: list[Outgoing], turn: RoomTurn,
                          publishing: asyncio.Task | None) -> asyncio.Task | None:
        """Store ``batch``, give it to the local members, and start publishing it.

        This process's own members get the batch at once, without the round
        trip through the channel layer, once this process has received every
        earlier batch of the room (the turn says which was last): under the
        lock no later one can come first. If that earlier batch is late, the
        batch goes through the layer like any other, in order. Returns the task
        that publishes it after ``publishing``, the previous batch's.
        """
        local = self.local
        stored = await store_messages(local.name, batch)
        metrics.inc("realtime_messages_stored_total", sum(1 for m in stored if m))
        items, accepted = [], []
        for outgoing, message in zip(batch, stored, strict=True):
            if message is None:
                outgoing.done.set_exception(
                    ProtocolError(ErrorCode.NOT_IN_ROOM, "that user is not in this room")
                )
                continue
            items.append(event_item(local.name, outgoing, message))
            accepted.append((outgoing, message))
        if not items:
            return publishing
        if self.through_layer is not None:
            # The previous batch goes through the layer: this one may not overtake it.
            await self.through_layer
            self.through_layer = None
        event: dict[str, Any] = {"kind": "batch", "items": items}
        delivered_here = await local.catch_up(turn.after)
        if delivered_here:
            event["delivered_by"] = local.hub.proc_id
            try:
                for item in items:
                    await local.deliver(item)
            except Exception:
                # As the hub does for its listeners: what is stored stays stored.
                logger.exception("delivering in room %s failed", local.name)
        task = asyncio.create_task(self.publish(event, accepted, turn, publishing))
        if not delivered_here:
            self.through_layer = task
        return task

    async def publish(self, event: dict, accepted: list[tuple[Outgoing, Message]],
                      turn: RoomTurn, previous: asyncio.Task | None) -> None:
        """Publish one batch after ``previous``; answer its senders.

        It raises nothing (a failure is its senders' answer), so that awaiting
        it never fails the batches after it.
        """
        if previous is not None:
            await previous
        local = self.local
        number = turn.number
        if number is not None:
            event["number"] = number
        try:
            await local.hub.publish(local.group, event)
        except Exception:
            logger.exception("publishing to room %s failed", local.name)
            for outgoing, message in accepted:
                if not outgoing.done.done():
                    outgoing.done.set_exception(ServiceUnavailable(
                        "stored, but maybe not delivered live; it comes back with history",
                        stored_id=message.pk,
                    ))
            return
        turn.advance()
        if number is not None and "delivered_by" in event:
            # Seen here already; a batch that went through the layer is noted when it
            # comes back, so that nothing local overtakes it.
            local.note_publication(number)
        for outgoing, message in accepted:
            if not outgoing.done.done():
                outgoing.done.set_result(message.pk)


def event_item(room: str, outgoing: Outgoing, message: Message) -> dict:
    """The layer item of one stored message: its frame, serialised once."""
    moment = protocol.timestamp(message.created_at)
    username = outgoing.sender.username
    if outgoing.recipient is None:
        item = {"id": message.pk, "frame": protocol.encode(
            protocol.message_item(message.pk, room, username, outgoing.content, moment))}
        if outgoing.ref is not None:
            item["origin"] = outgoing.origin
            item["frame_ref"] = protocol.encode(protocol.message_item(
                message.pk, room, username, outgoing.content, moment, outgoing.ref))
        return item
    return {
        "id": message.pk,
        "to": [username, outgoing.recipient],
        "frame": protocol.encode(protocol.private_item(
            message.pk, room, username, outgoing.recipient, outgoing.content, moment)),
    }


async def store_messages(room: str, batch: list[Outgoing]) -> list[Message | None]:
    """Insert a batch in one transaction; ``None`` where a recipient does not exist."""
    return await db.run(insert_batch, room, batch)


def insert_batch(room: str, batch: list[Outgoing]) -> list[Message | None]:
    """:func:`store_messages` on the database thread."""
    now = timezone.now()
    recipients = {o.recipient for o in batch if o.recipient is not None}
    users = {}
    if recipients:
        users = {
            u.username: u
            for u in get_user_model().objects.filter(username__in=recipients, is_active=True)
        }
    with transaction.atomic():
        room_row, _ = Room.objects.get_or_create(name=room)
        rows: list[Message | None] = []
        for outgoing in batch:
            if outgoing.recipient is not None and outgoing.recipient not in users:
                rows.append(None)
                continue
            rows.append(Message(
                room=room_row, sender=outgoing.sender, content=outgoing.content,
                recipient=users.get(outgoing.recipient), created_at=now,
            ))
        Message.objects.bulk_create([r for r in rows if r is not None])
        Room.objects.filter(pk=room_row.pk).update(last_message_at=now)
    return rows


async def message_send(
    *, local: LocalRoom, user, content: str, ref: str | None = None, origin: str | None = None
) -> int:
    """Store a room message, then publish it to the room; returns its id."""
    return await local.sequencer.submit(
        Outgoing(sender=user, content=content, ref=ref, origin=origin)
    )


async def private_send(*, local: LocalRoom, user, target: str, content: str) -> int:
    """Store a private message to ``target``, who must be in the room; returns its id."""
    if target == user.username:
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, "'target' must be another user")
    if not await local.hub.registry.room_has_user(local.name, target):
        raise ProtocolError(ErrorCode.NOT_IN_ROOM, f"{target!r} is not in this room")
    return await local.sequencer.submit(Outgoing(sender=user, content=content, recipient=target))


async def history(room: str, user, *, after=None, before=None, limit: int):
    """:func:`chat.selectors.history_page` off the event loop."""
    return await db.run(selectors.history_page, room, user, after=after, before=before,
                        limit=limit)
