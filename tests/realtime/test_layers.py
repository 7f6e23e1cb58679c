"""Whether a group message would reach another process, read only where it was tested.

``Hub.publish(..., here_first=True)`` and a room's sequencer skip the layer when no other
hub listens to the group. The in-memory layer tells through its group table, the core
Redis layer through its group's sorted set; the pub/sub layer is not asked.
"""

import importlib
import logging
import time

import pytest
from channels.layers import InMemoryChannelLayer
from channels_redis.core import RedisChannelLayer

from realtime import hub as hub_module
from realtime import layers
from realtime.hub import get_hub


async def test_the_locked_channels_release_has_its_group_table_read():
    """Under the locked channels version the fast answer is on: fails if it silently is not."""
    assert layers.GROUP_TABLE_READABLE
    layer = InMemoryChannelLayer()
    layer.groups["room"] = {"mine": 0}
    assert await layers.reaches_others(layer, "room", "mine") is False
    layer.groups["room"]["theirs"] = 0
    assert await layers.reaches_others(layer, "room", "mine") is True


@pytest.mark.parametrize("layer", [object(), None])
async def test_other_layers_may_always_reach_others(layer):
    """Layers that cannot tell (the pub/sub layer, anything else): the message goes out."""
    assert await layers.reaches_others(layer, "room", "mine") is True


@pytest.fixture
async def core_layer(redis_url):
    layer = RedisChannelLayer(hosts=[redis_url], prefix="rt-test-layers")
    yield layer
    await layer.flush()
    await layer.close_pools()


@pytest.mark.redis
async def test_the_core_redis_layer_tells_whether_another_channel_is_in_the_group(core_layer):
    """Under the locked channels-redis version: fails if the fast answer is silently off."""
    assert layers.CORE_GROUPS_READABLE
    mine = await core_layer.new_channel()
    assert await layers.reaches_others(core_layer, "room", mine) is False
    await core_layer.group_add("room", mine)
    assert await layers.reaches_others(core_layer, "room", mine) is False
    theirs = await core_layer.new_channel()
    await core_layer.group_add("room", theirs)
    assert await layers.reaches_others(core_layer, "room", mine) is True
    await core_layer.group_discard("room", theirs)
    assert await layers.reaches_others(core_layer, "room", mine) is False


@pytest.mark.redis
async def test_an_expired_member_of_a_core_group_reaches_nobody(core_layer):
    """A member older than ``group_expiry`` is one ``group_send`` would drop: it does not count."""
    mine, theirs = await core_layer.new_channel(), await core_layer.new_channel()
    await core_layer.group_add("room", mine)
    connection = core_layer.connection(core_layer.consistent_hash("room"))
    expired = int(time.time()) - core_layer.group_expiry - 1
    await connection.zadd(core_layer._group_key("room"), {theirs: expired})
    assert await layers.reaches_others(core_layer, "room", mine) is False


def in_memory_with_mine_alone():
    layer = InMemoryChannelLayer()
    layer.groups["room"] = {"mine": 0}
    return layer


@pytest.mark.parametrize("package, check, flag, otherwise, make_layer", [
    ("channels", "_group_table_readable", "GROUP_TABLE_READABLE",
     "every event is published through the in-memory layer, even with no other listener",
     in_memory_with_mine_alone),
    ("channels-redis", "_core_groups_readable", "CORE_GROUPS_READABLE",
     "every chat batch is published through the Redis layer, even with no other listener",
     lambda: RedisChannelLayer(hosts=["redis://127.0.0.1:1"])),
])
async def test_an_untested_release_always_goes_through_the_layer(
        package, check, flag, otherwise, make_layer, monkeypatch, caplog):
    """Another version: one warning, and every message is published (slower, right)."""
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version",
                        lambda name: "4.4.0" if name == package else real(name))
    with caplog.at_level(logging.WARNING, logger="realtime.layers"):
        readable = getattr(layers, check)()
    assert readable is False
    assert [r.getMessage() for r in caplog.records] == [
        f"{package} 4.4.0 is not in the tested range >=4.3,<4.4: {otherwise}"]
    monkeypatch.setattr(layers, flag, readable)
    assert await layers.reaches_others(make_layer(), "room", "mine") is True


