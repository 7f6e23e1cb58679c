"""Frames encoded once and written straight to daphne's socket.

Under daphne an ASGI ``websocket.send`` goes through ``handle_reply``, then
autobahn, which frames the payload (and formats debug-log arguments even with
debug logging off), then Twisted, which buffers the bytes and writes them on a
later reactor turn, adding the socket to the poller and removing it again for
every frame. For a room's fan-out that is most of the cost per member
(bench/RESULTS.md). Here a text frame is encoded once for every connection it
goes to (RFC 6455, section 5.2: a server's frames are not masked) and written
to each socket at once when nothing is queued before it; whatever the kernel
does not take is handed to Twisted, so order, buffering and the slow-reader
accounting are the same as before.

:func:`direct_writer` offers this only where it is exactly what daphne would
send: a plain TCP transport (daphne terminating TLS itself falls back), an
autobahn connection without permessage-deflate. Under any other server the
consumer keeps using the ASGI ``send``.
"""

import errno
import struct

__all__ = ["DirectWriter", "binary_frame", "daphne_protocol", "direct_writer", "text_frame"]

_TEXT, _BINARY = 0x81, 0x82  # FIN + opcode


def _frame(first: int, payload: bytes) -> bytes:
    length = len(payload)
    if length <= 125:
        return bytes((first, length)) + payload
    if length <= 0xFFFF:
        return struct.pack("!BBH", first, 126, length) + payload
    return struct.pack("!BBQ", first, 127, length) + payload


def text_frame(text: str) -> bytes:
    """The wire bytes of one unfragmented, unmasked text frame."""
    return _frame(_TEXT, text.encode("utf-8"))


def binary_frame(data: bytes) -> bytes:
    """The wire bytes of one unfragmented, unmasked binary frame."""
    return _frame(_BINARY, data)


class DirectWriter:
    """Writes encoded frames to one daphne connection's socket."""

    __slots__ = ("open_state", "protocol", "send", "transport")

    def __init__(self, protocol, transport) -> None:
        self.protocol, self.transport = protocol, transport
        self.open_state = protocol.STATE_OPEN
        # The socket's own send: Twisted's writeSomeData adds two calls and a
        # memoryview per frame, and a room's fan-out makes one write per member.
        self.send = transport.socket.send

    def write(self, frame: bytes) -> bool:
        """Send ``frame``; ``False`` if the connection no longer takes frames.

        A connection that is closing takes nothing after its close frame, so
        there is nothing to fall back to then.
        """
        transport = self.transport
        if self.protocol.state != self.open_state:
            return False
        if (transport._tempDataLen or len(transport.dataBuffer) > transport.offset
                or not transport.connected or transport.disconnecting):
            # Bytes are queued before this frame (or the transport is going away):
            # Twisted keeps the order, or drops the frame as it would anyway.
            transport.write(frame)
            return True
        self._send(frame)
        return True

    def write_if_idle(self, frame: bytes) -> bool:
        """Send ``frame`` if nothing is queued before it; ``False``: nothing was done.

        The fast path of a room's fan-out: when this returns ``False`` the caller
        takes the full path (closing state, slow-reader bound, then :meth:`write`).
        """
        transport = self.transport
        if (self.protocol.state != self.open_state or transport._tempDataLen
                or len(transport.dataBuffer) > transport.offset
                or not transport.connected or transport.disconnecting):
            return False
        self._send(frame)
        return True

    def _send(self, frame: bytes) -> None:
        """Write to the socket; Twisted queues what it does not take, in order."""
        try:
            sent = self.send(frame)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            if exc.errno != errno.ENOBUFS:
                # The connection is lost: a buffered write lets Twisted notice and
                # close it the usual way (connectionLost, then websocket.disconnect).
                self.transport.write(frame)
                return
            sent = 0
        if sent < len(frame):
            self.transport.write(frame[sent:])


def daphne_protocol(send):
    """daphne's WebSocket protocol behind its ASGI ``send``, or ``None`` under another server.

    daphne hands the application ``partial(server.handle_reply, protocol)``.
    """
    args = getattr(send, "args", ())
    return args[0] if args else None


def direct_writer(send) -> DirectWriter | None:
    """A :class:`DirectWriter` for daphne's ``send``, or ``None`` where it does not apply.

    Call it once the connection is accepted: autobahn settles permessage-deflate
    only then.
    """
    protocol = daphne_protocol(send)
    transport = getattr(protocol, "transport", None)
    if (transport is None or not hasattr(protocol, "STATE_OPEN")
            or getattr(protocol, "_perMessageCompress", None) is not None):
        return None
    try:
        from twisted.internet.tcp import Connection
    except ImportError:  # pragma: no cover - daphne always brings Twisted
        return None
    if not isinstance(transport, Connection):
        return None
    return DirectWriter(protocol, transport)
