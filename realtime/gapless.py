"""Join without a gap: hold live items while a connection's snapshot is read.

A connection that joins a live stream reads a snapshot (chat: the history;
notifications: the undelivered queue) while items go on being published. It
starts holding *before* it subscribes and reads, so an item published after the
read is held, and one published before it is in the snapshot or held, or both.
Once the snapshot is out, :meth:`Gapless.release` sends what was held and the
snapshot lacked, in arrival order, and the connection goes live.

The caller says what the snapshot held: chat, ids up to the last one of the
history; notifications, the ids of the queue.
"""

from collections.abc import Awaitable, Callable
from typing import Any


class Gapless:
    """Mixin of a connection that joins a stream without a gap."""

    #: Live items held back while joining; ``None`` once live. A fan-out that
    #: cannot afford a call per member tests this attribute itself (see :meth:`offer`).
    pending: list | None = None

    def hold(self) -> None:
        """Hold live items from now on; call it before subscribing and reading the snapshot."""
        self.pending = []

    def offer(self, item: Any) -> bool:
        """Hold ``item`` while joining; ``True`` if it was held (the caller sends nothing)."""
        pending = self.pending
        if pending is None:
            return False
        pending.append(item)
        return True

    async def release(self, contained: Callable[[Any], bool],
                      send: Callable[[Any], Awaitable[None]]) -> None:
        """After the snapshot went out: send the held items it did not contain, then go live.

        Items that arrive while these are sent are held too and sent after them.
        """
        while self.pending:
            held, self.pending = self.pending, []
            for item in held:
                if not contained(item):
                    await send(item)
        self.pending = None
