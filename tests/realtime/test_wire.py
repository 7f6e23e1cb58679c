"""Frames encoded once (``realtime.wire``) and written by the server adapters
(``realtime.servers``) straight to the server's transport.

The live behaviour (echo, rooms, the slow-reader close) is covered over real
daphne and uvicorn processes by the other tests; these pin the encoding to what
each server itself would send and the writers' choices when the socket cannot
take a frame at once.
"""

import asyncio
import functools
import gc
import logging
import socket

import pytest
from autobahn.websocket.protocol import PreparedMessage, WebSocketProtocol
from daphne.server import Server
from django.test import override_settings
from twisted.internet import tcp
from websockets.protocol import State

from realtime import servers, wire
from realtime.servers import daphne as daphne_adapter
from realtime.servers import uvicorn as uvicorn_adapter


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_text_frame_is_what_daphne_sends(size):
    """Byte for byte autobahn's own unmasked frame, at every length encoding."""
    text = ("é" * size)[: max(0, size // 2)] + "x" * (size - size // 2)
    ours = wire.text_frame(text)
    theirs = PreparedMessage(text.encode(), False, False, True).payloadHybi
    assert ours == theirs


@pytest.mark.parametrize("size", [0, 125, 126, 65536])
def test_binary_frame_is_what_daphne_sends(size):
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    assert wire.binary_frame(data) == PreparedMessage(data, True, False, True).payloadHybi


def test_joined_frames_come_apart_into_their_messages():
    """asgi_messages reads one frame or several in a row, at every length encoding."""
    texts = ["", "x" * 125, "é" * 100, "y" * 65536]
    joined = b"".join(wire.text_frame(text) for text in texts) + wire.binary_frame(b"\x01\x02")
    assert wire.asgi_messages(joined) == [
        *({"type": "websocket.send", "text": text} for text in texts),
        {"type": "websocket.send", "bytes": b"\x01\x02"},
    ]
    assert wire.asgi_messages(wire.text_frame("one")) == [{"type": "websocket.send",
                                                           "text": "one"}]


class FakeTransport:
    """The parts of Twisted's TCP transport the writer touches."""

    def __init__(self, accepts: int | None = None, lost: bool = False) -> None:
        self.accepts, self.lost = accepts, lost
        self.connected, self.disconnecting = True, False
        self.dataBuffer, self.offset = b"", 0
        self._tempDataBuffer: list[bytes] = []
        self._tempDataLen = 0
        self.on_wire = b""

        self.socket = self  # the writer calls the socket's own send

    def send(self, data: bytes) -> int:
        if self.lost:
            raise ConnectionResetError("lost")
        taken = len(data) if self.accepts is None else min(self.accepts, len(data))
        if not taken:
            raise BlockingIOError("the kernel's buffer is full")
        self.on_wire += data[:taken]
        return taken

    def write(self, data: bytes) -> None:
        self._tempDataBuffer.append(data)
        self._tempDataLen += len(data)


class FakeProtocol:
    STATE_OPEN = WebSocketProtocol.STATE_OPEN
    _perMessageCompress = None

    def __init__(self, transport) -> None:
        self.transport = transport
        self.state = WebSocketProtocol.STATE_OPEN


def writer(transport) -> daphne_adapter.DirectWriter:
    return daphne_adapter.DirectWriter(FakeProtocol(transport), transport)


def test_a_frame_goes_to_the_socket_at_once():
    transport = FakeTransport()
    assert writer(transport).write(b"frame")
    assert transport.on_wire == b"frame"
    assert transport._tempDataBuffer == []


def test_what_the_socket_does_not_take_is_queued_in_order():
    transport = FakeTransport(accepts=3)
    w = writer(transport)
    assert w.write(b"abcdef")
    assert w.write(b"ghi")
    assert transport.on_wire == b"abc"
    # Once bytes are queued, later frames queue behind them instead of overtaking.
    assert transport._tempDataBuffer == [b"def", b"ghi"]


def test_a_full_socket_queues_the_whole_frame():
    transport = FakeTransport(accepts=0)
    assert writer(transport).write(b"frame")
    assert transport.on_wire == b"" and transport._tempDataBuffer == [b"frame"]


def test_the_fast_path_writes_only_when_nothing_is_queued():
    """``write_if_idle`` leaves a frame to the full path (and its slow-reader check)."""
    transport = FakeTransport(accepts=3)
    w = writer(transport)
    assert w.write_if_idle(b"abcdef")
    assert transport.on_wire == b"abc" and transport._tempDataBuffer == [b"def"]
    assert not w.write_if_idle(b"ghi")
    assert transport.on_wire == b"abc" and transport._tempDataBuffer == [b"def"]


def test_a_lost_connection_hands_the_frame_to_twisted():
    """Twisted's own write then notices the loss and closes the connection."""
    transport = FakeTransport(lost=True)
    assert writer(transport).write(b"frame")
    assert transport._tempDataBuffer == [b"frame"]


@pytest.mark.parametrize("method", ["write", "write_if_idle"])
def test_a_closing_connection_takes_no_more_frames(method):
    transport = FakeTransport()
    w = writer(transport)
    w.protocol.state = WebSocketProtocol.STATE_CLOSING
    assert not getattr(w, method)(b"frame")
    assert transport.on_wire == b"" and transport._tempDataBuffer == []


@pytest.fixture
def daphne_send():
    """A send shaped like daphne's: ``partial(handle_reply, protocol)`` on a TCP transport."""
    left, right = socket.socketpair()
    transport = tcp.Connection(left, None, reactor=object())
    transport.connected = 1  # as Twisted's tcp.Server is once accepted
    server = Server.__new__(Server)
    yield functools.partial(server.handle_reply, FakeProtocol(transport))
    left.close()
    right.close()


async def test_daphne_sends_on_plain_tcp_get_a_direct_writer(daphne_send):
    assert isinstance(servers.writer_for(daphne_send), daphne_adapter.DirectWriter)


async def test_compressed_connections_are_left_to_autobahn(daphne_send):
    """autobahn frames them; Twisted's buffer still counts for the slow-reader bound."""
    daphne_send.args[0]._perMessageCompress = object()
    writer = servers.writer_for(daphne_send)
    assert isinstance(writer, servers.AsgiWriter)
    daphne_send.args[0].transport._tempDataLen = 7
    assert writer.unsent_bytes() == 7


async def test_other_transports_and_servers_keep_the_asgi_send(daphne_send, caplog):
    """And daphne over a transport whose buffer the bound cannot read says so."""
    async def asgi_send(message):  # uvicorn, the test communicator, ...
        pass

    assert isinstance(servers.writer_for(asgi_send), servers.AsgiWriter)
    daphne_send.args[0].transport = FakeTransport()  # e.g. daphne terminating TLS itself
    daphne_adapter._warn_untracked.cache_clear()  # warned once per process otherwise
    assert isinstance(servers.writer_for(daphne_send), servers.AsgiWriter)
    assert "daphne serves WebSockets over FakeTransport, not plain TCP" in caplog.text


class IdleReactor:
    """A reactor that never runs: what Twisted buffers stays in its buffer."""

    def addWriter(self, selectable) -> None:
        pass


def test_frames_reach_a_real_socket_in_order_when_the_kernel_fills_up():
    """On a real socket pair: what the kernel refuses waits in Twisted's buffer, in order."""
    left, right = socket.socketpair()
    left.setblocking(False)
    right.setblocking(False)
    transport = tcp.Connection(left, None, reactor=IdleReactor())
    transport.connected = True
    w = daphne_adapter.DirectWriter(FakeProtocol(transport), transport)
    frames = [wire.text_frame(f"{i:06d}" * 2000) for i in range(200)]
    for frame in frames:
        assert w.write(frame)
    queued = transport._tempDataBuffer
    assert queued, "the socket pair should have filled up"
    received = b""
    while True:
        try:
            chunk = right.recv(1 << 20)
        except BlockingIOError:
            break
        received += chunk
    assert received + b"".join(queued) == b"".join(frames)
    left.close()
    right.close()


# --- uvicorn ------------------------------------------------------------------------


class FakeAsyncioTransport:
    """The parts of an asyncio transport the writer touches: it buffers what it is given."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.buffered = 0
        self.closing = self.aborted = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def is_closing(self) -> bool:
        return self.closing

    def abort(self) -> None:
        self.aborted = True


@pytest.fixture
def uvicorn_send():
    """uvicorn's own ``send``: the bound method of an accepted websockets-sansio protocol."""
    sansio = pytest.importorskip("uvicorn.protocols.websockets.websockets_sansio_impl")
    from websockets.server import ServerProtocol

    protocol = sansio.WebSocketsSansIOProtocol.__new__(sansio.WebSocketsSansIOProtocol)
    protocol.transport = FakeAsyncioTransport()
    protocol.conn = ServerProtocol()
    protocol.conn.state = State.OPEN  # as after the handshake
    protocol.close_sent = False
    protocol.writable = asyncio.Event()
    protocol.writable.set()
    return protocol.send


async def test_uvicorn_sends_get_a_transport_writer(uvicorn_send):
    w = servers.writer_for(uvicorn_send)
    assert isinstance(w, uvicorn_adapter.TransportWriter)
    assert w.write(wire.text_frame("hi"))
    assert uvicorn_send.__self__.transport.written == [b"\x81\x02hi"]


def test_the_transport_writer_sends_the_frames_websockets_would(uvicorn_send):
    """Byte for byte what uvicorn's ``send`` writes for the same text (no extension)."""
    from websockets.frames import Frame, Opcode

    text = "é" * 70000
    theirs = Frame(Opcode.TEXT, text.encode()).serialize(mask=False, extensions=[])
    assert wire.text_frame(text) == theirs


async def test_the_transport_writer_reads_the_buffer_and_takes_the_idle_path_only_when_empty(
    uvicorn_send,
):
    w = servers.writer_for(uvicorn_send)
    transport = uvicorn_send.__self__.transport
    assert w.write_if_idle(b"a") and w.unsent_bytes() == 0
    transport.buffered = 10
    assert w.unsent_bytes() == 10
    assert not w.write_if_idle(b"b"), "bytes are waiting: the full path decides"
    assert w.write(b"c"), "the transport keeps the order of what it buffers"
    assert transport.written == [b"a", b"c"]


@pytest.mark.parametrize("closing", ["close frame sent", "close frame received", "transport"])
@pytest.mark.parametrize("method", ["write", "write_if_idle"])
async def test_a_closing_uvicorn_connection_takes_no_more_frames(uvicorn_send, closing, method):
    protocol = uvicorn_send.__self__
    if closing == "close frame sent":
        protocol.close_sent = True
    elif closing == "close frame received":
        protocol.conn.state = State.CLOSING
    else:
        protocol.transport.closing = True
    w = servers.writer_for(uvicorn_send)
    assert not getattr(w, method)(b"frame")
    assert protocol.transport.written == []


async def test_the_transport_writer_says_when_uvicorns_send_would_wait(uvicorn_send):
    """Over the high-water mark uvicorn's own send waits; the consumer closes in a task then."""
    w = servers.writer_for(uvicorn_send)
    assert not w.paused
    uvicorn_send.__self__.writable.clear()
    assert w.paused
    w.abort()
    assert uvicorn_send.__self__.transport.aborted


async def plain_send(message) -> None:
    pass


@override_settings(GC_THRESHOLD2=1234)
async def test_the_first_uvicorn_websocket_spaces_full_collections(
        uvicorn_send, monkeypatch, gc_thresholds):
    """Under websockets-sansio, upgraded by the patched httptools protocol, connections
    need no collector (test_servers.py): from the first WebSocket served, a full
    collection comes every GC_THRESHOLD2 middle-generation collections."""
    monkeypatch.setattr(servers, "_announced", set())  # as in a process that just started
    monkeypatch.setattr(uvicorn_adapter, "_upgrade_freed", True)
    gc.set_threshold(700, 10, 10)
    servers.writer_for(plain_send)
    assert gc.get_threshold() == (700, 10, 10)
    servers.writer_for(uvicorn_send)
    assert gc.get_threshold() == (700, 10, 1234)


@override_settings(GC_THRESHOLD2=1234)
async def test_an_upgrade_not_freed_keeps_pythons_thresholds(uvicorn_send, monkeypatch,
                                                               gc_thresholds):
    """Another HTTP implementation (h11) upgraded it, or the patch is off: its protocol
    may wait in a cycle for a full collection, so they are not spaced."""
    monkeypatch.setattr(servers, "_announced", set())
    monkeypatch.setattr(uvicorn_adapter, "_upgrade_freed", False)
    gc.set_threshold(700, 10, 10)
    assert isinstance(servers.writer_for(uvicorn_send), uvicorn_adapter.TransportWriter)
    assert gc.get_threshold() == (700, 10, 10)


@override_settings(GC_THRESHOLD2=1234)
async def test_daphnes_writer_leaves_the_spacing_to_serve(daphne_send, monkeypatch,
                                                           gc_thresholds):
    """daphne frees closed sockets only with the patches that ``manage.py serve`` applies,
    and serve spaces the collections itself (test_serve.py); daphne run by its own
    command keeps Python's thresholds."""
    monkeypatch.setattr(servers, "_announced", set())
    gc.set_threshold(700, 10, 10)
    assert isinstance(servers.writer_for(daphne_send), daphne_adapter.DirectWriter)
    assert gc.get_threshold() == (700, 10, 10)


def test_an_upgrade_without_the_expected_method_is_left_alone(monkeypatch, caplog):
    """A tested uvicorn whose httptools protocol lacks handle_websocket_upgrade: one
    warning, nothing patched, and full collections keep Python's spacing."""
    from types import SimpleNamespace

    protocol_class = type("HttpToolsProtocol", (), {})
    monkeypatch.setattr(uvicorn_adapter, "httptools_impl",
                        lambda: SimpleNamespace(HttpToolsProtocol=protocol_class))
    monkeypatch.setattr(uvicorn_adapter, "_upgrade_freed", False)
    uvicorn_adapter.free_the_http_protocol_at_upgrade()
    assert "has no handle_websocket_upgrade" in caplog.text
    assert not hasattr(protocol_class, "handle_websocket_upgrade")
    assert uvicorn_adapter._upgrade_freed is False


# --- uvicorn HTTP answers ---------------------------------------------------------------


class RecordingHttpTransport(FakeAsyncioTransport):
    """Also what uvicorn's flow control calls."""

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        self.closing = True


def http_cycle(*, method="POST", keep_alive=True, access_log=False):
    """uvicorn's own (httptools) request cycle, as it hands the application its ``send``."""
    httptools_impl = pytest.importorskip("uvicorn.protocols.http.httptools_impl")
    from uvicorn.protocols.http.flow_control import FlowControl

    transport = RecordingHttpTransport()
    responses = []
    cycle = httptools_impl.RequestResponseCycle(
        # As uvicorn's parser builds it: raw_path included (0.55's access log reads it).
        scope={"method": method, "path": "/api/notify/ann", "raw_path": b"/api/notify/ann",
               "query_string": b"", "http_version": "1.1", "client": ("127.0.0.1", 5000)},
        transport=transport, flow=FlowControl(transport),
        logger=logging.getLogger("uvicorn.error"),
        access_logger=logging.getLogger("uvicorn.access"), access_log=access_log,
        default_headers=[(b"date", b"Wed, 25 Nov 2026 16:00:00 GMT"), (b"Server", b"uvicorn")],
        message_event=asyncio.Event(), expect_100_continue=False, keep_alive=keep_alive,
        on_response=lambda: responses.append(True),
    )
    return cycle, transport, responses


ANSWER = (202, [(b"content-type", b"application/json"), (b"content-length", b"18"),
                (b"x-frame-options", b"DENY")], b'{"status": "sent"}')


async def uvicorns_own_bytes(**kwargs) -> list[bytes]:
    cycle, transport, _ = http_cycle(**kwargs)
    status, headers, body = ANSWER
    await cycle.send({"type": "http.response.start", "status": status, "headers": headers})
    await cycle.send({"type": "http.response.body", "body": body})
    return transport.written


async def test_an_http_answer_is_what_uvicorn_writes_in_one_write():
    theirs = await uvicorns_own_bytes()
    assert len(theirs) == 2, "uvicorn writes the head and the body apart"
    cycle, transport, responses = http_cycle()
    await servers.send_http_response(cycle.send, *ANSWER)
    assert transport.written == [b"".join(theirs)]
    assert cycle.response_complete and cycle.message_event.is_set()
    assert responses == [True], "uvicorn goes on to the next request on the connection"


def access_lines(caplog) -> list[str]:
    # Only uvicorn's access log: a warning another test's leftover task logs meanwhile
    # lands in caplog too.
    return [record.getMessage() for record in caplog.records if record.name == "uvicorn.access"]


async def test_the_access_log_line_is_uvicorns(caplog):
    caplog.set_level(logging.INFO, logger="uvicorn.access")
    await uvicorns_own_bytes(access_log=True)
    theirs = access_lines(caplog)
    caplog.clear()
    cycle, _, _ = http_cycle(access_log=True)
    await servers.send_http_response(cycle.send, *ANSWER)
    assert access_lines(caplog) == theirs
    assert theirs == ['127.0.0.1:5000 - "POST /api/notify/ann HTTP/1.1" 202']


@pytest.mark.parametrize("case", [{"keep_alive": False}, {"method": "HEAD"}])
async def test_other_answers_take_uvicorns_own_send(case):
    """uvicorn closes the connection after this answer, or leaves the body out."""
    theirs = await uvicorns_own_bytes(**case)
    cycle, transport, _ = http_cycle(**case)
    await servers.send_http_response(cycle.send, *ANSWER)
    assert transport.written == theirs


async def test_nothing_is_written_to_a_client_that_went_away():
    cycle, transport, responses = http_cycle()
    cycle.disconnected = True
    await servers.send_http_response(cycle.send, *ANSWER)
    assert transport.written == [] and responses == []


async def test_other_servers_get_the_two_asgi_messages():
    sent = []

    async def send(message):
        sent.append(message)

    await servers.send_http_response(send, *ANSWER)
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[0]["headers"] == ANSWER[1] and sent[1]["body"] == ANSWER[2]
