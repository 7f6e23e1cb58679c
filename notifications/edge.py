"""The hot HTTP path: Bearer-authenticated posts answered before Django's stack.

``POST /api/notify/<user_id>`` and ``POST /api/broadcast`` are what services
call at volume. Through Django each request costs a thread-sensitive context
(a new thread), a thread hop for every ``MiddlewareMixin`` middleware, the
request signals and the URL resolver before the view starts, for requests
that need none of it (no session, no cookie, no CSRF: a Bearer token).
:class:`NotifyEdge` answers those requests itself with the same checks, in
the same order, with the same statuses and bodies
(``realtime.api`` and :func:`notifications.views.post` are shared, not copied);
everything else goes on to Django unchanged:

* any other path or a request without ``Authorization`` (a session cookie
  or nothing: Django answers, CSRF included);
* a missing or duplicated ``Host`` or one Django would refuse, a duplicated
  ``Authorization`` header, a ``Transfer-Encoding`` or a ``Content-Length``
  that is not one plain number, or ``SECURE_SSL_REDIRECT`` /
  ``SECURE_HSTS_SECONDS`` set (Django's own answers to those are kept).

The response carries the headers Django's security and clickjacking
middlewares would add, read from the same settings. The two paths are those of
:mod:`notifications.urls`, where the project's URLconf mounts them.
"""

import functools
import json
import re
from typing import Any, NamedTuple

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.http.request import split_domain_port, validate_host
from django.urls import NoReverseMatch, get_resolver

from notifications import urls, views
from realtime import servers
from realtime.api import (
    STATUS_OF,
    ApiError,
    bearer_username,
    check_declared_length,
    check_method,
    parse_json_object,
)
from realtime.protocol import API_MAX_BODY_BYTES

#: What :meth:`NotifyEdge.route` returns for a request that Django answers.
DJANGO = object()


class NotifyEdge:
    """ASGI app: the Bearer posts of the notification API, else ``inner`` (Django)."""

    def __init__(self, inner) -> None:
        self.inner = inner

    async def __call__(self, scope, receive, send) -> None:
        target = self.route(scope)
        if target is DJANGO:
            return await self.inner(scope, receive, send)
        answer = await self.answer(scope, receive, target)
        if answer is None:
            return  # the client went away before its body arrived (Django: RequestAborted)
        status, body = answer
        await servers.send_http_response(send, status, response_headers(len(body)), body)

    @staticmethod
    def route(scope) -> object:
        """The target (a username; ``None``: a broadcast) of a request for us, else DJANGO."""
        config = _config()
        if scope["type"] != "http" or scope.get("root_path") or config.redirects_or_hsts:
            return DJANGO
        match = config.routes.fullmatch(scope["path"])
        if match is None:
            return DJANGO
        target = match.group(1)
        authorization = hosts = 0
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization += 1
            elif name == b"host":
                if not host_allowed(value):
                    return DJANGO
                hosts += 1
            elif name == b"transfer-encoding" or (
                name == b"content-length" and not value.isdigit()
            ):
                return DJANGO
        return target if authorization == 1 and hosts == 1 else DJANGO

    async def answer(self, scope, receive, target: str | None) -> tuple[int, bytes] | None:
        """Status and JSON body, checked in ``api_view``'s order: method, token, body.

        ``None`` when the client disconnected before its whole body arrived:
        nothing is stored and nothing is answered.
        """
        try:
            check_method(scope["method"], views.METHODS)
            headers = dict(scope["headers"])
            actor = bearer_username(headers[b"authorization"].decode("latin1"))
            body, refused = await read_body(receive), None
            if body is None:
                return None
            try:
                check_declared_length(headers.get(b"content-length", b"").decode())
                data = parse_json_object(body)
            except ApiError as exc:
                data, refused = None, exc
            status, answer = await views.post(target, data, actor=actor, refused=refused)
        except ApiError as exc:
            status, answer = STATUS_OF[exc.code], {"error": exc.code, "message": exc.message}
        return status, encode(answer)


