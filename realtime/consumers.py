"""The base of every WebSocket consumer.

:class:`ProtocolConsumer` applies what the contract says of every endpoint:
the auth outcomes (accept, then close 4001/4002/4003), the connection caps
(4013), the message-size limit (4009), the per-connection token bucket
(``rate_limited``, then 4008), the send-buffer bound (4010), the frames every
JSON endpoint shares (``ping``, ``auth``) and the close at token expiry.

Subclasses use channels' hooks: :meth:`~ProtocolConsumer.connect` and
:meth:`~ProtocolConsumer.disconnect` run after and before the base's own
checks (and :meth:`~ProtocolConsumer.join`/:meth:`~ProtocolConsumer.leave`
for what must be subscribed before the handshake is answered), each JSON
frame ``type`` goes to the method ``on_<type>`` (as channels
maps a message type to a handler name), and :meth:`~ProtocolConsumer.send` is
the one bounded, counted way out. A :class:`~realtime.protocol.ProtocolError`
raised by a handler becomes an ``error`` frame and the connection stays open.
"""

import asyncio
import collections
import logging
from collections.abc import Awaitable
from datetime import UTC, datetime

from channels.consumer import get_handler_name
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

from realtime import metrics, protocol, servers, shutdown, tokens, wire
from realtime.hub import Hub, get_hub
from realtime.limits import MAX_FRAMES_IN_FLIGHT, TokenBucket, too_large
from realtime.middleware import get_active_user
from realtime.protocol import CloseCode, ErrorCode, ProtocolError

logger = logging.getLogger(__name__)

#: How long a close waits for a client that has stopped reading to take what is
#: buffered before it (uvicorn's ``send`` waits for that); then the connection is dropped.
CLOSE_WAIT_SECONDS = 10.0


#: The close-downs and token-expiry closes still running, which nothing else awaits
#: (a task is only weakly held by the loop).
_closing_down: set[asyncio.Future] = set()


def _held(closing: Awaitable[None]) -> asyncio.Future:
    """Run ``closing`` in a task held in :data:`_closing_down` until it is done."""
    task = asyncio.ensure_future(closing)
    _closing_down.add(task)
    task.add_done_callback(_closing_down.discard)
    return task


