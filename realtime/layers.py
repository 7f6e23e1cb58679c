"""What the hub needs to know of channels' layers beyond their public API.

* :func:`reaches_others`: whether a group message would reach another process.
  On the in-memory layer this reads the layer's group table, an attribute of
  ``InMemoryChannelLayer`` that is not part of channels' documented API; so it
  is read only for the channels versions it was tested with
  (:data:`TESTED_CHANNELS`), and otherwise the answer is "yes", which costs a
  needless layer round trip, never a lost event.
* :class:`Probes`: a Redis pub/sub subscription is confirmed by an event of our
  own that comes back (``group_add`` returns before Redis applies SUBSCRIBE).
"""

import asyncio
import logging
import secrets

from channels.layers import InMemoryChannelLayer
from channels_redis.pubsub import RedisPubSubChannelLayer

from realtime.servers import untested

logger = logging.getLogger(__name__)

#: The channels releases whose in-memory layer keeps ``groups`` as ``{group: {channel: expiry}}``.
TESTED_CHANNELS = {"channels": ("4.3", "4.4")}
#: The kind of the events that confirm a pub/sub subscription; no listener sees them.
PROBE = "hub.probe"
PROBE_INTERVAL_SECONDS = 0.1
PROBE_ATTEMPTS = 50


def _group_table_readable() -> bool:
    reason = untested(TESTED_CHANNELS)
    if reason is None:
        return True
    logger.warning("%s: every event is published through the in-memory layer, even with "
                   "no other listener", reason)
    return False


#: Whether :func:`reaches_others` may read the in-memory layer's group table.
GROUP_TABLE_READABLE = _group_table_readable()


def reaches_others(layer, group: str, channel: str) -> bool:
    """Whether a message to ``group`` may reach a channel other than ``channel``."""
    if GROUP_TABLE_READABLE and isinstance(layer, InMemoryChannelLayer):
        return any(other != channel for other in layer.groups.get(group, ()))
    return True


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
