"""WebSocket frames encoded once, for every connection they go to (RFC 6455, 5.2).

A server's frames are not masked, so one encoding serves a whole room; the
writers of :mod:`realtime.servers` put these bytes on the wire.
"""

import struct

__all__ = ["asgi_messages", "binary_frame", "text_frame"]

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


def asgi_messages(frames: bytes) -> list[dict]:
    """The ``websocket.send`` messages that carry the payloads of ``frames``: one
    encoded frame, or several one after another (a room's batch is written joined)."""
    messages, start, end = [], 0, len(frames)
    while start < end:
        length = frames[start + 1]
        head = 2 if length < 126 else 4 if length == 126 else 10
        if length >= 126:
            length = int.from_bytes(frames[start + 2 : start + head], "big")
        payload = frames[start + head : start + head + length]
        if frames[start] == _TEXT:
            messages.append({"type": "websocket.send", "text": payload.decode("utf-8")})
        else:
            messages.append({"type": "websocket.send", "bytes": payload})
        start += head + length
    return messages
