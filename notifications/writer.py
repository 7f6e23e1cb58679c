"""The writer: this process's posts and acks share one transaction per batch.

One :class:`Writer` per event loop (server process) takes the posts of every
request and the acks of every connection, stores them in batches through the
database worker and pushes what each batch stored once it has committed.
"""

import asyncio
import contextvars
import logging
import time
import weakref
from collections.abc import Iterable
from typing import Any

from notifications.protocol import BROADCAST, QUEUED, note_item
from notifications.push import counted, push_notes
from notifications.store import ACK_BATCH, Post, Stored, store_batch, undelivered_frames
from realtime import db
from realtime.batching import MAX_BATCH, ServiceUnavailable, each_alone
from realtime.protocol import json_problem

logger = logging.getLogger(__name__)

#: Posts per transaction of the writer (two usernames each in one ``IN``: SQLite's cap).
#: How long an ack may wait for a post to share its transaction. Under load every
#: batch of posts carries the acks taken meanwhile; without this wait each ack
#: frame would start a transaction of its own (one per notification). A delayed
#: ack only risks a redelivery (at-least-once), and it is written at once when
#: the connection goes or its user's queue is read (:meth:`Writer.flush_acks`).
ACK_DELAY_SECONDS = 0.05
#: Pending acked ids that start a transaction without waiting for the delay.
MAX_PENDING_ACKS = ACK_BATCH
#: Loop turns the writer waits, while posts keep arriving, before it takes a batch.
GATHER_TURNS = 8


def check_type(data: Any) -> None:
    """Refuse (``TypeError``) data that is not a dict (a JSON object)."""
    if not isinstance(data, dict):
        raise TypeError(f"notification data must be a dict (a JSON object), not {type(data)}")


def check_data(data: Any) -> None:
    """Refuse data that could not be stored and sent, before anything is stored.

    ``TypeError`` if it is not a dict; ``ValueError`` for what an API body is
    refused for (:func:`realtime.protocol.json_problem`: NaN, infinities,
    nesting past ``API_MAX_JSON_DEPTH``, NUL, lone surrogates).
    """
    check_type(data)
    problem = json_problem(data)
    if problem is not None:
        raise ValueError(f"notification data cannot be stored and sent: {problem}")


#: The queues read together: the connections of a reconnect storm share their queries.
UNDELIVERED = db.Lookup(undelivered_frames)


async def aundelivered_frames(user_id: int) -> list[tuple[int, str]]:
    """The user's queue (:func:`~notifications.store.undelivered_frames`), read after this
    process's pending acks of the user are written.

    A client that acknowledged on one connection and reconnects at once does
    not get what it acknowledged again from this process.
    """
    await flush_acks(user_id)
    return await UNDELIVERED.get(user_id)


def acknowledge_later(user_id: int, ids: Iterable[int]) -> None:
    """Mark ``ids`` delivered with the writer's next transaction (the ``ack`` frame).

    Acks of every connection on this process share one ``UPDATE`` per user and
    batch. An ack lost before it is written (the process dies) only means the
    notification comes again on the next connect: at-least-once still holds.
    """
    writer().acknowledge(user_id, ids)


async def flush_acks(user_id: int | None = None) -> None:
    """Wait until the acks of ``user_id`` (or all) taken so far are written (or failed)."""
    await writer().flush_acks(user_id)


async def finish() -> None:
    """A graceful stop's handler: store every pending ack and finish the batch in progress."""
    found = _writers.get(asyncio.get_running_loop())
    if found is None:
        return
    await found.flush_acks()
    if found.task is not None and not found.task.done():
        await asyncio.shield(found.task)
    if found.pushing is not None and not found.pushing.done():
        await asyncio.shield(found.pushing)


