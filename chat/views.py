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

from chat.models import Room
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
    """List rooms by latest activity and open one by name.

    The form is a GET because opening a room writes nothing: a room is created by
    its first message, so an abandoned name leaves no trace.
    """
    form = OpenRoomForm(request.GET) if "room" in request.GET else OpenRoomForm()
    if form.is_bound and form.is_valid():
        return redirect("chat:room", room=form.cleaned_data["room"])
    # Rooms with messages, then any without: one ordering with NULLS LAST made
    # PostgreSQL read and sort every room instead of walking the last_message_at index.
    rooms = list(Room.objects.filter(last_message_at__isnull=False).order_by(
        "-last_message_at", "name"
    )[:LOBBY_ROOM_LIMIT])
    if len(rooms) < LOBBY_ROOM_LIMIT:
        rooms += Room.objects.filter(last_message_at__isnull=True).order_by("name")[
            : LOBBY_ROOM_LIMIT - len(rooms)
        ]
    status = 400 if form.is_bound else 200
    return render(request, "chat/lobby.html", {"form": form, "rooms": rooms}, status=status)


@login_required
def room(request: HttpRequest, room: str) -> HttpResponse:
    """The chat page of ``room``; 404 for a name the WebSocket route would refuse."""
    if not is_room_name(room):
        raise Http404("Room names are 1 to 64 letters, digits, '-' or '_'.")
    return render(request, "chat/room.html", {"room_name": room})
