"""Notifications: the one place that stores, pushes, acknowledges and lists them.

Every notification is written first and pushed second, so a push that reaches
nobody (the user is offline, or is connecting right now) is not lost: it waits
in the database until the client acknowledges it.

Two entry points for posting, the same work underneath:

* ``await anotify(user, data)`` in async code (views, consumers);
* ``notify(user, data)`` in any sync code (a view, a management command, a
  Celery task, a signal handler). It stores in the caller's thread and
  transaction; inside an ``atomic`` block the push waits for the commit, so a
  rolled-back notification is never pushed and a pushed one can always be
  acknowledged.

Both return ``(id, status)``: ``"sent"`` when the user has an open
``/ws/notifications/`` connection on any process, else ``"queued"``.

Inside the server the push goes through the process hub of the running loop
(``project.hub``); elsewhere (a management command, a worker) it goes straight
to the channel layer, and a short-lived registry answers "is the user online".
"""

import asyncio
import contextlib
import hashlib
import logging
import secrets
from collections.abc import AsyncIterator, Iterable
from datetime import datetime
from typing import Any

from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.base_user import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from notifications.models import Notification
from project import metrics, protocol
from project.hub import Hub, get_hub, running_hub
from project.registry import LocalRegistry, RedisRegistry

logger = logging.getLogger(__name__)

SENT = "sent"
QUEUED = "queued"
BROADCAST = "broadcast"

#: The ``kind`` of the hub event that carries a NOTE.
EVENT_KIND = "notification"
#: The channel-layer group of broadcasts (every notifications connection).
BROADCAST_GROUP = "notifications.broadcast"
#: Ids per ``UPDATE ... WHERE id IN (...)`` of an ack (SQLite caps query parameters).
ACK_BATCH = 500


# --- Frames and groups ------------------------------------------------------------


def user_group(username: str) -> str:
    """The channel-layer group of one user's connections.

    Group names are ASCII ``[A-Za-z0-9._-]`` shorter than 100 characters, while
    usernames may be any Unicode: a SHA-256 digest fits every username.
    """
    return "notifications.user." + hashlib.sha256(username.encode()).hexdigest()


def note_frame(note_id: int, data: dict[str, Any], created_at: datetime, *,
               broadcast: bool = False) -> str:
    """The NOTE frame of the contract, serialised once for every connection."""
    frame: dict[str, Any] = {
        "type": "notification",
        "id": note_id,
        "data": data,
        "timestamp": protocol.timestamp(created_at),
    }
    if broadcast:
        frame["broadcast"] = True
    return protocol.encode(frame)


def frame_of(notification: Notification) -> str:
    """The NOTE frame of a stored notification."""
    return note_frame(
        notification.pk, notification.data, notification.created_at,
        broadcast=notification.broadcast,
    )


def _event(notification: Notification) -> dict[str, Any]:
    """The hub event of a NOTE: plain values, the frame already serialised."""
    return {"kind": EVENT_KIND, "id": notification.pk, "frame": frame_of(notification)}


def _require_sync(name: str, async_name: str) -> None:
    if _loop_running():
        raise RuntimeError(f"{name}() is for sync code; use 'await {async_name}(...)' here")


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _check_data(data: Any) -> None:
    if not isinstance(data, dict):
        raise TypeError(f"notification data must be a dict (a JSON object), not {type(data)}")


# --- Database work (plain sync functions; async callers use database_sync_to_async) ---


def store_notification(user_id: int, data: dict[str, Any]) -> Notification:
    """Store a notification for a user and trim the user's queue to the limit.

    The user's row is locked (on PostgreSQL) so concurrent posts to one user
    trim one after the other and never keep more than the limit.
    """
    with transaction.atomic():
        list(get_user_model().objects.select_for_update().filter(pk=user_id).values("pk"))
        notification = Notification.objects.create(user_id=user_id, data=data)
        _trim_queue(user_id)
    return notification


def _trim_queue(user_id: int) -> None:
    """Delete the user's oldest undelivered notifications beyond the newest N."""
    limit = settings.NOTIFICATIONS_QUEUE_LIMIT
    queued = Notification.objects.filter(user_id=user_id, delivered_at__isnull=True)
    cutoff = list(queued.order_by("-id").values_list("id", flat=True)[limit : limit + 1])
    if cutoff:
        queued.filter(id__lte=cutoff[0]).delete()


def store_broadcast(data: dict[str, Any]) -> Notification:
    """Store a broadcast: delivered as it is sent, so it is never queued or re-sent."""
    now = timezone.now()
    return Notification.objects.create(data=data, broadcast=True, created_at=now,
                                       delivered_at=now)


def undelivered(user_id: int) -> list[Notification]:
    """The user's undelivered notifications, oldest first (at most the queue limit)."""
    rows = list(
        Notification.objects.filter(user_id=user_id, delivered_at__isnull=True)
        .order_by("-id")[: settings.NOTIFICATIONS_QUEUE_LIMIT]
    )
    rows.reverse()
    return rows


def undelivered_frames(user_id: int) -> list[tuple[int, str]]:
    """``(id, NOTE frame)`` of each undelivered notification, oldest first."""
    return [(row.pk, frame_of(row)) for row in undelivered(user_id)]


def acknowledge(user_id: int, ids: Iterable[int]) -> int:
    """Mark delivered those of ``ids`` that are the user's; others are ignored.

    Returns how many were newly marked.
    """
    unique = sorted(set(ids))
    now, marked = timezone.now(), 0
    for start in range(0, len(unique), ACK_BATCH):
        marked += Notification.objects.filter(
            user_id=user_id, delivered_at__isnull=True, id__in=unique[start : start + ACK_BATCH]
        ).update(delivered_at=now)
    return marked


