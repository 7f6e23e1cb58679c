"""The uvicorn adapter: frames to the asyncio transport, HTTP answers in one write.

Everything here reads or changes private parts of uvicorn's ``websockets-sansio``
and ``httptools`` implementations, so it is on only for the versions in
:data:`TESTED` (see :mod:`realtime.servers`).
"""

import functools
import logging

logger = logging.getLogger(__name__)

#: Package -> (lowest tested version, first untested version).
TESTED = {"uvicorn": ("0.54", "0.55")}
PROTOCOL_ATTRIBUTES = ("conn", "transport", "close_sent", "writable")
CYCLE_ATTRIBUTES = (
    "response_started", "response_complete", "keep_alive", "scope", "flow", "disconnected",
    "default_headers", "waiting_for_100_continue", "chunked_encoding",
    "expected_content_length", "access_log", "access_logger", "transport", "message_event",
    "on_response",
)
MODULE_ATTRIBUTES = ("RequestResponseCycle", "STATUS_LINE", "HEADER_RE", "HEADER_VALUE_RE")


def serves(send) -> bool:
    """Whether ``send`` is uvicorn's: a bound method of its protocol or request cycle."""
    return type(getattr(send, "__self__", None)).__module__.startswith("uvicorn.")


def _sansio_protocol(send):
    """uvicorn's ``websockets-sansio`` protocol behind ``send``, or ``None`` (another
    of its WebSocket implementations)."""
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

    protocol = send.__self__
    return protocol if isinstance(protocol, WebSocketsSansIOProtocol) else None


def missing_attributes(send) -> list[str]:
    """What this adapter reads that uvicorn's protocol lacks (empty: nothing)."""
    protocol = _sansio_protocol(send)
    if protocol is None:
        return []
    return [f"protocol.{name}" for name in PROTOCOL_ATTRIBUTES if not hasattr(protocol, name)]


def writer_for(send):
    """A :class:`TransportWriter` for an accepted ``websockets-sansio`` connection, or ``None``."""
    protocol = _sansio_protocol(send)
    if protocol is None or protocol.transport is None:
        return None
    return TransportWriter(protocol, send)


class TransportWriter:
    """Writes encoded frames to one uvicorn connection's asyncio transport.

    uvicorn's ``send`` waits while the transport is over high water, so one client
    that stops reading would hold up every coroutine that sends to it. The transport
    buffers what the peer has not taken, in order, as Twisted does; the consumer's
    slow-reader bound reads that buffer. Frames are never compressed: RFC 7692 lets
    a sender leave any message uncompressed.
    """

    __slots__ = ("asgi_send", "conn", "open_state", "protocol", "transport")

    name = "uvicorn's transport writer"
    takes_frames = True

    @property
    def frees_closed_connections(self) -> bool:
        """websockets-sansio leaves no cycle at the close, and the upgrade none once
        :func:`free_the_http_protocol_at_upgrade` has freed one (the process's HTTP
        protocol is httptools')."""
        return _upgrade_freed

    def __init__(self, protocol, asgi_send=None) -> None:
        from websockets.protocol import State

        self.protocol, self.conn, self.transport = protocol, protocol.conn, protocol.transport
        self.open_state = State.OPEN
        self.asgi_send = asgi_send

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


# --- HTTP answers (httptools) ----------------------------------------------------------


@functools.cache
def httptools_impl():
    """uvicorn's ``httptools`` module, or ``None`` without httptools."""
    try:
        from uvicorn.protocols.http import httptools_impl
    except ImportError:  # uvicorn without httptools
        return None
    return httptools_impl


_upgrade_freed = False  # a WebSocket upgrade has freed its httptools protocol at once


