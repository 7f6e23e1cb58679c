"""A deactivated or deleted user loses their live connections."""

import asyncio
import json

import pytest
import websockets
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model

from project.asgi import application
from realtime import revocation
from realtime.hub import get_hub

pytestmark = pytest.mark.django_db(transaction=True)


async def connected(token: str) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(application, f"/ws/chat/rev/?token={token}")
    assert (await communicator.connect())[0]
    assert json.loads(await communicator.receive_from())["type"] == "history"
    assert json.loads(await communicator.receive_from())["type"] == "user_joined"
    return communicator


@database_sync_to_async
def deactivate(username: str) -> None:
    user = get_user_model().objects.get(username=username)
    user.is_active = False
    user.save()


async def test_deactivating_a_user_closes_their_connections_with_4002(make_user, token_for):
    """Saving the user inactive closes each of their connections with 4002; others stay."""
    await database_sync_to_async(make_user)("alice")
    await database_sync_to_async(make_user)("bob")
    tab1, tab2 = await connected(token_for("alice")), await connected(token_for("alice"))
    bob = await connected(token_for("bob"))
    for tab in (tab1, tab2):
        assert json.loads(await tab.receive_from())["user_id"] == "bob"
    await deactivate("alice")
    for tab in (tab1, tab2):
        assert await tab.receive_output(timeout=5) == {"type": "websocket.close", "code": 4002}
        await tab.disconnect()  # the client's side of the close handshake
    assert json.loads(await bob.receive_from())["type"] == "user_left"
    await bob.send_to(text_data="ping")
    assert json.loads(await bob.receive_from()) == {"type": "pong"}
    await bob.disconnect()


async def test_deleting_a_user_closes_their_connections(make_user, token_for):
    """Deleting the user closes their connection with 4002."""
    await database_sync_to_async(make_user)("carol")
    tab = await connected(token_for("carol"))
    await get_user_model().objects.filter(username="carol").adelete()
    assert await tab.receive_output(timeout=5) == {"type": "websocket.close", "code": 4002}
    await tab.disconnect()


async def test_sweep_closes_users_deactivated_without_the_signal(make_user, token_for):
    """A change the signal never saw (a queryset update) is caught by the sweep."""
    await database_sync_to_async(make_user)("dave")
    tab = await connected(token_for("dave"))
    await get_user_model().objects.filter(username="dave").aupdate(is_active=False)
    assert await tab.receive_nothing(timeout=0.3)
    await revocation.sweep(await get_hub())
    assert await tab.receive_output(timeout=5) == {"type": "websocket.close", "code": 4002}
    await tab.disconnect()


@pytest.mark.daphne
async def test_deactivated_user_is_disconnected_from_a_real_daphne(
    daphne_server, make_user, token_for
):
    """Over a real daphne, a user deactivated elsewhere is closed within the sweep period."""
    server = daphne_server(REVOCATION_SWEEP_SECONDS="1", HUB_HEARTBEAT_SECONDS="1")
    await database_sync_to_async(make_user)("erin")
    async with websockets.connect(f"{server.ws_url}/ws/chat/rev/?token={token_for('erin')}") as ws:
        await ws.recv()
        await ws.recv()
        await get_user_model().objects.filter(username="erin").aupdate(is_active=False)
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), timeout=10)
        assert closed.value.rcvd.code == 4002