async def find_user(username: str) -> AbstractBaseUser | None:
    """The user called ``username`` (active or not), or ``None``."""
    return await get_user_model().objects.filter(username=username).afirst()


async def aundelivered_frames(user_id: int) -> list[tuple[int, str]]:
    """:func:`undelivered_frames` from async code (the query runs in the thread pool)."""
    return await database_sync_to_async(undelivered_frames)(user_id)


async def aacknowledge(user_id: int, ids: Iterable[int]) -> int:
    """:func:`acknowledge` from async code (the update runs in the thread pool)."""
    return await database_sync_to_async(acknowledge)(user_id, ids)


# --- Pushing ------------------------------------------------------------------------


async def ensure_hub() -> Hub | None:
    """Start the hub of this server process if it has none yet (for HTTP views).

    ``None`` when it cannot start (Redis down): posting then falls back to the
    direct path, which stores and answers ``queued`` if the layer is down too.
    """
    try:
        return await get_hub()
    except Exception:
        logger.warning("could not start the process hub", exc_info=True)
        return None


@contextlib.asynccontextmanager
async def temporary_registry() -> AsyncIterator[LocalRegistry | RedisRegistry]:
    """A registry for code outside the server (no hub on this loop), closed after use.

    Without Redis there is no server this process could reach through the
    in-memory layer, so the empty local registry answers correctly: nobody.
    """
    proc_id = "notify-" + secrets.token_hex(6)
    if settings.REDIS_URL:
        registry = RedisRegistry(proc_id, settings.REDIS_URL, settings.REDIS_PREFIX)
    else:
        registry = LocalRegistry(proc_id)
    try:
        yield registry
    finally:
        await registry.close()


async def publish(group: str, event: dict[str, Any]) -> None:
    """Send a hub event to ``group`` on every process, through this loop's hub if any."""
    hub = running_hub()
    if hub is not None:
        await hub.publish(group, event)
    else:
        # The message shape of Hub.publish, which every process's hub receives.
        await get_channel_layer().group_send(group, {"type": "hub.event", "group": group,
                                                     **event})


async def notification_connections(username: str) -> int:
    """Open ``/ws/notifications/`` connections of the user on every process."""
    hub = running_hub()
    if hub is not None:
        return await hub.registry.notification_connections(username)
    async with temporary_registry() as registry:
        return await registry.notification_connections(username)


def _counted(status: str) -> str:
    metrics.inc("realtime_notifications_total", status=status)
    return status


async def _status(username: str) -> str:
    return SENT if await notification_connections(username) > 0 else QUEUED


async def _push(username: str, event: dict[str, Any]) -> str:
    """Push a stored notification; its status, ``queued`` when the push failed.

    A failed push loses nothing: the row is stored and comes on the next connect.
    """
    try:
        await publish(user_group(username), event)
        return await _status(username)
    except Exception:
        logger.exception("could not push notification %s; it stays queued", event["id"])
        return QUEUED


async def anotify(user: AbstractBaseUser, data: dict[str, Any]) -> tuple[int, str]:
    """Store a notification for ``user``, then push it: ``(id, "sent"|"queued")``."""
    _check_data(data)
    notification = await database_sync_to_async(store_notification)(user.pk, data)
    return notification.pk, _counted(await _push(user.get_username(), _event(notification)))


def notify(user: AbstractBaseUser, data: dict[str, Any]) -> tuple[int, str]:
    """Store a notification for ``user``, then push it: ``(id, "sent"|"queued")``.

    One call from any sync code: ``notify(user, {"text": "Your export is ready"})``.
    The row is written in the caller's thread and transaction. Inside an
    ``atomic`` block the push runs when the transaction commits (and not at all
    if it rolls back); the status then says whether the user is connected now.
    From async code use :func:`anotify` (this raises ``RuntimeError`` there).
    """
    _check_data(data)
    _require_sync("notify", "anotify")
    notification = store_notification(user.pk, data)
    username, event = user.get_username(), _event(notification)
    if transaction.get_connection().in_atomic_block:
        transaction.on_commit(lambda: async_to_sync(_push)(username, event))
        try:
            return notification.pk, _counted(async_to_sync(_status)(username))
        except Exception:
            logger.exception("could not count the connections of a user")
            return notification.pk, _counted(QUEUED)
    return notification.pk, _counted(async_to_sync(_push)(username, event))


async def _push_broadcast(notification: Notification) -> None:
    try:
        await publish(BROADCAST_GROUP, _event(notification))
    except Exception:
        # Broadcasts are never queued: those who missed it, missed it.
        logger.exception("could not push broadcast %s", notification.pk)


async def abroadcast(data: dict[str, Any]) -> tuple[int, str]:
    """Store one broadcast and push it to every notifications connection: ``(id, "broadcast")``."""
    _check_data(data)
    notification = await database_sync_to_async(store_broadcast)(data)
    await _push_broadcast(notification)
    return notification.pk, _counted(BROADCAST)


def broadcast(data: dict[str, Any]) -> tuple[int, str]:
    """Sync :func:`abroadcast`, for management commands and tasks."""
    _check_data(data)
    _require_sync("broadcast", "abroadcast")
    notification = store_broadcast(data)
    if transaction.get_connection().in_atomic_block:
        transaction.on_commit(lambda: async_to_sync(_push_broadcast)(notification))
    else:
        async_to_sync(_push_broadcast)(notification)
    return notification.pk, _counted(BROADCAST)
