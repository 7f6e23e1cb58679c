"""The limits on what a client sends and costs: frame size, frame rate, this process's
connection slots, the pace of large answers and the per-address budget of costly ones."""

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

from django.conf import settings

#: How many of a connection's frames of an overlapping type (a chat ``message``) may be
#: handled at once; past that its next frame waits for the oldest (see
#: ``ProtocolConsumer.overlapping_types``).
MAX_FRAMES_IN_FLIGHT = 16


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


#: How long a paced send waits for a client that takes nothing at all.
DRAIN_SECONDS = 10.0


async def drain(connection, stall_seconds: float | None = None) -> bool:
    """Wait while more than half of ``WS_MAX_SEND_BUFFER_BYTES`` is unsent to ``connection``.

    For a sender of large answers (a ``?since=`` history, a notification queue):
    one frame may be larger than the bound, which :meth:`ProtocolConsumer.send
    <realtime.consumers.ProtocolConsumer.send>` checks only *before* it writes;
    waiting here before the next frame lets a client that reads at a normal pace
    take it all without ever being closed with 4010. ``connection`` has
    ``unsent_bytes()`` and ``closing``. Returns ``False`` when the client took
    nothing for ``stall_seconds`` (default :data:`DRAIN_SECONDS`): it has stalled,
    and the caller closes it or stops waiting.
    """
    limit = settings.WS_MAX_SEND_BUFFER_BYTES // 2
    if not limit:
        return True
    if stall_seconds is None:
        stall_seconds = DRAIN_SECONDS
    least, deadline = None, time.monotonic() + stall_seconds
    while True:
        pending = connection.unsent_bytes()
        if pending <= limit or connection.closing:
            return True
        if least is None or pending < least:
            least, deadline = pending, time.monotonic() + stall_seconds
        elif time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.005)  # the transport has no "drained" event to await


class _Account:
    __slots__ = ("lock", "stamp", "tokens", "users")

    def __init__(self, burst: int) -> None:
        self.tokens, self.stamp = float(burst), time.monotonic()
        self.lock = asyncio.Lock()
        self.users = 0


class AddressBudget:
    """Bytes of costly answers per client address: ``rate`` per second, bursts of ``burst``.

    A token bucket in bytes with debt: an answer is allowed while the address's
    balance is positive, and its real size is charged once it is built, so one
    address builds at most ``burst`` bytes plus one answer at once, then ``rate``
    per second. The answers of one address are built one at a time (:meth:`turn`),
    so parallel requests cannot all pass the check before the first is charged.
    Per process; addresses whose bucket is full again are forgotten.
    """

    def __init__(self) -> None:
        self._accounts: dict[str, _Account] = {}
        self._sweep_at = 1024

    @contextlib.asynccontextmanager
    async def turn(self, address: str, rate: int, burst: int
                   ) -> AsyncIterator[Callable[[int], None] | None]:
        """This address's turn: yields ``charge(nbytes)``, or ``None`` if it is in debt
        (refuse). Either of ``rate`` and ``burst`` at 0 disables the budget."""
        if not rate or not burst:
            yield _free
            return
        account = self._accounts.get(address)
        if account is None:
            if len(self._accounts) >= self._sweep_at:
                self._sweep(rate, burst)
            account = self._accounts[address] = _Account(burst)
        account.users += 1
        try:
            async with account.lock:
                now = time.monotonic()
                account.tokens = min(burst, account.tokens + (now - account.stamp) * rate)
                account.stamp = now
                if account.tokens <= 0:
                    yield None
                    return

                def charge(nbytes: int) -> None:
                    account.tokens -= nbytes

                yield charge
        finally:
            account.users -= 1

    def _sweep(self, rate: int, burst: int) -> None:
        now = time.monotonic()
        for address, account in list(self._accounts.items()):
            if not account.users and account.tokens + (now - account.stamp) * rate >= burst:
                del self._accounts[address]
        self._sweep_at = max(1024, 2 * len(self._accounts))


def _free(nbytes: int) -> None:
    """The charge of a disabled budget."""


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
