"""``manage.py serve``: run daphne with the project's deliberate options.

The options come from settings (see README, "Running daphne"): the message-size
ceiling sits at 4x ``WS_MAX_MESSAGE_BYTES`` (the application closes with 4009
above 1x; daphne drops the connection above 4x before buffering more), pings
find dead peers, and the handshake and close timeouts are short. The daphne
adapter's start-up patches (:mod:`realtime.servers.daphne`) apply first.
"""

import sys

from daphne.cli import CommandLineInterface
from daphne.endpoints import build_endpoint_description_strings
from django.conf import settings
from django.core.management.base import BaseCommand
from django.utils.module_loading import import_string

from realtime import servers

HARD_CEILING_WITHOUT_LIMIT = 16 * 1024 * 1024


def daphne_arguments(host: str, port: int) -> list[str]:
    """The daphne command line for the current settings."""
    limit = settings.WS_MAX_MESSAGE_BYTES
    ceiling = 4 * limit if limit else HARD_CEILING_WITHOUT_LIMIT
    (endpoint,) = build_endpoint_description_strings(host=host, port=port)
    args = [
        "-e", f"{endpoint}:backlog={settings.LISTEN_BACKLOG}",
        "--websocket-max-message-size", str(ceiling),
        "--websocket-max-frame-size", str(ceiling),
        "--ping-interval", str(settings.WS_PING_INTERVAL),
        "--ping-timeout", str(settings.WS_PING_TIMEOUT),
        "--websocket_timeout", str(settings.WS_TIMEOUT or -1),
        "--websocket_connect_timeout", str(settings.WS_CONNECT_TIMEOUT),
        "--application-close-timeout", "10",
    ]
    if settings.PROXY_HEADERS:
        args.append("--proxy-headers")
    if not settings.ACCESS_LOG:
        # Verbosity 0 only drops the access log: Django's LOGGING configures the rest.
        args += ["-v", "0"]
    module, _, name = settings.ASGI_APPLICATION.rpartition(".")
    return [*args, f"{module}:{name}"]


def browser_url(host: str, port: int) -> str:
    """Where a browser on this machine finds a server listening on ``host``."""
    if host in {"", "0.0.0.0", "::"}:
        host = "127.0.0.1"
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


class Command(BaseCommand):
    help = "Serve the project with daphne (HOST/PORT from settings unless given)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--host", default=None)
        parser.add_argument("--port", type=int, default=None)

    def handle(self, *args, host: str | None, port: int | None, **options) -> None:
        host, port = host or settings.SERVER_HOST, port or settings.SERVER_PORT
        argv = daphne_arguments(host, port)
        self.stdout.write(f"daphne {' '.join(argv)}")
        self.stdout.write(f"Open {browser_url(host, port)} in a browser (Ctrl-C stops the server)")
        sys.stdout.flush()
        # Logs which fast paths are on, then patches daphne (closed sockets among them).
        if servers.prepare_daphne():
            servers.space_full_collections()
        # Built before the freeze; daphne, importing it by the same name, finds it built.
        import_string(settings.ASGI_APPLICATION)
        servers.freeze_startup_objects()
        CommandLineInterface().run(argv)
