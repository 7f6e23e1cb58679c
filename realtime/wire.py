"""WebSocket frames encoded once, for every connection they go to (RFC 6455, 5.2).

A server's frames are not masked, so one encoding serves a whole room; the
writers of :mod:`realtime.servers` put these bytes on the wire.
"""

import struct

__all__ = ["asgi_message", "binary_frame", "text_frame"]

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


def asgi_message(frame: bytes) -> dict:
    """The ``websocket.send`` message that carries the payload of ``frame``."""
    length = frame[1]
    payload = frame[2 if length < 126 else 4 if length == 126 else 10:]
    if frame[0] == _TEXT:
        return {"type": "websocket.send", "text": payload.decode("utf-8")}
    return {"type": "websocket.send", "bytes": payload}
