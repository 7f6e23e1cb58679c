"""Project-level HTTP views: token issue and the ``/api/`` fallback."""

from django.contrib.auth import authenticate
from django.http import HttpRequest, JsonResponse

from realtime import db, protocol, throttle, tokens
from realtime.api import ApiError, api_view, read_json_object
from realtime.auth import is_throttled


@api_view("POST", auth=False)
async def token(request: HttpRequest) -> JsonResponse:
    """``POST /api/token``: trade a username and password for a JWT."""
    body = read_json_object(request)
    username, password = body.get("username"), body.get("password")
    if not isinstance(username, str) or not isinstance(password, str):
        raise ApiError("invalid_body", "'username' and 'password' must be strings")
    # A password hash holds a thread for a while: not the database worker's.
    # Every password check is throttled (realtime.auth.ThrottledModelBackend).
    user = await db.run_blocking(authenticate, request, username=username, password=password)
    if user is None and is_throttled(request):
        raise ApiError("throttled", throttle.MESSAGE)
    if user is None:
        raise ApiError("unauthorized", "bad username or password")
    jwt, expires_at = tokens.issue(user.get_username())
    return JsonResponse({"token": jwt, "expires_at": protocol.timestamp(expires_at)})


@api_view("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", auth=False)
async def api_not_found(request: HttpRequest, rest: str = "") -> JsonResponse:
    raise ApiError("not_found", "no such API endpoint")
