"""ASGI middleware for WebSockets: origin check and token authentication.

:func:`authenticate` looks for credentials in the order of the contract: a
non-empty ``?token=``, then ``Authorization: Bearer``, then the Django session.
The first present one decides; a bad token is not skipped for the next source.
:class:`WebSocketAuthStack` never closes anything after the origin check: it
puts ``user``, ``auth_error`` (a ``CloseCode`` or ``None``), ``token_expires_at``
and ``session_key`` on the scope, and consumers that need a user accept and
close with that code.
"""

import copy
import logging
from datetime import datetime
from importlib import import_module
from urllib.parse import parse_qs, urlparse

from channels.auth import get_user
from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AnonymousUser
from django.http.cookie import parse_cookie
from django.http.request import split_domain_port, validate_host

from realtime import db, tokens
from realtime.protocol import CloseCode

logger = logging.getLogger(__name__)


def origin_allowed(value: bytes) -> bool:
    """Whether an ``Origin`` header names one of ``ALLOWED_HOSTS`` (any port).

    ``null`` and anything that does not parse (``http://[::1``) are refused.
    Browsers always send ``Origin``; other clients (scripts, servers) usually
    don't, and cannot be stopped by an origin check anyway, so a handshake
    without one is allowed.
    """
    try:
        parsed = urlparse(value.decode("latin1"))
        host, _port = split_domain_port(parsed.netloc.rpartition("@")[2])
    except ValueError:
        return False
    return bool(parsed.scheme and host) and validate_host(host, settings.ALLOWED_HOSTS)


async def get_active_user(username: str):
    """The active user called ``username``, or ``None`` (on the database thread).

    Lookups made together share one query (:class:`realtime.db.Lookup`); each
    caller gets a user object of its own.
    """
    user = await ACTIVE_USERS.get(username)
    return None if user is None else copy.copy(user)


def active_users(usernames: list[str]) -> dict[str, object]:
    """The active users of ``usernames``, by username."""
    users = get_user_model().objects.filter(username__in=usernames, is_active=True)
    return {user.username: user for user in users}


ACTIVE_USERS = db.Lookup(active_users)


def find_token(scope) -> tuple[str | None, bool]:
    """Return ``(token, present)`` from the query string or the Authorization header.

    ``present`` with a ``None`` token means a malformed ``Authorization`` header.
    """
    query = parse_qs(scope.get("query_string", b"").decode("latin1"))
    token = (query.get("token") or [""])[-1]
    if token:
        return token, True
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            scheme, _, credentials = value.decode("latin1").partition(" ")
            if scheme.lower() == "bearer" and credentials.strip():
                return credentials.strip(), True
            return None, True
    return None, False


class WebSocketAuthStack:
    """Origin check, then authentication, in one layer around the router.

    Each layer of an ASGI stack keeps its coroutine frame and its own copy of
    the scope alive for as long as the connection lasts; channels' cookie and
    session middlewares add two of each plus a session wrapper, for every
    connection, only to serve the session fallback. Here the scope is copied
    once, and the session is read only when no token is present.

    The server's own ``send`` goes into the scope as ``server_send``: under
    daphne and uvicorn it reveals how much the peer has not read yet (see
    ``ProtocolConsumer.unsent_bytes``) and lets frames be written straight to
    the transport (``realtime.servers``).
    """

    def __init__(self, inner) -> None:
        self.inner = inner

    async def __call__(self, scope, receive, send):
        if scope["type"] != "websocket":
            raise ValueError("WebSocketAuthStack is for WebSocket scopes only")
        origins = [value for name, value in scope.get("headers", []) if name == b"origin"]
        if not all(origin_allowed(value) for value in origins):
            return await WebsocketDenier()(scope, receive, send)
        scope = dict(scope, server_send=send)
        (scope["user"], scope["auth_error"], scope["token_expires_at"],
         scope["session_key"]) = await authenticate(scope)
        return await self.inner(scope, receive, send)


async def authenticate(scope) -> tuple[object, CloseCode | None, datetime | None, str | None]:
    """``(user, close code or None, token expiry or None, session key or None)``
    for a WebSocket scope.

    The session key is set only when the session cookie authenticated the user:
    such a connection lasts as long as its session (``realtime.sessions``). When
    the database cannot serve (:data:`realtime.db.UNAVAILABLE_ERRORS`), the code
    is 4013 (it stands for 1013, "try again later", as it does for the
    connection caps); any other database error is a bug, raised.
    """
    try:
        return await _authenticate(scope)
    except db.UNAVAILABLE_ERRORS as exc:
        logger.warning("could not authenticate a WebSocket: %s", exc)
        return AnonymousUser(), CloseCode.TOO_MANY_CONNECTIONS, None, None


async def _authenticate(scope) -> tuple[object, CloseCode | None, datetime | None, str | None]:
    token, present = find_token(scope)
    if present:
        if token is None:
            return AnonymousUser(), CloseCode.INVALID_CREDENTIALS, None, None
        try:
            claims = tokens.decode(token)
        except tokens.ExpiredToken:
            return AnonymousUser(), CloseCode.TOKEN_EXPIRED, None, None
        except tokens.InvalidToken:
            return AnonymousUser(), CloseCode.INVALID_CREDENTIALS, None, None
        user = await get_active_user(claims.user_id)
        if user is None:
            return AnonymousUser(), CloseCode.INVALID_CREDENTIALS, None, None
        return user, None, claims.expires_at, None
    session_key = session_cookie(scope)
    if session_key:
        store = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
        user = await get_user({"session": store})
        if user.is_authenticated and user.is_active:
            return user, None, None, session_key
    return AnonymousUser(), CloseCode.NO_CREDENTIALS, None, None


def session_cookie(scope) -> str | None:
    """The session key in the ``Cookie`` header, if any."""
    for name, value in scope.get("headers", []):
        if name == b"cookie":
            return parse_cookie(value.decode("latin1")).get(settings.SESSION_COOKIE_NAME)
    return None
