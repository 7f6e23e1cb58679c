"""``manage.py serve``: the daphne options derived from the settings."""

import gc
import io
import os
import shutil
import subprocess
import sys

import pytest
from django.core.management import call_command
from django.test import override_settings

from realtime import servers
from realtime.management.commands import serve
from realtime.management.commands.serve import HARD_CEILING_WITHOUT_LIMIT, daphne_arguments
from realtime.servers.daphne import (
    plain_autobahn_log_arguments,
    read_short_messages_directly,
    skip_debug_log_arguments_of_new_connections,
    skip_debug_log_arguments_of_reads,
    skip_twisted_form_parsing,
    skip_unobserved_message_events,
    unmask,
)
from tests.conftest import IN_CI, ROOT
from tests.realtime.frames import BINARY, TEXT, frame


def option(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


@override_settings(WS_MAX_MESSAGE_BYTES=1000)
def test_daphne_ceiling_is_four_times_the_message_limit():
    """daphne's message and frame ceilings sit at 4x WS_MAX_MESSAGE_BYTES."""
    args = daphne_arguments("127.0.0.1", 8123)
    assert option(args, "--websocket-max-message-size") == "4000"
    assert option(args, "--websocket-max-frame-size") == "4000"
    assert option(args, "-e").startswith("tcp:port=8123:interface=127.0.0.1:")
    assert args[-1] == "project.asgi:application"


@override_settings(WS_MAX_MESSAGE_BYTES=0)
def test_no_message_limit_still_leaves_daphne_a_ceiling():
    """With the application limit off, daphne keeps a hard 16 MiB ceiling, never none."""
    args = daphne_arguments("127.0.0.1", 8000)
    assert option(args, "--websocket-max-message-size") == str(HARD_CEILING_WITHOUT_LIMIT)
    assert HARD_CEILING_WITHOUT_LIMIT == 16 * 1024 * 1024


@override_settings(PROXY_HEADERS=False)
def test_proxy_headers_are_off_by_default():
    """Without PROXY_HEADERS daphne does not trust X-Forwarded-For."""
    assert "--proxy-headers" not in daphne_arguments("127.0.0.1", 8000)


@override_settings(PROXY_HEADERS=True, WS_TIMEOUT=0, WS_PING_INTERVAL=7, WS_PING_TIMEOUT=9,
                   WS_CONNECT_TIMEOUT=33)
def test_proxy_headers_pings_and_timeout_follow_the_settings():
    """PROXY_HEADERS adds --proxy-headers; pings follow the settings; WS_TIMEOUT=0 is -1."""
    args = daphne_arguments("0.0.0.0", 8000)
    assert "--proxy-headers" in args
    assert option(args, "--ping-interval") == "7" and option(args, "--ping-timeout") == "9"
    assert option(args, "--websocket_timeout") == "-1"
    assert option(args, "--websocket_connect_timeout") == "33"


@override_settings(LISTEN_BACKLOG=4096)
def test_the_listen_backlog_follows_the_setting():
    """daphne listens with LISTEN_BACKLOG queued connections (Twisted's own is 50)."""
    assert option(daphne_arguments("127.0.0.1", 8000), "-e") == (
        "tcp:port=8000:interface=127.0.0.1:backlog=4096")
    assert option(daphne_arguments("::1", 8000), "-e") == (
        r"tcp:port=8000:interface=\:\:1:backlog=4096")


@pytest.mark.daphne
def test_daphne_listens_with_that_backlog(daphne_server):
    """A real ``manage.py serve`` socket has LISTEN_BACKLOG in its accept queue's limit."""
    if shutil.which("ss") is None:
        if IN_CI:
            pytest.fail("CI: the backlog check needs iproute2's ss")
        pytest.skip("iproute2's ss is not installed")
    server = daphne_server(LISTEN_BACKLOG="1234")
    listening = subprocess.run(["ss", "-Hltn", f"sport = :{server.port}"], capture_output=True,
                               text=True, check=True).stdout.split()
    assert listening[2] == "1234"  # State Recv-Q Send-Q: Send-Q is the backlog


@pytest.mark.parametrize("patched", [True, False])
def test_serve_spaces_full_collections_only_with_the_daphne_patches(
        monkeypatch, gc_thresholds, patched):
    """With the daphne adapter on (closed sockets need no collector), a full collection
    comes every GC_THRESHOLD2 middle-generation ones; with it off, Python's thresholds stay."""
    monkeypatch.setattr(servers, "prepare_daphne", lambda: patched)
    monkeypatch.setattr(serve.CommandLineInterface, "run", lambda self, argv: None)
    gc.set_threshold(700, 10, 10)
    with override_settings(GC_THRESHOLD2=1234):
        call_command("serve", port=8123, stdout=io.StringIO())
    assert gc.get_threshold() == ((700, 10, 1234) if patched else (700, 10, 10))


def test_serve_leaves_what_startup_made_out_of_later_collections(monkeypatch, gc_thresholds):
    """Django, the libraries and the application, built before daphne runs, are frozen: a
    full collection then walks only what the server made since (its connections)."""
    monkeypatch.setattr(servers, "prepare_daphne", lambda: True)
    monkeypatch.setattr(serve.CommandLineInterface, "run", lambda self, argv: None)
    gc.unfreeze()
    call_command("serve", port=8123, stdout=io.StringIO())
    assert "project.asgi" in sys.modules
    assert gc.get_freeze_count() > 10_000


@override_settings(GC_THRESHOLD2=0)
def test_zero_keeps_pythons_thresholds(gc_thresholds):
    gc.set_threshold(700, 10, 10)
    servers.space_full_collections()
    assert gc.get_threshold() == (700, 10, 10)


def test_autobahn_log_arguments_are_plain_text(monkeypatch):
    """Nothing is coloured per frame, whether or not click is installed."""
    import autobahn.util

    monkeypatch.setattr(autobahn.util, "_HAS_CLICK", True)
    plain_autobahn_log_arguments()
    assert autobahn.util.hl("peer") == "peer"


def reading(protocol_class, debug_on: bool):
    """A connection of ``protocol_class`` that records what reaches autobahn's reader."""
    import txaio

    connection = protocol_class.__new__(protocol_class)
    connection.log = txaio.make_logger()
    connection.log._set_log_level("debug" if debug_on else "info")
    connection.peer = "tcp:127.0.0.1:5"
    connection.read = []
    connection._dataReceived = connection.read.append
    return connection


@pytest.mark.parametrize("debug_on", [False, True])
def test_a_read_reaches_autobahn_whether_or_not_debug_is_on(monkeypatch, debug_on):
    """With debug off the read skips the log call's arguments; with it on autobahn's
    own dataReceived logs it. Either way the bytes reach autobahn's reader."""
    import autobahn.util
    from daphne.ws_protocol import WebSocketProtocol

    monkeypatch.setattr(WebSocketProtocol, "dataReceived", WebSocketProtocol.dataReceived)
    skip_debug_log_arguments_of_reads()
    patched = WebSocketProtocol.dataReceived
    skip_debug_log_arguments_of_reads()
    assert WebSocketProtocol.dataReceived is patched and patched.skips_debug_arguments
    built = []
    original_hltype = autobahn.util.hltype
    monkeypatch.setattr("autobahn.twisted.websocket.hltype",
                        lambda obj: built.append(obj) or original_hltype(obj))
    connection = reading(WebSocketProtocol, debug_on)
    connection.dataReceived(b"\x81\x80")
    assert connection.read == [b"\x81\x80"]
    assert bool(built) is debug_on, "the debug arguments are built only with debug on"


@pytest.mark.parametrize("debug_on", [False, True])
def test_a_new_connection_is_set_up_whether_or_not_debug_is_on(monkeypatch, debug_on):
    """With debug off a new connection skips pretty-printing its options for the debug
    log; with it on autobahn formats them. Either way autobahn sets the connection up
    from its factory, and its module's pformat is its own again afterwards."""
    import autobahn.websocket.protocol
    import txaio
    from autobahn.twisted.websocket import WebSocketServerFactory
    from daphne.ws_protocol import WebSocketProtocol

    formatted = []
    real = autobahn.websocket.protocol.pformat

    def pformat(obj, *args, **kwargs):
        formatted.append(obj)
        return real(obj, *args, **kwargs)

    monkeypatch.setattr(autobahn.websocket.protocol, "pformat", pformat)
    monkeypatch.setattr(WebSocketProtocol, "_connectionMade", WebSocketProtocol._connectionMade)
    skip_debug_log_arguments_of_new_connections()
    patched = WebSocketProtocol._connectionMade
    skip_debug_log_arguments_of_new_connections()
    assert WebSocketProtocol._connectionMade is patched and patched.skips_debug_arguments
    factory = WebSocketServerFactory()
    factory.setProtocolOptions(autoPingInterval=7)
    connection = WebSocketProtocol.__new__(WebSocketProtocol)
    connection.factory = factory
    connection.log = txaio.make_logger()
    connection.log._set_log_level("debug" if debug_on else "info")
    connection._connectionMade()
    assert connection.state == WebSocketProtocol.STATE_CONNECTING
    assert connection.autoPingInterval == 7 and connection._perMessageCompress is None
    assert bool(formatted) is debug_on, "the options are formatted only with debug on"
    assert autobahn.websocket.protocol.pformat is pformat


def test_the_access_log_is_on_unless_turned_off():
    """ACCESS_LOG=false runs daphne at verbosity 0, which drops only its access log."""
    assert "-v" not in daphne_arguments("127.0.0.1", 8000)
    with override_settings(ACCESS_LOG=False):
        assert option(daphne_arguments("127.0.0.1", 8000), "-v") == "0"


def test_twisted_no_longer_parses_post_forms_that_daphne_never_reads(monkeypatch):
    """Requests are built with parsePOSTFormSubmission off; the patch applies once."""
    from daphne.http_protocol import WebRequest
    from twisted.web import http

    monkeypatch.setattr(WebRequest, "__init__", WebRequest.__init__)  # undone after the test
    skip_twisted_form_parsing()
    patched = WebRequest.__init__
    skip_twisted_form_parsing()
    assert WebRequest.__init__ is patched
    seen = []

    def twisted_init(self, channel, **kwargs):
        seen.append(kwargs)
        raise RuntimeError("stop before daphne uses the channel")

    monkeypatch.setattr(http.Request, "__init__", twisted_init)
    with pytest.raises(RuntimeError):
        WebRequest(object())
    assert seen == [{"parsePOSTFormSubmission": False}]


# --- Reading frames --------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 3, 4, 5, 125, 126, 1023, 1024, 70_000])
def test_unmask_gives_what_autobahns_masker_gives(size):
    """RFC 6455, 5.3: byte i of the payload is XORed with byte i mod 4 of the mask."""
    from autobahn.websocket.xormasker import create_xor_masker

    mask, payload = os.urandom(4), os.urandom(size)
    assert unmask(payload, mask) == create_xor_masker(mask, size).process(payload)


def message_ending(protocol_class, payload: bytes):
    """A daphne WebSocket protocol that has read ``payload`` in two pieces and is about
    to end the message; what it hands on is in ``.handed``."""
    connection = protocol_class.__new__(protocol_class)
    connection.message_data, connection.message_is_binary = [payload[:3], payload[3:]], False
    connection.failedByMe, connection.trackedTimings = False, None
    connection.handed = []
    connection.onMessage = lambda data, is_binary: connection.handed.append((data, is_binary))
    return connection


def test_a_message_nobody_observes_fires_no_event(monkeypatch):
    """daphne gets the message; autobahn's "message" event, which has no observer, is
    not fired (it would make and resolve a Deferred per message)."""
    from daphne.ws_protocol import WebSocketProtocol

    monkeypatch.setattr(WebSocketProtocol, "onMessageEnd", WebSocketProtocol.onMessageEnd)
    skip_unobserved_message_events()
    patched = WebSocketProtocol.onMessageEnd
    skip_unobserved_message_events()
    assert WebSocketProtocol.onMessageEnd is patched
    connection = message_ending(WebSocketProtocol, b'{"type": "ping"}')

    def fire(*args, **kwargs):
        raise AssertionError("fired an event nobody observes")

    connection.fire = fire
    connection.onMessageEnd()
    assert connection.handed == [(b'{"type": "ping"}', False)]
    assert connection.message_data is None


def test_a_message_someone_observes_still_fires_the_event(monkeypatch):
    from daphne.ws_protocol import WebSocketProtocol

    monkeypatch.setattr(WebSocketProtocol, "onMessageEnd", WebSocketProtocol.onMessageEnd)
    skip_unobserved_message_events()
    connection = message_ending(WebSocketProtocol, b"observed")
    observed = []
    connection.set_valid_events(["message"])  # as autobahn's __init__ does
    connection.on("message", lambda payload, is_binary: observed.append(payload))
    connection.onMessageEnd()
    assert connection.handed == [(b"observed", False)] and observed == [b"observed"]


def test_serve_applies_the_frame_shortcuts_under_the_locked_versions():
    """What ``manage.py serve`` runs before daphne starts (in a process of its own, since
    it patches classes) leaves the shortcuts on; if this fails, they are silently off."""
    check = (
        "import django; django.setup()\n"
        "from realtime import servers\n"
        "assert servers.prepare_daphne(), 'the daphne adapter is off'\n"
        "from daphne.ws_protocol import WebSocketProtocol\n"
        "assert WebSocketProtocol.onMessageEnd.skips_unobserved_events\n"
        "assert WebSocketProtocol.processData.reads_short_messages\n"
        "assert WebSocketProtocol.dataReceived.skips_debug_arguments\n"
        "assert WebSocketProtocol._connectionMade.skips_debug_arguments\n"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"}
    done = subprocess.run([sys.executable, "-c", check], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_short_whole_frames_are_read_without_autobahns_frame_machine(monkeypatch):
    """Two short whole frames in the buffer are handed on directly, with autobahn's
    counters kept; the partial frame after them is left to autobahn's processData.
    (tests/realtime/test_daphne_frames.py checks both paths against a real daphne.)"""
    from autobahn.websocket.protocol import TrafficStats
    from daphne.ws_protocol import WebSocketProtocol

    left_to_autobahn = []

    def autobahns(self) -> bool:
        left_to_autobahn.append(self.data)
        return False

    monkeypatch.setattr(WebSocketProtocol, "processData", autobahns)
    read_short_messages_directly()
    connection = WebSocketProtocol.__new__(WebSocketProtocol)
    partial = frame(TEXT, b"to be continued")[:9]
    connection.data = frame(TEXT, "ça va".encode()) + frame(BINARY, b"\x00" * 200) + partial
    connection.current_frame, connection.inside_message = None, False
    connection.state = WebSocketProtocol.STATE_OPEN
    connection._perMessageCompress, connection.logFrames = None, False
    connection.trackedTimings, connection.failedByMe = None, False
    connection.utf8validateIncoming, connection.applyMask = True, True
    connection.maxFramePayloadSize, connection.maxMessagePayloadSize = 0, 0
    connection.trafficStats, connection.autoPingTimeoutCall = TrafficStats(), None
    handed = []
    connection.onMessage = lambda payload, is_binary: handed.append((payload, is_binary))
    while connection.processData():
        pass
    assert handed == [("ça va".encode(), False), (b"\x00" * 200, True)]
    assert left_to_autobahn == [partial]
    stats = connection.trafficStats
    assert (stats.incomingWebSocketMessages, stats.incomingWebSocketFrames) == (2, 2)
    assert stats.incomingOctetsAppLevel == len("ça va".encode()) + 200
