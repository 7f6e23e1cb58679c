"""Client frames as daphne reads them with the adapter on (RFC 6455, section 5).

Short whole frames skip autobahn's frame machine (``read_short_messages_directly``);
everything else goes through autobahn. These tests send raw frames to a real daphne
and check that both paths read the same messages, in order, and fail a connection
for the same faults with the same close codes.
"""

import asyncio
import socket
import struct

import pytest

from tests.realtime.frames import BINARY, CLOSE, CONTINUATION, PING, PONG, TEXT, frame

# RFC 6455 framing under daphne, on /ws/echo/ (no database, no layer): the stack changes nothing.
pytestmark = [pytest.mark.daphne, pytest.mark.django_db(transaction=True), pytest.mark.once]


class RawClient:
    """A WebSocket client on a plain socket, so that any bytes can be sent."""

    def __init__(self, server, path: str = "/ws/echo/") -> None:
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode())
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self.receive()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101"), head

    def receive(self) -> bytes:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed by the server")
        return chunk

    def take(self, count: int) -> bytes:
        while len(self.buffer) < count:
            self.buffer += self.receive()
        taken, self.buffer = self.buffer[:count], self.buffer[count:]
        return taken

    def read(self) -> tuple[int, bytes]:
        """The next frame from the server (never masked, never fragmented here)."""
        first, second = self.take(2)
        size = second & 0x7F
        if size == 126:
            size = struct.unpack("!H", self.take(2))[0]
        elif size == 127:
            size = struct.unpack("!Q", self.take(8))[0]
        return first & 0x0F, self.take(size)

    def ending(self) -> tuple[list[tuple[int, bytes]], int | None]:
        """Read until the connection ends: the frames read before, and the code of the
        server's close frame, or ``None`` if the server dropped the connection."""
        frames = []
        try:
            while True:
                opcode, payload = self.read()
                if opcode == CLOSE:
                    return frames, struct.unpack("!H", payload[:2])[0]
                frames.append((opcode, payload))
        except ConnectionError:
            return frames, None

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        self.sock.close()


def echo_of(opcode: int, payload: bytes) -> tuple[int, bytes]:
    return (TEXT, b"Echo: " + payload) if opcode == TEXT else (BINARY, payload)


MESSAGES = [(TEXT, b"hi"), (BINARY, b"\x00\xff" * 3), (TEXT, "héllo ✓ 🎉".encode()),
            (TEXT, b"x" * 125), (BINARY, b"y" * 126), (TEXT, b"z" * 127),
            (TEXT, b"w" * 1023), (BINARY, b"v" * 1024), (TEXT, b"u" * 3000), (TEXT, b"")]


async def in_thread(function, *args):
    return await asyncio.to_thread(function, *args)


async def test_frames_in_one_write_come_back_in_order(daphne_server):
    """Whole frames of every length form, short and long, text and binary, sent in one
    write: each message is read once, in order."""
    server = daphne_server(WS_RATE_LIMIT="0")

    def run() -> None:
        client = RawClient(server)
        client.send(b"".join(frame(opcode, payload) for opcode, payload in MESSAGES))
        for opcode, payload in MESSAGES:
            assert client.read() == echo_of(opcode, payload)
        client.close()

    await in_thread(run)


async def test_frames_split_anywhere_across_reads_come_back_whole(daphne_server):
    """A short frame, a long one and another short one, cut at every byte in turn: the
    part before the cut is read alone, then the rest."""
    server = daphne_server(WS_RATE_LIMIT="0")
    messages = [(TEXT, b"first"), (BINARY, b"b" * 130), (TEXT, "dernière".encode())]

    def run() -> None:
        client = RawClient(server)
        data = b"".join(frame(opcode, payload) for opcode, payload in messages)
        for cut in range(1, len(data)):
            client.send(data[:cut])
            # The server reads the part on its own before the rest comes.
            client.sock.settimeout(0.005)
            try:
                client.buffer += client.receive()
            except TimeoutError:
                pass
            client.sock.settimeout(10)
            client.send(data[cut:])
            for opcode, payload in messages:
                assert client.read() == echo_of(opcode, payload), cut
        client.close()

    await in_thread(run)


async def test_control_frames_and_fragments_between_short_frames(daphne_server):
    """A ping is answered with its payload, a fragmented message is read whole, and the
    messages around them keep their order."""
    server = daphne_server(WS_RATE_LIMIT="0")

    def run() -> None:
        client = RawClient(server)
        client.send(frame(TEXT, b"one") + frame(PING, b"are you there")
                    + frame(TEXT, b"fra", fin=False) + frame(CONTINUATION, b"gm", fin=False)
                    + frame(PING, b"mid") + frame(CONTINUATION, b"ent") + frame(TEXT, b"two"))
        frames = [client.read() for _ in range(5)]
        # autobahn answers pings itself, echoes come from the application: each kind
        # keeps its order, not the two together.
        assert [f for f in frames if f[0] == PONG] == [(PONG, b"are you there"), (PONG, b"mid")]
        assert [f for f in frames if f[0] == TEXT] == [
            (TEXT, b"Echo: one"), (TEXT, b"Echo: fragment"), (TEXT, b"Echo: two")]
        client.close()

    await in_thread(run)


@pytest.mark.parametrize("fault", [
    frame(TEXT, b"ok \xed\xa0\x80 surrogate"),
    frame(TEXT, b"cut \xe2\x82"),
    frame(TEXT, b"rsv", rsv=4),
    frame(TEXT, b"plain", masked=False),
    frame(TEXT, b"long form", long_length=True),
    frame(CONTINUATION, b"no start"),
    frame(3, b"reserved opcode"),
], ids=["invalid-utf8", "truncated-utf8", "rsv-bit", "unmasked", "non-minimal-length",
        "orphan-continuation", "reserved-opcode"])
async def test_a_faulty_short_frame_drops_the_connection(daphne_server, fault):
    """After a good message, a short frame with a fault (RFC 6455: invalid UTF-8 in a
    text message, an extension bit, no mask, a length not in its shortest form, a
    continuation outside a message, a reserved opcode) is not read: daphne (autobahn)
    drops the connection, and nothing sent after it is read either."""
    server = daphne_server(WS_RATE_LIMIT="0")

    def run() -> None:
        client = RawClient(server)
        client.send(frame(TEXT, b"fine"))
        assert client.read() == (TEXT, b"Echo: fine")
        client.send(fault + frame(TEXT, b"never read"))
        assert client.ending() == ([], None)
        client.close()

    await in_thread(run)


async def test_daphnes_ceiling_holds_for_short_frames(daphne_server):
    """With WS_MAX_MESSAGE_BYTES=100, daphne's ceiling is 400 bytes: a 300-byte message
    reaches the application, which closes with 4009; a 500-byte frame is not read,
    daphne (autobahn) drops the connection."""
    server = daphne_server(WS_RATE_LIMIT="0", WS_MAX_MESSAGE_BYTES="100")

    def run() -> tuple:
        over_limit = RawClient(server)
        over_limit.send(frame(TEXT, b"a" * 300))
        over_ceiling = RawClient(server)
        over_ceiling.send(frame(BINARY, b"b" * 500) + frame(TEXT, b"never read"))
        endings = over_limit.ending(), over_ceiling.ending()
        over_limit.close()
        over_ceiling.close()
        return endings

    assert await in_thread(run) == (([], 4009), ([], None))
