"""HTTP API of the notifications app (included under ``api/``).

:mod:`notifications.edge` answers the Bearer posts to these same routes before
Django's stack; it finds them here, by name.
"""

from django.urls import path

from notifications import views

NOTIFY_ROUTE, BROADCAST_ROUTE = "api-notify", "api-broadcast"

urlpatterns = [
    path("notify/<str:user_id>", views.notify_user, name=NOTIFY_ROUTE),
    path("broadcast", views.broadcast, name=BROADCAST_ROUTE),
]
