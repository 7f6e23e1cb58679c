"""Client WebSocket frames built byte by byte (RFC 6455, section 5), for raw-socket tests."""

import os
import struct

TEXT, BINARY, CONTINUATION, CLOSE, PING, PONG = 1, 2, 0, 8, 9, 10


def frame(opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0,
          masked: bool = True, long_length: bool = False) -> bytes:
    """One client frame; ``long_length`` writes a short length in 16 bits (not allowed)."""
    head = bytes([(0x80 if fin else 0) | rsv << 4 | opcode])
    bit, size = (0x80 if masked else 0), len(payload)
    if size < 126 and not long_length:
        head += bytes([bit | size])
    elif size < 65536:
        head += bytes([bit | 126]) + struct.pack("!H", size)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", size)
    if not masked:
        return head + payload
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
