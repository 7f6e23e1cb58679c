"""``/ws/chat/<room>/``: history on join, presence, messages, private messages."""

import logging
from urllib.parse import parse_qs

from chat import fanout, services
from chat import protocol as chat_protocol
from chat.protocol import (
    HISTORY_ON_JOIN,
    HISTORY_SINCE_MAX,
    HistoryRequest,
    SendMessage,
    SendPrivate,
)
from realtime import protocol
from realtime.consumers import ProtocolConsumer
from realtime.protocol import Auth, ErrorCode, Ping, ProtocolError

logger = logging.getLogger(__name__)


class ChatConsumer(ProtocolConsumer):
    """A member of one room; the logic lives in :mod:`chat.services`."""

    endpoint = "chat"
    local: fanout.LocalRoom | None = None
    announced = False
    last_id = 0
    presence_version = 0
    pending: list | None = None

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

    async def joined(self) -> None:
        self.local = await fanout.join(self.hub, self.room, self)
        try:
            if self.since is None:
                items, truncated = await services.history(
                    self.room, self.user, limit=HISTORY_ON_JOIN)
            else:
                items, truncated = await services.history(
                    self.room, self.user, after=self.since, limit=HISTORY_SINCE_MAX)
        except Exception:
            logger.exception("could not read the history of room %s", self.room)
            await self.send_frame(protocol.error(
                ErrorCode.UNAVAILABLE, "history is unavailable; reconnect later"))
            await self.close()
            return
        if items:
            self.last_id = items[-1]["id"]
        await self.send_frame(chat_protocol.history(self.room, items, truncated))
        await fanout.announce_join(self.local, self)
        self.announced = True
        await fanout.go_live(self)

    async def left(self) -> None:
        await fanout.leave(self.hub, self.room, self, announced=self.announced)

    async def receive_frame(self, text: str | None, data: bytes | None) -> None:
        frame = chat_protocol.parse_chat_frame(text, data)
        if isinstance(frame, Ping):
            await self.send_frame(protocol.PONG)
        elif isinstance(frame, SendMessage):
            await self.call_service(services.message_send(
                local=self.local, user=self.user, content=frame.content, ref=frame.ref,
                origin=self.conn))
        elif isinstance(frame, SendPrivate):
            await self.call_service(services.private_send(
                local=self.local, user=self.user, target=frame.target, content=frame.content))
        elif isinstance(frame, HistoryRequest):
            await self.send_history_page(frame)
        elif isinstance(frame, Auth):
            await self.refresh_token(frame.token)

    async def call_service(self, action) -> None:
        try:
            await action
        except services.ServiceUnavailable as exc:
            raise ProtocolError(ErrorCode.UNAVAILABLE, str(exc)) from None

    async def send_history_page(self, request: HistoryRequest) -> None:
        items, truncated = await services.history(
            self.room, self.user, before=request.before, limit=request.limit)
        await self.send_frame(
            chat_protocol.history(self.room, items, truncated, before=request.before))
