"""Project-level HTTP views: token issue and the ``/api/`` fallback."""

import hashlib
import time

from django.conf import settings
from django.contrib.auth import authenticate
from django.core.cache import cache
from django.http import HttpRequest, JsonResponse

from realtime import db, protocol, tokens
from realtime.api import ApiError, api_view, read_json_object


def _failure_keys(username: str, address: str) -> list[str]:
    # surrogatepass: a JSON body may carry lone surrogates; the key must not crash on them.
    digest = hashlib.sha256(username.encode("utf-8", "surrogatepass")).hexdigest()
    return [f"login-failures:user:{digest}", f"login-failures:addr:{address}"]


def _blocked(stamps: list[float] | None, now: float) -> bool:
    """``LOGIN_MAX_FAILURES`` failures within one window, the last one less than a window ago.

    The block lasts a whole window after the *last* failure (PROTOCOL.md), not after
    the first of them.
    """
    if not stamps:
        return False
    window, last = settings.LOGIN_FAILURE_WINDOW, max(stamps)
    if now - last >= window:
        return False
    return sum(1 for s in stamps if s > last - window) >= settings.LOGIN_MAX_FAILURES


async def _throttled(keys: list[str]) -> bool:
    found = await cache.aget_many(keys)
    now = time.time()
    return any(_blocked(found.get(k), now) for k in keys)


async def _record_failure(keys: list[str]) -> None:
    found = await cache.aget_many(keys)
    now = time.time()
    cutoff = now - settings.LOGIN_FAILURE_WINDOW
    await cache.aset_many(
        {k: [*(s for s in found.get(k) or [] if s > cutoff), now] for k in keys},
        timeout=settings.LOGIN_FAILURE_WINDOW,
    )


@api_view("POST", auth=False)
async def token(request: HttpRequest) -> JsonResponse:
    """``POST /api/token``: trade a username and password for a JWT."""
    body = read_json_object(request)
    username, password = body.get("username"), body.get("password")
    if not isinstance(username, str) or not isinstance(password, str):
        raise ApiError("invalid_body", "'username' and 'password' must be strings")
    keys = _failure_keys(username, request.META.get("REMOTE_ADDR", ""))
    if await _throttled(keys):
        raise ApiError("throttled", "too many failed logins; try again in 5 minutes")
    # A password hash holds a thread for a while: not the database worker's.
    user = await db.run_blocking(authenticate, request, username=username, password=password)
    if user is None:
        await _record_failure(keys)
        raise ApiError("unauthorized", "bad username or password")
    jwt, expires_at = tokens.issue(user.get_username())
    return JsonResponse({"token": jwt, "expires_at": protocol.timestamp(expires_at)})


@api_view("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", auth=False)
async def api_not_found(request: HttpRequest, rest: str = "") -> JsonResponse:
    raise ApiError("not_found", "no such API endpoint")
