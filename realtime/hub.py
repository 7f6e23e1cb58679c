"""The process hub: one channel-layer subscription per group per process.

Each process has one channel; the hub joins a group once, when its first local
listener asks for it, and hands each event (a small dict of plain values with a
``group`` key) to its local listeners (a chat room, the notification feed). The
hub knows nothing of chat or notifications.
"""

import asyncio
import atexit
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from channels.layers import get_channel_layer
from django.conf import settings

from realtime import layers
from realtime.limits import ConnectionSlots
from realtime.registry import Reach, connection_prefix, new_registry

logger = logging.getLogger(__name__)

GROUP_REFRESH_SECONDS = 3600.0
#: How often the hub checks whether Redis is back after a failed call.
RECOVERY_POLL_SECONDS = 0.2
#: After restoring from Redis data loss, publishing waits this long so that the
#: other processes, polling as well, have restored their memberships too.
RECOVERY_SETTLE_SECONDS = 2 * RECOVERY_POLL_SECONDS
#: How long a group found to reach another process is taken to still reach one.
REACHING_SECONDS = 1.0
#: Every process listens here for control events (such as revoking a user).
CONTROL_GROUP = "hub.control"
#: How many of this process's publishes may be in the layer at once; the others wait
#: their turn. channels-redis takes a connection from its pool for each ``group_send``,
#: and redis-py's pool raises ``MaxConnectionsError`` past its cap instead of waiting:
#: when 2,000 chat sockets left one room at once, their ``user_left`` events failed so
#: (bench/RESULTS.md, "sixteenth part"). Fewer where the layer's pool is smaller
#: (:func:`realtime.layers.publish_bound`; ``max_connections`` is 1000 in
#: project/settings.py, redis-py's default 100).
MAX_PUBLISHES_IN_LAYER = 50


class Listener(Protocol):
    async def hub_event(self, event: dict) -> None: ...


DepartureHandler = Callable[["Hub", list], Awaitable[None]]
departure_handlers: list[DepartureHandler] = []
#: Run every ``REVOCATION_SWEEP_SECONDS`` by each hub (apps register them in ``ready()``).
SweepHandler = Callable[["Hub"], Awaitable[None]]
sweep_handlers: list[SweepHandler] = []
#: Run by each hub once started; a task one returns is cancelled when the hub closes.
StartHandler = Callable[["Hub"], Awaitable[asyncio.Task | None]]
start_handlers: list[StartHandler] = []


