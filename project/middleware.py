"""ASGI middleware for WebSockets: origin check and token authentication.

``TokenAuthMiddleware`` looks for credentials in the order of the contract:
a non-empty ``?token=``, then ``Authorization: Bearer``, then the Django session.
The first present one decides; a bad token is not skipped for the next source.
It never closes anything: it puts ``user``, ``auth_error`` (a ``CloseCode`` or
``None``) and ``token_expires_at`` on the scope, and consumers that need a user
accept and close with that code.
"""

from datetime import datetime
from urllib.parse import parse_qs, urlparse

from channels.auth import get_user
from channels.db import database_sync_to_async
from channels.middleware import BaseMiddleware
from channels.security.websocket import OriginValidator, WebsocketDenier
from channels.sessions import CookieMiddleware, SessionMiddleware
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AnonymousUser
from django.http.request import split_domain_port, validate_host

from project import tokens
from project.protocol import CloseCode


class AllowedHostsOrNoOriginValidator(OriginValidator):
    """Refuse a handshake whose ``Origin`` is foreign or ``null``; allow none at all.

    Browsers always send ``Origin``; other clients (scripts, servers) usually don't,
    and cannot be stopped by an origin check anyway.
    """

    def __init__(self, application) -> None:
        super().__init__(application, allowed_origins=[])

    async def __call__(self, scope, receive, send):
        # Channels' own __call__ lets urlparse's ValueError (``http://[::1``) escape,
        # which fails the handshake with a 500: parse here, and refuse what won't parse.
        if scope["type"] != "websocket":
            raise ValueError("AllowedHostsOrNoOriginValidator is for WebSocket scopes only")
        origins = [value for name, value in scope.get("headers", []) if name == b"origin"]
        if all(self.valid_origin_header(value) for value in origins):
            return await self.application(scope, receive, send)
        return await WebsocketDenier()(scope, receive, send)

    def valid_origin_header(self, value: bytes) -> bool:
        try:
            parsed = urlparse(value.decode("latin1"))
            host, _port = split_domain_port(parsed.netloc.rpartition("@")[2])
        except ValueError:
            return False
        return self.valid_origin(parsed) if host else False

    def valid_origin(self, parsed_origin) -> bool:
        if parsed_origin is None:
            return True
        from django.conf import settings

        host, _port = split_domain_port(parsed_origin.netloc.rpartition("@")[2])
        return bool(parsed_origin.scheme and host) and validate_host(
            host, settings.ALLOWED_HOSTS
        )


@database_sync_to_async
def get_active_user(username: str):
    """The active user called ``username``, or ``None``."""
    return get_user_model().objects.filter(username=username, is_active=True).first()


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


class TokenAuthMiddleware(BaseMiddleware):
    """Authenticate the scope from a JWT, with the session as fallback."""

    async def __call__(self, scope, receive, send):
        scope = dict(scope)
        scope["user"], scope["auth_error"], scope["token_expires_at"] = await self.authenticate(
            scope
        )
        return await super().__call__(scope, receive, send)

    async def authenticate(self, scope) -> tuple[object, CloseCode | None, datetime | None]:
        token, present = find_token(scope)
        if present:
            if token is None:
                return AnonymousUser(), CloseCode.INVALID_CREDENTIALS, None
            try:
                claims = tokens.decode(token)
            except tokens.ExpiredToken:
                return AnonymousUser(), CloseCode.TOKEN_EXPIRED, None
            except tokens.InvalidToken:
                return AnonymousUser(), CloseCode.INVALID_CREDENTIALS, None
            user = await get_active_user(claims.user_id)
            if user is None:
                return AnonymousUser(), CloseCode.INVALID_CREDENTIALS, None
            return user, None, claims.expires_at
        if "session" in scope:
            user = await get_user(scope)
            if user.is_authenticated and user.is_active:
                return user, None, None
        return AnonymousUser(), CloseCode.NO_CREDENTIALS, None


class ServerSendMiddleware:
    """Keep the server's own ``send`` in the scope as ``server_send``.

    Frames sent through it skip the session middleware's wrapper, which only
    acts on HTTP responses, and under daphne it reveals how much the peer has
    not read yet (see ``ProtocolConsumer.unsent_bytes``).
    """

    def __init__(self, inner) -> None:
        self.inner = inner

    async def __call__(self, scope, receive, send):
        return await self.inner(dict(scope, server_send=send), receive, send)


def WebSocketAuthStack(inner):
    """Origin check, cookies and session, then token authentication."""
    return ServerSendMiddleware(AllowedHostsOrNoOriginValidator(
        CookieMiddleware(SessionMiddleware(TokenAuthMiddleware(inner)))
    ))
