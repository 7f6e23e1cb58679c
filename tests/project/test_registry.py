"""The Redis registry under a join/leave storm of one process."""

import asyncio

from django.conf import settings

from project.registry import RedisRegistry


async def test_a_storm_of_joins_and_leaves_loses_no_update(redis_url):
    """500 concurrent joins then leaves all take effect: callers wait for a pooled connection."""
    registry = RedisRegistry("storm-proc", redis_url, settings.REDIS_PREFIX)
    try:
        conns = [f"storm-proc|{i}" for i in range(500)]
        await asyncio.gather(*(registry.room_join("storm", c, f"u{i % 50}")
                               for i, c in enumerate(conns)))
        assert len((await registry.room_join("storm", "storm-proc|x", "zz")).users) == 51
        changes = await asyncio.gather(*(registry.room_leave("storm", c) for c in conns))
        assert sum(not change.user_present for change in changes) == 50
        assert (await registry.room_leave("storm", "storm-proc|x")).users == []
    finally:
        await registry.close()

