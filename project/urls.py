from django.contrib import admin
from django.urls import include, path

from realtime import health, views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("healthz", health.healthz, name="healthz"),
    path("metrics", health.metrics_view, name="metrics"),
    path("accounts/", include("django.contrib.auth.urls")),
    path("api/token", views.token, name="api-token"),
    path("api/", include("chat.api_urls")),
    path("api/", include("notifications.urls")),
    path("api/<path:rest>", views.api_not_found),
    path("api/", views.api_not_found),
    path("", include("chat.urls")),
]
