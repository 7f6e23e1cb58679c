"""``POST /api/notify/<user_id>`` and ``POST /api/broadcast`` (staff only).

Both views start this process's hub if no WebSocket has yet: a server process
then reuses one layer and registry connection for every post instead of
opening one per request, and it heartbeats and reaps dead processes, so a
killed process's connections stop counting as ``sent`` even where every
surviving process only serves HTTP.
"""

from django.http import HttpRequest, JsonResponse

from notifications import services
from project.api import ApiError, api_view, read_json_object


@api_view("POST", staff=True)
async def notify_user(request: HttpRequest, user_id: str) -> JsonResponse:
    """Store a notification for a user, then push it: ``202 {"status", "id"}``."""
    data = read_json_object(request)
    user = await services.find_user(user_id)
    if user is None:
        raise ApiError("not_found", f"no user {user_id!r}")
    await services.ensure_hub()
    note_id, status = await services.anotify(user, data)
    return JsonResponse({"status": status, "id": note_id}, status=202)


@api_view("POST", staff=True)
async def broadcast(request: HttpRequest) -> JsonResponse:
    """Push one NOTE to every notifications connection: ``202 {"status": "broadcast"}``."""
    data = read_json_object(request)
    await services.ensure_hub()
    note_id, status = await services.abroadcast(data)
    return JsonResponse({"status": status, "id": note_id}, status=202)
