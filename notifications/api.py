"""Notifications: post, broadcast and acknowledge, from sync or async code.

Every notification is written first and pushed second, so a push that reaches
nobody (the user is offline, or is connecting right now) is not lost: it waits
in the database until the client acknowledges it.

Two entry points for posting, the same work underneath:

* ``await anotify(user, data)`` in async code (views, consumers): it shares a
  transaction with whatever else this process posts now (:mod:`.writer`);
* ``notify(user, data)`` in any sync code (a view, a management command, a
  Celery task, a signal handler). It stores in the caller's thread and
  transaction; inside an ``atomic`` block the push waits for the commit, so a
  rolled-back notification is never pushed and a pushed one can always be
  acknowledged.

Both return ``(id, status)``: ``"sent"`` when the user has an open
``/ws/notifications/`` connection on any process, else ``"queued"``.
"""

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

from asgiref.sync import async_to_sync
from django.contrib.auth.base_user import AbstractBaseUser
from django.db import transaction

from notifications import store
from notifications.protocol import BROADCAST, QUEUED, SENT, note_item
from notifications.push import counted, notification_connections, push_notes
from notifications.store import Post, store_one
from notifications.writer import check_data, writer
from realtime import db

logger = logging.getLogger(__name__)


def _require_sync(name: str, async_name: str) -> None:
    if _loop_running():
        raise RuntimeError(f"{name}() is for sync code; use 'await {async_name}(...)' here")


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


async def anotify(user: AbstractBaseUser, data: dict[str, Any]) -> tuple[int, str]:
    """Store a notification for ``user``, then push it: ``(id, "sent"|"queued")``.

    It shares a transaction with whatever else this process is posting now.
    """
    check_data(data)
    return await writer().submit(
        Post(target=user.get_username(), target_pk=user.pk, data=data)
    )


def notify(user: AbstractBaseUser, data: dict[str, Any]) -> tuple[int, str]:
    """Store a notification for ``user``, then push it: ``(id, "sent"|"queued")``.

    One call from any sync code: ``notify(user, {"text": "Your export is ready"})``.
    The row is written in the caller's thread and transaction. Inside an
    ``atomic`` block the push runs when the transaction commits (and not at all
    if it rolls back); the status then says whether the user is connected now.
    From async code use :func:`anotify` (this raises ``RuntimeError`` there).
    """
    check_data(data)
    _require_sync("notify", "anotify")
    username = user.get_username()
    notification = store_one(Post(target=username, target_pk=user.pk, data=data))
    items = [note_item(notification, username)]
    if transaction.get_connection().in_atomic_block:
        transaction.on_commit(lambda: async_to_sync(push_notes)(items))
        try:
            connected = async_to_sync(notification_connections)(username)
            return notification.pk, counted(SENT if connected else QUEUED)
        except Exception:
            logger.exception("could not count the connections of a user")
            return notification.pk, counted(QUEUED)
    return notification.pk, counted(async_to_sync(push_notes)(items)[username])


async def abroadcast(data: dict[str, Any]) -> tuple[int, str]:
    """Store one broadcast and push it to every notifications connection: ``(id, "broadcast")``."""
    check_data(data)
    return await writer().submit(Post(target=None, data=data))


def broadcast(data: dict[str, Any]) -> tuple[int, str]:
    """Sync :func:`abroadcast`, for management commands and tasks."""
    check_data(data)
    _require_sync("broadcast", "abroadcast")
    notification = store_one(Post(target=None, data=data))
    items = [note_item(notification, None)]
    if transaction.get_connection().in_atomic_block:
        transaction.on_commit(lambda: async_to_sync(push_notes)(items))
    else:
        async_to_sync(push_notes)(items)
    return notification.pk, counted(BROADCAST)


def ack(user_id: int, ids: Iterable[int]) -> int:
    """Mark delivered those of ``ids`` that are the user's, now: how many were newly marked.

    Others' and unknown ids are ignored. In the caller's thread and transaction.
    """
    return store.acknowledge(user_id, ids)


async def aack(user_id: int, ids: Iterable[int]) -> int:
    """:func:`ack` from async code, through the database worker."""
    return await db.run(store.acknowledge, user_id, ids)
