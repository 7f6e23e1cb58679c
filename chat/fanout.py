"""Local fan-out: the sockets of a room on this process.

Each process keeps one :class:`LocalRoom` per room it serves. It is the hub's
only listener for the room's group: a published batch arrives once per process
and its frames, serialised once by the publisher, go to every local socket that
may see them. The publisher's own process does not wait for the layer: it hands
the batch to its sockets first (see :meth:`chat.sequencer.RoomSequencer.store_batch`).

**No gap on join.** A joining connection is registered with its LocalRoom
before history is read, and buffers what arrives meanwhile; after history it
drops what history already held (ids up to the last one sent) and goes live.
"""

import asyncio

from chat import presence, protocol
from chat.presence import Departure, Publication
from chat.sequencer import RoomSequencer
from realtime import wire
from realtime.gapless import Gapless
from realtime.hub import Hub
from realtime.protocol import now_timestamp

#: How long a sender waits for its process to receive the room's previous batch
#: before sending its own through the channel layer instead of straight to the
#: local members (see :meth:`chat.sequencer.RoomSequencer.store_batch`).
CATCH_UP_SECONDS = 0.5


#: The most a member's frames of one batch may come to and still go out as one write:
#: past it they go one by one, so that a client that stopped reading is held to
#: WS_MAX_SEND_BUFFER_BYTES as closely as before (one frame over, not one batch).
MAX_JOINED_BYTES = 65536


def room_group(room: str) -> str:
    return f"chat.{room}"


class Member(Gapless):
    """What a LocalRoom needs of a connection (the chat consumer implements it)."""

    conn: str
    username: str
    is_staff: bool
    last_id: int
    presence_version: int

    async def send(self, text_data: str, *, encoded: bytes | None = None) -> None: ...

    def send_now(self, encoded: bytes, frames: int = 1) -> bool: ...

    async def evict(self) -> None:
        """Close: the user may no longer see the room (4004)."""


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
                await self.deliver_all(event["items"])
            number = event.get("number")
            if number is not None:
                self.note_publication((number[0], number[1]))
        elif kind == "presence":
            await self.deliver_all([event])
        elif kind == "departures":
            await self.deliver_all(event["items"])
        elif kind in ("relay", "deleted"):  # "deleted": from the admin, not in a batch
            await self.relay(event)
        elif kind == "evict":
            for member in list(self.members.values()):
                if evicted(member, event):
                    await member.evict()

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

    async def deliver_all(self, items: list[dict]) -> None:
        """Send the items of a batch, in order, to every member that may see them, or
        buffer them for a member that is joining; a deletion among them goes to
        :meth:`relay` in its place.

        Each member's frames of the batch go out in one write: a room's fan-out is
        mostly one small write per member and frame, and the system call costs more
        than the bytes (bench/RESULTS.md, "ninth part"). A member whose connection
        does not take them at once (bytes already wait, another server), or whose
        share is over :data:`MAX_JOINED_BYTES`, gets them one by one through
        :meth:`Member.send` (the slow-reader bound is checked between them), after
        the others, in the same order.
        """
        if any("deleted" in item for item in items):
            for item in items:
                if "deleted" in item:
                    await self.relay(item)
                else:
                    await self.deliver_all([item])
            return
        encoded: list[bytes | None] = [None] * len(items)
        waiting = []
        for member in list(self.members.values()):
            frames, claimed = [], []
            for index, item in enumerate(items):
                audience = item.get("to")
                if member.conn == item.get("skip") or (audience
                                                       and member.username not in audience):
                    continue
                if member.pending is not None:
                    member.pending.append(item)
                    continue
                if not claim(member, item):
                    continue
                claimed.append(index)
                if own_ref(member, item):
                    frames.append(wire.text_frame(item["frame_ref"]))
                    continue
                frame = encoded[index]
                if frame is None:
                    frame = encoded[index] = wire.text_frame(item["frame"])
                frames.append(frame)
            if claimed and (sum(map(len, frames)) > MAX_JOINED_BYTES
                            or not member.send_now(b"".join(frames), len(frames))):
                waiting.append((member, claimed))
        for member, claimed in waiting:
            for index in claimed:
                await send_claimed(member, items[index], encoded[index])

    async def relay(self, item: dict) -> None:
        """Send a frame that is no message (``read``, ``typing``, ``message_deleted``)
        to the members it is for.

        ``to`` and ``skip`` as for messages; ``skip_user``: every connection of that
        user is left out; ``deleted``: only members who have seen that id get it.
        A joining member holds it until it goes live, as it holds messages.
        """
        audience, skip, skip_user = item.get("to"), item.get("skip"), item.get("skip_user")
        for member in list(self.members.values()):
            if (member.conn == skip or member.username == skip_user
                    or (audience and member.username not in audience)):
                continue
            if member.pending is not None:
                member.pending.append(item)
            elif not stale(member, item):
                await member.send(item["frame"])