class Writer:
    """Stores this event loop's posts and acks in batches, then pushes what it stored.

    Posts and acks that arrive while a batch is in the database wait for the
    next one, so under load each transaction carries many of them; alone, a
    post pays one round trip. Acks also wait (up to ``ACK_DELAY_SECONDS``) for
    a post to ride with, so a busy process writes no transactions of acks
    alone. Notifications are pushed only once their batch has committed
    ("stored, then pushed"), in id order; a batch is pushed while the next one
    is in the database. A batch that fails is retried as its acks alone, then
    one post at a time, so one bad row fails neither the other posts nor the
    acks; once a row is committed its post is answered as stored, whatever
    fails after.
    """

    def __init__(self) -> None:
        self.posts: list[Post] = []
        self.acks: dict[int, set[int]] = {}
        #: Ids in ``acks`` (with repeats), and when the oldest of them was taken.
        self.pending_acks = 0
        self.acks_since = 0.0
        #: Acks are due now, not after ``ACK_DELAY_SECONDS`` (someone waits for them).
        self.acks_wanted = False
        self.ack_timer: asyncio.TimerHandle | None = None
        self.task: asyncio.Task | None = None
        loop = asyncio.get_running_loop()
        #: Resolved when the batch that takes what is pending now has finished.
        self.next_batch: asyncio.Future = loop.create_future()
        #: The batch in the database, and the users whose acks it carries.
        self.current_batch: asyncio.Future | None = None
        self.current_ack_users: frozenset[int] = frozenset()
        #: The push of the last batch stored, while it runs.
        self.pushing: asyncio.Task | None = None

    async def submit(self, post: Post) -> tuple[int | None, str]:
        """Store and push ``post`` with the next batch: ``(id, status)``.

        The status is ``sent``, ``queued`` or ``broadcast``; ``(None,
        "authorised")`` for a post without data. Raises :class:`~notifications.errors.Refused` or
        :class:`ServiceUnavailable`.
        """
        post.done = asyncio.get_running_loop().create_future()
        self.posts.append(post)
        self._wake()
        return await post.done

    def acknowledge(self, user_id: int, ids: Iterable[int]) -> None:
        """Mark ``ids`` delivered (those of the user's) with a batch soon.

        With the next batch of posts, or after ``ACK_DELAY_SECONDS`` if no post
        comes first.
        """
        ids = set(ids)
        if not ids:
            return
        if not self.acks:
            self.acks_since = time.monotonic()
        self.acks.setdefault(user_id, set()).update(ids)
        self.pending_acks += len(ids)
        if self._acks_due():
            self._wake()
        else:
            self._schedule_acks()

    async def flush_acks(self, user_id: int | None = None) -> None:
        """Wait until the acks of ``user_id`` (or all) pending now have been written."""
        if (user_id is None and self.current_batch) or user_id in self.current_ack_users:
            await asyncio.shield(self.current_batch)
        if (user_id is None and self.acks) or user_id in self.acks:
            self.acks_wanted = True
            self._wake()
            await asyncio.shield(self.next_batch)

    def _acks_due(self) -> bool:
        return bool(self.acks) and (
            self.acks_wanted
            or self.pending_acks >= MAX_PENDING_ACKS
            or time.monotonic() - self.acks_since >= ACK_DELAY_SECONDS
        )

    def _schedule_acks(self) -> None:
        """Make sure the pending acks are written ``ACK_DELAY_SECONDS`` after the oldest."""
        if self.ack_timer is None:
            delay = max(0.0, self.acks_since + ACK_DELAY_SECONDS - time.monotonic())
            self.ack_timer = asyncio.get_running_loop().call_later(delay, self._ack_timer_fired)

    def _ack_timer_fired(self) -> None:
        self.ack_timer = None
        if self.acks:
            self.acks_wanted = True
            self._wake()

    def _wake(self) -> None:
        if self.task is None or self.task.done():
            # A fresh context: the task outlives the request that happened to start it.
            self.task = asyncio.get_running_loop().create_task(
                self._run(), name="notifications-writer", context=contextvars.Context()
            )

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self.posts or self._acks_due():
            await self._gather_posts()
            posts, self.posts = self.posts[:MAX_BATCH], self.posts[MAX_BATCH:]
            acks, self.acks = self.acks, {}
            self.pending_acks, self.acks_wanted = 0, False
            if self.ack_timer is not None:
                self.ack_timer.cancel()
                self.ack_timer = None
            self.current_batch, self.next_batch = self.next_batch, loop.create_future()
            self.current_ack_users = frozenset(acks)
            stored: list[tuple[Post, Stored]] = []
            try:
                stored = await self._store(posts, acks)
            except Exception:
                logger.exception("the notifications writer failed")
                for post in posts:
                    _settle(post, exception=ServiceUnavailable("could not store"))
            finally:
                self.current_ack_users = frozenset()
                self.current_batch.set_result(None)
                self.current_batch = None
            # The push of the batch before (its registry round trip, its NOTEs) ran
            # while this one was in the database. One push at a time: batches are
            # pushed in id order, and a slow push holds the writer back.
            if self.pushing is not None:
                await self.pushing
            self.pushing = loop.create_task(_push_stored(stored)) if stored else None
        if self.acks:
            # Acks taken during the last batch wait for a post, or for the delay.
            self._schedule_acks()

    async def _gather_posts(self) -> None:
        """Let requests that have already arrived add their posts before a batch starts.

        A request whose bytes came in with the one that woke the writer is
        still one or two loop turns from :meth:`submit`. Waiting those turns
        (as long as posts keep coming, at most ``GATHER_TURNS``) makes each
        transaction carry more posts: fewer commits and thread hops per
        notification, for a few loop turns of latency.
        """
        for _ in range(GATHER_TURNS):
            waiting = len(self.posts)
            await asyncio.sleep(0)
            if len(self.posts) == waiting:
                return

    async def _store(self, posts: list[Post], acks: dict[int, set[int]]
                     ) -> list[tuple[Post, Stored]]:
        """Store a batch; answer the posts it did not store, and return those it did."""
        try:
            results = await db.run(store_batch, posts, acks)
        except Exception:
            if not posts:
                logger.warning("a batch of acks failed; its notifications come again",
                               exc_info=True)
                return []
            if len(posts) > 1 or acks:
                logger.warning("a batch of %d notifications and the acks of %d users failed;"
                               " storing each alone", len(posts), len(acks), exc_info=True)
            results = await self._each_alone(posts, acks)
        stored: list[tuple[Post, Stored]] = []
        for post, result in zip(posts, results, strict=True):
            if isinstance(result, Stored):
                stored.append((post, result))
            elif isinstance(result, Exception):
                _settle(post, exception=result)
            else:
                _settle(post, result=(None, result))
        return stored

    @staticmethod
    async def _each_alone(posts: list[Post], acks: dict[int, set[int]]
                          ) -> list[Stored | Exception | str]:
        """After a failed batch: its acks in a transaction of their own, then each post.

        So a post the database refuses fails only itself, never an ack or
        another post.
        """
        if acks:
            try:
                await db.run(store_batch, [], acks)
            except Exception:
                logger.warning("a batch of acks failed; its notifications come again",
                               exc_info=True)
        results: list[Stored | Exception | str] = []

        async def alone(post: Post) -> None:
            results.extend(await db.run(store_batch, [post], {}))

        def failed(unstored: list[Post]) -> None:
            logger.exception("could not store %d notification(s)", len(unstored))
            results.extend(ServiceUnavailable("could not store") for _ in unstored)

        await each_alone(posts, alone, failed)
        return results


