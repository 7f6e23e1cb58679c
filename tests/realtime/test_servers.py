"""The server adapters (``realtime.servers``): the fast path is the one in use under
the locked daphne and uvicorn, and an untested version falls back, loudly, with the
slow-reader bound intact."""

import asyncio
import functools
import json
import signal
import sys
from types import SimpleNamespace

import pytest
from channels.db import database_sync_to_async
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from realtime import servers, wire
from tests.chat.helpers import stall_a_reader
from tests.conftest import UVICORN, wait_for

DAPHNE = [sys.executable, "manage.py", "serve", "--port", "{port}"]


def pretending(versions: str, command: list[str]) -> list[str]:
    """``command`` run as if ``versions`` (``name=version``) were installed."""
    return [sys.executable, "-m", "tests.realtime.pretend_version", versions, "--",
            *command[1:]]


# --- Versions -----------------------------------------------------------------------------


@pytest.mark.parametrize(("version", "ok"), [
    ("0.54.0", True), ("0.54.9", True), ("0.54.1.post1", True), ("0.55.0", False),
    ("0.55.0rc1", False), ("0.53.9", False), ("1.0", False),
])
def test_a_version_is_tested_only_within_its_range(monkeypatch, version, ok):
    """The range is >=low,<high on the release numbers."""
    monkeypatch.setattr("importlib.metadata.version", lambda name: version)
    problem = servers.untested({"uvicorn": ("0.54", "0.55")})
    assert (problem is None) is ok
    if not ok:
        assert problem == f"uvicorn {version} is not in the tested range >=0.54,<0.55"


def test_the_locked_versions_are_the_tested_ones():
    """Both adapters are on with requirements.lock (else every fast-path test below fails)."""
    from realtime.servers import daphne, uvicorn

    assert servers.untested(daphne.TESTED) is None
    assert servers.untested(uvicorn.TESTED) is None


# --- The plain-ASGI writer --------------------------------------------------------------


class SlowSend:
    """An ASGI ``send`` that takes a message only when the test lets it."""

    def __init__(self) -> None:
        self.sent: list[dict] = []
        self.gate = asyncio.Event()

    async def __call__(self, message: dict) -> None:
        await self.gate.wait()
        self.sent.append(message)


async def test_the_asgi_writer_counts_what_send_has_not_taken_and_keeps_the_order():
    """A send that waits holds up only the queue; the close goes behind the frames."""
    send = SlowSend()
    writer = servers.AsgiWriter(send)
    assert writer.write(wire.text_frame("é" * 100)) and writer.write(wire.binary_frame(b"\x01"))
    await writer.asgi_send({"type": "websocket.send", "text": "plain"})  # never waits
    assert writer.unsent_bytes() == len(wire.text_frame("é" * 100)) + 3 + 5
    assert writer.paused and not writer.write_if_idle(wire.text_frame("later"))
    closing = asyncio.ensure_future(writer.asgi_send({"type": "websocket.close", "code": 4010}))
    await asyncio.sleep(0.01)
    assert not closing.done(), "the close waits until send took the frames before it"
    send.gate.set()
    await asyncio.wait_for(closing, 1)
    assert send.sent == [
        {"type": "websocket.send", "text": "é" * 100}, {"type": "websocket.send", "bytes": b"\x01"},
        {"type": "websocket.send", "text": "plain"}, {"type": "websocket.close", "code": 4010},
    ]
    assert writer.unsent_bytes() == 0 and not writer.paused


async def test_the_asgi_writer_sends_joined_frames_as_one_message_each():
    """A room's batch is written as its frames joined: each becomes its own message."""
    send = SlowSend()
    send.gate.set()
    writer = servers.AsgiWriter(send)
    texts = ["a", "é" * 200, "x" * 70000]
    joined = b"".join(wire.text_frame(text) for text in texts) + wire.binary_frame(b"\x00")
    assert writer.write_if_idle(joined)
    await asyncio.sleep(0.01)
    assert send.sent == [*({"type": "websocket.send", "text": text} for text in texts),
                         {"type": "websocket.send", "bytes": b"\x00"}]
    assert writer.unsent_bytes() == 0


