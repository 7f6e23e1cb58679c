"""The order of a room's messages: stored, then published, one batch at a time.

Every message of a room is stored and then published by one
:class:`RoomSequencer` per room per process, under the room's lock (see
:mod:`chat.presence`: a Redis lock across processes, an ``asyncio.Lock`` on
one). Ids are assigned at insert time, so "stored, then published, in id
order" holds across every process, and each connection receives a room's ids in
strictly increasing order. Messages that wait are stored together in one
transaction (a batch), which keeps the lock and the database round trips few
under load; a busy sequencer keeps the lock from batch to batch (storing the
next while the last is published) until another process asks for it, and, while
no other process listens in the room, keeps it for a while when idle too (the
turn's lease).
"""

import asyncio
import logging
import time
import weakref
from dataclasses import dataclass, field
from typing import Any, Protocol

from chat import presence, protocol, store
from chat.errors import NotInRoom
from chat.presence import Publication, RoomTurn
from realtime import db, metrics
from realtime.batching import MAX_BATCH, ServiceUnavailable, each_alone
from realtime.hub import Hub
from realtime.protocol import encode, timestamp


class SequencedRoom(Protocol):
    """What a sequencer needs of its room on this process (``chat.fanout.LocalRoom``)."""

    name: str
    group: str
    hub: Hub

    async def catch_up(self, publication: Publication | None) -> bool: ...

    async def deliver_all(self, items: list[dict]) -> None: ...

    def note_publication(self, number: Publication) -> None: ...


logger = logging.getLogger(__name__)

#: How long a sequencer keeps its room's lock before it checks whether another
#: process is waiting for it (and gives it up if so).
HOLD_SECONDS = 0.02


