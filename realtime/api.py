"""The JSON API's edge: authentication, CSRF, body limits and the error shape.

Every 4xx answer under ``/api/`` is ``{"error": CODE, "message": S}``. Views are
async, wrapped by :func:`api_view`, and raise :class:`ApiError` to answer one.
"""

import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable
from math import isfinite
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, JsonResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.views.decorators.csrf import csrf_exempt

from realtime import db, tokens
from realtime.middleware import get_active_user
from realtime.protocol import (
    API_MAX_BODY_BYTES,
    API_MAX_JSON_DEPTH,
    NOT_FINITE,
    TOO_DEEP,
    leaf_problem,
    too_deep,
    untrusted_json,
)

STATUS_OF = {
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "method_not_allowed": 405,
    "invalid_json": 400,
    "invalid_body": 400,
    "invalid_query": 400,
    "too_large": 413,
    "conflict": 409,
    "throttled": 429,
    "unavailable": 503,
}


class ApiError(Exception):
    """An API answer with an error body; the status follows from the code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message

    def response(self) -> JsonResponse:
        return error_response(self.code, self.message)


def error_response(code: str, message: str) -> JsonResponse:
    return JsonResponse({"error": code, "message": message}, status=STATUS_OF[code])


_csrf = CsrfViewMiddleware(lambda request: None)

logger = logging.getLogger(__name__)


#: The 413 of a body over ``API_MAX_BODY_BYTES``.
TOO_LARGE = ("too_large", f"body exceeds {API_MAX_BODY_BYTES} bytes")
#: The 401 of a validly signed token whose user is missing or inactive.
NO_ACTIVE_USER = ("unauthorized", "token names no active user")
#: The 403 of a user who is not staff on a staff-only endpoint.
STAFF_ONLY = ("forbidden", "staff only")
#: The 503 of a request the database could not serve.
UNAVAILABLE = ("unavailable", "the service is unavailable; try again")


def bearer_username(header: str) -> str:
    """The username of an ``Authorization: Bearer <JWT>`` header; ``ApiError`` 401 if unusable.

    Only the token is checked here; whether it names an active user is the
    caller's database work (so it can share a round trip with other work).
    """
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError("unauthorized", "Authorization must be 'Bearer <token>'")
    try:
        claims = _verified(token.strip(), settings.JWT_SECRET)
    except tokens.ExpiredToken:
        raise ApiError("unauthorized", "token has expired") from None
    except tokens.InvalidToken:
        raise ApiError("unauthorized", "token is invalid") from None
    # PyJWT's own rule (``exp <= now`` is expired, in whole seconds), for a
    # token verified earlier and still in the cache.
    if int(claims.expires_at.timestamp()) <= time.time():
        raise ApiError("unauthorized", "token has expired")
    return claims.user_id


@functools.lru_cache(maxsize=256)
def _verified(token: str, secret: str) -> tokens.Claims:
    """``tokens.decode``, remembered for tokens that passed (by token and key).

    A service posts many times with one token: the signature check (HMAC and
    base64 of the whole token) need not run again, only the expiry, which the
    caller checks each time. Failures are not cached; a changed secret is a
    new key.
    """
    return tokens.decode(token)


async def authenticate(request: HttpRequest):
    """The user of a Bearer token, else of the session (CSRF-checked for writes)."""
    header = request.headers.get("Authorization")
    if header is not None:
        user = await get_active_user(bearer_username(header))
        if user is None:
            raise ApiError(*NO_ACTIVE_USER)
        return user
    user = await request.auser()
    if not user.is_authenticated:
        raise ApiError("unauthorized", "authentication required (Bearer token or session)")
    if request.method not in {"GET", "HEAD", "OPTIONS"}:
        rejected = _csrf.process_view(request, None, (), {})
        if rejected is not None:
            raise ApiError("forbidden", "CSRF check failed")
    return user


def read_json_object(request: HttpRequest) -> dict[str, Any]:
    """The request body as a JSON object of at most ``API_MAX_BODY_BYTES`` bytes."""
    check_declared_length(request.headers.get("Content-Length"))
    try:
        body = request.body
    except RequestDataTooBig:
        raise ApiError(*TOO_LARGE) from None
    return parse_json_object(body)


def check_declared_length(content_length: str | None) -> None:
    """Refuse (413) a body whose ``Content-Length`` already says it is too large."""
    try:
        declared = int(content_length or 0)
    except ValueError:
        declared = 0
    if declared > API_MAX_BODY_BYTES:
        raise ApiError(*TOO_LARGE)


def parse_json_object(body: bytes) -> dict[str, Any]:
    """``body`` as a JSON object that can be stored and sent as it is.

    The one check of every API body. Raises ``ApiError``: ``too_large`` (over
    ``API_MAX_BODY_BYTES``), ``invalid_json`` (not JSON), ``invalid_body`` (not
    an object, or what :func:`~realtime.protocol.json_problem` refuses: NaN,
    infinities and numbers beyond a double, which Python's parser takes but
    no database stores; nesting past ``API_MAX_JSON_DEPTH``, which the NOTE
    frame's encoder could not take; NUL and lone surrogates).
    """
    if len(body) > API_MAX_BODY_BYTES:
        raise ApiError(*TOO_LARGE)
    try:
        with untrusted_json(body):
            data = _loads(body)
    except _NotFinite:
        raise ApiError(*_not_finite_or_not_json(body)) from None
    except RecursionError:
        # Far past API_MAX_JSON_DEPTH; the parser gave up before reaching the end.
        raise ApiError("invalid_body", TOO_DEEP) from None
    except ValueError:
        raise ApiError("invalid_json", "body is not valid JSON") from None
    if not isinstance(data, dict):
        raise ApiError("invalid_body", "body must be a JSON object")
    # Neither can be wrong without these bytes: most bodies need no walk.
    if body.count(b"[") + body.count(b"{") > API_MAX_JSON_DEPTH and too_deep(data):
        raise ApiError("invalid_body", TOO_DEEP)
    if not plainly_storable(body):
        problem = leaf_problem(data)
        if problem is not None:
            raise ApiError("invalid_body", problem)
    return data


class _NotFinite(ValueError):
    """A ``NaN``, an ``Infinity`` or a number beyond a double in a body."""


def _refuse_constant(name: str) -> float:
    raise _NotFinite(name)


def _finite_float(text: str) -> float:
    value = float(text)
    if not isfinite(value):
        raise _NotFinite(text)
    return value


#: ``json``'s decoder, refusing (``_NotFinite``) what Python's JSON takes beyond JSON's
#: numbers: ``NaN``, ``Infinity``, ``-Infinity``, and floats that round to infinity.
_DECODER = json.JSONDecoder(parse_float=_finite_float, parse_constant=_refuse_constant)


def _loads(body: bytes) -> Any:
    """``json.loads(body)`` with :data:`_DECODER` (the same decoding of the bytes)."""
    return _DECODER.decode(body.decode(json.detect_encoding(body), "surrogatepass"))


def _not_finite_or_not_json(body: bytes) -> tuple[str, str]:
    """The answer to a body with a non-finite number: is the rest of it JSON at all?"""
    try:
        json.loads(body)
    except RecursionError:
        return "invalid_body", TOO_DEEP
    except ValueError:
        return "invalid_json", "body is not valid JSON"
    return "invalid_body", NOT_FINITE


def plainly_storable(body: bytes) -> bool:
    """Whether every string of this (valid) JSON is storable without looking at each.

    NUL and lone surrogates reach a parsed string only through a ``\\u`` escape
    or as UTF-8-encoded surrogates, which strict UTF-8 decoding refuses (JSON
    refuses a raw NUL in a string): bodies with neither need no walk.
    """
    if b"\\u" in body:
        return False
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


View = Callable[..., Awaitable[JsonResponse]]


def check_method(method: str, allowed: tuple[str, ...]) -> None:
    """Refuse (405) a method the endpoint does not take; the first check of every API call."""
    if method not in allowed:
        raise ApiError("method_not_allowed", f"use {' or '.join(allowed)}")


def api_view(*methods: str, auth: bool = True, staff: bool = False) -> Callable[[View], View]:
    """Wrap an async API view: method check, authentication, error translation.

    The view gets ``request.api_user`` (``AnonymousUser`` when ``auth`` is off).
    A database that cannot serve (:data:`realtime.db.UNAVAILABLE_ERRORS`) is
    logged and answered 503 ``unavailable`` with the API's error body (a
    notification post's own 503 comes from its view). Other database errors
    are bugs, not outages: they go on to Django's 500 and its error log.
    """

    def decorator(view: View) -> View:
        @csrf_exempt  # checked in authenticate(), for session-authenticated writes only
        @functools.wraps(view)
        async def wrapper(request: HttpRequest, *args, **kwargs) -> JsonResponse:
            try:
                check_method(request.method, methods)
                request.api_user = await authenticate(request) if auth else AnonymousUser()
                if staff and not request.api_user.is_staff:
                    raise ApiError(*STAFF_ONLY)
                return await view(request, *args, **kwargs)
            except ApiError as exc:
                return exc.response()
            except db.UNAVAILABLE_ERRORS:
                logger.exception("could not serve %s %s", request.method, request.path)
                return error_response(*UNAVAILABLE)

        return wrapper

    return decorator