async def _push_stored(stored: list[tuple[Post, Stored]]) -> None:
    """Push what a batch stored, in id order in one event; answer each post with its id.

    Everything here comes after the commit: whatever fails (a NOTE that cannot
    be encoded, the push, the answers themselves), each post is answered as
    stored (``queued`` when its NOTE was not pushed), never as "could not
    store": a client that retried would store it twice. It raises nothing:
    the writer awaits it before the next push.
    """
    try:
        await _push_and_answer(stored)
    except Exception:
        logger.exception("notifications %s are stored, but their answers failed;"
                         " the posts not answered yet are answered queued",
                         [row.pk for _, row in stored])
    finally:
        for post, row in stored:
            _settle(post, result=(row.pk, QUEUED))  # a post answered before stays so


async def _push_and_answer(stored: list[tuple[Post, Stored]]) -> None:
    items, unsent = [], set()
    for post, row in stored:
        try:
            items.append(note_item(row, None if row.broadcast else post.target))
        except Exception:
            logger.exception("notification %d is stored but its NOTE cannot be encoded", row.pk)
            unsent.add(row.pk)
    statuses: dict[str, str] = {}
    try:
        if items:
            statuses = await push_notes(items)
    except Exception:
        logger.exception("could not push notifications; they stay queued")
    for post, row in stored:
        if row.broadcast:
            status = BROADCAST
        elif unsent and row.pk in unsent:
            status = QUEUED
        else:
            status = statuses.get(post.target, QUEUED)
        _settle(post, result=(row.pk, counted(status)))


def _settle(post: Post, *, result: Any = None, exception: Exception | None = None) -> None:
    if post.done is None or post.done.done():
        return  # the poster went away (a cancelled request); the work stands
    if exception is not None:
        post.done.set_exception(exception)
    else:
        post.done.set_result(result)


_writers: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Writer]" = (
    weakref.WeakKeyDictionary()
)


def writer() -> Writer:
    """The writer of the running event loop (one per server process)."""
    loop = asyncio.get_running_loop()
    found = _writers.get(loop)
    if found is None:
        found = _writers[loop] = Writer()
    return found


async def post_notification(target: str | None, data: dict[str, Any] | None, *,
                            actor: str | None = None) -> tuple[int | None, str]:
    """Store and push one post of the HTTP API: ``(id, "sent"|"queued"|"broadcast")``.

    ``target`` is a username, ``None`` for a broadcast. With ``actor`` (the
    username of a Bearer token) the same round trip checks that it names an
    active staff user. ``data`` ``None`` runs only that check and answers
    ``(None, "authorised")``. Raises :class:`~notifications.errors.Refused` (``unauthorized``,
    ``forbidden``, ``not_found``) or :class:`ServiceUnavailable`.
    """
    if data is not None:
        check_type(data)  # the rest was checked with the body (realtime.api.parse_json_object)
    return await writer().submit(Post(target=target, data=data, actor=actor))