def free_the_http_protocol_at_upgrade() -> None:
    """Free uvicorn's httptools protocol when it hands its connection to WebSocket.

    Its parser calls it back, so the two are a reference cycle. uvicorn breaks it in
    ``connection_lost``, but not at an upgrade, where the protocol hands the
    transport on and is left to the garbage collector with the transport. In a
    reconnect storm the handshakes wait long enough for those protocols to reach the
    oldest generation, so each waited for a full collection. Dropping the parser
    once the transport is handed on, as ``connection_lost`` does, frees it at once.
    """
    impl = httptools_impl()
    if impl is None:
        return
    protocol_class = impl.HttpToolsProtocol
    original = getattr(protocol_class, "handle_websocket_upgrade", None)
    if original is None:
        # The writer then says frees_closed_connections=False: Python's spacing stays.
        logger.warning("uvicorn's HttpToolsProtocol has no handle_websocket_upgrade; its "
                       "protocols are left to the garbage collector at an upgrade")
        return
    if getattr(original, "frees_the_protocol", False):
        return

    def handle_websocket_upgrade(self) -> None:
        global _upgrade_freed
        original(self)
        self.parser = None  # nothing reads it again: the transport has a new protocol
        _upgrade_freed = True

    handle_websocket_upgrade.frees_the_protocol = True
    protocol_class.handle_websocket_upgrade = handle_websocket_upgrade


def http_cycle(send):
    """uvicorn's ``httptools`` request cycle behind ``send``, or ``None``."""
    impl = httptools_impl()
    cycle = send.__self__
    return cycle if impl is not None and type(cycle) is impl.RequestResponseCycle else None


def missing_http_attributes(send) -> list[str]:
    """What :func:`send_http_response` reads that uvicorn's module or request cycle lacks."""
    impl = httptools_impl()
    if impl is None:
        return []
    missing = [f"httptools_impl.{name}" for name in MODULE_ATTRIBUTES if not hasattr(impl, name)]
    cycle = http_cycle(send) if not missing else None
    if cycle is not None:
        missing += [f"cycle.{name}" for name in CYCLE_ATTRIBUTES if not hasattr(cycle, name)]
    return missing


async def send_http_response(send, status: int, headers: list[tuple[bytes, bytes]],
                             body: bytes) -> bool:
    """Write a whole keep-alive ``POST`` answer in one write; ``False``: not done.

    uvicorn's own ``send`` writes the head and the body apart (two system calls,
    two TCP segments); this writes the bytes its two calls would have written,
    with its bookkeeping (flow control, keep-alive, access log). Anything else
    (another of its implementations, a ``HEAD``, a connection uvicorn closes after
    the answer, an answer already started) is left to the ASGI messages.
    """
    cycle = http_cycle(send)
    if (cycle is None or cycle.response_started or not cycle.keep_alive
            or cycle.scope["method"] != "POST" or status in (204, 304)):
        return False
    impl = httptools_impl()
    if cycle.flow.write_paused and not cycle.disconnected:
        await cycle.flow.drain()
    if cycle.disconnected:
        return True
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
    return True


def stop_gracefully() -> None:
    """On SIGTERM, run :func:`realtime.shutdown.graceful_stop` before uvicorn's own shutdown.

    uvicorn's ``Server.shutdown`` stops listening, then closes every WebSocket
    with 1012 (which daphne cannot send, so the contract says 4012) and waits for
    running requests and tasks; its lifespan shutdown comes after all that (and
    the README runs it with ``--lifespan off``). Here listening stops first, then
    the graceful stop closes the sockets with 4012, answers or refuses requests
    and stores pending acks, then uvicorn's shutdown does the rest.
    """
    from uvicorn.server import Server

    from realtime import shutdown

    original = Server.shutdown
    if getattr(original, "stops_gracefully", False):
        return

    async def graceful_shutdown(self, sockets=None) -> None:
        for server in self.servers:
            server.close()  # uvicorn's first step too: no new connection meanwhile
        await shutdown.graceful_stop()
        await original(self, sockets)

    graceful_shutdown.stops_gracefully = True
    Server.shutdown = graceful_shutdown
