"""The daphne adapter: frames straight to the socket, and the start-up patches.

Everything here reads or changes private parts of daphne, Twisted and autobahn,
so it is on only for the versions in :data:`TESTED` (see :mod:`realtime.servers`).
"""

import asyncio
import errno
import functools
import logging
import time

from realtime.servers.asgi import AsgiWriter

logger = logging.getLogger(__name__)

#: Package -> (lowest tested version, first untested version).
TESTED = {"daphne": ("4.2.3", "4.3"), "twisted": ("26.10", "26.11"),
          "autobahn": ("26.10", "26.11")}
#: What the writers read of a Twisted TCP transport and of autobahn's protocol.
TRANSPORT_ATTRIBUTES = ("_tempDataLen", "dataBuffer", "offset", "socket", "connected",
                        "disconnecting")
PROTOCOL_ATTRIBUTES = ("STATE_OPEN", "state", "_perMessageCompress")


def serves(send) -> bool:
    """Whether ``send`` is daphne's: ``partial(server.handle_reply, protocol)``."""
    return (type(send) is functools.partial and bool(send.args)
            and type(getattr(send.func, "__self__", None)).__module__.startswith("daphne."))


def missing_attributes(send) -> list[str]:
    """What this adapter reads that daphne's protocol or its transport lacks."""
    protocol = send.args[0]
    transport = getattr(protocol, "transport", None)
    missing = [f"protocol.{name}" for name in PROTOCOL_ATTRIBUTES if not hasattr(protocol, name)]
    if transport is not None and is_tcp(transport):
        # A connection lost before its accept no longer has a socket (Twisted deletes
        # it); only a live one tells whether this Twisted has the attribute.
        lost = not getattr(transport, "connected", True)
        missing += [f"transport.{name}" for name in TRANSPORT_ATTRIBUTES
                    if not hasattr(transport, name) and not (lost and name == "socket")]
    return missing


def is_tcp(transport) -> bool:
    from twisted.internet.tcp import Connection

    return isinstance(transport, Connection)


def writer_for(send):
    """The writer for an accepted connection (autobahn settles permessage-deflate only
    at the accept), or ``None``: nothing of ours applies.

    The socket writer is what daphne would send only on a plain TCP transport (not
    daphne terminating TLS) without permessage-deflate; a compressed TCP connection
    keeps daphne's ``send``, and its Twisted buffer still counts for the bound.
    """
    protocol = send.args[0]
    transport = protocol.transport
    if transport is None:
        return None
    if not is_tcp(transport):
        _warn_untracked(type(transport).__name__)
        return None
    if not transport.connected:
        # The client left before its accept (in a reconnect storm, its handshake
        # timeout): Twisted has dropped the socket, and daphne's send ignores it.
        return None
    if protocol._perMessageCompress is None:
        return DirectWriter(protocol, transport, send)
    return AsgiWriter(send, backlog=functools.partial(buffered_bytes, transport))


@functools.cache  # once per kind of transport
def _warn_untracked(kind: str) -> None:
    logger.warning("daphne serves WebSockets over %s, not plain TCP (daphne terminating TLS?): "
                   "the slow-reader bound cannot see Twisted's buffer there, only a proxy's "
                   "or daphne's ping timeout limits it", kind)


def buffered_bytes(transport) -> int:
    """Bytes a Twisted TCP transport holds that the peer has not taken yet."""
    return len(transport.dataBuffer) - transport.offset + transport._tempDataLen


class DirectWriter:
    """Writes encoded frames to one daphne connection's socket.

    autobahn framing and Twisted's deferred write cost most of a fan-out per
    member; the bytes are the same, and what the kernel does not take goes to
    Twisted's buffer, so order and the slow-reader accounting stay Twisted's.
    """

    __slots__ = ("asgi_send", "open_state", "protocol", "send", "transport")

    name = "daphne's socket writer"
    takes_frames = True
    #: Only with this module's patches, which ``manage.py serve`` applies (and then spaces
    #: the collections itself); daphne started by its own command has none.
    frees_closed_connections = False
    #: Twisted buffers without waiting, so a close never waits on this writer.
    paused = False

    def __init__(self, protocol, transport, asgi_send=None) -> None:
        self.protocol, self.transport, self.asgi_send = protocol, transport, asgi_send
        self.open_state = protocol.STATE_OPEN
        # The socket's own send: one write per member of a room's fan-out.
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

    def abort(self) -> None:
        """Drop the connection at once, with whatever is still buffered."""
        self.transport.abortConnection()

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