class Hub:
    """Everything one process (one event loop) shares between its connections."""

    def __init__(self, layer: Any = None) -> None:
        self.proc_id = secrets.token_hex(6)
        #: The project's channel layer, unless one is given (tests of a layer's own setup).
        self.layer = get_channel_layer() if layer is None else layer
        self.registry = new_registry(self.proc_id)
        self.groups: dict[str, set[Listener]] = {}
        self.slots = ConnectionSlots()  # this process's WebSocket slots (the caps)
        # Every counted WebSocket consumer of this process (a graceful stop closes them).
        self.consumers: set = set()
        # Authenticated consumers of this process by endpoint, then username (to revoke
        # a user, to hand a NOTE to its user's connections). Endpoints are never removed.
        self.user_connections: dict[str, dict[str, set]] = {}
        # Per-process state of the apps (chat rooms, notification listeners).
        self.apps: dict[str, Any] = {}
        self.channel = ""
        # When each group was last found to reach another process (reaches_others()).
        self._reaching: dict[str, float] = {}
        self._membership = asyncio.Lock()
        self._tasks: list[asyncio.Task] = []
        self.heartbeat_seconds = settings.HUB_HEARTBEAT_SECONDS
        self.dead_after_seconds = settings.HUB_DEAD_AFTER_SECONDS
        # Set when a layer call failed: Redis may have restarted and lost this
        # process's group memberships and registry entries (see recover()).
        self.suspect = False
        self._recovery = asyncio.Lock()
        self._last_refresh = time.monotonic()
        self._restored_at = -RECOVERY_SETTLE_SECONDS
        # Departures of dead processes not yet handled (see _reap()).
        self.unannounced: list = []
        # Redis pub/sub: subscriptions are confirmed by a probe (see subscribe()).
        self.pubsub = layers.is_pubsub(self.layer)
        self.probes = layers.Probes(self.layer)
        self._publishing = asyncio.Semaphore(
            layers.publish_bound(self.layer, MAX_PUBLISHES_IN_LAYER))

    async def start(self) -> None:
        # The default "specific" prefix: channels-redis reads every channel of a
        # process through one loop per prefix.
        self.channel = await self.layer.new_channel()
        await self.registry.heartbeat()
        # Receiving first: a pub/sub subscription is confirmed by an event coming back.
        self._tasks = [asyncio.create_task(self._receive_loop(), name="hub-receive")]
        await self.subscribe(CONTROL_GROUP, self)
        self._tasks.append(
            asyncio.create_task(self._maintenance_loop(), name="hub-maintenance"))
        for handler in start_handlers:
            if task := await handler(self):
                self._tasks.append(task)
        # On a normal exit (daphne stops on SIGTERM) the survivors should reap this
        # process at their next beat, not after HUB_DEAD_AFTER_SECONDS.
        atexit.register(self.registry.mark_dead)

    async def close(self) -> None:
        atexit.unregister(self.registry.mark_dead)
        # Cancel until done: redis-py 8 can swallow a cancellation that lands while
        # it opens a connection, and the receive loop would then run on (and close()
        # wait for it forever).
        pending = set(self._tasks)
        while pending:
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=0.1)
        for group in list(self.groups):
            try:
                await self.layer.group_discard(group, self.channel)
            except Exception:
                logger.warning("could not leave group %s", group, exc_info=True)
        self.groups.clear()
        await self.registry.close()

    def new_connection_name(self) -> str:
        return connection_prefix(self.proc_id) + secrets.token_hex(8)

    def add_user_connection(self, user: str, consumer) -> None:
        self.users_on(consumer.endpoint).setdefault(user, set()).add(consumer)

    def remove_user_connection(self, user: str, consumer) -> None:
        by_user = self.users_on(consumer.endpoint)
        consumers = by_user.get(user)
        if consumers is not None:
            consumers.discard(consumer)
            if not consumers:
                del by_user[user]

    def users_on(self, endpoint: str) -> dict[str, set]:
        """The authenticated consumers of ``endpoint`` on this process by username (kept live)."""
        by_user = self.user_connections.get(endpoint)
        if by_user is None:
            by_user = self.user_connections[endpoint] = {}
        return by_user

    def connections_of(self, username: str) -> list:
        """The user's authenticated consumers on this process, every endpoint."""
        return [c for by_user in self.user_connections.values() for c in by_user.get(username, ())]

    def usernames(self) -> set[str]:
        """The users with an authenticated connection on this process."""
        return {user for by_user in self.user_connections.values() for user in by_user}

    async def hub_event(self, event: dict) -> None:
        """Control events: ``revoke`` closes every local connection of a user."""
        if event.get("kind") == "revoke":
            await self.revoke_local(event["user"])

    async def revoke_local(self, username: str) -> None:
        for consumer in self.connections_of(username):
            logger.info("closing a connection of a deactivated or deleted user")
            await consumer.revoke()

    # --- Groups -------------------------------------------------------------------

    async def subscribe(self, group: str, listener: Listener) -> None:
        """Deliver ``group``'s events to ``listener``; returns once the layer has joined."""
        async with self._membership:
            listeners = self.groups.get(group)
            if listeners is None:
                await self.layer.group_add(group, self.channel)
                if self.pubsub:
                    try:
                        await self.probes.confirm(group)
                    except BaseException:
                        with contextlib.suppress(Exception):
                            await self.layer.group_discard(group, self.channel)
                        raise
                listeners = self.groups[group] = set()
            listeners.add(listener)

    async def unsubscribe(self, group: str, listener: Listener) -> None:
        async with self._membership:
            listeners = self.groups.get(group)
            if listeners is None:
                return
            listeners.discard(listener)
            if not listeners:
                del self.groups[group]
                self._reaching.pop(group, None)
                await self.layer.group_discard(group, self.channel)

    async def publish(self, group: str, event: dict, *, here_first: bool = False,
                      elsewhere: bool = True) -> None:
        """Send ``event`` to every process subscribed to ``group`` (this one included).

        With ``here_first`` this process's listeners get it at once, before it
        goes through the layer (which then skips them): for a publisher whose
        events need no order across processes. It is then not sent through
        the layer at all when the caller knows no other process needs it
        (``elsewhere`` false), or when no other hub listens (:meth:`reaches_others`).

        After a failure, the hub first makes sure its memberships are back: a
        message published to a group that a Redis restart emptied reaches nobody,
        not even its sender, and nothing tells anyone.
        """
        if here_first:
            event = {**event, "group": group, "here_first": self.proc_id}
            await self.deliver_here(event)
            if not elsewhere or not await self.reaches_others(group):
                return
        if self.suspect:
            await self.recover()
        settling = self._restored_at + RECOVERY_SETTLE_SECONDS - time.monotonic()
        if settling > 0:
            await asyncio.sleep(settling)
        try:
            async with self._publishing:
                await self.layer.group_send(group, {"type": "hub.event", "group": group,
                                                    **event})
        except Exception:
            self.suspect = True
            raise

    async def reaches_others(self, group: str) -> bool:
        """Whether a layer message to ``group`` may reach a hub other than this one.

        A "yes" is kept for :data:`REACHING_SECONDS`: a group that spans processes
        does not pay the question with each message, and a "yes" that is no longer
        true only costs a message that nobody else receives. While Redis may have
        lost the groups (a failed call, or just after a restore) the answer is "yes".
        """
        now = time.monotonic()
        if now - self._reaching.get(group, -REACHING_SECONDS) < REACHING_SECONDS:
            return True
        if self.suspect or now < self._restored_at + RECOVERY_SETTLE_SECONDS:
            # Redis may have lost the groups: publish(), which first puts this process's
            # back and waits for the other processes to put theirs back.
            return True
        try:
            reaches = await layers.reaches_others(self.layer, group, self.channel)
        except Exception:
            self.suspect = True  # as after a failed publish: Redis may have lost our groups
            raise
        if reaches:
            self._reaching[group] = now
            return True
        self._reaching.pop(group, None)
        return False

    async def deliver_here(self, event: dict) -> None:
        """Hand ``event`` to this process's listeners of its group; one failing is logged."""
        for listener in list(self.groups.get(event.get("group"), ())):
            try:
                await listener.hub_event(event)
            except Exception:
                logger.exception("listener %r failed on a %s event", listener,
                                 event.get("kind"))

    async def recover(self) -> None:
        """Heartbeat, and if Redis lost this process's state, put it back; raises while down."""
        async with self._recovery:
            if await self.registry.heartbeat():
                # Our heartbeat was gone: Redis lost its data (a restart) or we
                # were taken for dead. Put back what this process holds.
                logger.warning("registry lost this process's state; restoring it")
                await self.registry.restore()
                await self._refresh_groups(restored=True)
                self._last_refresh = self._restored_at = time.monotonic()
            if self.suspect:
                logger.info("channel layer and registry answer again")
            self.suspect = False

    async def _receive_loop(self) -> None:
        backoff = 0.1
        while True:
            try:
                event = await self.layer.receive(self.channel)
                backoff = 0.1
            except asyncio.CancelledError:
                raise
            except Exception:
                if not self.suspect:
                    logger.exception("channel layer receive failed; retrying")
                self.suspect = True
                await asyncio.sleep(backoff)
                # At most a second: events queued in Redis meanwhile wait this long.
                backoff = min(backoff * 2, 1.0)
                continue
            if not self.probes.arrived(event) and event.get("here_first") != self.proc_id:
                await self.deliver_here(event)

    # --- Maintenance ------------------------------------------------------------------

    async def _maintenance_loop(self) -> None:
        last_sweep = time.monotonic()
        last_beat = 0.0
        while True:
            # While a failure is unexplained, poll often: the sooner this process's
            # memberships are back after a Redis restart, the fewer events miss it.
            await asyncio.sleep(RECOVERY_POLL_SECONDS if self.suspect else self.heartbeat_seconds)
            if self.suspect and time.monotonic() - last_beat < self.heartbeat_seconds:
                try:
                    await self.recover()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    pass  # still down; logged when it went down
                continue
            last_beat = time.monotonic()
            try:
                if time.monotonic() - last_sweep >= settings.REVOCATION_SWEEP_SECONDS:
                    last_sweep = time.monotonic()
                    for sweep in sweep_handlers:
                        await sweep(self)
                await self.recover()
                await self._reap()
                if time.monotonic() - self._last_refresh > GROUP_REFRESH_SECONDS:
                    await self._refresh_groups()
                    self._last_refresh = time.monotonic()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("hub maintenance failed; retrying next beat")
                self.suspect = True

    async def _reap(self) -> None:
        """Reap dead processes and hand their departures to the handlers; departures a
        handler failed on are handed to every handler again at the next beat (the
        handlers must bear that: chat's ``user_left`` carry versions a member has seen)."""
        reaped = await self.registry.reap(self.dead_after_seconds)
        if reaped:
            logger.info("reaped %d departures of dead processes", len(reaped))
        departures, self.unannounced = self.unannounced + reaped, []
        if not departures:
            return
        try:
            for handler in departure_handlers:
                await handler(self, departures)
        except Exception:
            self.unannounced = departures
            raise

    async def _refresh_groups(self, *, restored: bool = False) -> None:
        """Put this process's memberships back (after a Redis restart) or renew them.

        The core layer's memberships expire (``group_expiry``) and vanish with a
        restart; re-adding renews them. Pub/sub subscriptions do not expire, and
        its ``group_add`` skips a group it believes it is subscribed to, so after a
        restart it must leave first to SUBSCRIBE again on the new connection.
        """
        if self.pubsub and not restored:
            return
        for group in list(self.groups):
            if self.pubsub:
                await self.layer.group_discard(group, self.channel)
            await self.layer.group_add(group, self.channel)
            if self.pubsub:
                await self.probes.confirm(group)