class ProtocolConsumer(AsyncWebsocketConsumer):
    """A consumer that keeps the contract's limits and auth rules."""

    #: Whether the endpoint needs an authenticated user.
    requires_user = True
    #: The endpoint's name in the connection registry.
    endpoint = ""
    #: No channel-layer channel per connection: the process hub carries all layer
    #: traffic (an unknown alias makes channels skip the per-consumer channel).
    channel_layer_alias = None
    #: Always empty: a subclass that sets it, or the alias, is refused (``__init_subclass__``).
    groups = ()
    #: Frame type -> the name of its ``on_<type>`` handler, collected per class.
    frame_handlers: dict[str, str] = {}
    #: Frame types whose handling does not hold up the frames after them (see
    #: :meth:`overlap`): a connection's chat messages, stored in the order sent, share
    #: their room's batches under load instead of waiting for each other's commit.
    overlapping_types: frozenset[str] = frozenset()

    hub: Hub
    conn: str
    closing = False
    _counted = False
    _registered = False
    _joined = False  # join() ran: leave() runs at the close
    _connected = False  # connect() ran: disconnect() runs at the close
    _tracked = False  # in hub.consumers (a graceful stop closes those)
    #: The client's address (behind a proxy with PROXY_HEADERS: X-Forwarded-For).
    address = ""
    _expiry: asyncio.TimerHandle | None = None
    _direct = None  # the connection's writer (realtime.servers), set at the accept
    _takes_frames = False  # whether it takes encoded text frames (else ASGI messages)
    _closer: asyncio.Task | None = None
    _close_down: asyncio.Future | None = None
    _in_flight: "collections.deque[asyncio.Future] | None" = None

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if cls.groups or cls.channel_layer_alias is not None:
            raise TypeError(
                f"{cls.__name__}: set neither groups nor channel_layer_alias; a consumer here "
                "has no channel-layer channel, the process hub carries all layer traffic: "
                "subscribe a listener with hub.subscribe(group, listener) in connect() and "
                "unsubscribe in disconnect()"
            )
        cls.frame_handlers = {
            name[3:]: name for name in dir(cls)
            if name.startswith("on_") and callable(getattr(cls, name))
        }

    async def __call__(self, scope, receive, send):
        """Run the consumer: each event from the server goes to :meth:`dispatch`.

        Channels' own loop races the server's ``receive`` against the layer's in
        a new task per event; with no layer channel there is only ``receive``.
        """
        self.scope = scope
        self.channel_layer = None
        self.base_send = send
        try:
            while True:
                await self.dispatch(await receive())
        except StopConsumer:
            pass
        except asyncio.CancelledError:
            # daphne cancels an application whose close has not finished within its
            # close timeout (10 s: a backlog after thousands of sockets closed at once),
            # also one that has not read its disconnect yet. What the connection holds
            # (its rooms and presence, its slot, its registration) is given back anyway.
            self.close_down(None)
            raise

    async def dispatch(self, message):
        """Call the handler directly.

        Channels' own ``dispatch`` closes stale database connections through a
        thread hop on every event; all our database work goes through
        ``database_sync_to_async``, which does that itself.
        """
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    # --- Lifecycle ----------------------------------------------------------------

    def handshake_refusal(self) -> str | None:
        """A reason to refuse the handshake (HTTP 403), or ``None``."""
        return None

    async def websocket_connect(self, message) -> None:
        """Refuse or accept; check auth and the caps; register; then :meth:`connect`."""
        # Resolved once: send runs per frame per member of a room.
        self._send = self.scope.get("server_send") or self.base_send
        self._send_buffer_limit = settings.WS_MAX_SEND_BUFFER_BYTES
        self._frames_out = metrics.counter("realtime_frames_out_total", endpoint=self.endpoint)
        self._frames_in = metrics.counter("realtime_frames_in_total", endpoint=self.endpoint)
        refusal = self.handshake_refusal()
        if refusal:
            logger.info("refused %s handshake: %s", self.endpoint, refusal)
            await self.close()
            return
        self.hub = await get_hub()
        self.conn = self.hub.new_connection_name()
        self.user = self.scope.get("user")
        auth_error = self.scope.get("auth_error") if self.requires_user else None
        if auth_error is None and not shutdown.stopping():
            self._joined = True
            await self.join()
        await super().accept()
        self._direct = servers.writer_for(self._send)
        # Every other message (the close) keeps its place behind the queued frames.
        self.base_send = self._send = self._direct.asgi_send
        self._takes_frames = self._direct.takes_frames
        if auth_error is not None:
            logger.info("closed %s connection: auth failure %s", self.endpoint, auth_error.name)
            metrics.inc("realtime_auth_failures_total", code=str(int(auth_error)))
            await self.close_with(auth_error)
            return
        if shutdown.stopping():
            await self.close_with(CloseCode.SERVER_RESTARTING)
            return
        self.address = str((self.scope.get("client") or [""])[0])  # daphne: host, port
        over = self.hub.slots.take(not self.requires_user, self.address)
        if over:  # the anonymous caps are the expected answer to a flood: info
            level = logging.INFO if over.startswith("anonymous") else logging.WARNING
            logger.log(level, "%s reached: closed a %s connection", over, self.endpoint)
            await self.close_with(CloseCode.TOO_MANY_CONNECTIONS)
            return
        self.hub.consumers.add(self)
        self._tracked = True
        self._counted = True
        metrics.inc("realtime_connections_total", endpoint=self.endpoint)
        metrics.inc("realtime_connections_open", endpoint=self.endpoint)
        self.bucket = TokenBucket(settings.WS_RATE_LIMIT, settings.WS_RATE_BURST)
        if self.requires_user:
            # Set before the round trip: a cancel that lands while Redis takes the slot
            # (daphne's close timeout) must still give it back at the close-down.
            self._registered = True
            self._registered = await self.hub.registry.register(
                self.user.username, self.conn, self.endpoint,
                settings.WS_MAX_CONNECTIONS_PER_USER,
            )
            if not self._registered:
                logger.info("per-user connection cap reached for a user")
                await self.close_with(CloseCode.TOO_MANY_CONNECTIONS)
                return
            self.hub.add_user_connection(self.user.username, self)
            self.schedule_expiry(self.scope.get("token_expires_at"))
        self._connected = True
        await self.connect()

    async def websocket_disconnect(self, message) -> None:
        """Give back what the connection holds (:meth:`close_down`), then stop."""
        await asyncio.shield(self.close_down(message.get("code")))
        raise StopConsumer()

    def close_down(self, code: int | None) -> asyncio.Future:
        """Start giving back what the connection holds, once; the task that does it.

        It runs in a task of its own, so that a consumer cancelled meanwhile (see
        :meth:`__call__`) does not leave a room's presence, a slot or a
        registration behind; a graceful stop waits for it (the consumer leaves
        ``hub.consumers`` at its end).
        """
        self.closing = True
        if self._close_down is None:
            self._close_down = _held(self._give_back(code))
        return self._close_down

    async def _give_back(self, code: int | None) -> None:
        """Free the connection's slots, then :meth:`disconnect` and :meth:`leave` (if run).

        The slots go first: a client whose close handshake has completed finds
        its slot free, even while this connection's disconnect work (leaving
        rooms, writing acks) goes on.
        """
        if self._expiry is not None:
            self._expiry.cancel()
        if self._counted:
            self._counted = False
            self.hub.slots.release(not self.requires_user, self.address)
            metrics.inc("realtime_connections_open", -1, endpoint=self.endpoint)
        unregistered = None
        if self._registered:  # the per-user slot: Redis's round trip runs beside disconnect()
            self._registered = False
            self.hub.remove_user_connection(self.user.username, self)
            unregistered = asyncio.ensure_future(
                self.hub.registry.unregister(self.user.username, self.conn))
        try:
            # What the connection sent before it closed is handled before it leaves:
            # its room sees its last messages, then that it left.
            await self.settle_in_flight()
            try:
                if self._connected:
                    await self.disconnect(code)
            finally:
                if self._joined:
                    await self.leave()
        except Exception:
            logger.exception("error while leaving a %s connection", self.endpoint)
        finally:
            if unregistered is not None:
                try:
                    await unregistered
                except Exception:
                    logger.exception("could not unregister a connection")
            if self._tracked:  # a refused handshake never was
                self.hub.consumers.discard(self)

    async def join(self) -> None:
        """Before the handshake is answered: subscribe to what the client must not miss.

        It runs for a connection whose credentials passed, while the server is not
        stopping. The caps are checked after the handshake (the contract closes
        with a code), so a connection may still be refused: :meth:`leave` undoes
        this at the close, whether :meth:`connect` ran or not. It should not
        raise: keep a failure and report it to the client in :meth:`connect`.
        """

    async def leave(self) -> None:
        """The connection closed after :meth:`join` ran: undo it (after :meth:`disconnect`)."""

    async def connect(self) -> None:
        """The connection is accepted, authenticated and within the caps: start sending.

        Unlike channels' ``connect``, it does not accept: the base has (the
        contract closes bad credentials after the handshake). Refuse a handshake
        in :meth:`handshake_refusal`.
        """

    async def disconnect(self, code: int | None) -> None:
        """The connection closed after :meth:`connect` ran."""

    async def accept(self, subprotocol=None, headers=None) -> None:
        """Refused: the base accepts the handshake itself, before :meth:`connect`."""
        raise TypeError(
            f"{type(self).__name__}: do not call accept(); the base accepts every handshake "
            "that handshake_refusal() lets through before it calls connect()"
        )

    async def close_with(self, code: CloseCode) -> None:
        """Close with an application code; nothing more is sent or handled.

        Under uvicorn, when the client has left more unread than the transport's
        high-water mark, uvicorn's ``send`` would wait for it to read: the close
        then goes on in a task of its own, so that the caller (a room's fan-out,
        the notification feed) serves the other connections meanwhile.
        """
        if not self.closing:
            self.closing = True
            metrics.inc("realtime_closes_total", code=str(int(code)))
            if self._direct is not None and self._direct.paused:
                self._closer = asyncio.get_running_loop().create_task(
                    self._close_stalled(int(code))
                )
                return
            await self.close(code=int(code))

    async def _close_stalled(self, code: int) -> None:
        """Close once the client has read what is before the close frame, or drop it."""
        try:
            await asyncio.wait_for(self.close(code=code), CLOSE_WAIT_SECONDS)
        except TimeoutError:
            logger.info("dropped a %s connection that did not read its close", self.endpoint)
            self._direct.abort()
        except Exception:
            logger.debug("a stalled %s connection went away before its close", self.endpoint,
                         exc_info=True)

    async def revoke(self) -> None:
        """The user was deactivated or deleted: close as for an unknown user."""
        await self.close_with(CloseCode.INVALID_CREDENTIALS)

    async def send(self, text_data: str | None = None, bytes_data: bytes | None = None,
                   close: bool = False, *, encoded: bytes | None = None) -> None:
        """Send one frame, within the send-buffer bound (4010) and counted.

        ``encoded`` is the text's :func:`~realtime.wire.text_frame` when the
        caller already has it (one encoding for a room's members).
        """
        if text_data is None and bytes_data is None:
            raise ValueError("You must pass one of bytes_data or text_data")
        if close:
            raise TypeError("send(close=...) is not supported: await close_with(CloseCode.X) "
                            "after send()")
        if self.closing:
            return
        limit = self._send_buffer_limit
        if limit and self.unsent_bytes() > limit:
            logger.warning("closing a %s connection that stopped reading", self.endpoint)
            await self.close_with(CloseCode.SLOW_CONSUMER)
            return
        self._frames_out.value += 1
        if text_data is not None:
            if self._takes_frames:
                self._direct.write(encoded or wire.text_frame(text_data))
            else:
                await self._send({"type": "websocket.send", "text": text_data})
        elif self._takes_frames:
            self._direct.write(wire.binary_frame(bytes_data))
        else:
            await self._send({"type": "websocket.send", "bytes": bytes_data})

    def send_now(self, encoded: bytes, frames: int = 1) -> bool:
        """Write encoded text frames (``frames`` of them, joined) at once if nothing
        is queued before them.

        ``False`` means nothing was done and :meth:`send` must send each
        (another server, a closing connection, or bytes already waiting: that
        is where the slow-reader bound is checked). A room's fan-out calls this
        per member, so it is plain, not a coroutine.
        """
        direct = self._direct
        if direct is None or self.closing or not direct.write_if_idle(encoded):
            return False
        self._frames_out.value += frames
        return True

    def unsent_bytes(self) -> int:
        """Bytes sent to this client that it has not read yet."""
        return self._direct.unsent_bytes() if self._direct is not None else 0

    # --- Incoming frames ----------------------------------------------------------------

    async def websocket_receive(self, message) -> None:
        """Size limit and token bucket, then :meth:`receive`; its errors become frames.

        A frame is answered after the overlapping frames before it (:meth:`overlap`)
        have been handled, a refused one too: a flooder's accepted messages are
        stored before its 4008.
        """
        if self.closing:
            return
        text, data = message.get("text"), message.get("bytes")
        self._frames_in.value += 1
        if too_large(text, data, settings.WS_MAX_MESSAGE_BYTES):
            await self.settle_in_flight()
            await self.close_with(CloseCode.MESSAGE_TOO_BIG)
            return
        if not self.bucket.take():
            await self.settle_in_flight()
            # Every dropped frame is answered, the one that reaches the burst too.
            await self.send(
                protocol.error(ErrorCode.RATE_LIMITED, "too many frames; slow down")
            )
            if self.bucket.dropped_in_row >= settings.WS_RATE_BURST:
                logger.info("closing a %s connection that kept flooding", self.endpoint)
                await self.close_with(CloseCode.RATE_LIMITED)
            return
        try:  # as _answering() does, without a coroutine more per frame
            await self.receive(text, data)
        except Exception as exc:
            await self.answer_error(exc)

    async def answer_error(self, exc: Exception) -> None:
        """The ``error`` frame of a frame's handling that raised ``exc``: its code for a
        :class:`~realtime.protocol.ProtocolError`, else ``unavailable`` (logged)."""
        if isinstance(exc, ProtocolError):
            metrics.inc("realtime_errors_total", code=str(exc.code))
            await self.send(protocol.error(exc.code, exc.message))
            return
        logger.error("unexpected error handling a %s frame", self.endpoint, exc_info=exc)
        metrics.inc("realtime_errors_total", code=str(ErrorCode.UNAVAILABLE))
        await self.send(
            protocol.error(ErrorCode.UNAVAILABLE, "the server could not handle this frame")
        )

    async def _answering(self, handling: Awaitable[None]) -> None:
        """Await an overlapping frame's handling; its errors become ``error`` frames."""
        try:
            await handling
        except Exception as exc:
            await self.answer_error(exc)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """A JSON frame: call its type's ``on_<type>`` with the decoded frame.

        A type without a handler gets ``unknown_type``; an endpoint of raw
        frames overrides this method (see :class:`realtime.echo.EchoConsumer`).
        """
        try:
            frame = protocol.load_frame(text_data, bytes_data)
        except ProtocolError:
            await self.settle_in_flight()  # answered after the frames before it
            raise
        name = self.frame_handlers.get(frame["type"])
        if name is not None and frame["type"] in self.overlapping_types:
            await self.overlap(getattr(self, name)(frame))
            return
        if self._in_flight:
            await self.settle_in_flight()
        if name is None:
            raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown frame type {frame['type']!r}")
        await getattr(self, name)(frame)

    async def overlap(self, handling: Awaitable[None]) -> None:
        """Go on to the connection's next frame while ``handling`` runs.

        Its errors are answered as any handler's. At most
        :data:`~realtime.limits.MAX_FRAMES_IN_FLIGHT` run at once: past that, this
        waits for the oldest, and the frames after it wait in the server's queue as
        they do behind any handler. The handlings start in the order the frames came
        (a chat message takes its place in its room's queue in its first step), and
        a frame of another type waits for all of them first (:meth:`receive`), as
        the connection's close does: overlapping reorders nothing the client sees.
        """
        in_flight = self._in_flight
        if in_flight is None:
            in_flight = self._in_flight = collections.deque()
        in_flight.append(asyncio.ensure_future(self._answering(handling)))
        while in_flight and (in_flight[0].done() or len(in_flight) >= MAX_FRAMES_IN_FLIGHT):
            await in_flight.popleft()

    async def settle_in_flight(self) -> None:
        """Wait until every overlapping frame (:meth:`overlap`) has been handled."""
        in_flight = self._in_flight
        while in_flight:
            await in_flight.popleft()

    async def on_ping(self, frame: dict) -> None:
        """``ping`` (or the plain text ``ping``) -> ``pong``."""
        await self.send(protocol.PONG)

    async def on_auth(self, frame: dict) -> None:
        """``auth`` refreshes the connection's token (endpoints with a user only)."""
        if not self.requires_user:
            raise ProtocolError(ErrorCode.UNKNOWN_TYPE, "unknown frame type 'auth'")
        await self.refresh_token(protocol.parse_auth(frame).token)

    # --- Token lifetime ---------------------------------------------------------------

    def schedule_expiry(self, expires_at: datetime | None) -> None:
        """Close with 4001 when a token-authenticated connection's token expires."""
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if expires_at is None:
            return
        delay = max(0.0, (expires_at - datetime.now(UTC)).total_seconds()) + 0.05
        self._expiry = asyncio.get_running_loop().call_later(delay, self._expire)

    def _expire(self) -> None:
        self._expiry = None
        _held(self.close_with(CloseCode.TOKEN_EXPIRED))

    async def refresh_token(self, token: str) -> None:
        """Same user, valid token -> ``auth_ok``; else ``invalid_token``."""
        try:
            claims = tokens.decode(token)
        except tokens.TokenError:
            raise ProtocolError(ErrorCode.INVALID_TOKEN, "token is expired or invalid") from None
        if claims.user_id != self.user.username or await get_active_user(claims.user_id) is None:
            raise ProtocolError(ErrorCode.INVALID_TOKEN, "token is for another or inactive user")
        if self.scope.get("token_expires_at") is not None:
            self.schedule_expiry(claims.expires_at)
        await self.send(protocol.auth_ok(claims.expires_at))
