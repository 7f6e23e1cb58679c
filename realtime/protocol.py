"""The wire contract of ``../shared/PROTOCOL.md``: close codes, error codes, frames.

Every frame the server sends is built here, and every frame a client sends is
parsed and validated here, so consumers only dispatch on the parsed result.
Parsing raises :class:`ProtocolError`, which the consumer turns into an
``error`` frame; it never closes a connection by itself.
"""

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import IntEnum, StrEnum
from typing import Any


class CloseCode(IntEnum):
    """Application close codes (daphne can only send 1000 and 3000-4999)."""

    TOKEN_EXPIRED = 4001
    INVALID_CREDENTIALS = 4002
    NO_CREDENTIALS = 4003
    RATE_LIMITED = 4008
    MESSAGE_TOO_BIG = 4009
    # Not in PROTOCOL.md: the client stopped reading and its backlog reached
    # WS_MAX_SEND_BUFFER_BYTES.
    SLOW_CONSUMER = 4010
    TOO_MANY_CONNECTIONS = 4013


class ErrorCode(StrEnum):
    """Codes of the ``error`` frame."""

    INVALID_JSON = "invalid_json"
    INVALID_MESSAGE = "invalid_message"
    UNKNOWN_TYPE = "unknown_type"
    NOT_IN_ROOM = "not_in_room"
    INVALID_TOKEN = "invalid_token"
    RATE_LIMITED = "rate_limited"
    # Not a client mistake: the database or channel layer failed; nothing was stored
    # (or, for a stored message, it is in history and comes back through ?since=).
    UNAVAILABLE = "unavailable"


class ProtocolError(Exception):
    """A client frame the server cannot use; becomes an ``error`` frame."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# Fixed limits of the contract (the configurable ones live in settings).
ROOM_PATTERN = r"[A-Za-z0-9_-]{1,64}"
MAX_CONTENT_CHARS = 4000
MAX_REF_CHARS = 64
HISTORY_ON_JOIN = 50
HISTORY_SINCE_MAX = 1000
HISTORY_PAGE_DEFAULT = 50
HISTORY_PAGE_MAX = 100
API_MAX_BODY_BYTES = 65536
# Ids are stored as 64-bit integers; larger cursors mean "beyond every id".
MAX_ID = 2**63 - 1

_ROOM_RE = re.compile(ROOM_PATTERN)
_DECIMAL_RE = re.compile(r"[0-9]+")


# --- Encoding ------------------------------------------------------------------


#: ``json.dumps`` with these options builds a new encoder on every call.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def encode(frame: dict[str, Any]) -> str:
    """Serialise a frame once, compactly; every member gets these same bytes."""
    return _ENCODER.encode(frame)


def timestamp(moment: datetime) -> str:
    """ISO 8601 in UTC with a ``Z``."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def now_timestamp() -> str:
    return timestamp(datetime.now(UTC))


PONG = encode({"type": "pong"})


def error(code: ErrorCode, message: str) -> str:
    return encode({"type": "error", "code": str(code), "message": message})


# --- Parsing helpers -------------------------------------------------------------


def is_room_name(name: str) -> bool:
    return bool(_ROOM_RE.fullmatch(name))


def parse_cursor(value: str) -> int:
    """A query cursor: a plain decimal integer >= 0 (``ValueError`` otherwise)."""
    if not _DECIMAL_RE.fullmatch(value):
        raise ValueError(f"not a plain decimal integer: {value!r}")
    return min(int(value), MAX_ID)


def parse_limit(value: str) -> int:
    limit = parse_cursor(value)
    if not 1 <= limit <= HISTORY_PAGE_MAX:
        raise ValueError(f"limit must be 1..{HISTORY_PAGE_MAX}")
    return limit


def load_frame(text: str | None, data: bytes | None) -> dict[str, Any]:
    """Decode a client frame into a dict with a string ``type``.

    The plain text ``ping`` is accepted as ``{"type": "ping"}``.
    """
    if text is None:
        raise ProtocolError(
            ErrorCode.INVALID_MESSAGE, "binary frames are not accepted on this endpoint"
        )
    if text == "ping":
        return {"type": "ping"}
    try:
        frame = json.loads(text)
    except (ValueError, RecursionError):
        raise ProtocolError(ErrorCode.INVALID_JSON, "frame is not valid JSON") from None
    if not isinstance(frame, dict):
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, "frame must be a JSON object")
    if not isinstance(frame.get("type"), str):
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, "frame needs a string 'type'")
    return frame


