"""The per-connection limits on what a client sends: frame size and frame rate."""

import time


def too_large(text: str | None, data: bytes | None, limit: int) -> bool:
    """Whether a frame's payload exceeds ``limit`` bytes (0: no limit)."""
    if not limit:
        return False
    if data is not None:
        return len(data) > limit
    if text is None:
        return False
    # A code point is at most 4 bytes in UTF-8: skip the encoding when it can't matter.
    if len(text) > limit:
        return True
    # surrogatepass: text from an in-process caller may hold lone surrogates (3 bytes each).
    return len(text) * 4 > limit and len(text.encode("utf-8", "surrogatepass")) > limit


class TokenBucket:
    """``rate`` frames per second with bursts of ``burst``; either 0 disables it."""

    __slots__ = ("burst", "dropped_in_row", "rate", "stamp", "tokens")

    def __init__(self, rate: int, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self.tokens = float(burst)
        self.stamp = time.monotonic()
        self.dropped_in_row = 0

    def take(self) -> bool:
        if not self.rate or not self.burst:
            return True
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            self.dropped_in_row = 0
            return True
        self.dropped_in_row += 1
        return False
