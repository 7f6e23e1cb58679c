"""channels-redis's core layer, with fewer Redis round trips per event.

:class:`RedisChannelLayer` keeps the storage of ``channels_redis.core`` exactly
(the same keys, sorted sets, serialisation, capacity, expiry and backup
queue), so processes running either class exchange events; it changes only
how many commands wait on each other:

* ``group_send`` makes two round trips instead of four: the group's
  expiry and its member list in one pipeline, then each Redis host's
  per-channel expiry and the push script in one more.
* ``receive`` on a process-specific channel (``specific.…!…``, the hub's)
  takes every waiting message, up to :data:`RECEIVE_BATCH`, with one script
  call that also moves them to the backup queue, instead of four commands per
  message (restore the backup, pop, back it up, clean it up). The messages go
  to the layer's receive buffers in order, where the next ``receive`` calls
  find them without asking Redis. Only when nothing is waiting does it block
  on ``BZPOPMIN``, as upstream does.

Under load a process's hub used to pay about four round trips per event it
received and four per event it published (bench/RESULTS.md); now it pays about
one per burst and two per event.
"""

import itertools
import logging
import time

from channels_redis import core

__all__ = ["RECEIVE_BATCH", "RedisChannelLayer"]

logger = logging.getLogger(__name__)

#: Messages one fetch takes off a process-specific channel.
RECEIVE_BATCH = 100

# KEYS: the channel's sorted set, its backup queue, the backup's fetch id.
# ARGV: how many to take, the id of the fetch whose messages reached the receive
# buffers last, the id of this fetch. A backup that is not that fetch's holds
# messages whose fetch was interrupted (or whose reply was lost and the call
# retried): they go back in front, as upstream's cleanup script does. Then the
# next messages move to the backup under this fetch's id.
_FETCH = """
if redis.call('GET', KEYS[3]) ~= ARGV[2] then
  local backed_up = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
  for i = #backed_up, 1, -2 do
    redis.call('ZADD', KEYS[1], backed_up[i], backed_up[i - 1])
  end
end
redis.call('DEL', KEYS[2], KEYS[3])
local items = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1, 'WITHSCORES')
if #items > 0 then
  for i = 1, #items, 2 do
    redis.call('ZADD', KEYS[2], items[i + 1], items[i])
  end
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, #items / 2 - 1)
  redis.call('SET', KEYS[3], ARGV[3], 'EX', 86400)
end
return items
"""

# The same script as channels_redis.core's group_send, so that capacity is
# counted and applied the same way.
_GROUP_SEND = """
local over_capacity = 0
local current_time = ARGV[#ARGV - 1]
local expiry = ARGV[#ARGV]
for i=1,#KEYS do
    if redis.call('ZCOUNT', KEYS[i], '-inf', '+inf') < tonumber(ARGV[i + #KEYS]) then
        redis.call('ZADD', KEYS[i], current_time, ARGV[i])
        redis.call('EXPIRE', KEYS[i], expiry)
    else
        over_capacity = over_capacity + 1
    end
end
return over_capacity
"""


class RedisChannelLayer(core.RedisChannelLayer):
    """``channels_redis.core.RedisChannelLayer`` with batched round trips (see the module)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        #: Per channel key: the id of the fetch whose messages reached the buffers last.
        self._buffered: dict[str, str] = {}
        self._fetches = itertools.count(1)

    async def group_send(self, group: str, message: dict) -> None:
        """Send ``message`` to every channel of ``group``."""
        assert self.require_valid_group_name(group), "Group name not valid"
        key = self._group_key(group)
        connection = self.connection(self.consistent_hash(group))
        async with connection.pipeline(transaction=False) as pipe:
            pipe.zremrangebyscore(key, min=0, max=int(time.time()) - self.group_expiry)
            pipe.zrange(key, 0, -1)
            _, members = await pipe.execute()
        channel_names = [x.decode("utf8") for x in members]
        by_connection, messages, capacities = self._map_channel_keys_to_connection(
            channel_names, message
        )
        for index, channel_keys in by_connection.items():
            connection = self.connection(index)
            async with connection.pipeline(transaction=False) as pipe:
                oldest = int(time.time()) - int(self.expiry)
                for channel_key in channel_keys:
                    pipe.zremrangebyscore(channel_key, min=0, max=oldest)
                pipe.eval(
                    _GROUP_SEND, len(channel_keys), *channel_keys,
                    *(messages[k] for k in channel_keys),
                    *(capacities[k] for k in channel_keys),
                    time.time(), self.expiry,
                )
                *_, over_capacity = await pipe.execute()
            if over_capacity > 0:
                core.logger.info(
                    "%s of %s channels over capacity in group %s",
                    over_capacity, len(channel_names), group,
                )

    async def receive_single(self, channel: str) -> tuple:
        """The next message of ``channel``: ``(channel name or names, message)``.

        ``receive`` calls this for a process-specific channel while it holds
        the receive lock; a fetch of several messages puts all but the last in
        the receive buffers, in order, and returns the last, which ``receive``
        buffers after them.
        """
        if "!" not in channel:
            return await super().receive_single(channel)
        assert self.require_valid_channel_name(channel, receive=True), "Channel name invalid"
        assert channel.endswith("!")
        connection = self.connection(self.consistent_hash(channel))
        channel_key = self.prefix + channel
        backup = self._backup_channel_name(channel_key)
        while True:
            fetch_id = str(next(self._fetches))
            items = await connection.eval(
                _FETCH, 3, channel_key, backup, backup + "$fetch",
                RECEIVE_BATCH, self._buffered.get(channel_key, ""), fetch_id,
            )
            if items:
                # No await from here until the messages are in the buffers.
                self._buffered[channel_key] = fetch_id
                contents = items[0::2]
                break
            # Nothing waiting: block as upstream does (a message popped here and
            # lost to a cancellation in flight is lost there too).
            result = await connection.bzpopmin(channel_key, timeout=self.brpop_timeout)
            if result is not None:
                contents = [result[1]]
                break
        unpacked = [m for m in (self._unpack(c, channel) for c in contents) if m is not None]
        if not unpacked:
            return await self.receive_single(channel)
        *earlier, last = unpacked
        for names, message in earlier:
            for name in names if isinstance(names, list) else (names,):
                self.receive_buffer[name].put_nowait(message)
        return last

    def _unpack(self, content: bytes, channel: str) -> tuple | None:
        """``(channel name or names, message)``; ``None`` (logged) if it cannot be read.

        Upstream raises out of ``receive`` here; one unreadable message must not
        cost the rest of its fetch.
        """
        try:
            message = self.deserialize(content)
        except Exception:
            logger.exception("dropped a channel-layer message that could not be deserialised")
            return None
        if "__asgi_channel__" in message:
            channel = message.pop("__asgi_channel__")
        return channel, message
