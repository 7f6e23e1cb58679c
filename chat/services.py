"""The chat actions the consumer and the HTTP API call: send, send privately, read history.

They raise the errors of :mod:`chat.errors`; the callers map them to answers.
"""

from chat import presence, selectors
from chat.errors import InvalidTarget, NotInRoom, ServiceUnavailable
from chat.fanout import LocalRoom
from chat.sequencer import Outgoing
from realtime import db

__all__ = ["InvalidTarget", "NotInRoom", "ServiceUnavailable", "history", "message_send",
           "private_send"]


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


async def history(room: str, user, *, after=None, before=None, limit: int):
    """:func:`chat.selectors.history_page` off the event loop."""
    return await db.run(selectors.history_page, room, user, after=after, before=before,
                        limit=limit)
