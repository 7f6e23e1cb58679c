"""The chat service layer: ordering and failure handling of the room sequencer."""

import asyncio

import pytest
from channels.db import database_sync_to_async

from chat import services
from chat.models import Message
from project.hub import get_hub

pytestmark = pytest.mark.django_db(transaction=True)


class Silent:
    """A member that records frames instead of sending them."""

    def __init__(self, conn: str, username: str) -> None:
        self.conn, self.username = conn, username
        self.last_id = self.presence_version = 0
        self.pending = None
        self.frames: list[str] = []

    async def send_frame(self, text: str, encoded: bytes | None = None) -> None:
        self.frames.append(text)

    def send_now(self, encoded: bytes) -> bool:
        return False


async def test_one_bad_message_does_not_sink_its_batch(make_user, monkeypatch):
    """When a batch fails to store, the others are stored one by one; only the bad one fails."""
    user = await database_sync_to_async(make_user)("writer")
    hub = await get_hub()
    member = Silent(hub.new_connection_name(), "writer")
    local = await services.join(hub, "batch", member)
    real_store = services.store_messages

    async def store(room, batch):
        if any(o.content == "poison" for o in batch):
            raise RuntimeError("cannot store this batch")
        return await real_store(room, batch)

    monkeypatch.setattr(services, "store_messages", store)
    results = await asyncio.gather(
        *(services.message_send(local=local, user=user, content=c)
          for c in ("one", "poison", "three")),
        return_exceptions=True,
    )
    assert isinstance(results[1], services.ServiceUnavailable)
    assert all(isinstance(r, int) for r in (results[0], results[2]))
    contents = [m.content async for m in Message.objects.order_by("id")]
    assert contents == ["one", "three"]
    await services.leave(hub, "batch", member, announced=False)


async def test_ids_are_returned_in_submission_order(make_user):
    """Messages submitted together get rising ids in the order they were submitted."""
    user = await database_sync_to_async(make_user)("writer")
    hub = await get_hub()
    member = Silent(hub.new_connection_name(), "writer")
    local = await services.join(hub, "order", member)
    ids = await asyncio.gather(
        *(services.message_send(local=local, user=user, content=f"m{i}") for i in range(20))
    )
    assert ids == sorted(ids) and len(set(ids)) == 20
    await services.leave(hub, "order", member, announced=False)
