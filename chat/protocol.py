"""The frames of ``/ws/chat/<room>/`` (``../shared/PROTOCOL.md``): their limits,
parsing and building.

Parsing raises :class:`~realtime.protocol.ProtocolError`, which the consumer
turns into an ``error`` frame; the frames every endpoint shares (``ping``,
``auth``, ``error``) are the engine's, in :mod:`realtime.protocol`.
"""

import re
from dataclasses import dataclass
from typing import Any

from realtime.protocol import (
    COMMON_PARSERS,
    MAX_ID,
    Auth,
    Ping,
    encode,
    invalid,
    parse,
    positive_int,
    storable,
)

# Fixed limits of the contract (the configurable ones live in settings).
ROOM_PATTERN = r"[A-Za-z0-9_-]{1,64}"
MAX_CONTENT_CHARS = 4000
MAX_REF_CHARS = 64
HISTORY_ON_JOIN = 50
HISTORY_SINCE_MAX = 1000
HISTORY_PAGE_DEFAULT = 50
HISTORY_PAGE_MAX = 100
#: A user's ``typing`` is relayed at most once per this many seconds per room.
TYPING_INTERVAL_SECONDS = 2.0

_ROOM_RE = re.compile(ROOM_PATTERN)


def is_room_name(name: str) -> bool:
    return bool(_ROOM_RE.fullmatch(name))


def _content(frame: dict[str, Any]) -> str:
    content = frame.get("content")
    if not isinstance(content, str):
        raise invalid("'content' must be a string")
    if not storable(content):
        raise invalid("'content' must not contain NUL characters or lone surrogates")
    if not 1 <= len(content) <= MAX_CONTENT_CHARS:
        raise invalid(f"'content' must be 1 to {MAX_CONTENT_CHARS} characters")
    if content.isspace():
        raise invalid("'content' must not be only spaces")
    return content


# --- Client frames -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendMessage:
    content: str
    ref: str | None


@dataclass(frozen=True, slots=True)
class SendPrivate:
    target: str
    content: str


@dataclass(frozen=True, slots=True)
class HistoryRequest:
    before: int | None
    limit: int


@dataclass(frozen=True, slots=True)
class Delete:
    id: int


@dataclass(frozen=True, slots=True)
class Read:
    id: int


@dataclass(frozen=True, slots=True)
class Typing:
    pass


def _message_id(frame: dict[str, Any]) -> int:
    value = frame.get("id")
    if not positive_int(value) or value > MAX_ID:
        raise invalid("'id' must be a positive integer")
    return value


def parse_delete(frame: dict[str, Any]) -> Delete:
    return Delete(_message_id(frame))


def parse_read(frame: dict[str, Any]) -> Read:
    return Read(_message_id(frame))


def parse_typing(frame: dict[str, Any]) -> Typing:
    return Typing()


def parse_message(frame: dict[str, Any]) -> SendMessage:
    ref = frame.get("ref")
    if ref is not None and not (
        isinstance(ref, str) and 1 <= len(ref) <= MAX_REF_CHARS and storable(ref)
    ):
        raise invalid(f"'ref' must be a string of 1 to {MAX_REF_CHARS} characters")
    return SendMessage(_content(frame), ref)


def parse_private(frame: dict[str, Any]) -> SendPrivate:
    target = frame.get("target")
    if not isinstance(target, str) or not target or not storable(target):
        raise invalid("'target' must be a non-empty string")
    return SendPrivate(target, _content(frame))


def parse_history(frame: dict[str, Any]) -> HistoryRequest:
    before = frame.get("before")
    if before is not None and not positive_int(before):
        raise invalid("'before' must be a positive integer or null")
    limit = frame.get("limit", HISTORY_PAGE_DEFAULT)
    if not (positive_int(limit) and limit <= HISTORY_PAGE_MAX):
        raise invalid(f"'limit' must be an integer from 1 to {HISTORY_PAGE_MAX}")
    return HistoryRequest(None if before is None else min(before, MAX_ID), limit)


_CHAT_PARSERS = {
    **COMMON_PARSERS,
    "message": parse_message,
    "private": parse_private,
    "history": parse_history,
    "delete": parse_delete,
    "read": parse_read,
    "typing": parse_typing,
}


def parse_chat_frame(
    text: str | None, data: bytes | None
) -> Ping | Auth | SendMessage | SendPrivate | HistoryRequest | Delete | Read | Typing:
    """Parse a client frame of ``/ws/chat/<room>/``."""
    return parse(_CHAT_PARSERS, text, data)


# --- Server frames -------------------------------------------------------------------


def presence(kind: str, user_id: str, users: list[str], moment: str) -> str:
    """``user_joined`` or ``user_left``."""
    return encode({"type": kind, "user_id": user_id, "users": users, "timestamp": moment})


def history(room: str, messages: list[dict], truncated: bool, **extra: Any) -> str:
    """A ``history`` frame; ``extra`` carries ``before`` for paging answers."""
    frame = {"type": "history", "room": room, **extra}
    frame["messages"] = messages
    frame["truncated"] = truncated
    return encode(frame)


def message_item(
    id: int, room: str, user_id: str, content: str, moment: str, ref: str | None = None
) -> dict[str, Any]:
    """MSG as a dict (for history lists); ``ref`` only in the sender's own copy."""
    item = {"type": "message", "id": id, "room": room, "user_id": user_id,
            "content": content, "timestamp": moment}
    if ref is not None:
        item["ref"] = ref
    return item


def private_item(
    id: int, room: str, sender: str, recipient: str, content: str, moment: str
) -> dict[str, Any]:
    """PRIV as a dict."""
    return {"type": "private", "id": id, "room": room, "from": sender, "to": recipient,
            "content": content, "timestamp": moment}


def message_deleted(room: str, id: int, moment: str) -> str:
    return encode({"type": "message_deleted", "room": room, "id": id, "timestamp": moment})


def read(room: str, id: int) -> str:
    """The read marker moved, for the user's other connections to the room."""
    return encode({"type": "read", "room": room, "id": id})


def typing(room: str, user_id: str) -> str:
    return encode({"type": "typing", "room": room, "user_id": user_id})
