"""The least an ASGI app can do for the notify scenario: daphne's own ceilings.

Every WebSocket is accepted and filed under the ``user_id`` claim of its
``?token=`` (read, not verified); whatever it sends (the client's acks) is read
and dropped. Every ``POST /api/notify/<user>`` is read to its end and answered
``202`` with a small JSON body. With ``TRIVIAL_DELIVER=1`` the body is first
written to that user's sockets as the project's ``notification`` frame.

No Django, no signature check, no database, no channel layer: what is left is
daphne's (and Twisted's) own cost of a keep-alive POST (its HTTP ceiling, in
answered posts/s) and, delivering, of the frame each post causes (its ceiling
for the scenario, in notifications/s). ``bench/run.py --ceiling`` serves both
under daphne on the project's core, as the project's daphne runs
(``bench/trivial_serve.py``), so that notify can be reported as a fraction of what
daphne itself can carry (issue 20).

    TRIVIAL_DELIVER=1 python bench/trivial_serve.py -- -v 0 -b 127.0.0.1 -p 8001
"""

import itertools
import os
from urllib.parse import parse_qs, unquote

import jwt

BODY = b'{"status": "delivered", "id": 1}'
HEADERS = [(b"content-type", b"application/json"),
           (b"content-length", str(len(BODY)).encode())]
PREFIX = "/api/notify/"
DELIVER = os.environ.get("TRIVIAL_DELIVER") == "1"

sockets: dict[str, list] = {}
ids = itertools.count(1)


def user_of(scope) -> str:
    """The ``user_id`` claim of the connection's ``?token=`` (unverified), or ``""``."""
    token = parse_qs(scope["query_string"].decode()).get("token", [""])[0]
    try:
        return jwt.decode(token, options={"verify_signature": False}).get("user_id", "")
    except jwt.PyJWTError:
        return ""


async def application(scope, receive, send) -> None:
    if scope["type"] == "http":
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        path = scope["path"]
        if DELIVER and path.startswith(PREFIX):
            text = f'{{"type":"notification","id":{next(ids)},"data":{body.decode()}}}'
            for target in sockets.get(unquote(path[len(PREFIX):]), ()):
                await target({"type": "websocket.send", "text": text})
        await send({"type": "http.response.start", "status": 202, "headers": HEADERS})
        await send({"type": "http.response.body", "body": BODY})
    elif scope["type"] == "websocket":
        if (await receive())["type"] != "websocket.connect":
            return
        await send({"type": "websocket.accept"})
        own = sockets.setdefault(user_of(scope), [])
        own.append(send)
        try:
            while (await receive())["type"] != "websocket.disconnect":
                pass
        finally:
            own.remove(send)
