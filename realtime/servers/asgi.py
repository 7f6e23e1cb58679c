"""The plain-ASGI writer: what every connection uses when no fast path applies.

Frames go into a queue per connection that one task drains by awaiting the
server's ``send``; :meth:`AsgiWriter.unsent_bytes` counts what ``send`` has not
accepted yet, so the slow-reader bound (``WS_MAX_SEND_BUFFER_BYTES``, then 4010)
holds by ASGI means, and a ``send`` that waits holds up only its own connection.

What the bound measures depends on the server's ``send``:

* uvicorn's waits while its transport is over the high-water mark, so the queue
  grows exactly when the client stops reading: the bound holds as on the fast path;
* daphne's never waits (Twisted buffers without limit), so the queue is always
  empty and, without ``backlog`` (the daphne adapter passes Twisted's buffer when it
  is on), the bound never closes a client that stopped reading: its frames pile up
  in Twisted's buffer until the client reads, or daphne's ping timeout drops it.
"""

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable

from realtime.wire import asgi_messages

logger = logging.getLogger(__name__)


class AsgiWriter:
    """Writes encoded frames through the server's ASGI ``send``, in order, never waiting."""

    name = "the plain ASGI send"
    #: Text goes through :meth:`asgi_send` as text: encoded frames are for the fast paths.
    takes_frames = False
    #: Whether closed connections need no collector depends on the server: unknown here.
    frees_closed_connections = False

    def __init__(self, send: Callable[[dict], Awaitable[None]],
                 backlog: Callable[[], int] | None = None) -> None:
        self._send, self._backlog = send, backlog
        # (encoded frame, size, None) or (message, size, False or a future to resolve)
        self._queue: deque = deque()
        self._unsent = 0
        self._task: asyncio.Task | None = None
        self._dead = False

    def write(self, frame: bytes) -> bool:
        """Queue ``frame``; ``False`` if the connection no longer takes frames."""
        if self._dead:
            return False
        self._put(frame, len(frame), None)
        return True

    def write_if_idle(self, frame: bytes) -> bool:
        """Queue ``frame`` if nothing waits before it; ``False``: nothing was done."""
        if self._queue or self._dead:
            return False
        self._put(frame, len(frame), None)
        return True

    async def asgi_send(self, message: dict) -> None:
        """Send any ASGI message behind the queued frames, in order.

        A ``websocket.send`` is queued and counted like a frame and never waits;
        any other message (the close) returns once the server's ``send`` took it.
        """
        if self._dead:
            return
        if message["type"] == "websocket.send":
            text = message.get("text")
            size = (len(message.get("bytes") or b"") if text is None
                    else len(text.encode("utf-8", "surrogatepass")))
            self._put(message, size, False)
            return
        done = asyncio.get_running_loop().create_future()
        self._put(message, 0, done)
        await done

    def unsent_bytes(self) -> int:
        """Bytes of frames that the server's ``send`` has not accepted yet (plus the
        server's own buffer where an adapter can read it)."""
        if self._backlog is None:
            return self._unsent
        return self._unsent + self._backlog()

    @property
    def paused(self) -> bool:
        """Whether a close now would wait behind frames the server has not taken."""
        return bool(self._queue)

    def abort(self) -> None:
        """Send nothing more: the queue is dropped (ASGI has no way to drop the socket;
        the server's ping timeout or the client's leaving ends it)."""
        self._dead = True
        if self._task is not None:
            self._task.cancel()
        self._fail()

    def _put(self, item, size: int, done) -> None:
        self._queue.append((item, size, done))
        self._unsent += size
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        queue = self._queue
        try:
            while queue:
                item, size, done = queue[0]
                if done is None:  # encoded frames, one or more
                    for message in asgi_messages(item):
                        await self._send(message)
                else:
                    await self._send(item)
                queue.popleft()
                self._unsent -= size
                if done and not done.done():
                    done.set_result(None)
        except Exception:
            # The server refuses (the client left): like a closed transport, take no more.
            logger.debug("the server's send failed; dropping what was queued", exc_info=True)
            self._dead = True
            self._fail()
        finally:
            self._task = None

    def _fail(self) -> None:
        while self._queue:
            _item, _size, done = self._queue.popleft()
            if done and not done.done():
                done.set_result(None)
        self._unsent = 0