def evicted(member: Member, event: dict) -> bool:
    """Whether an ``evict`` event closes ``member``: it names the member's user, or
    (a room made private) lists the members and the member is neither one nor staff."""
    if "user" in event:
        return member.username == event["user"]
    return member.username not in event["except"] and not member.is_staff


def stale(member: Member, item: dict) -> bool:
    """Whether a joining member leaves out ``item`` when it goes live: what history
    held, and the deletion of a message it never saw."""
    deleted = item.get("deleted")
    if deleted is not None:
        return member.last_id < deleted
    return not claim(member, item)


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
        published = await presence.of(hub.registry).room_publication(room)
        if published is not None:
            local.note_publication(published)
    return local


async def announce_join(local: LocalRoom, member: Member) -> None:
    """Register presence; tell the room if the user is new there, else only the member."""
    change = await presence.of(local.hub.registry).room_join(
        local.name, member.conn, member.username)
    frame = protocol.presence("user_joined", member.username, change.users, now_timestamp())
    member.presence_version = change.version
    await member.send(frame)
    if not change.user_present:
        await local.hub.publish(local.group, {
            "kind": "presence", "frame": frame, "skip": member.conn, "version": change.version,
        })


async def go_live(member: Member) -> None:
    """Send what arrived while joining (minus what history held), then stream."""
    await member.release(lambda item: stale(member, item),
                         lambda item: send_claimed(member, item))


async def leave(hub: Hub, room: str, member: Member, *, announced: bool) -> None:
    """Detach ``member``; tell the room if it was the user's last connection there."""
    rooms = local_rooms(hub)
    local = rooms.get(room)
    if local is not None and local.members.get(member.conn) is member:
        del local.members[member.conn]
        if not local.members:
            rooms.pop(room, None)
            # A turn that waits for more here would only keep the lock from the others.
            local.sequencer.end_lease()
            await hub.unsubscribe(local.group, local)
    if not announced:
        return
    change = await presence.of(hub.registry).room_leave(room, member.conn)
    if not change.user_present:
        frame = protocol.presence("user_left", member.username, change.users, now_timestamp())
        await hub.publish(
            room_group(room), {"kind": "presence", "frame": frame, "version": change.version}
        )


async def announce_departures(hub: Hub, departures: list[Departure]) -> None:
    """``user_left`` for the users of a dead process (a departure handler of the hub,
    fed by :meth:`chat.presence.RedisPresence.reap`).

    Each departure has its own version, so a member gets every one of them; those of a
    room go in one event, in version order (the layer cannot reorder them). A room whose
    event cannot be published does not keep the other rooms from theirs.
    """
    moment = now_timestamp()
    rooms: dict[str, list[dict]] = {}
    for departure in departures:
        frame = protocol.presence("user_left", departure.user, departure.users, moment)
        rooms.setdefault(departure.room, []).append(
            {"frame": frame, "version": departure.version})
    failed = None
    for room, items in rooms.items():
        items.sort(key=lambda item: item["version"])
        try:
            await hub.publish(room_group(room), {"kind": "departures", "items": items})
        except Exception as exc:
            failed = exc
    if failed is not None:
        raise failed
