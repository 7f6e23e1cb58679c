"""HTTP API of the notifications app (included under ``api/``)."""

from django.urls import path

from notifications import views

urlpatterns = [
    path("notify/<str:user_id>", views.notify_user, name="api-notify"),
    path("broadcast", views.broadcast, name="api-broadcast"),
]