async def test_an_aborted_or_refused_asgi_writer_takes_no_more_frames():
    send = SlowSend()
    writer = servers.AsgiWriter(send)
    writer.write(wire.text_frame("x"))
    writer.abort()
    assert not writer.write(wire.text_frame("y")) and writer.unsent_bytes() == 0

    async def refusing(message):
        raise OSError("the client left")

    writer = servers.AsgiWriter(refusing)
    writer.write(wire.text_frame("x"))
    await asyncio.sleep(0.01)
    assert not writer.write(wire.text_frame("y")) and writer.unsent_bytes() == 0


async def test_a_writer_missing_what_it_reads_switches_its_adapter_off(monkeypatch, caplog):
    """Within a tested range a missing attribute is a bug: the adapter goes off, loudly."""
    from realtime.servers import uvicorn

    monkeypatch.setattr(servers, "_done_checks", set())
    monkeypatch.setitem(servers.adapters(), "uvicorn", uvicorn)  # put back after the test
    monkeypatch.setattr(uvicorn, "missing_attributes", lambda send: ["protocol.writable"])

    class Protocol:  # what serves() recognises: a class of a uvicorn module
        async def send(self, message):
            pass

    Protocol.__module__ = "uvicorn.protocols.websockets.elsewhere"
    writer = servers.writer_for(Protocol().send)
    assert isinstance(writer, servers.AsgiWriter)
    assert "uvicorn" not in servers.adapters()
    assert "uvicorn fast path off: protocol.writable missing" in caplog.text


def test_a_daphne_connection_lost_before_its_accept_keeps_daphnes_send():
    """A client that left before the accept has no socket left: daphne's send, no error."""
    from twisted.internet.tcp import Connection

    from realtime.servers import daphne

    transport = Connection.__new__(Connection)  # what connectionLost leaves: no .socket
    transport.connected, transport.disconnecting = 0, False
    transport._tempDataLen, transport.dataBuffer, transport.offset = 0, b"", 0
    protocol = SimpleNamespace(transport=transport, _perMessageCompress=None, STATE_OPEN=3,
                               state=3)
    send = functools.partial(lambda protocol, message: None, protocol)
    assert daphne.missing_attributes(send) == []  # the fast path stays on for the others
    assert daphne.writer_for(send) is None


# --- Real servers -------------------------------------------------------------------------


async def echo_once(server) -> None:
    async with connect(f"{server.ws_url}/ws/echo/", compression=None) as ws:
        await ws.send("hi")
        assert await asyncio.wait_for(ws.recv(), 5) == "Echo: hi"