# --- Start-up patches (``manage.py serve``) ----------------------------------------


def apply_patches() -> None:
    """The patches below; ``manage.py serve`` applies them before daphne starts."""
    plain_autobahn_log_arguments()
    skip_debug_log_arguments_of_reads()
    skip_debug_log_arguments_of_new_connections()
    skip_twisted_form_parsing()
    bound_request_bodies()
    stop_gracefully()
    free_closed_websockets()
    wait_for_close_answers()
    skip_unobserved_message_events()
    read_short_messages_directly()


def plain_autobahn_log_arguments() -> None:
    """Stop autobahn from colouring its debug-log arguments.

    autobahn builds the arguments of its ``log.debug`` calls on every frame, even
    with debug logging off, and colours them with ``click.style`` whenever click
    is importable (uvicorn brings it). Colour is all this changes.
    """
    import autobahn.util

    autobahn.util._HAS_CLICK = False


def skip_debug_log_arguments_of_reads() -> None:
    """Hand each read to autobahn without building its debug-log arguments first.

    autobahn's ``dataReceived`` builds the arguments of a ``log.debug`` call (its
    own qualified name, the peer, the length) for every read from a socket, even
    when txaio has made ``debug`` a no-op because debug logging is off: about 3%
    of the event loop when many small rooms chat (bench/RESULTS.md, "twelfth
    part"). While debug is off this skips straight to autobahn's ``_dataReceived``;
    with debug on (or a txaio without its no-op) autobahn's own method runs.
    """
    import txaio.tx
    from daphne.ws_protocol import WebSocketProtocol

    original = WebSocketProtocol.dataReceived
    no_op = getattr(txaio.tx, "_no_op", None)
    if getattr(original, "skips_debug_arguments", False) or no_op is None:
        return

    def dataReceived(self, data: bytes) -> None:
        if self.log.debug is not no_op:
            original(self, data)
            return
        self._dataReceived(data)

    dataReceived.skips_debug_arguments = True
    WebSocketProtocol.dataReceived = dataReceived


def skip_debug_log_arguments_of_new_connections() -> None:
    """Open each WebSocket connection without pretty-printing its options for a debug log.

    autobahn's ``_connectionMade`` formats its forty-odd options with
    ``pprint.pformat`` as the argument of a ``log.debug`` call for every new
    connection, even when txaio has made ``debug`` a no-op because debug logging is
    off: a third of the event loop in a reconnect storm (bench/RESULTS.md, "fifteenth
    part"). While debug is off, autobahn's own method runs with its module's
    ``pformat`` standing in as a no-op for the length of the call (that log call is
    its only use there); with debug on, it runs as it is. Only the reactor's thread
    opens connections, so nothing else sees the stand-in.
    """
    import autobahn.websocket.protocol
    import txaio.tx
    from daphne.ws_protocol import WebSocketProtocol

    original = WebSocketProtocol._connectionMade
    no_op = getattr(txaio.tx, "_no_op", None)
    module = autobahn.websocket.protocol
    if (getattr(original, "skips_debug_arguments", False) or no_op is None
            or not hasattr(module, "pformat")):
        return
    pformat = module.pformat

    def _connectionMade(self) -> None:
        if self.log.debug is not no_op:
            original(self)
            return
        module.pformat = _unformatted
        try:
            original(self)
        finally:
            module.pformat = pformat

    _connectionMade.skips_debug_arguments = True
    WebSocketProtocol._connectionMade = _connectionMade


def _unformatted(*args, **kwargs) -> str:
    """What a debug-log argument nobody logs is formatted to."""
    return ""


