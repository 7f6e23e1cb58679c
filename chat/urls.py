"""Page routes of the chat (the JSON API lives in ``chat/api_urls.py``)."""

from django.urls import path

from chat import views

app_name = "chat"

urlpatterns = [
    path("", views.lobby, name="lobby"),
    # Any segment reaches the view, which answers 404 for a name outside ROOM_PATTERN.
    path("chat/<str:room>/", views.room, name="room"),
]
