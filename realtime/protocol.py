"""What every endpoint of ``../shared/PROTOCOL.md`` shares: close codes, error
codes, encoding, the ``ping``/``auth``/``error`` frames and the parsing helpers.

Each app builds and parses its own frames with these (``chat.protocol``,
``notifications``), so consumers only dispatch on the parsed result. Parsing
raises :class:`ProtocolError`, which the consumer turns into an ``error``
frame; it never closes a connection by itself.
"""

import contextlib
import gc
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import IntEnum, StrEnum
from math import isfinite
from typing import Any


class CloseCode(IntEnum):
    """Application close codes (daphne can only send 1000 and 3000-4999)."""

    TOKEN_EXPIRED = 4001
    INVALID_CREDENTIALS = 4002
    NO_CREDENTIALS = 4003
    # A room the user may not see (private and not a member, or banned), or no longer.
    NOT_FOUND = 4004
    RATE_LIMITED = 4008
    MESSAGE_TOO_BIG = 4009
    # Not in PROTOCOL.md: the client stopped reading and its backlog reached
    # WS_MAX_SEND_BUFFER_BYTES.
    SLOW_CONSUMER = 4010
    # The process stops gracefully (SIGTERM): PROTOCOL.md's "server restarting".
    SERVER_RESTARTING = 4012
    # 1013, "try again later": over a connection cap, or (not in PROTOCOL.md) the
    # database could not authenticate the handshake.
    TOO_MANY_CONNECTIONS = 4013


class ErrorCode(StrEnum):
    """Codes of the ``error`` frame."""

    INVALID_JSON = "invalid_json"
    INVALID_MESSAGE = "invalid_message"
    UNKNOWN_TYPE = "unknown_type"
    NOT_IN_ROOM = "not_in_room"
    INVALID_TOKEN = "invalid_token"
    RATE_LIMITED = "rate_limited"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
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
API_MAX_BODY_BYTES = 65536
#: How deeply objects and arrays may nest in an API body (the body itself is level 1).
#: Far below the interpreter's recursion limit (1000), which the C JSON encoder and
#: decoder count against: a body the parser takes must also encode into a NOTE
#: frame from any stack depth, and SQLite's JSON functions stop at 1000 levels.
API_MAX_JSON_DEPTH = 64
# Ids are stored as 64-bit integers; larger cursors mean "beyond every id".
MAX_ID = 2**63 - 1

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


def parse_cursor(value: str) -> int:
    """A query cursor: a plain decimal integer >= 0 (``ValueError`` otherwise)."""
    if not _DECIMAL_RE.fullmatch(value):
        raise ValueError(f"not a plain decimal integer: {value!r}")
    return min(int(value), MAX_ID)


def parse_limit(value: str, maximum: int) -> int:
    """A query page size: a plain decimal integer from 1 to ``maximum``."""
    limit = parse_cursor(value)
    if not 1 <= limit <= maximum:
        raise ValueError(f"limit must be 1..{maximum}")
    return limit


#: A JSON text shorter than this nests less than half the recursion limit (1000) deep.
DEEP_JSON_CHARS = 500


@contextlib.contextmanager
def untrusted_json(text: str | bytes) -> Iterator[None]:
    """Parse a client's ``text`` in this block with the cyclic collector paused if it
    could nest deep.

    Python's JSON decoder recurses once per level of nesting. A collection that
    starts inside a parse near the recursion limit calls the finalizers of the
    garbage it finds, whichever connection that garbage was (a coroutine's
    ``finally``, an async generator's cleanup), at that depth: each fails with
    ``RecursionError`` and is skipped. The block only parses, so a pause of the
    collector there defers a collection by one parse; a short text cannot nest
    deep enough to matter, and pays nothing.
    """
    if len(text) < DEEP_JSON_CHARS or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


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
        with untrusted_json(text):
            frame = json.loads(text)
    except (ValueError, RecursionError):
        raise ProtocolError(ErrorCode.INVALID_JSON, "frame is not valid JSON") from None
    if not isinstance(frame, dict):
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, "frame must be a JSON object")
    if not isinstance(frame.get("type"), str):
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, "frame needs a string 'type'")
    return frame


def invalid(message: str) -> ProtocolError:
    """The error of a frame whose fields break the contract."""
    return ProtocolError(ErrorCode.INVALID_MESSAGE, message)


def positive_int(value: Any) -> bool:
    """Whether a JSON value is an integer above 0 (``true`` is not)."""
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


#: Why :func:`json_problem` refuses a value (the ``message`` of an API's ``invalid_body``).
UNSTORABLE_STRING = "strings must be valid Unicode without NUL characters"
NOT_FINITE = "numbers must be finite: no NaN, Infinity or values beyond a double (1e400)"
TOO_DEEP = f"objects and arrays may nest at most {API_MAX_JSON_DEPTH} levels"


def json_problem(value: Any) -> str | None:
    """Why a JSON value could not be stored and sent as it is, else ``None``.

    Refused: objects and arrays nested deeper than :data:`API_MAX_JSON_DEPTH`
    (:func:`too_deep`), a string (keys too) that is not :func:`storable`, a
    float that is NaN or infinite (no database's JSON holds one, and the frame
    would not be JSON). Other types are left to the encoder.
    """
    if too_deep(value):
        return TOO_DEEP
    return leaf_problem(value, floats=True)


def too_deep(value: Any) -> bool:
    """Whether objects and arrays nest deeper than :data:`API_MAX_JSON_DEPTH` in ``value``.

    ``value`` itself is level 1. Level by level, without recursion, looking
    only at containers, and never further down than the limit.
    """
    level = [value] if isinstance(value, _CONTAINERS) else []
    for _ in range(API_MAX_JSON_DEPTH):
        below: list = []
        for item in level:
            below.extend([child for child in (item.values() if isinstance(item, dict) else item)
                          if isinstance(child, _CONTAINERS)])
        if not below:
            return False
        level = below
    return True


_CONTAINERS = (dict, list, tuple)


def leaf_problem(value: Any, *, floats: bool = False) -> str | None:
    """Why a string (keys too) in a JSON value is not :func:`storable`, else ``None``.

    With ``floats``, a float that is not finite is a problem too (parsed
    bodies have none: the API's parser refuses them). JSON escapes allow lone
    surrogates and NUL: PostgreSQL refuses both (text and jsonb), and a lone
    surrogate cannot be encoded into a UTF-8 WebSocket frame.
    """
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if not storable(item):
                return UNSTORABLE_STRING
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
        elif floats and isinstance(item, float) and not isfinite(item):
            return NOT_FINITE
    return None


# --- Client frames -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ping:
    pass


@dataclass(frozen=True, slots=True)
class Auth:
    token: str


def parse_auth(frame: dict[str, Any]) -> Auth:
    token = frame.get("token")
    if not isinstance(token, str):
        raise invalid("'token' must be a string")
    return Auth(token)


#: The parsers of the frames every endpoint takes, for an endpoint's own table.
COMMON_PARSERS = {
    "ping": lambda frame: Ping(),
    "auth": parse_auth,
}


def parse(parsers: dict, text: str | None, data: bytes | None) -> Any:
    """Load a client frame and hand it to the parser of its ``type``."""
    frame = load_frame(text, data)
    parser = parsers.get(frame["type"])
    if parser is None:
        raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown frame type {frame['type']!r}")
    return parser(frame)


# --- Server frames -------------------------------------------------------------------


def auth_ok(expires_at: datetime) -> str:
    return encode({"type": "auth_ok", "expires_at": timestamp(expires_at)})