def skip_twisted_form_parsing() -> None:
    """Stop Twisted from parsing POST bodies into form arguments that daphne never reads.

    daphne hands the application the raw body; Twisted's own switch for that is
    its ``parsePOSTFormSubmission`` argument (Twisted 24.7+).
    """
    import inspect

    from daphne.http_protocol import WebRequest
    from twisted.web import http

    original = WebRequest.__init__
    if getattr(original, "skips_form_parsing", False):
        return
    if "parsePOSTFormSubmission" not in inspect.signature(http.Request.__init__).parameters:
        raise RuntimeError("Twisted's Request no longer takes parsePOSTFormSubmission")

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("parsePOSTFormSubmission", False)
        original(self, *args, **kwargs)

    __init__.skips_form_parsing = True
    WebRequest.__init__ = __init__


def bound_request_bodies() -> None:
    """Refuse a request body over ``HTTP_MAX_BODY_BYTES`` while it arrives: 413, then close.

    daphne lets Twisted buffer a whole body, then queues all of it for the
    application, which alone might refuse it; a client could make a process hold
    any size. Here a declared ``Content-Length`` over the limit is refused before
    any of the body is read, and an undeclared (chunked) one as it passes it.
    """
    from daphne.http_protocol import WebRequest
    from django.conf import settings

    if getattr(WebRequest.gotLength, "bounds_bodies", False):
        return
    got_length, content_chunk = WebRequest.gotLength, WebRequest.handleContentChunk

    def gotLength(self, length) -> None:
        self.body_received, self.body_refused = 0, False
        limit = settings.HTTP_MAX_BODY_BYTES
        if limit and length is not None and length > limit:
            refuse_body(self)
            length = 0
        got_length(self, length)

    def handleContentChunk(self, data: bytes) -> None:
        if self.body_refused:
            return
        self.body_received += len(data)
        limit = settings.HTTP_MAX_BODY_BYTES
        if limit and self.body_received > limit:
            refuse_body(self)
            return
        content_chunk(self, data)

    gotLength.bounds_bodies = True
    WebRequest.gotLength, WebRequest.handleContentChunk = gotLength, handleContentChunk