async def keep_alive_posts(server, token: str, count: int = 2) -> None:
    """``count`` notification posts on one kept-alive connection, each answered 202."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        for n in range(count):
            body = json.dumps({"n": n}).encode()
            writer.write(f"POST /api/notify/nobody HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 202"), head
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            await reader.readexactly(length)
    finally:
        writer.close()


@pytest.mark.daphne
@pytest.mark.django_db(transaction=True)
async def test_daphne_frames_go_to_the_socket(daphne_server):
    """Under the locked daphne, ``manage.py serve`` writes frames with the socket writer."""
    server = daphne_server(command=DAPHNE)
    await echo_once(server)
    await echo_once(server)
    log = server.output()
    assert "server fast paths on: daphne, uvicorn" in log
    assert log.count("WebSocket frames go through daphne's socket writer") == 1
    assert "plain ASGI send" not in log and "fast path off" not in log


@pytest.mark.daphne
@pytest.mark.django_db(transaction=True)
async def test_uvicorn_frames_go_to_the_transport_and_answers_in_one_write(
    daphne_server, make_user, token_for
):
    """Under the locked uvicorn, frames use the transport writer, API answers one write."""
    await database_sync_to_async(make_user)("boss", staff=True)
    await database_sync_to_async(make_user)("nobody")
    server = daphne_server(command=UVICORN)
    await echo_once(server)
    await keep_alive_posts(server, token_for("boss"))
    log = server.output()
    assert log.count("WebSocket frames go through uvicorn's transport writer") == 1
    assert log.count("HTTP answers go through uvicorn's one-write answer") == 1
    assert "plain ASGI send" not in log and "fast path off" not in log


@pytest.mark.daphne
@pytest.mark.django_db(transaction=True)
async def test_an_untested_twisted_falls_back_with_one_warning(daphne_server):
    """daphne with a Twisted outside the range: one warning, the ASGI send, same frames."""
    server = daphne_server(command=pretending("twisted=26.11.0", DAPHNE))
    await echo_once(server)
    await echo_once(server)
    log = server.output()
    assert log.count("daphne fast path off: twisted 26.11.0 is not in the tested range "
                     ">=26.10,<26.11") == 1
    assert "WebSocket frames go through the plain ASGI send" in log
    assert "socket writer" not in log


@pytest.mark.daphne
@pytest.mark.django_db(transaction=True)
async def test_an_untested_uvicorn_falls_back_and_still_closes_a_stalled_reader(
    daphne_server, make_user, token_for
):
    """uvicorn 0.55 (pretended): one warning, the ASGI send, and the bound still closes 4010."""
    for name in ("boss", "nobody", "stalled", "talker"):
        await database_sync_to_async(make_user)(name, staff=name == "boss")
    server = daphne_server(command=pretending("uvicorn=0.55.0", UVICORN),
                           WS_MAX_SEND_BUFFER_BYTES="65536", WS_RATE_LIMIT="0")
    await keep_alive_posts(server, token_for("boss"))
    # Uncompressed: uvicorn's own send would deflate "x" * 4000 to a few bytes.
    stalled, talker = await stall_a_reader(server, "fallback", token_for("stalled"),
                                           token_for("talker"), compression=None)
    await talker.close()
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            await asyncio.wait_for(stalled.recv(), 10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4010
    log = server.output()
    assert log.count("uvicorn fast path off: uvicorn 0.55.0 is not in the tested range "
                     ">=0.54,<0.55") == 1
    assert "WebSocket frames go through the plain ASGI send" in log
    assert "transport writer" not in log and "one-write answer" not in log


# --- Closed connections are freed without the garbage collector --------------------------

#: The connection objects that daphne, Twisted and autobahn left in reference cycles.
CONNECTION_TYPES = ("daphne.ws_protocol.WebSocketProtocol", "daphne.http_protocol.WebRequest",
                    "twisted.web.http.HTTPChannel", "twisted.internet.tcp.Server")


def counting_cycles(out, command: list[str]) -> list[str]:
    """``command`` run under count_cycles.py, which writes its counts to ``out``."""
    return [sys.executable, "-m", "tests.realtime.count_cycles", str(out), "--", *command[1:]]


async def cycles_until_let_go(server, out, found_types: tuple[str, ...],
                              alive_types: tuple[str, ...]) -> tuple[dict[str, int], dict]:
    """Count (count_cycles.py) until none of ``alive_types`` is alive, within 15 s: how
    many of each of ``found_types`` the counts found in cycles, and the last count."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15
    found = dict.fromkeys(found_types, 0)
    while True:
        out.unlink(missing_ok=True)
        server.process.send_signal(signal.SIGUSR1)
        await wait_for(out.exists, timeout=10)
        counts = json.loads(out.read_text())
        for name in found_types:
            found[name] += counts["garbage"].get(name, 0)
        if not any(counts["alive"].get(name) for name in alive_types):
            return found, counts
        assert loop.time() < deadline, (found, server.output())
        await asyncio.sleep(0.3)


async def cycles_left_by_closed_sockets(daphne_server, tmp_path, command: list[str],
                                        sockets: int = 5) -> dict[str, int]:
    """The connection objects found in cycles once ``sockets`` echo sockets have opened,
    closed and been let go by daphne (it drops a closed one within a second or two)."""
    out = tmp_path / "cycles.json"
    server = daphne_server(command=counting_cycles(out, command))
    for _ in range(sockets):
        await echo_once(server)
    found, _ = await cycles_until_let_go(server, out, CONNECTION_TYPES, CONNECTION_TYPES)
    return found


@pytest.mark.daphne
@pytest.mark.django_db(transaction=True)
async def test_a_closed_websocket_leaves_no_cycle_for_the_collector(daphne_server, tmp_path):
    """Under the tested daphne, a WebSocket's objects are freed when it closes: a full
    collection then finds none of them in a reference cycle (realtime/servers/daphne.py)."""
    left = await cycles_left_by_closed_sockets(daphne_server, tmp_path, DAPHNE)
    assert left == dict.fromkeys(CONNECTION_TYPES, 0)