@dataclass
class Outgoing:
    """A message waiting for its turn; ``done`` gets its id or its error.

    With ``notice`` it is no message but a room item already made (a deletion):
    nothing is stored, and it is published in its place among the messages, so
    that every connection on every process gets it in the same order.
    """

    sender: Any = None
    content: str = ""
    origin: str | None = None
    ref: str | None = None
    recipient: str | None = None
    notice: dict | None = None
    done: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class RoomSequencer:
    """Stores and publishes a room's messages one batch at a time, in id order."""

    def __init__(self, local: SequencedRoom) -> None:
        # Weak: the room owns its sequencer, so an emptied room is freed at once, not
        # left in a cycle for a full collection. A running turn holds the room itself.
        self._room = weakref.ref(local)
        self.queue: list[Outgoing] = []
        self.task: asyncio.Task | None = None
        #: The publication of a batch that was not delivered here first, while it
        #: may be out: the next batch waits for it instead of overtaking it here.
        self.through_layer: asyncio.Task | None = None
        #: Whether the last batch found no other process listening in the room.
        self.alone = False
        #: Set when something is queued while the turn waits for more (its lease).
        self.woken: asyncio.Future | None = None
        #: No more leases: the room emptied here, or the process stops.
        self.lease_ended = False

    @property
    def local(self) -> SequencedRoom:
        """The room this sequences: alive whenever the sequencer is used (its callers
        and its running turn hold it)."""
        local = self._room()
        if local is None:
            raise RuntimeError("the room of this sequencer is gone")
        return local

    async def submit(self, outgoing: Outgoing) -> int:
        self.queue.append(outgoing)
        if self.woken is not None and not self.woken.done():
            self.woken.set_result(None)
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self.run(), name=f"sequencer-{self.local.name}")
        return await outgoing.done

    async def run(self) -> None:
        _running.add(self)
        try:
            await self.run_turns()
        finally:
            _running.discard(self)

    async def run_turns(self) -> None:
        local = self.local
        while self.queue:
            try:
                async with presence.of(local.hub.registry).room_lock(local.name) as turn:
                    await self.take_turn(turn)
            except Exception:
                # No lock (Redis is down): what waits now cannot be stored in order.
                waiting, self.queue = self.queue, []
                if waiting:
                    self.fail(waiting)
                else:
                    logger.exception("giving back the lock of room %s failed", local.name)

    async def take_turn(self, turn: RoomTurn) -> None:
        """Store and publish batches while this process holds the room's lock.

        A batch is stored, and handed to the local members, while the one
        before it is still being published, so that the database and the
        channel layer work at the same time; publications go out one after
        another, in id order. Every :data:`HOLD_SECONDS` the lock is given up if
        another process is waiting for it.

        While no other process listens in the room, the turn lasts its
        ``lease`` past its last batch, and checks for a waiting process once a
        ``lease``: a room that only this process serves then pays the lock's two
        round trips once in a while, not with each message. Another process
        that starts to listen is told by the next batch (whose publication asks
        the layer); its first message waits at most a ``lease`` meanwhile.
        """
        publishing: asyncio.Task | None = None
        since = time.monotonic()
        try:
            while True:
                while self.queue:
                    if time.monotonic() - since >= self.hold(turn):
                        if publishing is not None:
                            await publishing
                            publishing = None
                        if not await turn.keep():
                            return
                        since = time.monotonic()
                    batch, self.queue = self.queue[:MAX_BATCH], self.queue[MAX_BATCH:]
                    publishing = await self.store(batch, turn, publishing)
                if not await self.more(turn, publishing):
                    return
        finally:
            if publishing is not None:
                await publishing

    def hold(self, turn: RoomTurn) -> float:
        """How long the turn goes on before it checks for a process waiting for it."""
        return turn.lease if turn.lease and self.alone else HOLD_SECONDS

    async def more(self, turn: RoomTurn, publishing: asyncio.Task | None) -> bool:
        """Whether something was queued within the turn's lease (if it has one now)."""
        if publishing is not None:
            # Whether another process listens is known once the last batch is out.
            await publishing
        if self.queue or not turn.lease or not self.alone or not turn.held or self.lease_ended:
            return bool(self.queue)
        self.woken = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(turn.lease):
                await self.woken
        except TimeoutError:
            pass
        finally:
            self.woken = None
        return bool(self.queue)

    def end_lease(self) -> None:
        """End the turn's wait for more now, and take no lease from now on: the room
        emptied here (a LocalRoom is not used again), or the process stops."""
        self.lease_ended = True
        if self.woken is not None and not self.woken.done():
            self.woken.set_result(None)

    async def store(self, batch: list[Outgoing], turn: RoomTurn,
                    publishing: asyncio.Task | None) -> asyncio.Task | None:
        """:meth:`store_batch`, and one by one if the batch fails; the last publication.

        :meth:`store_batch` raises only when its insert failed, which stored nothing,
        so each message is tried again alone: one bad message then fails only
        itself, and a batch that failed on a connection the database had dropped (a
        restart) is stored on the new one the worker opens, even a batch of one.
        """
        try:
            return await self.store_batch(batch, turn, publishing)
        except Exception:
            logger.warning("a batch of %d in room %s failed; storing its messages one by one",
                           len(batch), self.local.name, exc_info=True)

        async def alone(outgoing: Outgoing) -> None:
            nonlocal publishing
            if not outgoing.done.done():
                publishing = await self.store_batch([outgoing], turn, publishing)

        await each_alone(batch, alone, self.fail)
        return publishing

    def fail(self, batch: list[Outgoing]) -> None:
        logger.exception("storing or publishing in room %s failed", self.local.name)
        for outgoing in batch:
            if not outgoing.done.done():
                outgoing.done.set_exception(ServiceUnavailable("message could not be stored"))

    async def store_batch(self, batch: list[Outgoing], turn: RoomTurn,
                          publishing: asyncio.Task | None) -> asyncio.Task | None:
        """Store ``batch``, give it to the local members, and start publishing it.

        This process's own members get the batch at once, without the round
        trip through the channel layer, once this process has received every
        earlier batch of the room (the turn says which was last): under the
        lock no later one can come first. If that earlier batch is late, the
        batch goes through the layer like any other, in order. Returns the task
        that publishes it after ``publishing``, the previous batch's.
        """
        local = self.local
        messages = [outgoing for outgoing in batch if outgoing.notice is None]
        stored = iter(await store_messages(local.name, messages) if messages else ())
        items, accepted = [], []
        for outgoing in batch:
            if outgoing.notice is not None:
                items.append(outgoing.notice)
                accepted.append((outgoing, 0))
                continue
            message = next(stored)
            if message is None:
                outgoing.done.set_exception(NotInRoom("that user is not in this room"))
                continue
            items.append(event_item(local.name, outgoing, message))
            accepted.append((outgoing, message.pk))
        metrics.inc("realtime_messages_stored_total", sum(1 for _, pk in accepted if pk))
        if not items:
            return publishing
        if self.through_layer is not None:
            # The previous batch goes through the layer: this one may not overtake it.
            await self.through_layer
            self.through_layer = None
        event: dict[str, Any] = {"kind": "batch", "items": items}
        delivered_here = await local.catch_up(turn.after)
        if delivered_here:
            event["delivered_by"] = local.hub.proc_id
            try:
                await local.deliver_all(items)
            except Exception:
                # As the hub does for its listeners: what is stored stays stored.
                logger.exception("delivering in room %s failed", local.name)
        task = asyncio.create_task(self.publish(event, accepted, turn, publishing))
        if not delivered_here:
            self.through_layer = task
        return task

    async def publish(self, event: dict, accepted: list[tuple[Outgoing, int]],
                      turn: RoomTurn, previous: asyncio.Task | None) -> None:
        """Publish one batch after ``previous``; answer its senders.

        It raises nothing (a failure is its senders' answer), so that awaiting
        it never fails the batches after it.
        """
        if previous is not None:
            await previous
        local = self.local
        number = turn.number
        if number is not None:
            event["number"] = number
        try:
            # Delivered here already, and no other process listens: the layer's round
            # trip would only bring it back to be skipped. Asked after the batch is
            # stored, so a process that subscribes later reads it with the history.
            published = ("delivered_by" not in event
                         or await local.hub.reaches_others(local.group))
            if published:
                await local.hub.publish(local.group, event)
        except Exception:
            logger.exception("publishing to room %s failed", local.name)
            for outgoing, stored_id in accepted:
                if not outgoing.done.done():
                    outgoing.done.set_exception(ServiceUnavailable(
                        "stored, but maybe not delivered live; it comes back with history",
                        stored_id=stored_id,
                    ))
            return
        self.alone = not published
        if published:
            # Only what went through the layer is numbered: another process catches
            # up with it, and what it never had to receive came with its history.
            turn.advance()
            if number is not None and "delivered_by" in event:
                # Seen here already; a batch that went through the layer is noted when
                # it comes back, so that nothing local overtakes it.
                local.note_publication(number)
        for outgoing, stored_id in accepted:
            if not outgoing.done.done():
                outgoing.done.set_result(stored_id)


