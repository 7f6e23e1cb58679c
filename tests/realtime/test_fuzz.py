"""Fuzzing the frame parsers and live consumers with Hypothesis.

Whatever a client sends, the parsers (``chat.protocol``, ``realtime.protocol``)
either return one of their frame dataclasses, holding only values the contract
allows, or raise ``ProtocolError`` with a client error code; never another
exception. Live consumers answer every frame with an echo, a pong, or an
``error`` frame with a contract code.

Examples per run (``max_examples``): 600 + 600 + 300 + 300 for the parsers,
200 frame sequences (1 to 8 frames each) for live echo, 150 (1 to 6 frames) for
the live JSON endpoint, 300 strings for ``tokens.decode`` and 150 random
handshakes (query string, Authorization, Origin, Cookie): 2600 in all; the
counts of a run are printed at the end of this module. ``FUZZ_SCALE=10`` runs ten
times as many.
"""

import dataclasses
import json
import math
import os
from collections import Counter

import pytest
from channels.testing import WebsocketCommunicator
from django.test import override_settings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chat import protocol as chat_protocol
from chat.protocol import (
    MAX_CONTENT_CHARS,
    MAX_REF_CHARS,
    Delete,
    HistoryRequest,
    Read,
    SendMessage,
    SendPrivate,
    Typing,
)
from notifications.protocol import Ack
from notifications.protocol import parse_frame as parse_notification_frame
from project.asgi import application
from realtime import protocol
from realtime.protocol import (
    MAX_ID,
    Auth,
    ErrorCode,
    Ping,
    ProtocolError,
)

# FUZZ_SCALE=10 runs ten times as many examples (for a deeper look, not for CI).
SCALE = int(os.environ.get("FUZZ_SCALE", "1"))
CLIENT_CODES = {ErrorCode.INVALID_JSON, ErrorCode.INVALID_MESSAGE, ErrorCode.UNKNOWN_TYPE}
RUNS: Counter = Counter()

# Every code point, lone surrogates and NUL included.
any_char = st.characters(codec=None, exclude_categories=())
any_text = st.text(any_char, max_size=200)
odd_text = st.sampled_from(
    ["", " ", "\u00a0", "\u2028", "\x00", "\ud800", "\udfff", "a\ud83d", "\ufeff", "\u202e",
     "🎉", "é", "\u0301", "\U0010ffff", "\t\n\r", "x" * MAX_CONTENT_CHARS,
     "x" * (MAX_CONTENT_CHARS + 1), " " * 10, "\u3000", "ping"]
)
json_scalars = (
    st.none() | st.booleans() | st.integers() | st.integers(min_value=2**62, max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True) | any_text | odd_text
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(any_text | odd_text, inner,
                                                                 max_size=5),
    max_leaves=20,
)
TYPES = ["ping", "auth", "message", "private", "history", "ack", "delete", "read", "typing",
         "pong", "error", "", "MESSAGE", "message ", "__class__", "constructor"]
FIELDS = ["content", "ref", "target", "before", "limit", "ids", "id", "token", "type", "room"]


@st.composite
def frames(draw) -> dict:
    """A JSON object shaped like a client frame, with any values in its fields."""
    frame: dict = {}
    if draw(st.booleans()):
        frame["type"] = draw(st.sampled_from(TYPES) | any_text | json_values)
    for name in draw(st.lists(st.sampled_from(FIELDS), max_size=5, unique=True)):
        frame[name] = draw(json_values)
    if draw(st.booleans()):
        frame["ids"] = draw(st.lists(st.integers(min_value=-2, max_value=2**70) | json_scalars,
                                     max_size=10))
    return frame


def dumps(value, ascii_only: bool) -> str:
    return json.dumps(value, ensure_ascii=ascii_only, allow_nan=True)


