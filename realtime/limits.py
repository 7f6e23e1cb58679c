"""The per-connection limits on what a client sends (frame size and frame rate), and
this process's connection slots."""

import time

from django.conf import settings


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


class ConnectionSlots:
    """This process's WebSocket slots (settings read at call time; 0 disables a cap).

    ``WS_MAX_CONNECTIONS`` counts every socket; at most ``WS_MAX_ANONYMOUS_CONNECTIONS``
    of them are anonymous (endpoints without a user), and at most
    ``WS_MAX_CONNECTIONS_PER_ADDRESS`` anonymous ones per client address. So anonymous
    sockets never take the last ``WS_MAX_CONNECTIONS - WS_MAX_ANONYMOUS_CONNECTIONS``
    slots: those stay for authenticated users (each capped by the registry).
    An address is counted only while it holds a slot.
    """

    __slots__ = ("anonymous", "by_address", "total")

    def __init__(self) -> None:
        self.total = 0
        self.anonymous = 0
        self.by_address: dict[str, int] = {}

    def take(self, anonymous: bool, address: str = "") -> str | None:
        """Take a slot; or, over a cap, take none and say which cap."""
        if settings.WS_MAX_CONNECTIONS and self.total >= settings.WS_MAX_CONNECTIONS:
            return "connection cap of this process"
        if anonymous:
            if (settings.WS_MAX_ANONYMOUS_CONNECTIONS
                    and self.anonymous >= settings.WS_MAX_ANONYMOUS_CONNECTIONS):
                return "anonymous connection cap of this process"
            held = self.by_address.get(address, 0)
            per_address = settings.WS_MAX_CONNECTIONS_PER_ADDRESS
            if per_address and held >= per_address:
                return "anonymous connection cap of one address"
            self.anonymous += 1
            self.by_address[address] = held + 1
        self.total += 1
        return None

    def release(self, anonymous: bool, address: str = "") -> None:
        """Give back a slot that :meth:`take` gave."""
        self.total -= 1
        if anonymous:
            self.anonymous -= 1
            held = self.by_address.pop(address) - 1
            if held:
                self.by_address[address] = held