async def test_the_hub_keeps_a_yes_for_a_while_and_asks_again_after_a_no(monkeypatch):
    """A group that reaches another process is not asked about with every message; one
    that reached nobody is asked each time (a "no" kept could lose a message)."""
    hub = await get_hub()
    answers, asked = [False, True, False], []

    async def reaches_others(layer, group, channel):
        asked.append(group)
        return answers[len(asked) - 1]

    monkeypatch.setattr(layers, "reaches_others", reaches_others)
    assert await hub.reaches_others("g") is False
    assert await hub.reaches_others("g") is True
    assert await hub.reaches_others("g") is True  # kept: not asked
    assert asked == ["g", "g"]
    monkeypatch.setattr(hub_module, "REACHING_SECONDS", 0)
    assert await hub.reaches_others("g") is False
    assert asked == ["g", "g", "g"]


async def test_the_hub_answers_yes_while_redis_may_have_lost_the_groups(monkeypatch):
    """After a failed call, and just after a restore, the other processes' groups may be
    missing from Redis: the batch goes through publish(), which waits for them."""
    hub = await get_hub()

    async def nobody_else(layer, group, channel):
        return False

    monkeypatch.setattr(layers, "reaches_others", nobody_else)
    assert await hub.reaches_others("g") is False
    monkeypatch.setattr(hub, "suspect", True)
    assert await hub.reaches_others("g") is True
    monkeypatch.setattr(hub, "suspect", False)
    monkeypatch.setattr(hub, "_restored_at", time.monotonic())
    assert await hub.reaches_others("g") is True
    monkeypatch.setattr(hub, "_restored_at", time.monotonic() - hub_module.RECOVERY_SETTLE_SECONDS)
    assert await hub.reaches_others("g") is False


async def test_a_failed_question_marks_the_hub_suspect(monkeypatch):
    hub = await get_hub()

    async def unreachable(layer, group, channel):
        raise ConnectionError("Redis went away")

    monkeypatch.setattr(layers, "reaches_others", unreachable)
    with pytest.raises(ConnectionError):
        await hub.reaches_others("g")
    assert hub.suspect
    hub.suspect = False


def core_layer_of(*hosts) -> RedisChannelLayer:
    """A core layer that is only looked at: its pools are made, never connected."""
    return RedisChannelLayer(hosts=list(hosts), prefix="rt-test-bound")


def test_publishes_in_the_core_layer_stay_under_its_pool_size():
    """Each ``group_send`` holds one of the pool's connections, and the pool raises past
    its ``max_connections``: the bound leaves ``POOL_RESERVE`` of them to the rest."""
    url = "redis://127.0.0.1:1/0"  # never connected
    assert layers.publish_bound(core_layer_of({"address": url, "max_connections": 1000}),
                                50) == 50
    assert layers.publish_bound(core_layer_of({"address": url, "max_connections": 30}),
                                50) == 30 - layers.POOL_RESERVE
    assert layers.publish_bound(core_layer_of({"address": url, "max_connections": 4}), 50) == 1
    # Of several shards the smallest pool counts; a URL's own setting counts too.
    assert layers.publish_bound(core_layer_of({"address": url, "max_connections": 1000},
                                              f"{url}?max_connections=25"), 50) == 15


def test_without_a_pool_size_the_bound_follows_redis_pys_default():
    from redis.asyncio import ConnectionPool

    default = ConnectionPool().max_connections
    assert layers.publish_bound(core_layer_of("redis://127.0.0.1:1/0"), 1000) == (
        default - layers.POOL_RESERVE)


@pytest.mark.parametrize("layer", [InMemoryChannelLayer(), object()])
def test_other_layers_take_the_hubs_own_bound(layer):
    assert layers.publish_bound(layer, 50) == 50
