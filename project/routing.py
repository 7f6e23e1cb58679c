"""WebSocket routes of every app; anything else under any path is refused."""

from django.urls import re_path

from chat.routing import websocket_urlpatterns as chat_routes
from notifications.routing import websocket_urlpatterns as notification_routes
from realtime.echo import EchoConsumer, RefusingConsumer

websocket_urlpatterns = [
    re_path(r"^ws/echo/$", EchoConsumer.as_asgi()),
    *chat_routes,
    *notification_routes,
    re_path(r"", RefusingConsumer.as_asgi()),
]
