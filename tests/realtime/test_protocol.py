"""``realtime.protocol``: a client's deep JSON never runs other connections' finalizers
at the bottom of the parser's recursion.

Python's JSON decoder recurses once per level of nesting. A garbage collection that
starts inside a parse near the recursion limit calls the finalizers of whatever
garbage it finds (a coroutine's ``finally``, an async generator's cleanup) at that
depth, where each fails with ``RecursionError`` and is skipped. Each place that
parses a client's JSON (a frame, an API body, a token's header) parses a long text
with the collector paused (:func:`realtime.protocol.untrusted_json`).
"""

import base64
import gc
import sys
from collections.abc import Callable

import pytest

from realtime import api, protocol, tokens

#: A text that nests past the recursion limit; every parser gives up at the limit.
TOO_DEEP_FOR_PYTHON = "[" * 5000


def recurse(levels: int) -> int:
    return 0 if levels == 0 else 1 + recurse(levels - 1)


class Finalized:
    """Garbage in a reference cycle whose finalizer needs 500 frames of stack."""

    def __init__(self, ran: list[int]) -> None:
        self.ran = ran
        self.me = self

    def __del__(self) -> None:
        self.ran.append(recurse(500))


def runs_no_finalizer_inside(parse: Callable[[], object], error: type[Exception],
                             monkeypatch) -> None:
    """``parse`` refuses its text with ``error``, and runs no finalizer in its recursion.

    Before it, a cycle with a finalizer becomes garbage and a collection is made due
    600 allocations on: at a depth of 600 in a parse, where 500 more frames pass the
    recursion limit (1000). After it, the collector runs at the test's own depth,
    and the finalizer must have run there, once, without an error.
    """
    failed = []
    monkeypatch.setattr(sys, "unraisablehook", failed.append)
    ran: list[int] = []
    threshold = gc.get_threshold()
    gc.collect()
    gc.disable()
    try:
        Finalized(ran)
        gc.set_threshold(600)
    finally:
        gc.enable()
    try:
        with pytest.raises(error):
            parse()
    finally:
        gc.set_threshold(*threshold)
    gc.collect()
    assert [type(report.exc_value) for report in failed] == []
    assert ran == [500]


def test_a_frame_too_deep_to_parse_runs_no_finalizer_inside(monkeypatch):
    runs_no_finalizer_inside(lambda: protocol.load_frame(TOO_DEEP_FOR_PYTHON, None),
                             protocol.ProtocolError, monkeypatch)


def test_an_api_body_too_deep_to_parse_runs_no_finalizer_inside(monkeypatch):
    runs_no_finalizer_inside(lambda: api.parse_json_object(TOO_DEEP_FOR_PYTHON.encode()),
                             api.ApiError, monkeypatch)


def test_a_token_header_too_deep_to_parse_runs_no_finalizer_inside(monkeypatch):
    header = base64.urlsafe_b64encode(TOO_DEEP_FOR_PYTHON.encode()).decode().rstrip("=")
    runs_no_finalizer_inside(lambda: tokens.decode(f"{header}.e30.c2ln"),
                             tokens.InvalidToken, monkeypatch)


def test_a_short_text_parses_with_the_collector_on():
    """Short texts (every frame a client normally sends) pay for no pause."""
    with protocol.untrusted_json("x" * (protocol.DEEP_JSON_CHARS - 1)):
        assert gc.isenabled()
    with protocol.untrusted_json("x" * protocol.DEEP_JSON_CHARS):
        assert not gc.isenabled()
    assert gc.isenabled()


def test_the_collector_stays_off_if_it_was_off():
    gc.disable()
    try:
        with protocol.untrusted_json("x" * protocol.DEEP_JSON_CHARS):
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
