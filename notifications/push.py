"""Push: stored NOTEs to the connections of their users, on every process.

Inside the server the push goes through the process hub of the running loop;
elsewhere (a management command, a worker) it goes straight to the channel
layer, and a short-lived registry answers "is the user online"
(:func:`realtime.hub.publish`, :func:`realtime.hub.connections_on`).
"""

import logging
from typing import Any

from notifications.protocol import EVENT_KIND, FEED_GROUP, NOTIFICATIONS, QUEUED, SENT
from realtime import metrics
from realtime.hub import connections_on, publish
from realtime.registry import Reach

logger = logging.getLogger(__name__)


async def notification_connections(username: str) -> int:
    """Open ``/ws/notifications/`` connections of the user on every process."""
    return (await _reach([username])).counts[0]


async def _reach(usernames: list[str]) -> Reach:
    return await connections_on(NOTIFICATIONS, usernames)


def counted(status: str) -> str:
    """Count a post's status in ``realtime_notifications_total``; the status."""
    metrics.inc("realtime_notifications_total", status=status)
    return status


async def push_notes(items: list[dict[str, Any]]) -> dict[str, str]:
    """Publish stored NOTEs in one event; the status of each user they name.

    ``sent`` when the user has a notifications connection on some process,
    else ``queued``; ``queued`` too when the push failed, which loses nothing a
    user was sent: the rows are stored and come on the next connect.
    Broadcasts that could not be pushed are missed (they are never queued).

    The event goes through the channel layer only when a broadcast is in it
    or one of its users has a connection on another process, as the registry
    says just before. A connection that registers after that reads the queue
    after registering, so it finds these rows (stored before the registry
    was read).
    """
    users = list(dict.fromkeys(item["user"] for item in items if item["user"] is not None))
    try:
        reach: Reach | None = await _reach(users)
    except Exception:
        logger.exception("could not count the connections of %d users", len(users))
        reach = None
    broadcast = any(item["user"] is None for item in items)
    elsewhere = reach is None or reach.elsewhere or broadcast
    try:
        # This process's connections first: live NOTEs have no order to keep across
        # processes (PROTOCOL.md promises id order for a room's messages only).
        await publish(FEED_GROUP, {"kind": EVENT_KIND, "items": items},
                      here_first=True, elsewhere=elsewhere)
    except Exception:
        logger.exception("could not push notifications %s; they stay queued",
                         [item["id"] for item in items])
        return dict.fromkeys(users, QUEUED)
    if reach is None:
        return dict.fromkeys(users, QUEUED)
    return {user: SENT if count else QUEUED for user, count in zip(users, reach.counts,
                                                                      strict=True)}

