"""The core Redis layer with batched round trips (``project.layers``).

It must store exactly what ``channels_redis.core`` stores: processes on either
class exchange events. A fetch takes many messages at once; what a fetch took
but never handed over is not lost, and what it handed over comes only once.
"""

import asyncio
import secrets

import pytest
import redis.asyncio as redis
from channels_redis.core import RedisChannelLayer as UpstreamLayer

from project import layers

pytestmark = pytest.mark.django_db


@pytest.fixture
async def make_layer(redis_url):
    """Layers on one prefix of their own; every key is deleted afterwards."""
    prefix = "test-layers-" + secrets.token_hex(4)
    made = []

    def make(cls=layers.RedisChannelLayer, **config):
        layer = cls(hosts=[redis_url], prefix=prefix, **config)
        made.append(layer)
        return layer

    yield make
    for layer in made:
        await layer.flush()
        await layer.close_pools()
    client = redis.Redis.from_url(redis_url)
    keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
    if keys:
        await client.unlink(*keys)
    await client.aclose()


async def room_of_one(make_layer, **config):
    """A sender's layer, a receiver's layer, and the receiver's channel in group "room"."""
    sender, receiver = make_layer(**config), make_layer(**config)
    channel = await receiver.new_channel()
    await sender.group_add("room", channel)
    return sender, receiver, channel


async def send_numbers(layer, numbers, group: str = "room") -> None:
    for n in numbers:
        await layer.group_send(group, {"type": "hub.event", "n": n})


async def received_numbers(layer, channel, count: int) -> list[int]:
    return [(await layer.receive(channel))["n"] for _ in range(count)]


async def test_group_send_reaches_upstream_receivers_and_back(make_layer):
    ours, upstream = make_layer(), make_layer(UpstreamLayer)
    our_channel, their_channel = await ours.new_channel(), await upstream.new_channel()
    await ours.group_add("room", our_channel)
    await upstream.group_add("room", their_channel)

    await ours.group_send("room", {"type": "hub.event", "n": 1})
    await upstream.group_send("room", {"type": "hub.event", "n": 2})

    for layer, channel in ((ours, our_channel), (upstream, their_channel)):
        assert [(await layer.receive(channel))["n"] for _ in range(2)] == [1, 2]


async def test_a_burst_arrives_whole_and_in_order(make_layer):
    """More than one fetch's worth, sent before anyone receives."""
    sender, receiver, channel = await room_of_one(make_layer, capacity=1000)
    count = layers.RECEIVE_BATCH * 2 + 7
    await send_numbers(sender, range(count))
    assert await received_numbers(receiver, channel, count) == list(range(count))


async def test_a_fetch_shares_out_the_messages_of_every_local_channel(make_layer):
    """Two channels of one process share a Redis key; each gets its own, in order."""
    sender, receiver = make_layer(), make_layer()
    first, second = await receiver.new_channel(), await receiver.new_channel()
    await sender.group_add("a", first)
    await sender.group_add("b", second)
    await sender.group_add("both", first)
    await sender.group_add("both", second)
    for n in range(5):
        await sender.group_send("a" if n % 2 else "b", {"type": "hub.event", "n": n})
    await sender.group_send("both", {"type": "hub.event", "n": 5})

    async def take(channel, count):
        return [(await receiver.receive(channel))["n"] for _ in range(count)]

    got_first, got_second = await asyncio.gather(take(first, 3), take(second, 4))
    assert got_first == [1, 3, 5]
    assert got_second == [0, 2, 4, 5]


async def test_an_interrupted_fetch_is_fetched_again(make_layer, redis_url):
    """Messages moved to the backup by a fetch whose reply never arrived come back first."""
    sender, receiver, channel = await room_of_one(make_layer)
    await send_numbers(sender, range(3))
    key = receiver.prefix + receiver.non_local_name(channel)
    backup = receiver._backup_channel_name(key)
    client = redis.Redis.from_url(redis_url)
    try:
        # What the script does for a fetch whose reply is lost: the first two
        # messages move to the backup under a fetch id the layer never saw.
        await client.eval(layers._FETCH, 3, key, backup, backup + "$fetch", 2, "", "lost")
        assert await client.zcard(backup) == 2
    finally:
        await client.aclose()
    assert await received_numbers(receiver, channel, 3) == [0, 1, 2]


async def test_a_handed_over_fetch_is_not_delivered_again(make_layer, redis_url):
    sender, receiver, channel = await room_of_one(make_layer)
    await send_numbers(sender, range(3))
    assert await received_numbers(receiver, channel, 3) == [0, 1, 2]
    await sender.group_send("room", {"type": "hub.event", "n": 3})
    assert (await receiver.receive(channel))["n"] == 3
    key = receiver.prefix + receiver.non_local_name(channel)
    client = redis.Redis.from_url(redis_url)
    try:
        assert await client.zcard(receiver._backup_channel_name(key)) <= 1
    finally:
        await client.aclose()
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(receiver.receive(channel), 0.3)


async def test_a_full_channel_drops_what_it_cannot_hold_like_upstream(make_layer):
    sender, receiver, channel = await room_of_one(make_layer, capacity=3)
    await send_numbers(sender, range(5))
    assert await received_numbers(receiver, channel, 3) == [0, 1, 2]
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(receiver.receive(channel), 0.3)


async def test_expired_members_leave_the_group(make_layer):
    layer = make_layer(group_expiry=1)
    channel = await layer.new_channel()
    await layer.group_add("room", channel)
    await asyncio.sleep(2.1)
    await layer.group_send("room", {"type": "hub.event"})
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(layer.receive(channel), 0.3)


async def test_a_receiver_waits_for_the_next_message(make_layer):
    """Nothing waiting: the receive blocks and wakes when a message comes."""
    sender, receiver, channel = await room_of_one(make_layer)
    waiting = asyncio.ensure_future(receiver.receive(channel))
    await asyncio.sleep(0.2)
    assert not waiting.done()
    await send_numbers(sender, [1])
    assert (await asyncio.wait_for(waiting, 5))["n"] == 1


async def test_an_unreadable_message_costs_only_itself(make_layer, redis_url):
    sender, receiver, channel = await room_of_one(make_layer)
    await send_numbers(sender, [0])
    key = receiver.prefix + receiver.non_local_name(channel)
    client = redis.Redis.from_url(redis_url)
    try:
        # Scored between the two real messages.
        score = (await client.zrange(key, 0, 0, withscores=True))[0][1]
        await client.zadd(key, {b"\x00not msgpack at all": score + 0.000001})
    finally:
        await client.aclose()
    await send_numbers(sender, [1])
    assert await received_numbers(receiver, channel, 2) == [0, 1]
