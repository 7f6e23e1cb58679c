"""Lua scripts on Redis: the calls of one pass of the event loop share one round trip.

Under load many rooms take and give back their locks, and many connections register,
at the same moment. Alone, each call pays a round trip and most of redis-py's work per
command (a connection from the pool, a write, a wait, a read). :class:`ScriptRunner`
queues the calls made in one pass of the event loop and sends them in the next as one
pipeline of ``EVALSHA``. Each caller still gets its own result or its own error, and the
calls run in the order they were made. Every script stays atomic on its own; the
pipeline is not a transaction, so one script's error fails no other. Other commands
of a hot path can join the same pipeline (:meth:`ScriptRunner.command`).
"""

import asyncio
import hashlib
import weakref
from collections.abc import Sequence
from typing import Any

from redis.exceptions import NoScriptError

_Call = tuple[tuple[Any, ...], asyncio.Future]


class Script:
    """One Lua script of a :class:`ScriptRunner`; ``await script(keys, args)`` runs it
    (the call of redis-py's own ``AsyncScript``)."""

    __slots__ = ("runner", "sha")

    def __init__(self, runner: "ScriptRunner", sha: str) -> None:
        self.runner, self.sha = runner, sha

    def __call__(self, keys: Sequence[Any] = (), args: Sequence[Any] = ()) -> asyncio.Future:
        return self.runner.command("EVALSHA", self.sha, len(keys), *keys, *args)


class ScriptRunner:
    """Runs the Lua scripts (and other commands) of one Redis client, the calls of each
    loop pass together."""

    def __init__(self, redis: Any) -> None:
        self.redis = redis
        self.sources: dict[str, str] = {}
        self._waiting: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, list[_Call]] = (
            weakref.WeakKeyDictionary())
        self._running: set[asyncio.Task] = set()

    def register(self, source: str) -> Script:
        """``source`` as a script, run by its SHA (Redis loads it on first use)."""
        sha = hashlib.sha1(source.encode()).hexdigest()
        self.sources[sha] = source
        return Script(self, sha)

    def command(self, *args: Any) -> asyncio.Future:
        """Queue a command for this pass's pipeline; the future gets its result."""
        loop = asyncio.get_running_loop()
        waiting = self._waiting.get(loop)
        if waiting is None:
            waiting = self._waiting[loop] = []
            loop.call_soon(self._send, loop)
        done = loop.create_future()
        waiting.append((args, done))
        return done

    def _send(self, loop: asyncio.AbstractEventLoop) -> None:
        calls = self._waiting.pop(loop, [])
        task = loop.create_task(self._run(calls), name="redis-scripts")
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _run(self, calls: list[_Call]) -> None:
        try:
            results = await self._execute(calls)
            unknown = [i for i, result in enumerate(results)
                       if isinstance(result, NoScriptError)]
            if unknown:
                # Redis lost its scripts (a restart, SCRIPT FLUSH): load them, run those again.
                for sha in {calls[i][0][1] for i in unknown}:
                    await self.redis.script_load(self.sources[sha])
                again = await self._execute([calls[i] for i in unknown])
                for i, result in zip(unknown, again, strict=True):
                    results[i] = result
        except asyncio.CancelledError:
            for _, done in calls:
                done.cancel()
            raise
        except Exception as exc:
            for _, done in calls:
                if not done.done():
                    done.set_exception(exc)
            return
        for (_, done), result in zip(calls, results, strict=True):
            if done.done():  # its caller was cancelled
                continue
            if isinstance(result, Exception):
                done.set_exception(result)
            else:
                done.set_result(result)

    async def _execute(self, calls: list[_Call]) -> list[Any]:
        pipe = self.redis.pipeline(transaction=False)
        for args, _ in calls:
            pipe.execute_command(*args)
        return await pipe.execute(raise_on_error=False)


_runners: "weakref.WeakKeyDictionary[Any, ScriptRunner]" = weakref.WeakKeyDictionary()


def runner_of(redis: Any) -> ScriptRunner:
    """The runner of a Redis client (the registry's, a channel layer's connection): one
    per client, so that all the calls of a pass on that client share its pipeline."""
    runner = _runners.get(redis)
    if runner is None:
        runner = _runners[redis] = ScriptRunner(redis)
    return runner
