"""The consumer base: channels' hooks, ``on_<type>`` dispatch, and no way around the limits."""

import json

import pytest
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.test import override_settings
from django.urls import re_path

from realtime import echo, metrics, protocol
from realtime.consumers import CloseCode, ProtocolConsumer
from realtime.gapless import Gapless
from tests.realtime.support import close_code, receive_json


class ShoutConsumer(ProtocolConsumer):
    """A JSON endpoint without a user: ``shout`` comes back upper-cased."""

    requires_user = False
    endpoint = "shout"

    async def connect(self) -> None:
        await self.send(protocol.encode({"type": "hello"}))

    async def on_shout(self, frame: dict) -> None:
        await self.send(protocol.encode({"type": "shout", "text": frame["text"].upper()}))


shout_application = URLRouter([re_path(r"^ws/shout/$", ShoutConsumer.as_asgi())])


async def open_shout() -> WebsocketCommunicator:
    comm = WebsocketCommunicator(shout_application, "/ws/shout/")
    connected, _ = await comm.connect()
    assert connected
    assert await receive_json(comm) == {"type": "hello"}
    return comm


async def test_a_frame_type_goes_to_its_on_type_method():
    """``{"type": "shout"}`` is handled by ``on_shout`` with the decoded frame."""
    comm = await open_shout()
    await comm.send_to(text_data=json.dumps({"type": "shout", "text": "hi"}))
    assert await receive_json(comm) == {"type": "shout", "text": "HI"}
    await comm.disconnect()


@pytest.mark.parametrize("text", ['{"type": "ping"}', "ping"])
async def test_the_base_answers_ping_on_every_json_endpoint(text):
    """``ping`` (JSON or plain text) gets ``pong`` without the subclass handling it."""
    comm = await open_shout()
    await comm.send_to(text_data=text)
    assert await receive_json(comm) == {"type": "pong"}
    await comm.disconnect()


@pytest.mark.parametrize("frame_type", ["whisper", "__class__", "connect", "send", "auth"])
async def test_a_type_without_handler_is_unknown_type(frame_type):
    """A type with no ``on_<type>`` (or ``auth`` where there is no user) gets ``unknown_type``;
    no other method is reachable by a frame's type."""
    comm = await open_shout()
    await comm.send_to(text_data=json.dumps({"type": frame_type, "token": "x"}))
    answer = await receive_json(comm)
    assert answer["type"] == "error" and answer["code"] == "unknown_type", answer
    await comm.send_to(text_data="ping")
    assert await receive_json(comm) == {"type": "pong"}, "the connection stays open"
    await comm.disconnect()


def test_handlers_are_collected_per_class():
    """Each class maps frame types to its own and inherited ``on_<type>`` methods."""
    assert set(ShoutConsumer.frame_handlers) == {"ping", "auth", "shout"}
    assert set(echo.EchoConsumer.frame_handlers) == {"ping", "auth"}


@pytest.mark.parametrize("attributes", [{"groups": ["chat.lobby"]},
                                        {"channel_layer_alias": "default"}])
def test_a_consumer_with_groups_is_refused_at_its_definition(attributes):
    """``groups`` (or a layer channel) would bypass the hub: defining one raises a TypeError
    naming the fix."""
    with pytest.raises(TypeError, match=r"hub\.subscribe"):
        type("Grouped", (ProtocolConsumer,), attributes)


async def test_accept_is_refused_the_base_accepts():
    """A subclass cannot accept a second time: the base accepted before ``connect()``."""
    with pytest.raises(TypeError, match="handshake_refusal"):
        await ShoutConsumer().accept()


class RecordingWriter:
    """A direct writer that records frames; ``backlog`` is what the client left unread."""

    paused = False

    def __init__(self, backlog: int = 0) -> None:
        self.backlog, self.frames = backlog, []

    def write(self, data: bytes) -> None:
        self.frames.append(data)

    def unsent_bytes(self) -> int:
        return self.backlog


def bare_consumer(backlog: int) -> tuple[ProtocolConsumer, RecordingWriter, list]:
    """A consumer as accepted, on a writer with ``backlog`` unread bytes; closes are recorded."""
    consumer = ShoutConsumer()
    writer = RecordingWriter(backlog)
    consumer._direct = writer
    consumer._takes_frames = True
    consumer._send_buffer_limit = 65536
    consumer._frames_out = metrics.counter("realtime_frames_out_total", endpoint="unit")
    closes = []

    async def close(code=None):
        closes.append(code)

    consumer.close = close
    return consumer, writer, closes


@pytest.mark.parametrize("kwargs", [{"text_data": "x"}, {"bytes_data": b"x"}])
async def test_send_to_a_client_that_stopped_reading_closes_4010(kwargs):
    """``send()`` of text or bytes past WS_MAX_SEND_BUFFER_BYTES unread closes 4010, unsent."""
    consumer, writer, closes = bare_consumer(backlog=65537)
    await consumer.send(**kwargs)
    assert closes == [CloseCode.SLOW_CONSUMER] and writer.frames == []
    await consumer.send(**kwargs)
    assert closes == [CloseCode.SLOW_CONSUMER], "nothing more after the close"


async def test_send_within_the_bound_is_written_and_counted():
    """Text and binary frames both go out through the writer and count as frames out."""
    consumer, writer, closes = bare_consumer(backlog=0)
    before = consumer._frames_out.value
    await consumer.send("hi")
    await consumer.send(bytes_data=b"\x00\x01")
    assert len(writer.frames) == 2 and closes == []
    assert consumer._frames_out.value == before + 2


async def test_send_misuse_raises_with_the_fix():
    """Nothing to send is a ValueError; ``close=`` is a TypeError naming close_with."""
    consumer, _, _ = bare_consumer(backlog=0)
    with pytest.raises(ValueError, match="text_data"):
        await consumer.send()
    with pytest.raises(TypeError, match="close_with"):
        await consumer.send("bye", close=True)


@override_settings(WS_MAX_SEND_BUFFER_BYTES=1024, WS_RATE_LIMIT=0)
async def test_binary_echo_closes_a_client_over_the_send_buffer_bound(monkeypatch):
    """Binary echo goes through ``send()``: an unread backlog over the bound closes it 4010."""
    from project.asgi import application

    monkeypatch.setattr(echo.EchoConsumer, "unsent_bytes", lambda self: 2048)
    comm = WebsocketCommunicator(application, "/ws/echo/")
    connected, _ = await comm.connect()
    assert connected
    await comm.send_to(bytes_data=b"hello")
    assert await close_code(comm) == CloseCode.SLOW_CONSUMER
    await comm.disconnect()


async def test_gapless_release_sends_what_the_snapshot_lacked_in_order():
    """Held items not in the snapshot go out in arrival order, then the connection is live."""
    member = Gapless()
    member.hold()
    for item in (3, 1, 4, 5):
        assert member.offer(item)
    sent = []

    async def send(item):
        sent.append(item)
        if item == 4:
            member.offer(9)  # arrives while the held ones are sent: sent after them

    await member.release(lambda item: item <= 3, send)
    assert sent == [4, 5, 9]
    assert member.pending is None and not member.offer(10)
