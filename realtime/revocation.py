"""Closing the live connections of users who are deactivated or deleted.

Saving a user with ``is_active=False`` or deleting one sends a ``revoke`` event
to every process (after the transaction commits); each process closes that
user's connections with 4002. Each process also sweeps its connected users every
``REVOCATION_SWEEP_SECONDS``, which bounds the delay where the event cannot
reach it (a change made by another process on the in-memory layer).
"""

import logging

from asgiref.sync import async_to_sync
from django.contrib.auth import get_user_model
from django.db import transaction

from realtime import db
from realtime.hub import CONTROL_GROUP, Hub, publish

logger = logging.getLogger(__name__)


async def arevoke_user(username: str) -> None:
    """Close every connection of ``username`` on every process."""
    await publish(CONTROL_GROUP, {"kind": "revoke", "user": username})


def revoke_user(username: str) -> None:
    """:func:`arevoke_user` for sync code; failures are logged, not raised."""
    try:
        async_to_sync(arevoke_user)(username)
    except Exception:
        logger.exception("could not publish a revocation; the sweep will close it")


def inactive_usernames(usernames: list[str]) -> list[str]:
    """Those of ``usernames`` that are missing or inactive."""
    active = set(
        get_user_model()
        .objects.filter(username__in=usernames, is_active=True)
        .values_list("username", flat=True)
    )
    return [name for name in usernames if name not in active]


async def sweep(hub: Hub) -> None:
    """Close this process's connections of users who are no longer active (the
    fallback of the ``revoke`` event; run by the hub's maintenance)."""
    usernames = hub.usernames()
    if not usernames:
        return
    for username in await db.run(inactive_usernames, sorted(usernames)):
        await hub.revoke_local(username)


def on_user_saved(sender, instance, created: bool, **kwargs) -> None:
    if not created and not instance.is_active:
        username = instance.get_username()
        transaction.on_commit(lambda: revoke_user(username))


def on_user_deleted(sender, instance, **kwargs) -> None:
    username = instance.get_username()
    transaction.on_commit(lambda: revoke_user(username))
