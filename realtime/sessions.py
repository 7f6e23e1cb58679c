"""Session-cookie WebSockets last as long as their session (PROTOCOL.md "Identity").

A WebSocket authenticated by the session cookie carries its session key in
``scope["session_key"]`` (:mod:`realtime.middleware`). When the session ends,
each such connection is closed with 4001, on every process:

* logout: Django's ``user_logged_out`` signal publishes a ``session_end`` control
  event (with a digest of the key, not the key) and each process closes that
  user's connections of that session at once;
* expiry, flush, a deleted row (no signal): every ``SESSION_SWEEP_SECONDS`` each
  process looks up the session keys of all its session connections (with the
  database engines, one query per ``QUERY_CHUNK`` keys) and closes those whose
  session is gone or expired.

Nothing runs per frame; the sweep costs nothing while no session connection is open.
"""

import asyncio
import hashlib
import logging
from importlib import import_module

from asgiref.sync import async_to_sync
from django.conf import settings
from django.utils import timezone

from realtime import db
from realtime.hub import CONTROL_GROUP, Hub, publish
from realtime.protocol import CloseCode

logger = logging.getLogger(__name__)

KIND = "session_end"
#: Session engines whose sessions are rows of ``django_session``.
DB_ENGINES = {"django.contrib.sessions.backends.db", "django.contrib.sessions.backends.cached_db"}
#: Keys per query, below every database's limit of parameters.
QUERY_CHUNK = 900


def digest(session_key: str) -> str:
    return hashlib.sha256(session_key.encode()).hexdigest()


async def aend_session(username: str, session_key: str) -> None:
    """Close the connections of ``username`` opened with ``session_key``, on every process."""
    await publish(CONTROL_GROUP, {"kind": KIND, "user": username,
                                  "session": digest(session_key)})


def on_user_logged_out(sender, request, user, **kwargs) -> None:
    """``user_logged_out``: the session is flushed right after; its sockets go now."""
    session_key = getattr(getattr(request, "session", None), "session_key", None)
    if user is None or not session_key:
        return
    try:
        async_to_sync(aend_session)(user.get_username(), session_key)
    except Exception:
        logger.exception("could not publish the end of a session; the sweep will close it")


class SessionListener:
    """Hears ``session_end`` control events for one hub."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    async def hub_event(self, event: dict) -> None:
        if event.get("kind") != KIND:
            return
        for consumer in self.hub.connections_of(event["user"]):
            key = consumer.scope.get("session_key")
            if key and digest(key) == event["session"]:
                await close(consumer)


async def close(consumer) -> None:
    logger.info("closing a connection whose session ended")
    await consumer.close_with(CloseCode.TOKEN_EXPIRED)


def session_connections(hub: Hub) -> dict[str, list]:
    """This process's session-cookie connections by session key."""
    found: dict[str, list] = {}
    for by_user in hub.user_connections.values():
        for consumer in (c for consumers in by_user.values() for c in consumers):
            key = consumer.scope.get("session_key")
            if key:
                found.setdefault(key, []).append(consumer)
    return found


def live_sessions(keys: list[str]) -> set[str]:
    """Those of ``keys`` whose session still exists and has not expired."""
    engine = settings.SESSION_ENGINE
    if engine.endswith(".signed_cookies"):
        return set(keys)  # held by the client only: nothing here can end it
    if engine in DB_ENGINES:
        from django.contrib.sessions.models import Session

        now, live = timezone.now(), set()
        for start in range(0, len(keys), QUERY_CHUNK):
            live.update(Session.objects.filter(
                session_key__in=keys[start:start + QUERY_CHUNK], expire_date__gt=now,
            ).values_list("session_key", flat=True))
        return live
    store = import_module(engine).SessionStore
    return {key for key in keys if store(key).exists(key)}


async def sweep(hub: Hub) -> None:
    """Close this process's connections whose session has ended."""
    connections = session_connections(hub)
    if not connections:
        return
    live = await db.run(live_sessions, list(connections))
    for key, consumers in connections.items():
        if key not in live:
            for consumer in consumers:
                await close(consumer)


async def start(hub: Hub) -> asyncio.Task:
    """Start handler of each hub: listen for logouts, sweep periodically."""
    await hub.subscribe(CONTROL_GROUP, SessionListener(hub))
    return asyncio.create_task(_sweep_loop(hub), name="hub-session-sweep")


async def _sweep_loop(hub: Hub) -> None:
    while True:
        await asyncio.sleep(settings.SESSION_SWEEP_SECONDS)
        try:
            await sweep(hub)
        except Exception:
            logger.exception("session sweep failed; retrying")
