"""Frames encoded once and written straight to the server's transport.

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
autobahn connection without permessage-deflate.

Under uvicorn (its ``websockets-sansio`` implementation) the ASGI ``send``
frames each payload through the websockets state machine, and it waits
whenever the transport's buffer is over its high-water mark: one client that
stops reading then holds up every coroutine that sends to it, a room's
fan-out or the notification feed of the whole process. :class:`TransportWriter`
writes the same frames to uvicorn's asyncio transport instead, which buffers
what the peer has not taken, as Twisted does; the consumer's slow-reader bound
(``WS_MAX_SEND_BUFFER_BYTES``, then 4010) is what limits that buffer, under
both servers alike. Its frames are never compressed, even where permessage-deflate
was negotiated: RFC 7692 lets a sender leave any message uncompressed (RSV1
clear), and a receiver passes such a message through untouched.

Under any other server (or uvicorn's other WebSocket implementations) the
consumer keeps using the ASGI ``send``.

HTTP answers of a known length (the notification API's edge) go the same way
under uvicorn's ``httptools`` implementation: its ASGI ``send`` writes the
status line and headers at ``http.response.start`` and the body at
``http.response.body``, each straight to the socket (uvloop writes at once),
so every answer costs two system calls and two TCP segments.
:func:`send_http_response` writes the same bytes in one, and keeps uvicorn's
bookkeeping (flow control, keep-alive, access log) as its ``send`` would.
"""

import errno
import functools
import struct

__all__ = [
    "DirectWriter",
    "TransportWriter",
    "binary_frame",
    "buffered_bytes",
    "daphne_protocol",
    "direct_writer",
    "send_http_response",
    "text_frame",
    "uvicorn_protocol",
]

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

    #: Twisted buffers without waiting, so a close never waits on this writer.
    paused = False

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

    def unsent_bytes(self) -> int:
        """Bytes written to this connection that the peer has not taken yet."""
        return buffered_bytes(self.transport)

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


class TransportWriter:
    """Writes encoded frames to one uvicorn connection's asyncio transport.

    The transport writes at once what the socket takes and buffers the rest in
    order, without limit, and so does not need the fallback of
    :class:`DirectWriter`. Its buffer is read back by :meth:`unsent_bytes`.
    """

    __slots__ = ("conn", "open_state", "protocol", "transport")

    def __init__(self, protocol) -> None:
        from websockets.protocol import State

        self.protocol, self.conn, self.transport = protocol, protocol.conn, protocol.transport
        self.open_state = State.OPEN

    def _takes_frames(self) -> bool:
        # uvicorn's own send refuses in the same cases: a close frame sent or
        # received (websockets leaves OPEN), or the transport going away.
        return (self.conn.state is self.open_state and not self.protocol.close_sent
                and not self.transport.is_closing())

    def write(self, frame: bytes) -> bool:
        """Send ``frame``; ``False`` if the connection no longer takes frames."""
        if not self._takes_frames():
            return False
        self.transport.write(frame)
        return True

    def write_if_idle(self, frame: bytes) -> bool:
        """Send ``frame`` if nothing is buffered before it; ``False``: nothing was done."""
        if self.transport.get_write_buffer_size() or not self._takes_frames():
            return False
        self.transport.write(frame)
        return True

    def unsent_bytes(self) -> int:
        """Bytes written to this connection that the peer has not taken yet."""
        return self.transport.get_write_buffer_size()

    @property
    def paused(self) -> bool:
        """Whether uvicorn's own ``send`` would wait now (its buffer is past high water)."""
        return not self.protocol.writable.is_set()

    def abort(self) -> None:
        """Drop the connection at once, with whatever is still buffered."""
        self.transport.abort()


def buffered_bytes(transport) -> int:
    """Bytes a Twisted transport holds that the peer has not taken yet (Twisted
    buffers whatever a peer does not read, without limit); 0 for anything else."""
    if transport is None:
        return 0
    try:
        return len(transport.dataBuffer) - transport.offset + transport._tempDataLen
    except AttributeError:
        return 0