@st.composite
def texts(draw) -> str:
    """Any text a client could send: JSON frames, broken JSON, deep nesting, noise."""
    kind = draw(st.integers(min_value=0, max_value=6))
    if kind == 0:
        return draw(any_text | odd_text)
    if kind == 1:
        return dumps(draw(frames()), draw(st.booleans()))
    if kind == 2:
        return dumps(draw(json_values), draw(st.booleans()))
    if kind == 3:  # a frame with a few characters cut out or inserted
        text = dumps(draw(frames()), draw(st.booleans()))
        at = draw(st.integers(min_value=0, max_value=len(text)))
        cut = draw(st.integers(min_value=0, max_value=5))
        return text[:at] + draw(st.text(any_char, max_size=3)) + text[at + cut:]
    if kind == 4:  # deep nesting, open or closed
        depth = draw(st.sampled_from([10, 1000, 100_000]))
        opener = draw(st.sampled_from(["[", '{"a":']))
        closer = "]" if opener == "[" else "}"
        return opener * depth + ("1" + closer * depth if draw(st.booleans()) else "")
    if kind == 5:  # huge numbers and odd literals in known fields
        number = draw(st.sampled_from(["1" * 5000, "-0", "1e999", "NaN", "-Infinity",
                                       "0.5", "1.0", "true", "9" * 20]))
        field = draw(st.sampled_from(["before", "limit", "ids", "content", "type"]))
        value = f"[{number}]" if field == "ids" else number
        frame_type = draw(st.sampled_from(TYPES))
        return '{"type":"' + frame_type + '","' + field + '":' + value + "}"
    content = dumps(draw(any_text | odd_text), draw(st.booleans()))
    ref = dumps(draw(any_text | odd_text | json_scalars), draw(st.booleans()))
    return '{"type":"message","content":' + content + ',"ref":' + ref + "}"


def clean_string(value: str) -> bool:
    """A string the server can store and send back in a UTF-8 frame."""
    if "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_parsed(frame) -> None:
    """A parsed frame holds only what the contract allows."""
    if isinstance(frame, Ping):
        return
    if isinstance(frame, Auth):
        assert isinstance(frame.token, str)
    elif isinstance(frame, SendMessage):
        assert isinstance(frame.content, str) and 1 <= len(frame.content) <= MAX_CONTENT_CHARS
        assert not frame.content.isspace() and clean_string(frame.content)
        assert frame.ref is None or (isinstance(frame.ref, str)
                                     and 1 <= len(frame.ref) <= MAX_REF_CHARS
                                     and clean_string(frame.ref))
    elif isinstance(frame, SendPrivate):
        assert isinstance(frame.target, str) and frame.target and clean_string(frame.target)
        assert 1 <= len(frame.content) <= MAX_CONTENT_CHARS and not frame.content.isspace()
        assert clean_string(frame.content)
    elif isinstance(frame, HistoryRequest):
        assert frame.before is None or (type(frame.before) is int
                                        and 1 <= frame.before <= MAX_ID)
        assert type(frame.limit) is int and 1 <= frame.limit <= chat_protocol.HISTORY_PAGE_MAX
    elif isinstance(frame, Ack):
        assert all(type(i) is int and 1 <= i <= MAX_ID for i in frame.ids)
    elif isinstance(frame, Delete | Read):
        assert type(frame.id) is int and 1 <= frame.id <= MAX_ID
    elif not isinstance(frame, Typing):
        raise AssertionError(f"unexpected result {frame!r}")
    assert dataclasses.is_dataclass(frame)


def parse_or_error(parser, text: str | None, data: bytes | None):
    try:
        frame = parser(text, data)
    except ProtocolError as exc:
        assert exc.code in CLIENT_CODES, exc.code
        assert isinstance(exc.message, str) and exc.message
        # The error frame itself must be sendable.
        json.loads(protocol.error(exc.code, exc.message))
        assert clean_string(protocol.error(exc.code, exc.message))
        return None
    check_parsed(frame)
    return frame


FUZZ = settings(max_examples=600 * SCALE, deadline=None)


@pytest.mark.once  # pure functions: the stack changes nothing
@FUZZ
@given(texts())
def test_chat_parser_never_raises_anything_else(text):
    """parse_chat_frame returns a valid chat frame or raises ProtocolError with a client code."""
    RUNS["parse_chat_frame"] += 1
    frame = parse_or_error(chat_protocol.parse_chat_frame, text, None)
    assert not isinstance(frame, Ack)


@pytest.mark.once  # pure functions: the stack changes nothing
@FUZZ
@given(texts())
def test_notification_parser_never_raises_anything_else(text):
    """parse_notification_frame returns ping/auth/ack or raises ProtocolError with a client code."""
    RUNS["parse_notification_frame"] += 1
    frame = parse_or_error(parse_notification_frame, text, None)
    assert frame is None or isinstance(frame, Ping | Auth | Ack)


