"""The join's history is paced and budgeted, in process (issue 18, item 4).

The real-server behaviour is in test_large_history.py; here the backlog a server
would report is scripted, to show what waits for what.
"""

import pytest
from channels.testing import WebsocketCommunicator

from chat.consumers import ChatConsumer
from project.asgi import application
from realtime import limits
from tests.chat.helpers import open_chat, receive

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def backlog(monkeypatch, settings) -> list[int]:
    """What every chat connection reports as unsent: ``backlog[0]`` bytes."""
    settings.WS_MAX_SEND_BUFFER_BYTES = 1000
    backlog = [0]
    monkeypatch.setattr(ChatConsumer, "unsent_bytes", lambda self: backlog[0])
    return backlog


def communicator(room: str, token: str, address: str = "10.0.0.1") -> WebsocketCommunicator:
    chat = WebsocketCommunicator(application, f"/ws/chat/{room}/?token={token}&since=0")
    chat.scope["client"] = [address, 50000]
    return chat


async def test_user_joined_waits_until_the_client_took_most_of_its_history(alice, backlog):
    chat = communicator("paced", alice)
    backlog[0] = 900  # the history is still mostly unread (over half the bound)
    assert (await chat.connect())[0]
    assert (await receive(chat))["type"] == "history"
    assert await chat.receive_nothing(0.3)
    backlog[0] = 400
    assert (await receive(chat))["type"] == "user_joined"
    await chat.disconnect()


async def test_a_joiner_that_takes_nothing_of_its_history_is_closed_4010_unannounced(
        alice, bob, backlog, monkeypatch):
    monkeypatch.setattr(limits, "DRAIN_SECONDS", 0.05)
    watcher, _, _ = await open_chat("paced", bob)
    chat = communicator("paced", alice)
    backlog[0] = 900
    assert (await chat.connect())[0]
    assert (await receive(chat))["type"] == "history"
    assert await chat.receive_output(5) == {"type": "websocket.close", "code": 4010}
    backlog[0] = 0
    await chat.disconnect()
    assert await watcher.receive_nothing(0.3), "the room heard of no join"
    await watcher.disconnect()


async def test_an_address_past_its_history_budget_is_refused_4013_others_join(alice, settings):
    settings.CHAT_HISTORY_BURST_BYTES = 1
    settings.CHAT_HISTORY_BYTES_PER_SECOND = 1
    first = communicator("budget", alice)
    assert (await first.connect())[0]
    assert (await receive(first))["type"] == "history"  # within the budget; now in debt
    assert (await receive(first))["type"] == "user_joined"
    second = communicator("budget", alice)
    assert (await second.connect())[0]
    assert await second.receive_output(5) == {"type": "websocket.close", "code": 4013}
    other = communicator("budget", alice, address="10.0.0.2")
    assert (await other.connect())[0]
    assert (await receive(other))["type"] == "history"
    for chat in (first, second, other):
        await chat.disconnect()