def daphne_protocol(send):
    """daphne's WebSocket protocol behind its ASGI ``send``, or ``None`` under another server.

    daphne hands the application ``partial(server.handle_reply, protocol)``.
    """
    args = getattr(send, "args", ())
    return args[0] if args else None


def uvicorn_protocol(send):
    """uvicorn's ``websockets-sansio`` protocol behind its ASGI ``send``, or ``None``.

    uvicorn hands the application the protocol's bound ``send`` method.
    """
    protocol = getattr(send, "__self__", None)
    if not type(protocol).__module__.startswith("uvicorn."):
        return None  # not uvicorn: do not import it
    try:
        from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
    except ImportError:  # pragma: no cover - another uvicorn layout
        return None
    return protocol if isinstance(protocol, WebSocketsSansIOProtocol) else None


def direct_writer(send) -> "DirectWriter | TransportWriter | None":
    """A writer for the server's ``send``, or ``None`` where none applies.

    Call it once the connection is accepted: autobahn settles permessage-deflate
    only then.
    """
    protocol = uvicorn_protocol(send)
    if protocol is not None:
        return TransportWriter(protocol) if protocol.transport is not None else None
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


@functools.cache
def _httptools_impl():
    """uvicorn's ``httptools`` module, imported once (``None`` without httptools)."""
    try:
        from uvicorn.protocols.http import httptools_impl
    except ImportError:  # pragma: no cover - uvicorn without httptools
        return None
    return httptools_impl


def uvicorn_http_cycle(send):
    """uvicorn's ``httptools`` request cycle behind its ASGI ``send``, or ``None``."""
    cycle = getattr(send, "__self__", None)
    if not type(cycle).__module__.startswith("uvicorn."):
        return None  # not uvicorn: do not import it
    impl = _httptools_impl()
    return cycle if impl is not None and type(cycle) is impl.RequestResponseCycle else None


async def send_http_response(send, status: int, headers: list[tuple[bytes, bytes]],
                             body: bytes) -> None:
    """Send a whole HTTP response; ``headers`` must hold its ``Content-Length``.

    Under uvicorn's ``httptools`` implementation, for a keep-alive ``POST``
    (what the edge answers), the status line, uvicorn's default headers
    (``date``, ``server``), ``headers`` and ``body`` go out in one write, as its
    two ``send`` calls would have written them. Anything else (another
    server, a ``HEAD``, a connection uvicorn closes after the answer, an answer
    already started) takes the two ASGI messages.
    """
    cycle = uvicorn_http_cycle(send)
    if (cycle is None or cycle.response_started or not cycle.keep_alive
            or cycle.scope["method"] != "POST" or status in (204, 304)):
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return
    impl = _httptools_impl()
    if cycle.flow.write_paused and not cycle.disconnected:
        await cycle.flow.drain()
    if cycle.disconnected:
        return
    content = [impl.STATUS_LINE[status]]
    for name, value in (*cycle.default_headers, *headers):
        if impl.HEADER_RE.search(name) or impl.HEADER_VALUE_RE.search(value):
            raise RuntimeError("Invalid HTTP header.")
        content += (name.lower(), b": ", value, b"\r\n")
    content += (b"\r\n", body)
    cycle.response_started = cycle.response_complete = True
    cycle.waiting_for_100_continue = False
    cycle.chunked_encoding, cycle.expected_content_length = False, 0
    if cycle.access_log:
        from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string

        scope = cycle.scope
        cycle.access_logger.info('%s - "%s %s HTTP/%s" %d', get_client_addr(scope),
                                 scope["method"], get_path_with_query_string(scope),
                                 scope["http_version"], status)
    cycle.transport.write(b"".join(content))
    cycle.message_event.set()
    cycle.on_response()
