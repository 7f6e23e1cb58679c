"""The least an ASGI app can do for the notify scenario: daphne's own HTTP ceiling.

Every HTTP request is read to its end and answered ``202`` with a small JSON body;
every WebSocket is accepted and held, silent, until the client leaves. No Django,
no authentication, no database, no channel layer: what is left is daphne's (and
Twisted's) own cost of a keep-alive POST. ``bench/run.py --ceiling`` serves it
under daphne on the project's core, beside the project, so that notify can be
reported as a fraction of what daphne itself can answer (issue 20).

    python -m daphne -b 127.0.0.1 -p 8001 bench.trivial_asgi:application
"""

BODY = b'{"status": "delivered", "id": 1}'
HEADERS = [(b"content-type", b"application/json"),
           (b"content-length", str(len(BODY)).encode())]


async def application(scope, receive, send) -> None:
    if scope["type"] == "http":
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 202, "headers": HEADERS})
        await send({"type": "http.response.body", "body": BODY})
    elif scope["type"] == "websocket":
        if (await receive())["type"] != "websocket.connect":
            return
        await send({"type": "websocket.accept"})
        while (await receive())["type"] != "websocket.disconnect":
            pass
