"""What the hub needs to know of channels' layers beyond their public API.

* :func:`reaches_others`: whether a group message would reach another process.
  On the in-memory layer this reads the layer's group table, an attribute of
  ``InMemoryChannelLayer`` that is not part of channels' documented API; on
  channels-redis's core layer it reads the group's sorted set in Redis, whose
  key and scores are that layer's own. Each is read only for the versions it
  was tested with (:data:`TESTED_CHANNELS`, :data:`TESTED_CHANNELS_REDIS`), and
  otherwise the answer is "yes", which costs a needless layer round trip, never
  a lost event.
* :class:`Probes`: a Redis pub/sub subscription is confirmed by an event of our
  own that comes back (``group_add`` returns before Redis applies SUBSCRIBE).
* :func:`publish_bound`: how many group messages the core Redis layer can have in
  flight before its connection pool raises, read from the pools it would make.
"""

import asyncio
import logging
import secrets
import time

from channels.layers import InMemoryChannelLayer
from channels_redis.core import RedisChannelLayer
from channels_redis.pubsub import RedisPubSubChannelLayer

from realtime.scripts import runner_of
from realtime.servers import untested

logger = logging.getLogger(__name__)

#: The channels releases whose in-memory layer keeps ``groups`` as ``{group: {channel: expiry}}``.
TESTED_CHANNELS = {"channels": ("4.3", "4.4")}
#: The kind of the events that confirm a pub/sub subscription; no listener sees them.
PROBE = "hub.probe"
PROBE_INTERVAL_SECONDS = 0.1
PROBE_ATTEMPTS = 50


#: The channels-redis releases whose core layer keeps a group as a sorted set of channel
#: names scored by when they were added, at ``_group_key(group)`` on the shard of
#: ``consistent_hash(group)``, and drops the members older than ``group_expiry``.
TESTED_CHANNELS_REDIS = {"channels-redis": ("4.3", "4.4")}


def _tested(tested: dict[str, tuple[str, str]], otherwise: str) -> bool:
    """Whether the installed versions are the ``tested`` ones; if not, say so once."""
    reason = untested(tested)
    if reason is None:
        return True
    logger.warning("%s: %s", reason, otherwise)
    return False


def _group_table_readable() -> bool:
    return _tested(TESTED_CHANNELS, "every event is published through the in-memory "
                                    "layer, even with no other listener")


def _core_groups_readable() -> bool:
    return _tested(TESTED_CHANNELS_REDIS, "every chat batch is published through the Redis "
                                          "layer, even with no other listener")


#: Whether :func:`reaches_others` may read the in-memory layer's group table.
GROUP_TABLE_READABLE = _group_table_readable()
#: Whether :func:`reaches_others` may read the core Redis layer's groups.
CORE_GROUPS_READABLE = _core_groups_readable()


async def reaches_others(layer, group: str, channel: str) -> bool:
    """Whether a message to ``group`` may reach a channel other than ``channel``.

    On the core Redis layer this is one command (in a pipeline with the others of
    this pass of the loop), where a message sent costs that layer several round
    trips (its ``group_send``) and then its receiver more. A channel added after
    the answer is not missed by a caller that asks after its event is stored: a
    member adds its channel before it reads what is stored. The pub/sub layer is
    not asked: there a message is one ``PUBLISH``.
    """
    if isinstance(layer, InMemoryChannelLayer):
        if GROUP_TABLE_READABLE:
            return any(other != channel for other in layer.groups.get(group, ()))
        return True
    if CORE_GROUPS_READABLE and isinstance(layer, RedisChannelLayer):
        connection = layer.connection(layer.consistent_hash(group))
        # The members group_send would send to: those added within group_expiry.
        expired = int(time.time()) - layer.group_expiry
        # The questions of one pass of the loop go in one pipeline (realtime/scripts.py).
        members = await runner_of(connection).command(
            "ZRANGEBYSCORE", layer._group_key(group), f"({expired}", "+inf")
        own = channel.encode()
        return any(member != own for member in members)
    return True


#: Connections of the core Redis layer's pool left to what is not a publish: the
#: receive loop's blocking pop, ``group_add`` and ``group_discard``.
POOL_RESERVE = 10


def publish_bound(layer, most: int) -> int:
    """How many ``group_send`` calls may be in ``layer`` at once: ``most``, or fewer
    where the core Redis layer's connection pool would raise before that.

    channels-redis takes a pooled connection for each ``group_send``, and redis-py's
    pool raises ``MaxConnectionsError`` past its ``max_connections`` (the host's
    setting, else redis-py's default) instead of waiting. The cap is read from a pool
    made as the layer makes its own (``create_pool``), which opens no connection;
    of several hosts, the smallest counts.
    """
    if not isinstance(layer, RedisChannelLayer):
        return most
    caps = []
    for index in range(len(layer.hosts)):
        try:
            caps.append(layer.create_pool(index).max_connections)
        except Exception:
            logger.warning("could not read the pool size of the Redis layer's host %d;"
                           " leaving it out of the publish bound", index, exc_info=True)
    if not caps:
        return most
    return max(1, min(most, min(caps) - POOL_RESERVE))


def is_pubsub(layer) -> bool:
    return isinstance(layer, RedisPubSubChannelLayer)


class Probes:
    """Confirms pub/sub subscriptions of one hub's channel."""

    def __init__(self, layer) -> None:
        self.layer = layer
        self.waiting: dict[str, asyncio.Future] = {}

    def arrived(self, event: dict) -> bool:
        """Whether ``event`` is a probe (then it is consumed here)."""
        if event.get("kind") != PROBE:
            return False
        probe = self.waiting.get(event.get("token"))
        if probe is not None and not probe.done():
            probe.set_result(None)
        return True

    async def confirm(self, group: str) -> None:
        """Return once an event published to ``group`` reaches this channel.

        A probe published before the SUBSCRIBE took effect reaches nobody, so it
        is sent again every :data:`PROBE_INTERVAL_SECONDS`.
        """
        token = secrets.token_hex(8)
        arrived = self.waiting[token] = asyncio.get_running_loop().create_future()
        try:
            for _ in range(PROBE_ATTEMPTS):
                await self.layer.group_send(
                    group, {"type": "hub.event", "group": group, "kind": PROBE, "token": token}
                )
                try:
                    await asyncio.wait_for(asyncio.shield(arrived), PROBE_INTERVAL_SECONDS)
                    return
                except TimeoutError:
                    continue
            raise ConnectionError(f"the subscription to {group} was not confirmed")
        finally:
            del self.waiting[token]
