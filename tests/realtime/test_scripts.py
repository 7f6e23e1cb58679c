"""Lua scripts called in one pass of the event loop share one round trip, and each caller
still gets its own result or its own error (realtime/scripts.py)."""

import asyncio

import pytest
import redis.asyncio as redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from realtime.scripts import ScriptRunner, runner_of

pytestmark = pytest.mark.redis

ECHO = "return {KEYS[1], ARGV[1]}"
INCR = "return redis.call('INCR', KEYS[1])"
FAIL_ON_BAD = "if ARGV[1] == 'bad' then return redis.error_reply('bad argument') end return ARGV[1]"


@pytest.fixture
async def client(redis_url):
    found = redis.Redis.from_url(redis_url, decode_responses=True)
    yield found
    await found.aclose()


class CountedPipelines:
    """Counts the pipelines a client sends and the commands in each."""

    def __init__(self, client, monkeypatch) -> None:
        self.sizes: list[int] = []
        make = client.pipeline

        def pipeline(*args, **kwargs):
            pipe = make(*args, **kwargs)
            execute = pipe.execute

            async def counted(*args, **kwargs):
                self.sizes.append(len(pipe.command_stack))
                return await execute(*args, **kwargs)

            pipe.execute = counted
            return pipe

        monkeypatch.setattr(client, "pipeline", pipeline)


async def test_calls_made_in_one_pass_go_in_one_pipeline_each_with_its_result(
        client, monkeypatch):
    runner = ScriptRunner(client)
    echo = runner.register(ECHO)
    counted = CountedPipelines(client, monkeypatch)
    results = await asyncio.gather(*(echo([f"key{i}"], [i]) for i in range(20)))
    assert results == [[f"key{i}", str(i)] for i in range(20)]
    assert counted.sizes[-1] == 20


async def test_calls_run_in_the_order_they_were_made(client, redis_url):
    runner = ScriptRunner(client)
    incr = runner.register(INCR)
    key = "rt-test:scripts:order"
    await client.delete(key)
    assert await asyncio.gather(*(incr([key]) for _ in range(10))) == list(range(1, 11))
    await client.delete(key)


async def test_calls_of_later_passes_go_in_pipelines_of_their_own(client, monkeypatch):
    runner = ScriptRunner(client)
    echo = runner.register(ECHO)
    counted = CountedPipelines(client, monkeypatch)
    assert await echo(["a"], [1]) == ["a", "1"]
    assert await echo(["b"], [2]) == ["b", "2"]
    assert counted.sizes == [1, 1]


async def test_a_script_error_fails_its_own_call_only(client):
    runner = ScriptRunner(client)
    check = runner.register(FAIL_ON_BAD)
    results = await asyncio.gather(check([], ["good"]), check([], ["bad"]), check([], ["fine"]),
                                   return_exceptions=True)
    assert results[0] == "good" and results[2] == "fine"
    assert isinstance(results[1], ResponseError) and "bad argument" in str(results[1])


async def test_scripts_that_redis_lost_are_loaded_and_run(client):
    """After a restart or SCRIPT FLUSH Redis knows no script: each is loaded, then run."""
    runner = ScriptRunner(client)
    echo, check = runner.register(ECHO), runner.register(FAIL_ON_BAD)
    assert await echo(["warm"], [0]) == ["warm", "0"]
    await client.script_flush()
    results = await asyncio.gather(echo(["a"], [1]), check([], ["ok"]), echo(["b"], [2]))
    assert results == [["a", "1"], "ok", ["b", "2"]]


async def test_an_unreachable_redis_fails_every_call_of_the_pass():
    unreachable = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=1)
    runner = ScriptRunner(unreachable)
    echo = runner.register(ECHO)
    try:
        results = await asyncio.gather(echo(["a"], [1]), echo(["b"], [2]),
                                       return_exceptions=True)
    finally:
        await unreachable.aclose()
    assert all(isinstance(result, RedisConnectionError) for result in results)


async def test_a_cancelled_caller_leaves_the_others_their_results(client):
    runner = ScriptRunner(client)
    echo = runner.register(ECHO)
    first, second = echo(["a"], [1]), echo(["b"], [2])
    first.cancel()
    assert await second == ["b", "2"]
    assert first.cancelled()


async def test_other_commands_share_the_pipeline_of_their_pass(client, monkeypatch):
    """A hot path's plain commands (the layer's group question) go with the scripts."""
    runner = runner_of(client)
    assert runner_of(client) is runner
    echo = runner.register(ECHO)
    await client.set("rt-test:scripts:plain", "value")
    counted = CountedPipelines(client, monkeypatch)
    results = await asyncio.gather(runner.command("GET", "rt-test:scripts:plain"),
                                   echo(["a"], [1]))
    assert results == ["value", ["a", "1"]]
    assert counted.sizes == [2]
    await client.delete("rt-test:scripts:plain")