@pytest.mark.once  # pure functions: the stack changes nothing
@settings(max_examples=300 * SCALE, deadline=None)
@given(texts())
def test_load_frame_gives_a_dict_with_a_string_type_or_protocol_error(text):
    """load_frame returns a dict with a string 'type' or raises ProtocolError."""
    RUNS["load_frame"] += 1
    try:
        frame = protocol.load_frame(text, None)
    except ProtocolError as exc:
        assert exc.code in (ErrorCode.INVALID_JSON, ErrorCode.INVALID_MESSAGE)
        return
    assert isinstance(frame, dict) and isinstance(frame["type"], str)


@pytest.mark.once  # pure functions: the stack changes nothing
@settings(max_examples=300 * SCALE, deadline=None)
@given(st.binary(max_size=300))
def test_binary_frames_are_invalid_message_on_json_endpoints(data):
    """A binary frame on a JSON endpoint is invalid_message, whatever it holds."""
    RUNS["binary"] += 1
    for parser in (chat_protocol.parse_chat_frame, parse_notification_frame):
        with pytest.raises(ProtocolError) as info:
            parser(None, data)
        assert info.value.code == ErrorCode.INVALID_MESSAGE


def test_known_tricky_frames():
    """Hand-picked frames: the edges the generators might miss."""
    cases = {
        '{"type":"history","before":1e400}': ErrorCode.INVALID_MESSAGE,
        '{"type":"history","before":true}': ErrorCode.INVALID_MESSAGE,
        '{"type":"history","limit":100.0}': ErrorCode.INVALID_MESSAGE,
        '{"type":"message","content":"\\ud800"}': ErrorCode.INVALID_MESSAGE,
        '{"type":"message","content":"a\\u0000b"}': ErrorCode.INVALID_MESSAGE,
        '{"type":"message","content":"ok","ref":"\\udfff"}': ErrorCode.INVALID_MESSAGE,
        '{"type":"private","target":"\\u0000","content":"x"}': ErrorCode.INVALID_MESSAGE,
        '{"type":"\\ud800"}': ErrorCode.UNKNOWN_TYPE,
        "[" * 100_000: ErrorCode.INVALID_JSON,
        '{"type":"x","n":' + "1" * 5000 + "}": ErrorCode.INVALID_JSON,
        "\ud800": ErrorCode.INVALID_JSON,
    }
    for text, code in cases.items():
        with pytest.raises(ProtocolError) as info:
            chat_protocol.parse_chat_frame(text, None)
        assert info.value.code == code, text[:60]
    with pytest.raises(ProtocolError) as info:
        parse_notification_frame('{"type":"ack","ids":[1,true]}', None)
    assert info.value.code == ErrorCode.INVALID_MESSAGE
    assert chat_protocol.parse_chat_frame('{"type":"history","before":' + "9" * 30 + "}",
                                     None) == HistoryRequest(MAX_ID, 50)
    assert parse_notification_frame('{"type":"ack","ids":[' + "9" * 30 + ",3]}",
                                             None) == Ack((3,))
    assert not math.isnan(0.0)


# --- Live consumers ----------------------------------------------------------------------


