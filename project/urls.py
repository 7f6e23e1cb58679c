from django.contrib import admin
from django.contrib.auth.views import LoginView
from django.templatetags.static import static
from django.urls import include, path
from django.views.generic import RedirectView

from realtime import auth, health, views

# Both login forms say so when the login throttle refused the attempt.
admin.site.login_form = auth.AdminLoginForm

urlpatterns = [
    path("admin/", admin.site.urls),
    # Browsers ask for /favicon.ico whatever the page links (the admin links none).
    path("favicon.ico", RedirectView.as_view(url=static("favicon.svg"), permanent=True)),
    path("healthz", health.healthz, name="healthz"),
    path("metrics", health.metrics_view, name="metrics"),
    path("accounts/login/", LoginView.as_view(authentication_form=auth.LoginForm), name="login"),
    path("accounts/", include("django.contrib.auth.urls")),
    path("api/token", views.token, name="api-token"),
    path("api/", include("chat.api_urls")),
    path("api/", include("notifications.urls")),
    path("api/<path:rest>", views.api_not_found),
    path("api/", views.api_not_found),
    path("", include("chat.urls")),
]
