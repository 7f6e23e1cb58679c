"""Frames encoded once and written straight to daphne's socket (``project.wire``).

The live behaviour (echo, rooms, the slow-reader close) is covered over a real
daphne by the other tests; these pin the encoding to what daphne itself would
send and the writer's choices when the socket cannot take a frame at once.
"""

import functools
import socket

import pytest
from autobahn.websocket.protocol import PreparedMessage, WebSocketProtocol
from twisted.internet import tcp

from project import wire


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


def writer(transport) -> wire.DirectWriter:
    return wire.DirectWriter(FakeProtocol(transport), transport)


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
    yield functools.partial(lambda protocol, message: None, FakeProtocol(transport))
    left.close()
    right.close()


def test_daphne_sends_on_plain_tcp_get_a_direct_writer(daphne_send):
    assert isinstance(wire.direct_writer(daphne_send), wire.DirectWriter)


def test_compressed_connections_are_left_to_autobahn(daphne_send):
    daphne_send.args[0]._perMessageCompress = object()
    assert wire.direct_writer(daphne_send) is None


def test_other_transports_and_servers_keep_the_asgi_send(daphne_send):
    async def asgi_send(message):  # uvicorn, the test communicator, ...
        pass

    assert wire.direct_writer(asgi_send) is None
    daphne_send.args[0].transport = FakeTransport()  # e.g. daphne terminating TLS itself
    assert wire.direct_writer(daphne_send) is None


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
    w = wire.DirectWriter(FakeProtocol(transport), transport)
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
