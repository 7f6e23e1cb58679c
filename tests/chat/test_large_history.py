"""A ``?since=`` join of a room of large messages, on a real daphne (issue 18, item 4).

The contract's ``?since=`` history is one frame of up to 1000 messages of up to 4000
code points: 16 MB of four-byte characters, four times ``WS_MAX_SEND_BUFFER_BYTES``.
A client that reads at a normal pace must get all of it and never be closed with
4010; a storm of such joins from one address is bounded, and others still join.
"""

import asyncio
import json

import pytest
import websockets
from channels.db import database_sync_to_async
from django.utils import timezone

from chat.models import Message, Room
from tests.conftest import UVICORN, connect_slow_client

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.daphne]

#: 4000 code points of four UTF-8 bytes each: the largest content the contract allows.
BIG = "\U0001f600" * 4000


def fill_room(name: str, sender, count: int) -> list[int]:
    """``count`` messages of BIG content in room ``name``; their ids."""
    room = Room.objects.create(name=name)
    now = timezone.now()
    Message.objects.bulk_create(
        Message(room=room, sender=sender, content=BIG, created_at=now) for _ in range(count)
    )
    return list(Message.objects.filter(room=room).order_by("id").values_list("id", flat=True))


async def connect(server, room: str, token: str, *, since: int | None = 0,
                  source: str = "127.0.0.1"):
    """A client with a small receive buffer, from ``source`` (an address of 127/8)."""
    query = f"?token={token}" + ("" if since is None else f"&since={since}")
    return await connect_slow_client(server, f"/ws/chat/{room}/{query}", source=source,
                                     max_size=None, compression=None)


async def join_and_read(ws) -> tuple[dict | None, dict | None, int | None]:
    """Read the history and ``user_joined`` as an ordinary client does; then send a
    message and read it back, to prove the connection is live. Returns the history,
    the ``user_joined`` and the close code (``None``: still open and served)."""
    history = joined = None
    try:
        history = json.loads(await asyncio.wait_for(ws.recv(), 60))
        joined = json.loads(await asyncio.wait_for(ws.recv(), 30))
        await ws.send(json.dumps({"type": "message", "content": "back", "ref": "r"}))
        while json.loads(await asyncio.wait_for(ws.recv(), 30)).get("ref") != "r":
            pass
    except websockets.ConnectionClosed as closed:
        return history, joined, closed.rcvd.code if closed.rcvd else None
    finally:
        await ws.close()
    return history, joined, None


def is_room_history(history: dict, ids: list[int]) -> bool:
    """The room's messages ``ids``, then any "back" that a join served earlier sent
    before this one read its history (the joins run in parallel)."""
    got = [m["id"] for m in history["messages"]]
    later = history["messages"][len(ids):]
    return got[:len(ids)] == ids and all(m["content"] == "back" for m in later)


@pytest.mark.parametrize("command", [None, UVICORN], ids=["daphne", "uvicorn"])
async def test_a_normal_reader_gets_a_16_mb_history_without_4010(daphne_server, make_user,
                                                                token_for, command):
    """1000 messages x 4000 four-byte code points with the default buffer bound."""
    server = daphne_server(command=command)
    alice = await database_sync_to_async(make_user)("alice")
    ids = await database_sync_to_async(fill_room)("huge", alice, 1000)

    history, joined, code = await join_and_read(await connect(server, "huge", token_for("alice")))
    assert code is None, f"closed with {code}"
    assert history["type"] == "history" and history["truncated"] is False
    assert [m["id"] for m in history["messages"]] == ids
    assert all(m["content"] == BIG for m in history["messages"])
    assert joined["type"] == "user_joined"


async def test_a_join_storm_from_one_address_is_bounded_and_others_still_join(
        daphne_server, make_user, token_for):
    """Parallel ``?since=0`` joins from one address: the first are served in full, the
    rest are refused with 4013 (try again later) once the address has used its
    history budget; a join from another address is served meanwhile."""
    frame = 40 * len(BIG.encode())  # about one history frame of this room
    server = daphne_server(WS_MAX_CONNECTIONS_PER_USER="0", WS_RATE_LIMIT="0",
                           WS_MAX_SEND_BUFFER_BYTES="262144",
                           CHAT_HISTORY_BURST_BYTES=str(frame * 3 // 2),
                           CHAT_HISTORY_BYTES_PER_SECOND="1")
    users = [await database_sync_to_async(make_user)(f"u{n}") for n in range(3)]
    ids = await database_sync_to_async(fill_room)("storm", users[0], 40)

    storm = [await connect(server, "storm", token_for(f"u{n % 2}")) for n in range(20)]
    other = await connect(server, "storm", token_for("u2"), source="127.0.0.2")
    results = await asyncio.gather(*(join_and_read(ws) for ws in [*storm, other]))

    *storm_results, (history, joined, code) = results
    assert code is None, f"the other address was closed with {code}"
    assert is_room_history(history, ids) and joined["type"] == "user_joined"
    served = [r for r in storm_results if r[2] is None]
    refused = [r for r in storm_results if r[2] is not None]
    # 1.5 frames of budget: the first join leaves half a frame, the second goes into
    # debt, and every later one is refused before its history is read.
    assert len(served) == 2
    for history, joined, _ in served:
        assert is_room_history(history, ids) and joined["type"] == "user_joined"
    for history, _, code in refused:
        assert code == 4013 and history is None
