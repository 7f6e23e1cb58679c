"""HTML pages of the chat: the lobby and a room.

The pages only render a shell; everything live goes over ``/ws/chat/<room>/``
and ``/ws/notifications/`` (see ``static/js``), authenticated by the session
cookie, so no token ever appears in a page.
"""

from django import forms
from django.contrib.auth.decorators import login_required
from django.core.validators import RegexValidator
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render

from chat import rooms
from chat.protocol import ROOM_PATTERN, is_room_name

LOBBY_ROOM_LIMIT = 100


class OpenRoomForm(forms.Form):
    """The lobby's "open or create a room" form (rooms exist once written to)."""

    room = forms.CharField(
        label="Room name",
        max_length=64,
        validators=[
            RegexValidator(
                rf"\A{ROOM_PATTERN}\Z",
                "Use 1 to 64 letters, digits, '-' or '_'.",
            )
        ],
        widget=forms.TextInput(
            attrs={"pattern": ROOM_PATTERN, "autocomplete": "off", "placeholder": "general"}
        ),
    )


@login_required
def lobby(request: HttpRequest) -> HttpResponse:
    """The user's rooms (as ``GET /api/rooms`` lists them) and a form to open one by name.

    The form is a GET because opening a room writes nothing until it is joined.
    """
    form = OpenRoomForm(request.GET) if "room" in request.GET else OpenRoomForm()
    if form.is_bound and form.is_valid():
        return redirect("chat:room", room=form.cleaned_data["room"])
    overview = rooms.rooms_overview(request.user, limit=LOBBY_ROOM_LIMIT)
    status = 400 if form.is_bound else 200
    return render(request, "chat/lobby.html", {"form": form, "rooms": overview}, status=status)


@login_required
def room(request: HttpRequest, room: str) -> HttpResponse:
    """The chat page of ``room``; 404 for a name the WebSocket route would refuse, and
    for a room the user may not see (private, or banned there)."""
    if not is_room_name(room):
        raise Http404("Room names are 1 to 64 letters, digits, '-' or '_'.")
    access = rooms.room_access(room, request.user)
    if access is not None and not access.visible:
        raise Http404("No such room.")
    body = rooms.room_body(access) if access is not None else {"owner": None}
    return render(request, "chat/room.html", {
        "room_name": room,
        "room_private": access is not None and access.private,
        "room_owner": body["owner"],
        "can_manage": access is not None and access.can_manage(request.user),
        "can_moderate": access.can_moderate(request.user) if access is not None
        else request.user.is_staff or request.user.has_perm(rooms.MODERATE_PERMISSION),
        "username": request.user.get_username(),
    })
