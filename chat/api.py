"""The chat's JSON API: rooms, their members and bans, and history paging.

Thin views: they parse and call :mod:`chat.services`, whose refusals
(:mod:`chat.errors`) carry the API's error code.
"""

from django.http import HttpRequest, HttpResponse, JsonResponse

from chat import services
from chat.errors import RoomRefusal
from chat.protocol import HISTORY_PAGE_DEFAULT, HISTORY_PAGE_MAX, is_room_name
from realtime import protocol
from realtime.api import ApiError, api_view, read_json_object


async def answer(action):
    """Await a service call; its refusal becomes the API's error answer."""
    try:
        return await action
    except RoomRefusal as exc:
        raise ApiError(exc.code, exc.message) from None


def room_name(room: str) -> str:
    """A name from the path: one outside the room pattern names no room (404)."""
    if not is_room_name(room):
        raise ApiError("not_found", "no such room")
    return room


async def user_id_of(request: HttpRequest, room: str) -> str:
    """The body's ``user_id``; a bad body is refused only once the room is known to be
    visible (for anyone else it does not exist: 404 first)."""
    try:
        user_id = read_json_object(request).get("user_id")
        if not isinstance(user_id, str) or not user_id or not protocol.storable(user_id):
            raise ApiError("invalid_body", "'user_id' must be a non-empty string")
    except ApiError:
        await answer(services.room(room, request.api_user))
        raise
    return user_id


@api_view("GET", "POST")
async def rooms(request: HttpRequest) -> JsonResponse:
    """``GET``: the user's rooms with unread counts; ``POST``: make a room (201)."""
    if request.method == "GET":
        overview = await services.rooms_overview(request.api_user)
        return JsonResponse({"rooms": overview})
    body = read_json_object(request)
    name, private = body.get("name"), body.get("private", False)
    if not isinstance(name, str) or not is_room_name(name):
        raise ApiError("invalid_body", "'name' must be 1 to 64 letters, digits, '-' or '_'")
    if not isinstance(private, bool):
        raise ApiError("invalid_body", "'private' must be true or false")
    created = await answer(services.create_room(name, request.api_user, private=private))
    return JsonResponse(created, status=201)


@api_view("GET")
async def room(request: HttpRequest, room: str) -> JsonResponse:
    """The room's body: name, privacy, owner, members."""
    return JsonResponse(await answer(services.room(room_name(room), request.api_user)))


@api_view("POST")
async def members(request: HttpRequest, room: str) -> JsonResponse:
    """Add a member to a private room (the owner or staff)."""
    name = room_name(room)
    user_id = await user_id_of(request, name)
    return JsonResponse(await answer(services.add_member(name, request.api_user, user_id)))


@api_view("DELETE")
async def member(request: HttpRequest, room: str, user_id: str) -> HttpResponse:
    """Remove a member (the owner, staff, or the member leaving): 204."""
    await answer(services.remove_member(room_name(room), request.api_user, user_id))
    return HttpResponse(status=204)


@api_view("POST")
async def bans(request: HttpRequest, room: str) -> HttpResponse:
    """Ban a user from the room: 204."""
    name = room_name(room)
    user_id = await user_id_of(request, name)
    await answer(services.ban(name, request.api_user, user_id))
    return HttpResponse(status=204)


@api_view("DELETE")
async def ban(request: HttpRequest, room: str, user_id: str) -> HttpResponse:
    """Lift a ban: 204."""
    await answer(services.unban(room_name(room), request.api_user, user_id))
    return HttpResponse(status=204)


@api_view("GET")
async def room_messages(request: HttpRequest, room: str) -> JsonResponse:
    """The visible messages before ``before`` (or the latest), like the ``history`` frame."""
    name = room_name(room)
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
    items, truncated = await answer(services.room_history(
        name, request.api_user, before=before, limit=limit))
    return JsonResponse({"room": name, "messages": items, "truncated": truncated})
