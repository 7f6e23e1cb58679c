"""The notifications part of the wire contract: the NOTE frame, the ``ack`` frame, the names.

Generic frames (``ping``, ``auth``, ``error``) and the parsing they share live
in :mod:`realtime.protocol`.
"""

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from realtime.protocol import (
    COMMON_PARSERS,
    MAX_ID,
    Auth,
    ErrorCode,
    Ping,
    ProtocolError,
    encode,
    parse,
    timestamp,
)


class StoredNote(Protocol):
    """A stored notification, as a model row or the writer's ``store.Stored``."""

    pk: int
    data: dict[str, Any]
    created_at: datetime
    broadcast: bool

#: The endpoint name of ``/ws/notifications/`` connections in the registry.
NOTIFICATIONS = "notifications"

#: Statuses of a post: the user has a notifications connection somewhere, or not.
SENT = "sent"
QUEUED = "queued"
BROADCAST = "broadcast"

#: The ``kind`` of the hub event that carries NOTEs.
EVENT_KIND = "notifications"
#: The channel-layer group of every process with ``/ws/notifications/``
#: connections. One event carries all the NOTEs a batch stored, each for its
#: user or for everyone: one layer message per batch instead of one per NOTE.
FEED_GROUP = "notifications.feed"


# --- Server frames -------------------------------------------------------------------


def note_frame(note_id: int, data: dict[str, Any], created_at: datetime, *,
               broadcast: bool = False) -> str:
    """The NOTE frame of the contract, serialised once for every connection."""
    frame: dict[str, Any] = {
        "type": "notification",
        "id": note_id,
        "data": data,
        "timestamp": timestamp(created_at),
    }
    if broadcast:
        frame["broadcast"] = True
    return encode(frame)


def frame_of(notification: StoredNote) -> str:
    """The NOTE frame of a stored notification."""
    return note_frame(
        notification.pk, notification.data, notification.created_at,
        broadcast=notification.broadcast,
    )


def note_item(notification: StoredNote, username: str | None) -> dict[str, Any]:
    """One NOTE of a hub event: for ``username`` (``None``: everyone), serialised once."""
    return {"id": notification.pk, "frame": frame_of(notification), "user": username}


# --- Client frames -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ack:
    ids: tuple[int, ...]


def parse_ack(frame: dict[str, Any]) -> Ack:
    """The ``ack`` frame: positive ids; those beyond every storable id are dropped."""
    ids = frame.get("ids")
    if not isinstance(ids, list) or not all(
        isinstance(i, int) and not isinstance(i, bool) and i > 0 for i in ids
    ):
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, "'ids' must be a list of positive integers")
    return Ack(tuple(i for i in ids if i <= MAX_ID))


_PARSERS = {**COMMON_PARSERS, "ack": parse_ack}


def parse_frame(text: str | None, data: bytes | None) -> Ping | Auth | Ack:
    """Parse a client frame of ``/ws/notifications/``."""
    return parse(_PARSERS, text, data)
