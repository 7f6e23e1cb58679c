"""``/ws/echo/`` and the catch-all that refuses every other WebSocket path."""

from channels.generic.websocket import AsyncWebsocketConsumer

from realtime.consumers import ProtocolConsumer


class EchoConsumer(ProtocolConsumer):
    """``/ws/echo/``: text ``X`` comes back as ``Echo: X``, bytes as themselves."""

    requires_user = False
    endpoint = "echo"

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """Raw frames, not JSON: even ``ping`` is echoed."""
        if text_data is not None:
            await self.send("Echo: " + text_data)
        elif bytes_data:
            await self.send(bytes_data=bytes_data)


class RefusingConsumer(AsyncWebsocketConsumer):
    """Any WebSocket path without a route: refused at the handshake (HTTP 403)."""

    async def websocket_connect(self, message) -> None:
        await self.close()
