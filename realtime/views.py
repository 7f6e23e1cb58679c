"""Project-level HTTP views: token issue and the ``/api/`` fallback."""

from django.contrib.auth import authenticate
from django.http import HttpRequest, JsonResponse

from realtime import db, protocol, throttle, tokens
from realtime.api import ApiError, api_view, read_json_object


@api_view("POST", auth=False)
async def token(request: HttpRequest) -> JsonResponse:
    """``POST /api/token``: trade a username and password for a JWT."""
    body = read_json_object(request)
    username, password = body.get("username"), body.get("password")
    if not isinstance(username, str) or not isinstance(password, str):
        raise ApiError("invalid_body", "'username' and 'password' must be strings")
    # A password hash holds a thread for a while: not the database worker's.
    user = await db.run_blocking(_check_password, request, username, password)
    if user is throttle.REFUSED:
        raise ApiError("throttled", throttle.MESSAGE)
    if user is None:
        raise ApiError("unauthorized", "bad username or password")
    jwt, expires_at = tokens.issue(user.get_username())
    return JsonResponse({"token": jwt, "expires_at": protocol.timestamp(expires_at)})


def _check_password(request: HttpRequest, username: str, password: str):
    """The user, ``None`` for bad credentials, or ``throttle.REFUSED``."""
    keys = throttle.keys_for(username, request.META.get("REMOTE_ADDR"))
    reservation = throttle.reserve(keys)
    if reservation is None:
        return throttle.REFUSED
    user = None
    try:
        user = authenticate(request, username=username, password=password)
    finally:
        throttle.settle(keys, reservation, failed=user is None)
    return user


@api_view("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", auth=False)
async def api_not_found(request: HttpRequest, rest: str = "") -> JsonResponse:
    raise ApiError("not_found", "no such API endpoint")
