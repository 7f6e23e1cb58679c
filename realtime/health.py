"""Operator endpoints: ``/healthz`` for load balancers, ``/metrics`` for Prometheus.

Both answer for the process that serves the request. A load balancer takes a
process out of rotation on ``/healthz`` 503, so the check covers what every
request needs (the database, and the channel layer that carries messages
between processes) and is bounded in time: a hung dependency answers 503
instead of a hung probe. ``/metrics`` shows this process's own counters
(see ``realtime.metrics``); scrape every process.
"""

import asyncio
import hmac
import logging
import os
import time

from channels.layers import get_channel_layer
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_http_methods

from realtime import db, metrics
from realtime.api import ApiError, authenticate

logger = logging.getLogger(__name__)

#: Seconds each dependency gets to answer a health check.
CHECK_TIMEOUT = 2.0
PROCESS_STARTED = time.time()


def query_database() -> None:
    """One trivial query: the database accepts connections and answers."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()


async def check_channel_layer() -> None:
    """Send a message to a new channel of this process and receive it back."""
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "health.check"})
    message = await layer.receive(channel)
    if message.get("type") != "health.check":
        raise RuntimeError(f"unexpected message on the health channel: {message!r}")


async def check_database() -> None:
    """The database worker, as every WebSocket path uses it, gets an answer."""
    await db.run(query_database)


CHECKS = {"database": check_database, "channel_layer": check_channel_layer}


async def _run(name: str) -> bool:
    try:
        await asyncio.wait_for(CHECKS[name](), CHECK_TIMEOUT)
    except Exception:
        logger.warning("health check %s failed", name, exc_info=True)
        return False
    return True


@require_http_methods(["GET", "HEAD"])
async def healthz(request: HttpRequest) -> JsonResponse:
    """``GET /healthz``: 200 when every dependency answers, else 503 naming the failing ones."""
    names = list(CHECKS)
    results = await asyncio.gather(*(_run(name) for name in names))
    body = {name: "ok" if ok else "error" for name, ok in zip(names, results, strict=True)}
    healthy = all(results)
    response = JsonResponse({"status": "ok" if healthy else "unavailable", **body},
                            status=200 if healthy else 503)
    response["Cache-Control"] = "no-store"
    return response


def _has_metrics_token(request: HttpRequest) -> bool:
    expected = settings.METRICS_TOKEN
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return bool(expected) and scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(), expected.encode()
    )


def scrape_time_metrics() -> str:
    """Gauges computed when scraped: which process this is, and since when it runs."""
    return "\n".join([
        "# HELP realtime_process_start_time_seconds Start of this process, Unix time.",
        "# TYPE realtime_process_start_time_seconds gauge",
        f"realtime_process_start_time_seconds {PROCESS_STARTED:.3f}",
        "# HELP realtime_process_info This process (each daphne process has its own numbers).",
        "# TYPE realtime_process_info gauge",
        f'realtime_process_info{{pid="{os.getpid()}"}} 1',
    ]) + "\n"


@require_http_methods(["GET"])
async def metrics_view(request: HttpRequest) -> HttpResponse:
    """``GET /metrics``: this process's metrics, for staff or the ``METRICS_TOKEN`` bearer.

    The numbers tell who uses the service and how much, so they are not public.
    """
    if not _has_metrics_token(request):
        try:
            user = await authenticate(request)
        except ApiError as exc:
            response = exc.response()
            response["WWW-Authenticate"] = "Bearer"
            return response
        if not user.is_staff:
            return ApiError("forbidden", "staff or the metrics token only").response()
    return HttpResponse(
        metrics.render() + scrape_time_metrics(),
        content_type="text/plain; version=0.0.4; charset=utf-8",
    )
