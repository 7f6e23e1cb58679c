"""``GET /api/rooms/<room>/messages``: history paging over HTTP."""

from django.http import HttpRequest, JsonResponse

from chat import services
from chat.protocol import HISTORY_PAGE_DEFAULT, HISTORY_PAGE_MAX, is_room_name
from realtime import protocol
from realtime.api import ApiError, api_view


@api_view("GET")
async def room_messages(request: HttpRequest, room: str) -> JsonResponse:
    """The visible messages before ``before`` (or the latest), like the ``history`` frame."""
    if not is_room_name(room):
        raise ApiError("not_found", "no such room")
    try:
        before = request.GET.get("before") or None
        before = None if before is None else protocol.parse_cursor(before)
        if before == 0:
            raise ValueError("before must be positive")
        limit = request.GET.get("limit")
        limit = (HISTORY_PAGE_DEFAULT if limit is None
                 else protocol.parse_limit(limit, HISTORY_PAGE_MAX))
    except ValueError as exc:
        raise ApiError("invalid_query", f"bad query parameter: {exc}") from None
    items, truncated = await services.history(
        room, request.api_user, before=before, limit=limit)
    return JsonResponse({"room": room, "messages": items, "truncated": truncated})