#: The sequencers whose task runs (stores, publishes, or waits within a lease).
_running: "weakref.WeakSet[RoomSequencer]" = weakref.WeakSet()


async def end_leases() -> None:
    """End every lease and wait until each running turn has given its lock back (a
    shutdown handler): a process that exited holding one would leave that room to the
    lock's expiry."""
    sequencers = list(_running)
    for sequencer in sequencers:
        sequencer.end_lease()
    tasks = [sequencer.task for sequencer in sequencers if sequencer.task is not None]
    await asyncio.gather(*tasks, return_exceptions=True)


def event_item(room: str, outgoing: Outgoing, message: store.Stored) -> dict:
    """The layer item of one stored message: its frame, serialised once."""
    moment = timestamp(message.created_at)
    username = outgoing.sender.username
    if outgoing.recipient is None:
        item = {"id": message.pk, "frame": encode(
            protocol.message_item(message.pk, room, username, outgoing.content, moment))}
        if outgoing.ref is not None:
            item["origin"] = outgoing.origin
            item["frame_ref"] = encode(protocol.message_item(
                message.pk, room, username, outgoing.content, moment, outgoing.ref))
        return item
    return {
        "id": message.pk,
        "to": [username, outgoing.recipient],
        "frame": encode(protocol.private_item(
            message.pk, room, username, outgoing.recipient, outgoing.content, moment)),
    }


async def store_messages(room: str, batch: list[Outgoing]) -> list[store.Stored | None]:
    """Insert a batch in one transaction; ``None`` where a recipient does not exist.

    The batches of this process's rooms that wait meanwhile share that transaction
    (:class:`RoomsWriter`): with many small rooms each message would otherwise pay
    a database round trip and a commit of its own.
    """
    loop = asyncio.get_running_loop()
    writer = _writers.get(loop)
    if writer is None:
        writer = _writers[loop] = RoomsWriter()
    return await writer.store(room, batch)


class RoomsWriter:
    """Stores the batches of several rooms in one transaction on the database worker.

    A room's sequencer waits for its batch under its room lock, so each room's order
    holds; the rooms in one transaction are independent. If the shared transaction
    fails, each room's batch is stored alone, so one bad batch fails only its room.
    """

    def __init__(self) -> None:
        self.waiting: list[tuple[str, list[Outgoing], asyncio.Future]] = []
        self.task: asyncio.Task | None = None

    async def store(self, room: str, batch: list[Outgoing]) -> list[store.Stored | None]:
        done = asyncio.get_running_loop().create_future()
        self.waiting.append((room, batch, done))
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self.run(), name="chat-rooms-writer")
        return await done

    async def run(self) -> None:
        while self.waiting:
            taken, self.waiting = self.waiting, []
            try:
                stored = await db.run(store.insert_batches,
                                      [(room, batch) for room, batch, _ in taken])
            except Exception as exc:
                if len(taken) == 1:
                    settle(taken[0][2], exception=exc)
                    continue
                logger.warning("a transaction of %d rooms failed; storing each alone",
                               len(taken))
                for room, batch, done in taken:
                    await self.store_alone(room, batch, done)
                continue
            for (_, _, done), rows in zip(taken, stored, strict=True):
                settle(done, rows)

    @staticmethod
    async def store_alone(room: str, batch: list[Outgoing], done: asyncio.Future) -> None:
        try:
            settle(done, await db.run(store.insert_batch, room, batch))
        except Exception as exc:
            settle(done, exception=exc)


def settle(done: asyncio.Future, result: Any = None, *, exception: Exception | None = None
           ) -> None:
    """Answer a waiting store unless its waiter is gone (cancelled)."""
    if done.done():
        return
    if exception is not None:
        done.set_exception(exception)
    else:
        done.set_result(result)


_writers: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, RoomsWriter]" = (
    weakref.WeakKeyDictionary())