LIVE = settings(max_examples=200 * SCALE, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


def live_text(limit: int):
    """Text frames for a live connection (valid Unicode, as daphne delivers)."""
    return texts().filter(clean_string).filter(lambda t: len(t.encode()) <= limit)


@override_settings(WS_RATE_LIMIT=0)
@LIVE
@given(st.lists(live_text(65536) | st.binary(min_size=1, max_size=500), min_size=1,
                max_size=8))
async def test_live_echo_answers_every_frame_exactly(frames_sent):
    """Echo sends back every text frame prefixed and every binary frame as is, in order."""
    RUNS["live echo sequences"] += 1
    comm = WebsocketCommunicator(application, "/ws/echo/")
    connected, _ = await comm.connect()
    assert connected
    for frame in frames_sent:
        key = "text" if isinstance(frame, str) else "bytes"
        await comm.send_input({"type": "websocket.receive", key: frame})
    for frame in frames_sent:
        output = await comm.receive_output(timeout=5)
        if isinstance(frame, str):
            assert output == {"type": "websocket.send", "text": "Echo: " + frame}
        else:
            assert output == {"type": "websocket.send", "bytes": frame}
    await comm.disconnect()


@pytest.fixture
def fuzz_user(make_user, token_for) -> str:
    """The token of a user that lives for the whole live JSON fuzz test."""
    make_user("fuzzer")
    return token_for("fuzzer")


@override_settings(WS_RATE_LIMIT=0)
@settings(max_examples=150 * SCALE, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.lists(live_text(65536), min_size=1, max_size=6))
async def test_live_json_endpoint_answers_every_frame_with_a_contract_frame(fuzz_user,
                                                                            frames_sent):
    """On a JSON endpoint each frame gets a pong, auth answer, or a client-code error."""
    from tests.realtime.support import communicator

    RUNS["live JSON sequences"] += 1
    comm = communicator(f"/ws/test/?token={fuzz_user}")
    connected, _ = await comm.connect()
    assert connected
    hello = await comm.receive_output(timeout=5)
    assert json.loads(hello["text"])["type"] == "hello"
    expected_answers = 0
    for text in frames_sent:
        await comm.send_input({"type": "websocket.receive", "text": text})
        try:
            frame = parse_notification_frame(text, None)
        except ProtocolError:
            frame = None
        expected_answers += 0 if isinstance(frame, Ack) else 1
    for _ in range(expected_answers):
        output = await comm.receive_output(timeout=5)
        assert output["type"] == "websocket.send", output
        answer = json.loads(output["text"])
        if answer["type"] == "error":
            assert answer["code"] in CLIENT_CODES | {ErrorCode.INVALID_TOKEN}, answer
        else:
            assert answer["type"] in ("pong", "auth_ok"), answer
    assert await comm.receive_nothing(timeout=0.01)
    await comm.disconnect()


# --- Credentials and handshakes ----------------------------------------------------------


@pytest.mark.once  # pure functions: the stack changes nothing
@settings(max_examples=300 * SCALE, deadline=None)
@given(st.text(any_char, max_size=300) | st.builds(
    lambda parts: ".".join(parts), st.lists(st.text("abcxyzAZ09-_=+/", max_size=60),
                                            min_size=1, max_size=5)))
def test_token_decoding_only_raises_token_errors(text):
    """tokens.decode of any string returns claims or raises ExpiredToken/InvalidToken."""
    from realtime import tokens

    RUNS["tokens.decode"] += 1
    try:
        claims = tokens.decode(text)
    except tokens.TokenError:
        return
    raise AssertionError(f"a random string decoded: {claims!r}")


header_bytes = st.binary(max_size=120) | st.sampled_from(
    [b"Bearer ", b"Bearer x.y.z", b"bearer\t", b"Basic ", b"", b"null", b"http://[::1",
     b"http://localhost", b"http://evil.example", b"\xff\xfe", b"Bearer \xff"])


@settings(max_examples=150 * SCALE, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(query=st.binary(max_size=120), authorization=st.none() | header_bytes,
       origin=st.none() | header_bytes, cookie=st.none() | header_bytes)
async def test_any_handshake_gets_a_contract_outcome(transactional_db, query, authorization,
                                                     origin, cookie):
    """Random query strings and headers end in a refusal or a 4001/4002/4003 close, no crash."""
    from tests.realtime.support import authed_application

    RUNS["handshakes"] += 1
    headers = [(name, value) for name, value in
               ((b"authorization", authorization), (b"origin", origin), (b"cookie", cookie))
               if value is not None]
    comm = WebsocketCommunicator(authed_application, "/ws/test/", headers=headers)
    comm.scope["query_string"] = query
    connected, _ = await comm.connect(timeout=5)
    if connected:
        output = await comm.receive_output(timeout=5)
        assert output["type"] == "websocket.close" and output["code"] in (4001, 4002, 4003)
    else:
        assert origin is not None  # only the origin check refuses a handshake
    await comm.disconnect()


@pytest.mark.once  # it counts the pure fuzzers too, which run in the embedded pass only
def test_fuzzers_really_ran(capsys):
    """Each fuzz test above ran many examples (when run together); prints the counts."""
    if len(RUNS) < 8:
        pytest.skip("only meaningful when the whole module runs")
    assert all(count >= 100 for count in RUNS.values()), RUNS
    total = sum(RUNS.values())
    line = f"fuzz examples run: {total} (" + ", ".join(f"{k}: {v}" for k, v in RUNS.items()) + ")"
    with capsys.disabled():
        print("\n" + line)
