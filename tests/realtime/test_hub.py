"""The process hub: subscriptions that are in effect when ``subscribe()`` returns.

With Redis pub/sub, ``group_add`` returns before Redis has applied the
SUBSCRIBE, so the hub confirms each new subscription with a probe of its own.
These tests drive that logic on the in-memory layer with the hub told it is on
pub/sub; the real layer is exercised by the Redis tests when REDIS_LAYER=pubsub.
"""

import asyncio

import pytest
from channels.layers import InMemoryChannelLayer
from channels_redis.core import RedisChannelLayer
from django.conf import settings

from realtime import layers
from realtime.hub import MAX_PUBLISHES_IN_LAYER, Hub
from realtime.layers import PROBE


class Recorder:
    def __init__(self) -> None:
        self.events: list[dict] = []

    async def hub_event(self, event: dict) -> None:
        self.events.append(event)


@pytest.fixture
async def pubsub_hub():
    hub = Hub()
    hub.pubsub = True
    await hub.start()
    yield hub
    await hub.close()


def drop_probes(monkeypatch, hub: Hub, count: int) -> list[dict]:
    """Make the layer lose the next ``count`` probes, as Redis does before SUBSCRIBE applies."""
    lost: list[dict] = []
    real_send = hub.layer.group_send

    async def group_send(group, message):
        if message.get("kind") == PROBE and len(lost) < count:
            lost.append(message)
            return
        await real_send(group, message)

    monkeypatch.setattr(hub.layer, "group_send", group_send)
    return lost


async def test_subscribe_returns_once_the_group_reaches_this_process(pubsub_hub):
    listener = Recorder()
    await pubsub_hub.subscribe("room", listener)
    await pubsub_hub.publish("room", {"kind": "batch", "n": 1})
    for _ in range(50):
        if listener.events:
            break
        await asyncio.sleep(0.01)
    # The probe was consumed by the hub; listeners only see real events.
    assert [event["kind"] for event in listener.events] == ["batch"]


async def test_a_probe_lost_before_the_subscription_applies_is_sent_again(
    pubsub_hub, monkeypatch
):
    lost = drop_probes(monkeypatch, pubsub_hub, 2)
    await pubsub_hub.subscribe("room", Recorder())
    assert len(lost) == 2
    assert "room" in pubsub_hub.groups


async def test_a_subscription_never_confirmed_fails_and_is_not_kept(pubsub_hub, monkeypatch):
    monkeypatch.setattr(layers, "PROBE_ATTEMPTS", 3)
    lost = drop_probes(monkeypatch, pubsub_hub, 1000)
    with pytest.raises(ConnectionError):
        await pubsub_hub.subscribe("room", Recorder())
    assert len(lost) == 3
    assert "room" not in pubsub_hub.groups
    assert not pubsub_hub.probes.waiting


async def test_other_layers_need_no_probe(monkeypatch):
    hub = Hub()
    if hub.pubsub:
        pytest.skip("the configured layer is Redis pub/sub (REDIS_LAYER=pubsub)")
    await hub.start()
    try:
        lost = drop_probes(monkeypatch, hub, 1000)
        await hub.subscribe("room", Recorder())
        assert lost == []
    finally:
        await hub.close()


async def until(condition, seconds: float = 3.0) -> None:
    for _ in range(int(seconds / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)


@pytest.fixture
async def two_hubs():
    """This process's hub and another one (another process, as far as the layer can tell)."""
    hubs = [Hub(), Hub()]
    for hub in hubs:
        await hub.start()
    yield hubs
    for hub in hubs:
        await hub.close()


async def test_here_first_reaches_this_process_before_returning_and_only_once(two_hubs):
    """Local listeners have the event when publish returns; its copy from the layer is skipped."""
    hub, other = two_hubs
    mine, theirs = Recorder(), Recorder()
    await hub.subscribe("room", mine)
    await other.subscribe("room", theirs)
    await hub.publish("room", {"kind": "note", "n": 1}, here_first=True)
    assert [event["n"] for event in mine.events] == [1]
    # A plain event after it, from the same publisher, arrives after the layer's copy of 1.
    await hub.publish("room", {"kind": "note", "n": 2})
    await until(lambda: len(mine.events) >= 2 and len(theirs.events) >= 2)
    assert [event["n"] for event in mine.events] == [1, 2]
    assert [event["n"] for event in theirs.events] == [1, 2]


async def test_on_the_in_memory_layer_here_first_sends_only_when_another_hub_listens(
        monkeypatch):
    """With no other hub in the group, nothing could receive a layer message: none is sent."""
    layer = InMemoryChannelLayer()
    hub, other = Hub(), Hub()
    for each in (hub, other):
        each.layer, each.pubsub = layer, False
    await hub.start()
    sent: list[str] = []
    real_send = layer.group_send

    async def group_send(group, message):
        sent.append(message["kind"])
        await real_send(group, message)

    monkeypatch.setattr(layer, "group_send", group_send)
    try:
        listener = Recorder()
        await hub.subscribe("room", listener)
        await hub.publish("room", {"kind": "alone"}, here_first=True)
        assert sent == [] and [event["kind"] for event in listener.events] == ["alone"]
        await other.start()
        theirs = Recorder()
        await other.subscribe("room", theirs)
        await hub.publish("room", {"kind": "shared"}, here_first=True)
        assert sent == ["shared"]
        await until(lambda: theirs.events)
        assert [event["kind"] for event in theirs.events] == ["shared"]
    finally:
        await hub.close()
        await other.close()


@pytest.mark.redis
@pytest.mark.parametrize("pool_cap", [MAX_PUBLISHES_IN_LAYER + layers.POOL_RESERVE,
                                      layers.POOL_RESERVE + 5],
                         ids=["pool-over-the-hubs-bound", "pool-under-the-hubs-bound"])
async def test_a_burst_of_publishes_past_the_layers_connection_pool_waits_its_turn(redis_url,
                                                                                    pool_cap):
    """Thousands of sockets leaving one room publish their ``user_left`` at once.

    channels-redis takes a pooled connection for each ``group_send``, and redis-py's
    pool raises past its cap instead of waiting: the publishes beyond the hub's bound
    wait for a turn, so every one arrives and the hub does not take the burst for a
    lost Redis. A pool smaller than that bound (many processes on one Redis) lowers it.
    """
    layer = RedisChannelLayer(hosts=[{"address": redis_url, "max_connections": pool_cap}],
                              prefix=f"{settings.REDIS_PREFIX}:burst", capacity=10000)
    hub = Hub(layer)
    await hub.start()
    try:
        listener = Recorder()
        await hub.subscribe("room", listener)
        count = 4 * pool_cap
        await asyncio.gather(*(hub.publish("room", {"kind": "left", "n": n})
                               for n in range(count)))
        await until(lambda: len(listener.events) >= count, seconds=10)
        assert sorted(event["n"] for event in listener.events) == list(range(count))
        assert not hub.suspect
    finally:
        await hub.close()
        await layer.flush()
        await layer.close_pools()
