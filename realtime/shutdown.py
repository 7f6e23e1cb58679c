"""A graceful stop: what a server process finishes before it exits (SIGTERM).

The server adapter calls :func:`graceful_stop` once it has stopped accepting
connections (under daphne: :mod:`realtime.servers.daphne`, before daphne cancels
its application instances). Bounded as a whole by ``SHUTDOWN_GRACE_SECONDS``, it

1. refuses what comes in from then on: an HTTP request gets 503 (``Connection:
   close``), a WebSocket is closed with 4012 right after its handshake;
2. closes every WebSocket of this process with 4012 (server restarting) and
   waits until each one's ``disconnect()`` has run (a notification feed writes
   its acks there);
3. meanwhile lets every HTTP request already running finish and be answered
   (:class:`TrackRequests` counts them);
4. then runs the apps' :data:`shutdown_handlers` (the notification writer
   stores its pending acks and finishes its batch).

The engine knows nothing of the apps: they register their handlers in
``AppConfig.ready()``. Nothing here runs per frame; an HTTP request costs one
counter.
"""

import asyncio
import logging
import weakref
from collections.abc import Awaitable, Callable

from django.conf import settings

from realtime.hub import running_hub
from realtime.protocol import CloseCode

logger = logging.getLogger(__name__)

#: Run by :func:`graceful_stop` once sockets are closed and requests answered, in order.
ShutdownHandler = Callable[[], Awaitable[None]]
shutdown_handlers: list[ShutdownHandler] = []
#: How often the stop looks whether the last socket's disconnect has run.
POLL_SECONDS = 0.02

REFUSAL_BODY = b'{"error": "unavailable", "message": "server restarting; try again"}'


class Stop:
    """One event loop's (server process's) stop state and its running HTTP requests."""

    def __init__(self) -> None:
        self.stopping = False
        self.requests = 0
        self.idle = asyncio.Event()
        self.idle.set()


_stops: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Stop]" = (
    weakref.WeakKeyDictionary()
)


def state() -> Stop:
    """The stop state of the running event loop."""
    loop = asyncio.get_running_loop()
    found = _stops.get(loop)
    if found is None:
        found = _stops[loop] = Stop()
    return found


def stopping() -> bool:
    """Whether this process is stopping: take nothing new."""
    try:
        found = _stops.get(asyncio.get_running_loop())
    except RuntimeError:
        return False
    return found is not None and found.stopping


async def graceful_stop(last: Callable[[], Awaitable[None]] | None = None) -> bool:
    """Finish or refuse what this process has read, within ``SHUTDOWN_GRACE_SECONDS``.

    ``last`` (the server adapter's) runs at the end, inside the same bound.
    ``True`` if everything finished in time; else what was left is the
    server's to cancel (logged).
    """
    stop = state()
    if stop.stopping:
        return False
    stop.stopping = True
    grace = settings.SHUTDOWN_GRACE_SECONDS
    logger.info("stopping gracefully (at most %d s): closing WebSockets with 4012, "
                "answering running requests, refusing new ones", grace)
    try:
        await asyncio.wait_for(_finish(stop, last), grace)
    except TimeoutError:
        hub = running_hub()
        logger.warning("graceful stop not done after %d s (%d WebSockets, %d HTTP requests "
                       "left): stopping anyway", grace, len(hub.consumers) if hub else 0,
                       stop.requests)
        return False
    logger.info("graceful stop done")
    return True


async def _finish(stop: Stop, last: Callable[[], Awaitable[None]] | None) -> None:
    await asyncio.gather(close_websockets(), stop.idle.wait())
    for handler in shutdown_handlers:
        try:
            await handler()
        except Exception:
            logger.exception("shutdown handler %r failed", handler)
    if last is not None:
        await last()


async def close_websockets() -> None:
    """Close every WebSocket of this process with 4012; wait for their disconnects."""
    hub = running_hub()
    if hub is None:
        return
    for consumer in list(hub.consumers):
        try:
            await consumer.close_with(CloseCode.SERVER_RESTARTING)
        except Exception:
            logger.debug("a WebSocket went away before its 4012", exc_info=True)
    while True:  # a consumer leaves hub.consumers once its disconnect() has run
        if not hub.consumers:
            return
        await asyncio.sleep(POLL_SECONDS)


class TrackRequests:
    """ASGI middleware for HTTP: counts running requests; 503 once the process stops."""

    def __init__(self, inner) -> None:
        self.inner = inner

    async def __call__(self, scope, receive, send) -> None:
        stop = state()
        if stop.stopping:
            await refuse(send)
            return
        stop.requests += 1
        stop.idle.clear()
        try:
            await self.inner(scope, receive, send)
        finally:
            stop.requests -= 1
            if not stop.requests:
                stop.idle.set()


async def refuse(send) -> None:
    """503 with ``Connection: close``: this process takes no new request."""
    await send({"type": "http.response.start", "status": 503, "headers": [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(REFUSAL_BODY)).encode()),
        (b"retry-after", b"1"),
        (b"connection", b"close"),
    ]})
    await send({"type": "http.response.body", "body": REFUSAL_BODY})
