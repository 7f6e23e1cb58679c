import websockets
from channels.testing import WebsocketCommunicator

from project.asgi import application


async def test_echo_text_over_communicator():
    """A text frame X comes back as 'Echo: X'."""
    communicator = WebsocketCommunicator(application, "/ws/echo/")
    connected, _ = await communicator.connect()
    assert connected
    await communicator.send_to(text_data="hi")
    assert await communicator.receive_from() == "Echo: hi"
    await communicator.disconnect()


async def test_echo_over_real_daphne(daphne_server):
    """A websockets client gets 'Echo: hi' from a real daphne."""
    server = daphne_server()
    async with websockets.connect(server.ws_url + "/ws/echo/") as ws:
        await ws.send("hi")
        assert await ws.recv() == "Echo: hi"
