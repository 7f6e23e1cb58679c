"""``/ws/chat/<room>/``: history on join, presence, messages, private messages,
deletions, read markers and typing."""

import logging
from urllib.parse import parse_qs

from django.conf import settings

from chat import fanout, services
from chat import protocol as chat_protocol
from chat.errors import Forbidden, InvalidTarget, NotFound, NotInRoom, ServiceUnavailable
from chat.protocol import HISTORY_ON_JOIN, HISTORY_SINCE_MAX
from chat.rooms import RoomAccess
from realtime import protocol, wire
from realtime.consumers import ProtocolConsumer
from realtime.gapless import Gapless
from realtime.limits import AddressBudget, drain
from realtime.protocol import CloseCode, ErrorCode, ProtocolError

logger = logging.getLogger(__name__)


class ChatConsumer(Gapless, ProtocolConsumer):
    """A member of one room; the logic lives in :mod:`chat.services`.

    It joins without a gap (:class:`~realtime.gapless.Gapless`): ``fanout.join``
    starts holding what the room publishes, the history is read and sent, and
    ``fanout.go_live`` releases what the history did not hold.
    """

    endpoint = "chat"
    overlapping_types = frozenset({"message"})
    local: fanout.LocalRoom | None = None
    access: RoomAccess | None = None
    announced = False
    last_id = 0
    presence_version = 0

    def handshake_refusal(self) -> str | None:
        self.room = self.scope["url_route"]["kwargs"]["room"]
        query = parse_qs(self.scope.get("query_string", b"").decode("latin1"))
        since = (query.get("since") or [""])[-1]
        self.since = None
        if since:
            try:
                self.since = protocol.parse_cursor(since)
            except ValueError:
                return "bad ?since="
        return None

    @property
    def username(self) -> str:
        return self.user.username

    @property
    def is_staff(self) -> bool:
        return self.user.is_staff

    async def connect(self) -> None:
        """History, then ``user_joined``, then what the room published meanwhile.

        The history is built within its client address's budget (past it the join
        is closed with 4013, before anything is read) and paced: a frame larger than
        the send-buffer bound is written whole, and the next frame waits until the
        client has taken most of it, so a reader at a normal pace is never closed
        with 4010.
        """
        budget = self.hub.apps.setdefault("chat.history_budget", AddressBudget())
        async with budget.turn(self.address,
                               settings.CHAT_HISTORY_BYTES_PER_SECOND,
                               settings.CHAT_HISTORY_BURST_BYTES) as charge:
            if charge is None:
                logger.info("refused a chat join: its address used its history budget")
                await self.close_with(CloseCode.TOO_MANY_CONNECTIONS)
                return
            self.local = await fanout.join(self.hub, self.room, self)
            frame = await self.read_history()
            if frame is None:
                return
            encoded = wire.text_frame(frame)
            charge(len(encoded))
        await self.send(frame, encoded=encoded)
        del frame, encoded  # the server's buffer holds what is left of it
        if not await drain(self):
            logger.warning("closing a chat connection that stopped reading its history")
            await self.close_with(CloseCode.SLOW_CONSUMER)
            return
        if self.closing:
            return
        # From here the room's presence may hold this connection, even if the join is
        # cut short (a cancelled application): the leave must take it out again.
        self.announced = True
        await fanout.announce_join(self.local, self)
        await fanout.go_live(self)

    async def read_history(self) -> str | None:
        """The history frame of the join; ``None``: the connection is closed, with
        4004 if the user may not see the room."""
        try:
            if self.since is None:
                joined = await services.join(self.room, self.user, after=None,
                                             limit=HISTORY_ON_JOIN)
            else:
                joined = await services.join(self.room, self.user, after=self.since,
                                             limit=HISTORY_SINCE_MAX)
        except Exception:
            logger.exception("could not read the history of room %s", self.room)
            await self.send(protocol.error(
                ErrorCode.UNAVAILABLE, "history is unavailable; reconnect later"))
            await self.close()
            return None
        if not joined.access.visible:
            logger.info("refused a chat join: the room is private or the user banned")
            await self.close_with(CloseCode.NOT_FOUND)
            return None
        self.access = joined.access
        if joined.items:
            self.last_id = joined.items[-1]["id"]
        return chat_protocol.history(self.room, joined.items, joined.truncated)

    async def evict(self) -> None:
        """The user was removed from the room or banned: 4004."""
        logger.info("closing a chat connection: its user was removed or banned")
        await self.close_with(CloseCode.NOT_FOUND)

    async def disconnect(self, code: int | None) -> None:
        await fanout.leave(self.hub, self.room, self, announced=self.announced)

    async def on_message(self, frame: dict) -> None:
        message = chat_protocol.parse_message(frame)
        await self.call_service(services.message_send(
            local=self.local, user=self.user, content=message.content, ref=message.ref,
            origin=self.conn))

    async def on_private(self, frame: dict) -> None:
        private = chat_protocol.parse_private(frame)
        await self.call_service(services.private_send(
            local=self.local, user=self.user, target=private.target, content=private.content))

    async def on_history(self, frame: dict) -> None:
        request = chat_protocol.parse_history(frame)
        items, truncated = await services.history(
            self.access, self.user, before=request.before, limit=request.limit)
        await self.send(
            chat_protocol.history(self.room, items, truncated, before=request.before))

    async def on_delete(self, frame: dict) -> None:
        delete = chat_protocol.parse_delete(frame)
        await self.call_service(services.delete(
            local=self.local, access=self.access, user=self.user, message_id=delete.id))

    async def on_read(self, frame: dict) -> None:
        read = chat_protocol.parse_read(frame)
        await self.call_service(services.read(
            local=self.local, access=self.access, user=self.user, message_id=read.id,
            origin=self.conn))

    async def on_typing(self, frame: dict) -> None:
        chat_protocol.parse_typing(frame)
        await services.typing(local=self.local, user=self.user)

    async def call_service(self, action) -> None:
        """Await a chat service; its errors become the contract's error codes."""
        try:
            await action
        except ServiceUnavailable as exc:
            raise ProtocolError(ErrorCode.UNAVAILABLE, str(exc)) from None
        except NotInRoom as exc:
            raise ProtocolError(ErrorCode.NOT_IN_ROOM, str(exc)) from None
        except InvalidTarget as exc:
            raise ProtocolError(ErrorCode.INVALID_MESSAGE, str(exc)) from None
        except NotFound as exc:
            raise ProtocolError(ErrorCode.NOT_FOUND, exc.message) from None
        except Forbidden as exc:
            raise ProtocolError(ErrorCode.FORBIDDEN, exc.message) from None