_hubs: dict[asyncio.AbstractEventLoop, Hub] = {}
_starting: dict[asyncio.AbstractEventLoop, asyncio.Future] = {}


def running_hub() -> Hub | None:
    """The hub of the running event loop if one was started; never starts one."""
    try:
        return _hubs.get(asyncio.get_running_loop())
    except RuntimeError:
        return None


async def get_hub() -> Hub:
    """The hub of the running event loop, started on first use."""
    loop = asyncio.get_running_loop()
    hub = _hubs.get(loop)
    if hub is not None:
        return hub
    starting = _starting.get(loop)
    if starting is not None:
        return await asyncio.shield(starting)
    future = _starting[loop] = loop.create_future()
    try:
        hub = Hub()
        await hub.start()
    except BaseException as exc:
        future.set_exception(exc)
        future.exception()  # mark retrieved: a waiter may or may not exist
        raise
    finally:
        del _starting[loop]
    _hubs[loop] = hub
    future.set_result(hub)
    return hub


async def close_hub() -> None:
    """Stop this loop's hub (tests, shutdown); the next ``get_hub`` starts a new one."""
    hub = _hubs.pop(asyncio.get_running_loop(), None)
    if hub is not None:
        await hub.close()


# --- For code with or without a hub on its loop (views, commands, workers) ----------


async def publish(group: str, event: dict, *, here_first: bool = False,
                  elsewhere: bool = True) -> None:
    """:meth:`Hub.publish` through this loop's hub; without one, straight to the layer."""
    hub = running_hub()
    if hub is not None:
        await hub.publish(group, event, here_first=here_first, elsewhere=elsewhere)
    else:  # no listener here: the layer message every hub receives
        await get_channel_layer().group_send(group, {"type": "hub.event", "group": group, **event})


async def connections_on(endpoint: str, users: list[str]) -> Reach:
    """The users' connections on ``endpoint`` (every process), via this loop's hub if any.

    Else a short-lived registry answers; without Redis it is empty, which is right:
    no server is reachable through the in-memory layer from a process without a hub.
    """
    hub = running_hub()
    if hub is not None:
        return await hub.registry.connections_on(endpoint, users)
    registry = new_registry("outside-" + secrets.token_hex(6))
    try:
        return await registry.connections_on(endpoint, users)
    finally:
        await registry.close()