async def read_body(receive) -> bytes | None:
    """The request body (``None`` if the client went away before it ended).

    Past ``API_MAX_BODY_BYTES`` + 1 bytes the rest is read and dropped.
    """
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        if size <= API_MAX_BODY_BYTES:
            chunks.append(chunk)
        size += len(chunk)
        if not message.get("more_body"):
            break
    body = b"".join(chunks)
    return body[: API_MAX_BODY_BYTES + 1]


def encode(answer: dict[str, Any]) -> bytes:
    # JsonResponse's encoding for plain values: the same bytes either way.
    return json.dumps(answer).encode()


def host_allowed(value: bytes) -> bool:
    """Whether Django's ``get_host()`` would accept this ``Host`` header."""
    config = _config()
    return _host_allowed(value, config.allowed_hosts, config.debug)


@functools.lru_cache(maxsize=64)
def _host_allowed(value: bytes, allowed: tuple[str, ...], debug: bool) -> bool:
    # Clients send the same few Host values; the pattern match need not run per request.
    domain, _port = split_domain_port(value.decode("latin1"))
    if debug and not allowed:
        allowed = (".localhost", "127.0.0.1", "[::1]")
    return bool(domain) and validate_host(domain, allowed)


def response_headers(length: int) -> list[tuple[bytes, bytes]]:
    """``Content-Type``, ``Content-Length`` and what Django's middlewares add to an answer."""
    return [
        (b"content-type", b"application/json"),
        (b"content-length", str(length).encode()),
        *_config().security_headers,
    ]


class EdgeConfig(NamedTuple):
    """What the edge reads from settings, read once (settings do not change at run time)."""

    #: Whether Django's ``SecurityMiddleware`` would redirect or add HSTS (then it answers).
    redirects_or_hsts: bool
    allowed_hosts: tuple[str, ...]
    debug: bool
    security_headers: tuple[tuple[bytes, bytes], ...]
    #: The paths we take; group 1 is the user of a notify path (``None``: a broadcast).
    routes: re.Pattern


def _routes() -> re.Pattern:
    """The paths of :mod:`notifications.urls` as the URLconf mounts them, as one pattern.

    Each path comes from the URLconf (a placeholder stands for the user);
    the user's part takes the regex of the route's converter.
    """
    resolver, placeholder = get_resolver(), "user-placeholder"
    try:
        broadcast = "/" + resolver.reverse(urls.BROADCAST_ROUTE)
        notify = "/" + resolver.reverse(urls.NOTIFY_ROUTE, user_id=placeholder)
    except NoReverseMatch:
        return re.compile(r"(?!)")  # not mounted: Django answers everything
    (route,) = [p for p in urls.urlpatterns if p.name == urls.NOTIFY_ROUTE]
    user = route.pattern.converters["user_id"].regex
    head, _, tail = notify.partition(placeholder)
    return re.compile(f"{re.escape(broadcast)}|{re.escape(head)}({user}){re.escape(tail)}")


@functools.cache
def _config() -> EdgeConfig:
    headers = []
    if settings.X_FRAME_OPTIONS:
        headers.append((b"x-frame-options", settings.X_FRAME_OPTIONS.encode()))
    if settings.SECURE_CONTENT_TYPE_NOSNIFF:
        headers.append((b"x-content-type-options", b"nosniff"))
    if settings.SECURE_REFERRER_POLICY:
        policy = settings.SECURE_REFERRER_POLICY
        if not isinstance(policy, str):
            policy = ",".join(policy)
        headers.append((b"referrer-policy", policy.encode()))
    if settings.SECURE_CROSS_ORIGIN_OPENER_POLICY:
        headers.append((b"cross-origin-opener-policy",
                        settings.SECURE_CROSS_ORIGIN_OPENER_POLICY.encode()))
    return EdgeConfig(
        redirects_or_hsts=bool(settings.SECURE_SSL_REDIRECT or settings.SECURE_HSTS_SECONDS),
        allowed_hosts=tuple(settings.ALLOWED_HOSTS),
        debug=settings.DEBUG,
        security_headers=tuple(headers),
        routes=_routes(),
    )


@receiver(setting_changed)
def _settings_changed(**kwargs) -> None:
    # Tests (override_settings) change settings; a server never does.
    _config.cache_clear()
