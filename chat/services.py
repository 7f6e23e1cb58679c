"""The chat actions the consumer, the HTTP API and the admin call.

Each runs its database work through :mod:`realtime.db` (the rules and queries
are in :mod:`chat.rooms` and :mod:`chat.selectors`), then tells the room's
connections on every process through the room's group (see
:meth:`chat.fanout.LocalRoom.hub_event`). They raise the errors of
:mod:`chat.errors`; the callers map them to answers.
"""

import logging

from asgiref.sync import async_to_sync

from chat import presence, protocol, rooms, selectors
from chat.errors import InvalidTarget, NotInRoom, ServiceUnavailable
from chat.fanout import LocalRoom, room_group
from chat.protocol import TYPING_INTERVAL_SECONDS
from chat.rooms import RoomAccess
from chat.sequencer import Outgoing
from realtime import db, hub
from realtime.protocol import now_timestamp

__all__ = ["InvalidTarget", "NotInRoom", "ServiceUnavailable", "add_member", "ban",
           "create_room", "delete", "history", "join", "message_send", "private_send",
           "read", "remove_member", "room", "room_history", "rooms_overview", "typing",
           "unban"]

logger = logging.getLogger(__name__)


# --- In a room (the consumer) -------------------------------------------------------


async def join(room: str, user, *, after: int | None, limit: int) -> rooms.Joined:
    """Find (or make, public) the room and read the join's history: one database call."""
    return await db.run(rooms.join, room, user, after=after, limit=limit)


async def history(access: RoomAccess, user, *, before: int | None, limit: int):
    """A page of the room's visible history (the ``history`` frame)."""
    return await db.run(selectors.history_page, access.id, access.name, user,
                        before=before, limit=limit)


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
        raise InvalidTarget("'target' must be another user")
    if not await presence.of(local.hub.registry).room_has_user(local.name, target):
        raise NotInRoom(f"{target!r} is not in this room")
    return await local.sequencer.submit(Outgoing(sender=user, content=content, recipient=target))


async def delete(*, local: LocalRoom, access: RoomAccess, user, message_id: int) -> None:
    """Delete a message, then tell every connection that has seen it.

    The notice takes its turn in the room's sequencer like a message, so every
    connection, on every process, gets it in the same place among the messages.
    """
    deleted = await db.run(rooms.delete_message, access, user, message_id)
    await local.sequencer.submit(Outgoing(notice=deleted_event(access.name, deleted)))


async def read(*, local: LocalRoom, access: RoomAccess, user, message_id: int,
               origin: str) -> None:
    """Move the user's read marker; their other connections to the room hear of it."""
    if await db.run(rooms.move_read_marker, access, user, message_id):
        await local.hub.publish(local.group, {
            "kind": "relay", "frame": protocol.read(access.name, message_id),
            "to": [user.username], "skip": origin,
        }, here_first=True)


async def typing(*, local: LocalRoom, user) -> None:
    """Relay ``typing`` to the room's other users, at most once per interval."""
    if await presence.of(local.hub.registry).typing_turn(
            local.name, user.username, TYPING_INTERVAL_SECONDS):
        await local.hub.publish(local.group, {
            "kind": "relay", "frame": protocol.typing(local.name, user.username),
            "skip_user": user.username,
        }, here_first=True)


def deleted_event(room: str, deleted: rooms.Deleted) -> dict:
    return {"kind": "deleted", "deleted": deleted.id, "to": deleted.audience,
            "frame": protocol.message_deleted(room, deleted.id, now_timestamp())}


# --- Rooms over HTTP --------------------------------------------------------------


async def rooms_overview(user) -> list[dict]:
    return await db.run(rooms.rooms_overview, user)


async def create_room(name: str, user, *, private: bool) -> dict:
    return await db.run(rooms.create_room, name, user, private=private)


async def room(name: str, user) -> dict:
    """The room's body, if ``user`` may see it."""
    return await db.run(lambda: rooms.room_body(rooms.visible_room(name, user)))


async def room_history(name: str, user, *, before: int | None, limit: int):
    """History over HTTP (:func:`chat.rooms.room_history`)."""
    return await db.run(rooms.room_history, name, user, before=before, limit=limit)


async def add_member(name: str, user, username: str) -> dict:
    return await db.run(rooms.add_member, name, user, username)


async def remove_member(name: str, user, username: str) -> None:
    """Remove a member; their connections to the room are closed (4004) everywhere."""
    if await db.run(rooms.remove_member, name, user, username):
        await evict(name, username)


async def ban(name: str, user, username: str) -> None:
    """Ban a user; their connections to the room are closed (4004) everywhere."""
    await db.run(rooms.ban, name, user, username)
    await evict(name, username)


async def unban(name: str, user, username: str) -> None:
    await db.run(rooms.unban, name, user, username)


async def evict(room: str, username: str) -> None:
    """Close ``username``'s connections to ``room`` on every process (4004)."""
    await hub.publish(room_group(room), {"kind": "evict", "user": username})


# --- From synchronous code (the admin) ------------------------------------------------


def tell_room_blocking(room: str, event: dict) -> None:
    """Publish a room event from synchronous code; a failure is logged, not raised
    (the change is stored: a connection that missed it finds it at its next join)."""
    try:
        async_to_sync(hub.publish)(room_group(room), event)
    except Exception:
        logger.exception("could not tell room %s of a change", room)


def deleted_blocking(deletions: list[tuple[str, rooms.Deleted]]) -> None:
    """Tell the rooms of messages deleted outside a connection (the admin)."""
    for room_name, deleted in deletions:
        tell_room_blocking(room_name, deleted_event(room_name, deleted))


def evict_blocking(room: str, username: str) -> None:
    tell_room_blocking(room, {"kind": "evict", "user": username})


def evict_outsiders_blocking(room: str) -> None:
    """The room was made private: close the connections of all but members and staff."""
    tell_room_blocking(room, {"kind": "evict", "except": rooms.member_names(room)})
