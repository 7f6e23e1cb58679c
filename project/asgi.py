"""ASGI entry point: HTTP to Django, WebSockets through origin check and auth.

Bearer-authenticated posts to the notification API are answered by
``notifications.edge`` before Django's HTTP stack (same contract, a fraction
of the cost); every other HTTP request goes to Django. Every HTTP request is
counted first, so that a graceful stop (``realtime.shutdown``) can answer the
running ones and refuse new ones with 503.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402

from notifications.edge import NotifyEdge  # noqa: E402
from project.routing import websocket_urlpatterns  # noqa: E402
from realtime import servers  # noqa: E402
from realtime.middleware import WebSocketAuthStack  # noqa: E402
from realtime.shutdown import TrackRequests  # noqa: E402

servers.adapters()  # says at start-up which server fast paths are on (and warns if off)

application = ProtocolTypeRouter(
    {
        # Static files are served in every mode, so the chat page works under
        # daphne alone; a deployment may let nginx serve STATIC_ROOT instead.
        "http": TrackRequests(NotifyEdge(ASGIStaticFilesHandler(django_asgi_app))),
        "websocket": WebSocketAuthStack(URLRouter(websocket_urlpatterns)),
    }
)
# Under uvicorn: its graceful stop, and the startup objects frozen (daphne: manage.py serve).
servers.prepare_uvicorn()