def refuse_body(request) -> None:
    """Answer 413 on the raw connection and close it; nothing more of it is read."""
    request.body_refused = True
    body = b'{"error": "too_large", "message": "request body too large"}'
    request.channel.transport.write(
        b"HTTP/1.1 413 Content Too Large\r\ncontent-type: application/json\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body)
    request.channel.transport.loseConnection()


def free_closed_websockets() -> None:
    """Let reference counting free a WebSocket connection's objects once it is over.

    Two reference cycles keep each WebSocket connection's objects (daphne's,
    Twisted's and autobahn's: about 60) until a full garbage collection, which
    under a reconnect storm walks every live connection (bench/RESULTS.md):

    * the HTTP request that was upgraded stays in its channel's ``requests``, and
      the request's ``channel`` is that channel. The channel is done with once
      the connection is handed to the WebSocket protocol, so the request leaves it.
    * autobahn resolves the protocol's ``is_closed`` Deferred with the protocol
      itself. Once the connection is lost, the Deferred is replaced by one resolved
      with ``None``: it is still resolved, for whoever asks later.
    """
    from daphne.http_protocol import WebRequest
    from daphne.ws_protocol import WebSocketProtocol
    from twisted.internet import defer

    process = WebRequest.process
    if getattr(process, "frees_upgraded_requests", False):
        return

    def upgrading_process(self):
        process(self)
        channel = self.channel
        # daphne hands the transport to the WebSocket protocol and keeps none.
        if self.transport is None and channel is not None and self in channel.requests:
            channel.requests.remove(self)

    upgrading_process.frees_upgraded_requests = True
    WebRequest.process = upgrading_process

    connection_lost = WebSocketProtocol.connectionLost

    def connectionLost(self, reason) -> None:
        connection_lost(self, reason)
        if self.is_closed.called:
            self.is_closed = defer.succeed(None)

    WebSocketProtocol.connectionLost = connectionLost


def wait_for_close_answers() -> None:
    """Give a client as long to answer a close frame as the consumer gives uvicorn's.

    autobahn drops a connection whose peer has not answered its close frame one
    second after the close was *sent*, buffered bytes and all; a client that has
    fallen behind (the slow-reader close, 4010) then never sees the close code.
    daphne sets no ``closeHandshakeTimeout``; here its factory starts with
    :data:`realtime.consumers.CLOSE_WAIT_SECONDS`, the bound a stalled close has
    under uvicorn. daphne's own options, set after, leave it as it is.
    """
    from daphne.ws_protocol import WebSocketFactory

    from realtime.consumers import CLOSE_WAIT_SECONDS

    original = WebSocketFactory.__init__
    if getattr(original, "waits_for_close_answers", False):
        return

    def __init__(self, *args, **kwargs) -> None:
        original(self, *args, **kwargs)
        self.setProtocolOptions(closeHandshakeTimeout=CLOSE_WAIT_SECONDS)

    __init__.waits_for_close_answers = True
    WebSocketFactory.__init__ = __init__


def skip_unobserved_message_events() -> None:
    """Skip autobahn's "message" event on a connection that nobody observes.

    After handing each message to daphne, autobahn fires a "message" event for
    observers registered with ``.on()``: a Deferred made, resolved and given an
    errback, per message. daphne registers none, and without observers the event
    does nothing; skipping it is a tenth of the event loop's time when many small
    rooms chat (bench/RESULTS.md, "tenth part"). A connection that has observers,
    or that failed, or tracks timings, goes through autobahn's own method.
    """
    from daphne.ws_protocol import WebSocketProtocol

    original = WebSocketProtocol.onMessageEnd
    if getattr(original, "skips_unobserved_events", False):
        return

    def onMessageEnd(self) -> None:
        if (self._listeners is not None or self._parent is not None or self.failedByMe
                or self.trackedTimings):
            original(self)
            return
        self._onMessage(b"".join(self.message_data), self.message_is_binary)
        self.message_data = None

    onMessageEnd.skips_unobserved_events = True
    WebSocketProtocol.onMessageEnd = onMessageEnd


#: The longest payload :func:`read_short_messages_directly` reads (one integer XOR
#: unmasks it faster than autobahn's native masker up to about 1.5 KiB).
SMALL_FRAME_BYTES = 1024


def unmask(data: bytes, mask: bytes) -> bytes:
    """``data`` XORed with the four bytes of ``mask`` repeated (RFC 6455, 5.3), as one
    XOR of two integers: under 1 µs for a chat message, against 3 µs for a native
    masker made per frame."""
    size = len(data)
    key = (mask * (size // 4 + 1))[:size]
    return (int.from_bytes(data, "little") ^ int.from_bytes(key, "little")).to_bytes(
        size, "little")


#: First byte of a whole (FIN) text or binary frame without extension bits.
WHOLE_TEXT, WHOLE_BINARY = 0x81, 0x82


def read_short_messages_directly() -> None:
    """Read a message that comes as one short masked frame without autobahn's frame machine.

    autobahn reads every frame through a dozen calls (header checks, a masker, a
    frame and a message begun and ended, an incremental UTF-8 validator): about
    15% of the event loop when many small rooms chat (bench/RESULTS.md, "tenth
    part"). Most client messages are one frame of a few dozen bytes. Such a frame,
    complete in the buffer, is read here with the same checks and bookkeeping:
    FIN set, no extension bits, text or binary, masked, under
    :data:`SMALL_FRAME_BYTES` in the shortest length encoding and within
    autobahn's frame and message limits, text that is valid UTF-8, on an open
    connection outside a fragmented message, with no compression, frame logging,
    timing or event observers. Anything else (control frames, fragments, partial
    frames, invalid text, a protocol violation) goes through autobahn's own
    ``processData``, which fails the connection as it always did.
    """
    from daphne.ws_protocol import WebSocketProtocol

    original = WebSocketProtocol.processData
    if getattr(original, "reads_short_messages", False):
        return
    open_state = WebSocketProtocol.STATE_OPEN

    def processData(self) -> bool:
        data = self.data
        if (len(data) < 6 or self.current_frame is not None or self.inside_message
                or self.state != open_state or self._perMessageCompress is not None
                or self.logFrames or self.trackedTimings or self.failedByMe
                or self._listeners is not None or self._parent is not None
                or not self.utf8validateIncoming or not self.applyMask):
            return original(self)
        first, second = data[0], data[1]
        # Masked (the high bit of the second byte), and a length in 7 or 16 bits.
        if (first != WHOLE_TEXT and first != WHOLE_BINARY) or second < 0x80 or second == 0xFF:
            return original(self)
        size = second & 0x7F
        if size == 126:
            size, start = int.from_bytes(data[2:4], "big"), 8
            if size < 126 or size >= SMALL_FRAME_BYTES:
                return original(self)
        else:
            start = 6
        end = start + size
        if (len(data) < end or 0 < self.maxFramePayloadSize < size
                or 0 < self.maxMessagePayloadSize < size):
            return original(self)
        payload = unmask(data[start:end], data[start - 4:start])
        is_binary = first == WHOLE_BINARY
        if not is_binary:
            try:
                payload.decode()
            except UnicodeDecodeError:
                return original(self)  # it fails the connection (1007)
        self.data = data[end:]
        stats = self.trafficStats
        stats.incomingOctetsWebSocketLevel += size
        stats.incomingOctetsAppLevel += size
        stats.incomingWebSocketFrames += 1
        stats.incomingWebSocketMessages += 1
        if self.autoPingTimeoutCall and self.autoPingRestartOnAnyTraffic:
            self._cancelAutoPingTimeoutCall()
        self.message_is_binary, self.message_data_total_length = is_binary, size
        self._onMessage(payload, is_binary)
        return len(self.data) > 0

    processData.reads_short_messages = True
    WebSocketProtocol.processData = processData


def stop_gracefully() -> None:
    """On SIGTERM (or SIGINT), stop listening and stop gracefully before daphne cancels.

    Twisted stops the reactor on SIGTERM: its "before shutdown" triggers run
    (daphne's :meth:`~daphne.server.Server.kill_all_applications` cancels every
    application instance at once: running requests go unanswered, consumers'
    ``disconnect()`` never runs), then "during shutdown" closes every socket,
    listening ports last of all. Here daphne's trigger first closes the
    listening ports, then waits (a Deferred on an asyncio future: Twisted waits
    for it) for :func:`realtime.shutdown.graceful_stop` and for the answers to
    leave Twisted's buffers, all within ``SHUTDOWN_GRACE_SECONDS``; what is
    left then is daphne's to cancel, as before.
    """
    from daphne.server import Server
    from twisted.internet import defer

    from realtime import shutdown

    original = Server.kill_all_applications
    if getattr(original, "stops_gracefully", False):
        return

    def kill_all_applications(self):
        stop_listening()
        done = defer.Deferred.fromFuture(
            asyncio.ensure_future(shutdown.graceful_stop(last=flush_transports)))
        done.addErrback(lambda failure: logger.error("graceful stop failed: %s", failure))
        done.addBoth(lambda _: original(self))
        return done

    kill_all_applications.stops_gracefully = True
    Server.kill_all_applications = kill_all_applications


def stop_listening() -> None:
    """Close daphne's listening ports: new connections are refused, not left waiting."""
    from twisted.internet import reactor, tcp

    for reader in list(reactor.getReaders()):
        if isinstance(reader, tcp.Port):
            reader.stopListening()


#: How long the stop waits for answers to leave Twisted's buffers (within the grace).
FLUSH_SECONDS = 2.0


async def flush_transports() -> None:
    """Wait until Twisted has handed every connection's buffered bytes to the kernel.

    Twisted writes a buffer when the socket is writable; "during shutdown" it
    drops every connection with whatever is still buffered (the last answers).
    """
    from twisted.internet import reactor, tcp

    deadline = time.monotonic() + FLUSH_SECONDS
    while time.monotonic() < deadline:
        if not any(isinstance(writer, tcp.Connection) for writer in reactor.getWriters()):
            return
        await asyncio.sleep(0.01)
