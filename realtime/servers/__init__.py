"""How frames and HTTP answers reach the server: the only door to a server's internals.

One adapter module per server whose private parts we use (:mod:`.daphne`,
:mod:`.uvicorn`), each on only for the versions it was tested with (its
``TESTED``); otherwise, and under any other server, the plain ASGI ``send``
(:class:`~realtime.servers.asgi.AsgiWriter`) with one warning per process. The
rest of the project uses only what this module exports.

A writer has ``write(frame)`` and ``write_if_idle(frame)`` (encoded frames of
:mod:`realtime.wire`; ``False``: not written), ``unsent_bytes()`` (what the client
has not taken: the slow-reader bound), ``paused`` (a close would wait now),
``abort()``, ``asgi_send`` (the ``send`` for every other message, in order) and
``frees_closed_connections`` (its server frees a closed connection without the
garbage collector, so full collections may be spaced).
"""

import functools
import gc
import importlib
import importlib.metadata
import logging
import re
import sys

from realtime.servers.asgi import AsgiWriter

__all__ = ["AsgiWriter", "adapters", "freeze_startup_objects", "prepare_daphne", "prepare_uvicorn",
           "send_http_response", "space_full_collections", "switch_off", "untested", "writer_for"]

logger = logging.getLogger(__name__)

ADAPTERS = ("daphne", "uvicorn")
_announced: set[str] = set()  # what was logged once already
_done_checks: set[tuple[str, str]] = set()


def _release(version: str) -> tuple[int, ...]:
    match = re.match(r"\d+(?:\.\d+)*", version)
    return tuple(int(part) for part in match.group().split(".")) if match else ()


def untested(tested: dict[str, tuple[str, str]]) -> str | None:
    """Why the installed versions are not the ``tested`` ranges, or ``None`` if they are."""
    for package, (low, high) in tested.items():
        version = importlib.metadata.version(package)
        if not _release(low) <= _release(version) < _release(high):
            return f"{package} {version} is not in the tested range >={low},<{high}"
    return None


@functools.cache
def adapters() -> dict[str, object]:
    """The adapter modules that are on, by server name; computed and logged once."""
    on = {}
    for name in ADAPTERS:
        module = importlib.import_module(f"realtime.servers.{name}")
        try:
            problem = untested(module.TESTED)
        except importlib.metadata.PackageNotFoundError:
            continue  # that server is not installed: nothing to adapt to
        if problem:
            logger.warning("%s fast path off: %s; the plain ASGI send is used instead "
                           "(slower, same frames)", name, problem)
        else:
            on[name] = module
    logger.info("server fast paths on: %s", ", ".join(on) or "none")
    return on


def switch_off(name: str, missing: list[str]) -> None:
    """A tested version lacks what the adapter reads: off for this process, loudly."""
    if adapters().pop(name, None) is not None:
        logger.warning("%s fast path off: %s missing; the plain ASGI send is used instead",
                       name, ", ".join(missing))


def writer_for(send):
    """The writer for an accepted WebSocket connection whose server ``send`` is ``send``."""
    writer = None
    for name, adapter in adapters().items():
        if adapter.serves(send):
            if _check_once(name, "missing_attributes", send):
                writer = adapter.writer_for(send)
            break
    if writer is None:
        writer = AsgiWriter(send)
    if writer.name not in _announced:
        _announced.add(writer.name)
        logger.info("WebSocket frames go through %s", writer.name)
        if writer.frees_closed_connections:
            space_full_collections()
    return writer


async def send_http_response(send, status: int, headers: list[tuple[bytes, bytes]],
                             body: bytes) -> None:
    """Send a whole HTTP response; ``headers`` must hold its ``Content-Length``."""
    adapter = adapters().get("uvicorn")
    if (adapter is not None and adapter.serves(send)
            and _check_once("uvicorn", "missing_http_attributes", send)
            and await adapter.send_http_response(send, status, headers, body)):
        if "http" not in _announced:
            _announced.add("http")
            logger.info("HTTP answers go through uvicorn's one-write answer")
        return
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _check_once(name: str, check: str, send) -> bool:
    """Whether the adapter is still on after checking, on the first ``send`` of a
    kind, every attribute it reads (a tested version that lacks one is a bug)."""
    if (name, check) not in _done_checks:
        missing = getattr(adapters()[name], check)(send)
        if missing:
            switch_off(name, missing)
            return False
        _done_checks.add((name, check))
    return name in adapters()


def prepare_daphne() -> bool:
    """What ``manage.py serve`` does before daphne starts: the daphne adapter's patches.

    Returns whether they apply (the adapter is on for the installed versions).
    """
    adapter = adapters().get("daphne")
    if adapter is not None:
        adapter.apply_patches()
    return adapter is not None


def prepare_uvicorn() -> None:
    """What ``project.asgi`` does once it has built the application, as uvicorn loads it:
    the uvicorn adapter's graceful stop and its upgrade that frees uvicorn's HTTP
    protocol, and the startup objects frozen.

    uvicorn runs no start-up code of ours but the application's import; nothing
    is done where uvicorn is not the server that imports it. Full collections are
    spaced later, by :func:`writer_for`, once the first WebSocket shows which of
    uvicorn's implementations serves them.
    """
    adapter = adapters().get("uvicorn")
    if adapter is not None and "uvicorn.server" in sys.modules:
        adapter.stop_gracefully()
        adapter.free_the_http_protocol_at_upgrade()
        freeze_startup_objects()


def space_full_collections() -> None:
    """Full garbage collections every ``GC_THRESHOLD2`` middle-generation ones.

    A full collection walks every live connection while the server waits. Only
    where closed connections are freed without the collector: under ``manage.py
    serve`` with the daphne adapter's patches, and under uvicorn once a WebSocket
    upgraded by its httptools protocol (patched by :func:`prepare_uvicorn`) is
    served by its ``websockets-sansio`` implementation (the writer's
    ``frees_closed_connections``). Spacing the full collections then leaves no
    connection waiting for one.
    """
    from django.conf import settings

    if settings.GC_THRESHOLD2:
        first, second, _ = gc.get_threshold()
        gc.set_threshold(first, second, settings.GC_THRESHOLD2)


def freeze_startup_objects() -> None:
    """Leave what startup made (Django, the libraries, the ASGI application, which
    must be built by now) out of every later collection: a full collection then
    walks only what the server made since.

    Startup objects that become cyclic garbage later are never collected, which
    costs at most a part of the startup heap.
    """
    gc.collect()
    gc.freeze()