@pytest.mark.daphne
@pytest.mark.django_db(transaction=True)
async def test_without_the_patch_closed_websockets_wait_for_the_collector(daphne_server,
                                                                          tmp_path):
    """With an untested Twisted (the patches off), each closed socket's objects are in
    cycles: what the test above would see if the patch stopped working."""
    left = await cycles_left_by_closed_sockets(
        daphne_server, tmp_path, pretending("twisted=26.11.0", DAPHNE))
    assert all(count >= 5 for count in left.values()), left


#: uvicorn's connection protocols: its HTTP protocol, which upgrades, and the WebSocket
#: protocols of both its implementations.
UVICORN_PROTOCOLS = (
    "uvicorn.protocols.http.httptools_impl.HttpToolsProtocol",
    "uvicorn.protocols.websockets.websockets_sansio_impl.WebSocketsSansIOProtocol",
    "uvicorn.protocols.websockets.websockets_impl.WebSocketProtocol",
)
#: With the transports they hold (the server's connections to Redis and PostgreSQL are
#: transports too, alive throughout).
UVICORN_CONNECTION_TYPES = (
    *UVICORN_PROTOCOLS, "uvloop.loop.TCPTransport",
    "asyncio.selector_events._SelectorSocketTransport",
)
#: The ASGI application's type: startup made it, so it is frozen under uvicorn too.
APPLICATION = "channels.routing.ProtocolTypeRouter"


async def cycles_left_by_websockets(server, out, sockets: int = 5) -> tuple[dict[str, int],
                                                                          dict]:
    """The uvicorn connection objects found in cycles once ``sockets`` echo sockets have
    opened, closed and been let go, and the last count (count_cycles.py)."""
    opened = [await connect(f"{server.ws_url}/ws/echo/", compression=None)
              for _ in range(sockets)]
    for ws in opened:
        await ws.send("hi")
        assert await asyncio.wait_for(ws.recv(), 5) == "Echo: hi"
        await ws.close()
    return await cycles_until_let_go(server, out, UVICORN_CONNECTION_TYPES, UVICORN_PROTOCOLS)


@pytest.mark.daphne
@pytest.mark.django_db(transaction=True)
async def test_uvicorn_sansio_frees_a_closed_websocket_without_the_collector(
        daphne_server, tmp_path):
    """Under uvicorn's websockets-sansio a WebSocket leaves nothing in a cycle, neither
    at the upgrade (realtime/servers/uvicorn.py frees the HTTP protocol there) nor at
    the close. So the server spaces its full collections (GC_THRESHOLD2) and has
    frozen its startup objects: a full collection walks only its connections."""
    out = tmp_path / "cycles.json"
    server = daphne_server(command=counting_cycles(out, UVICORN), GC_THRESHOLD2="1234")
    left, counts = await cycles_left_by_websockets(server, out)
    assert left == dict.fromkeys(UVICORN_CONNECTION_TYPES, 0)
    assert counts["threshold"][2] == 1234
    assert APPLICATION not in counts["alive"], "the application is not frozen"


@pytest.mark.daphne
@pytest.mark.django_db(transaction=True)
async def test_uvicorns_legacy_websockets_wait_for_the_collector(daphne_server, tmp_path):
    """uvicorn's legacy ``websockets`` implementation leaves each closed socket in cycles,
    which the test above would see if websockets-sansio did. There frames go through the
    plain ASGI send, and full collections keep Python's spacing."""
    out = tmp_path / "cycles.json"
    legacy = [arg if arg != "websockets-sansio" else "websockets" for arg in UVICORN]
    server = daphne_server(command=counting_cycles(out, legacy), GC_THRESHOLD2="1234")
    left, counts = await cycles_left_by_websockets(server, out)
    assert left["uvicorn.protocols.websockets.websockets_impl.WebSocketProtocol"] >= 5, left
    assert counts["threshold"][2] == 10, "Python's own"
    assert APPLICATION not in counts["alive"], "the application is not frozen"
