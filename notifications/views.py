"""``POST /api/notify/<user_id>`` and ``POST /api/broadcast`` (staff only).

Two ways in, one piece of work: requests with ``Authorization`` go through
:mod:`notifications.edge` (mounted before Django in ``project/asgi.py``), those
authenticated by the session cookie come here, through Django's middleware and
CSRF check. Both call :func:`post`.

Both start this process's hub if no WebSocket has yet: a server process then
reuses one layer and registry connection for every post instead of opening
one per request, and it heartbeats and reaps dead processes, so a killed
process's connections stop counting as ``sent`` even where every surviving
process only serves HTTP.
"""

import logging
from typing import Any

from django.http import HttpRequest, JsonResponse

from notifications.errors import Refused, ServiceUnavailable
from notifications.writer import post_notification
from realtime.api import ApiError, api_view, read_json_object
from realtime.hub import Hub, get_hub
from realtime.protocol import storable

logger = logging.getLogger(__name__)

#: The methods both endpoints take (the edge checks the same).
METHODS = ("POST",)
#: The 503 of a post the database could not store (nothing of it was kept).
UNAVAILABLE = ("unavailable", "the notification could not be stored; try again")


async def post(target: str | None, data: dict[str, Any] | None, *,
               actor: str | None = None, refused: ApiError | None = None
               ) -> tuple[int, dict[str, Any]]:
    """Store and push one post of the API: ``(202, body)``, or raise ``ApiError``
    (503 ``unavailable`` when the database could not store it).

    ``target`` is a username (``None``: a broadcast); ``actor`` the username of
    a Bearer token, checked (active, staff) in the same database round trip as
    the insert. ``refused`` is the answer to a body that was refused: it comes
    once the credentials have passed, as the contract orders the checks, and
    so does the 404 of a target no user can have (a NUL or a lone surrogate,
    which PostgreSQL could not even look up: it is never looked up).
    """
    await ensure_hub()
    nobody = target is not None and not storable(target)
    if refused is not None or nobody:
        data = None  # only the credentials are checked
    if data is not None or actor is not None:
        try:
            note_id, status = await post_notification(
                None if nobody else target, data, actor=actor)
        except Refused as exc:
            raise ApiError(exc.code, exc.message) from None
        except ServiceUnavailable:
            raise ApiError(*UNAVAILABLE) from None
    if refused is not None:
        raise refused
    if nobody:
        unknown = Refused.no_such_user(target)
        raise ApiError(unknown.code, unknown.message)
    return 202, {"status": status, "id": note_id}


async def ensure_hub() -> Hub | None:
    """Start the hub of this server process if it has none yet.

    ``None`` when it cannot start (Redis down): posting then falls back to the
    direct path, which stores and answers ``queued`` if the layer is down too.
    """
    try:
        return await get_hub()
    except Exception:
        logger.warning("could not start the process hub", exc_info=True)
        return None


@api_view(*METHODS, staff=True)
async def notify_user(request: HttpRequest, user_id: str) -> JsonResponse:
    """Store a notification for a user, then push it: ``202 {"status", "id"}``."""
    status, body = await post(user_id, read_json_object(request))
    return JsonResponse(body, status=status)


@api_view(*METHODS, staff=True)
async def broadcast(request: HttpRequest) -> JsonResponse:
    """Push one NOTE to every notifications connection: ``202 {"status": "broadcast"}``."""
    status, body = await post(None, read_json_object(request))
    return JsonResponse(body, status=status)