def _invalid(message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.INVALID_MESSAGE, message)


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def storable(text: str) -> bool:
    """Whether ``text`` can be stored by every supported database.

    PostgreSQL refuses NUL characters, and no database can encode a lone
    surrogate (which JSON's ``\\ud800`` escapes can produce) as UTF-8.
    """
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _content(frame: dict[str, Any]) -> str:
    content = frame.get("content")
    if not isinstance(content, str):
        raise _invalid("'content' must be a string")
    if not storable(content):
        raise _invalid("'content' must not contain NUL characters or lone surrogates")
    if not 1 <= len(content) <= MAX_CONTENT_CHARS:
        raise _invalid(f"'content' must be 1 to {MAX_CONTENT_CHARS} characters")
    if content.isspace():
        raise _invalid("'content' must not be only spaces")
    return content


# --- Client frames -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ping:
    pass


@dataclass(frozen=True, slots=True)
class Auth:
    token: str


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
class Ack:
    ids: tuple[int, ...]


def parse_auth(frame: dict[str, Any]) -> Auth:
    token = frame.get("token")
    if not isinstance(token, str):
        raise _invalid("'token' must be a string")
    return Auth(token)


def parse_message(frame: dict[str, Any]) -> SendMessage:
    ref = frame.get("ref")
    if ref is not None and not (
        isinstance(ref, str) and 1 <= len(ref) <= MAX_REF_CHARS and storable(ref)
    ):
        raise _invalid(f"'ref' must be a string of 1 to {MAX_REF_CHARS} characters")
    return SendMessage(_content(frame), ref)


def parse_private(frame: dict[str, Any]) -> SendPrivate:
    target = frame.get("target")
    if not isinstance(target, str) or not target or not storable(target):
        raise _invalid("'target' must be a non-empty string")
    return SendPrivate(target, _content(frame))


def parse_history(frame: dict[str, Any]) -> HistoryRequest:
    before = frame.get("before")
    if before is not None and not _positive_int(before):
        raise _invalid("'before' must be a positive integer or null")
    limit = frame.get("limit", HISTORY_PAGE_DEFAULT)
    if not (_positive_int(limit) and limit <= HISTORY_PAGE_MAX):
        raise _invalid(f"'limit' must be an integer from 1 to {HISTORY_PAGE_MAX}")
    return HistoryRequest(None if before is None else min(before, MAX_ID), limit)


def parse_ack(frame: dict[str, Any]) -> Ack:
    ids = frame.get("ids")
    if not isinstance(ids, list) or not all(_positive_int(i) for i in ids):
        raise _invalid("'ids' must be a list of positive integers")
    return Ack(tuple(i for i in ids if i <= MAX_ID))


_CHAT_PARSERS = {
    "ping": lambda frame: Ping(),
    "auth": parse_auth,
    "message": parse_message,
    "private": parse_private,
    "history": parse_history,
}
_NOTIFICATION_PARSERS = {
    "ping": lambda frame: Ping(),
    "auth": parse_auth,
    "ack": parse_ack,
}


def _parse(parsers: dict, text: str | None, data: bytes | None) -> Any:
    frame = load_frame(text, data)
    parser = parsers.get(frame["type"])
    if parser is None:
        raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown frame type {frame['type']!r}")
    return parser(frame)


def parse_chat_frame(
    text: str | None, data: bytes | None
) -> Ping | Auth | SendMessage | SendPrivate | HistoryRequest:
    """Parse a client frame of ``/ws/chat/<room>/``."""
    return _parse(_CHAT_PARSERS, text, data)


def parse_notification_frame(text: str | None, data: bytes | None) -> Ping | Auth | Ack:
    """Parse a client frame of ``/ws/notifications/``."""
    return _parse(_NOTIFICATION_PARSERS, text, data)


# --- Server frames -------------------------------------------------------------------


def auth_ok(expires_at: datetime) -> str:
    return encode({"type": "auth_ok", "expires_at": timestamp(expires_at)})


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
