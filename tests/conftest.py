"""Fixtures shared by the whole suite.

* Under CI (``CI=true``) Redis and PostgreSQL must be reachable when their
  URLs are set, and a Redis test without ``REDIS_URL`` fails instead of skipping:
  the pass on the embedded default leaves them out with ``-m "not redis"`` (.ci/run).
* ``daphne_server`` starts real daphne processes on the test database.
* ``make_user`` / ``token_for`` create users and sign tokens.
"""

import asyncio
import functools
import gc
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import django
import pytest
import websockets
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import make_password
from django.core.cache import cache
from django.db import connections, transaction
from django.test import TransactionTestCase

from realtime import db, tokens
from realtime.hub import close_hub
from tests.forkserver import ForkServer

ROOT = Path(__file__).resolve().parent.parent

#: README, "Serving with uvicorn": the command that serves the project with uvicorn
#: (a ``command`` for the ``daphne_server`` fixture).
UVICORN = [
    sys.executable, "-m", "uvicorn", "project.asgi:application", "--host", "127.0.0.1",
    "--port", "{port}", "--ws", "websockets-sansio", "--ws-max-size", "262144",
    "--ws-ping-interval", "20", "--ws-ping-timeout", "30", "--lifespan", "off",
]
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def pytest_sessionstart(session: pytest.Session) -> None:
    """Under CI, a service the run is configured for must answer: no test may skip for it."""
    if not IN_CI or not os.environ.get("REDIS_URL"):
        return
    import redis

    try:
        redis.Redis.from_url(os.environ["REDIS_URL"], socket_timeout=3).ping()
    except Exception as exc:
        pytest.exit(f"CI: Redis at REDIS_URL is unreachable: {exc}", returncode=1)


#: The test modules that keep a worker longest (.ci/run's ``--durations``), slowest first.
#: ``dev.py test`` hands whole modules to its workers in collection order: these go
#: first, so that the short modules fill in around them rather than a long one starting
#: last and running alone at the end.
SLOWEST_MODULES = (
    "tests/browser/test_chat_page.py",
    "tests/browser/test_rooms_page.py",
    "tests/realtime/test_fuzz.py",
    "tests/chat/test_rooms_http.py",
    "tests/chat/test_rooms_socket.py",
    "tests/chat/test_multiprocess.py",
    "tests/chat/test_rooms_multiprocess_typing_reads.py",
    "tests/chat/test_rooms_multiprocess_deletions.py",
    "tests/chat/test_example_client.py",
    "tests/test_readme.py",
    "tests/realtime/test_sessions.py",
    "tests/chat/test_redis_outage.py",
    "tests/realtime/test_servers.py",
    "tests/chat/test_rooms_multiprocess.py",
    "tests/notifications/test_graceful_stop.py",
    "tests/chat/test_sqlite_load.py",
    "tests/realtime/test_echo.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that takes ``redis_url`` is a ``redis`` test: ``-m "not redis"`` leaves it out.

    The :data:`SLOWEST_MODULES` come first, then the others in their usual order.
    """
    for item in items:
        if "redis_url" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.redis)
    rank = {module: n for n, module in enumerate(SLOWEST_MODULES)}
    items.sort(key=lambda item: rank.get(item.nodeid.partition("::")[0], len(rank)))


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker):
    """pytest-django's test database, whose other sessions end before it is dropped.

    Connections that worker threads (channels' thread pool, ``realtime.db``) opened
    stay open to the end; PostgreSQL refuses to drop a database in use, which would
    leave it behind on the server.
    """
    yield
    with django_db_blocker.unblock():
        connection = connections["default"]
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )


#: What a transactional test's teardown leaves in place: the rows migrations and their
#: post_migrate handlers made, which no test changes.
KEPT_TABLES = frozenset({"django_content_type", "auth_permission"})


def empty_database(using: str) -> None:
    """Delete every row of the database ``using`` but :data:`KEPT_TABLES`', in one
    transaction (foreign keys are checked at its commit)."""
    connection = connections[using]
    tables = connection.introspection.django_table_names(only_existing=True,
                                                         include_views=False)
    quote = connection.ops.quote_name
    with transaction.atomic(using=using), connection.cursor() as cursor:
        for table in sorted(set(tables) - KEPT_TABLES):
            cursor.execute(f"DELETE FROM {quote(table)}")


def empty_databases_after_test(self: TransactionTestCase) -> None:
    """A transactional test's teardown: :func:`empty_database` instead of Django's flush.

    Django's flush (``TRUNCATE`` on PostgreSQL) then runs every ``post_migrate``
    handler to make the content types and permissions again: 60-80 ms a test on
    PostgreSQL, 15-25 ms on SQLite, against a few ms here. Most of the suite's tests
    are transactional (real daphne processes share the database). A test case with
    ``available_apps`` or ``serialized_rollback`` (none so far) gets Django's.
    """
    if self.available_apps is not None or self.serialized_rollback:
        DJANGO_FIXTURE_TEARDOWN(self)
        return
    for using in self._databases_names(include_mirrors=False):
        empty_database(using)


#: The Django versions whose TransactionTestCase._fixture_teardown this was read
#: against; on another, Django's own flush runs (slower, and as correct).
FAST_TEARDOWN_DJANGO = (5, 2)
DJANGO_FIXTURE_TEARDOWN = TransactionTestCase._fixture_teardown


@pytest.fixture(scope="session", autouse=True)
def fast_transactional_teardown() -> Iterator[None]:
    if django.VERSION[:2] != FAST_TEARDOWN_DJANGO:
        yield
        return
    TransactionTestCase._fixture_teardown = empty_databases_after_test
    yield
    TransactionTestCase._fixture_teardown = DJANGO_FIXTURE_TEARDOWN


@pytest.fixture
def redis_url() -> str:
    """REDIS_URL; skips without it on a user's machine, fails under CI."""
    url = os.environ.get("REDIS_URL")
    if not url:
        if IN_CI:
            pytest.fail("REDIS_URL must be set under CI")
        pytest.skip("REDIS_URL is not set: Redis tests skipped")
    return url


@pytest.fixture(autouse=True)
async def fresh_hub():
    """Each test starts with a new process hub, an empty layer and an empty registry.

    Under Redis, what a test leaves behind (connections of a daphne it killed,
    which the survivors reap only after HUB_DEAD_AFTER_SECONDS) must not count
    in the next test, so every key of this run's prefix is deleted.
    """
    yield
    await close_hub()
    await asyncio.to_thread(db.close)
    # Connections opened in asgiref's executor thread would keep the PostgreSQL test
    # database from being dropped at the end of the run.
    await sync_to_async(connections.close_all)()
    layer = get_channel_layer()
    if not settings.REDIS_URL:
        await layer.flush()
        return
    import redis.asyncio as redis

    client = redis.Redis.from_url(settings.REDIS_URL)
    try:
        keys = [key async for key in client.scan_iter(match=f"{settings.REDIS_PREFIX}:*")]
        if keys:
            await client.unlink(*keys)
    finally:
        await client.aclose()


@pytest.fixture(autouse=True)
def fresh_login_counters():
    """Login failures of one test never throttle another (under Redis, fresh_hub
    deletes them with every key of the run; clearing that cache would flush the
    whole shared database)."""
    yield
    if not settings.REDIS_URL:
        cache.clear()


def password_hash(password: str) -> str:
    """``make_password(password)``, computed once per password and hasher setting in a
    test process.

    Django's PBKDF2 costs about 0.4 s of CPU per hash, and a browser test alone makes
    four users with a password. The stored hash is as real as ever (the servers under
    test check every login against it); only its salt is shared between tests.
    """
    return _password_hash(password, tuple(settings.PASSWORD_HASHERS))


@functools.cache
def _password_hash(password: str, hashers: tuple[str, ...]) -> str:
    return make_password(password)


@pytest.fixture
def make_user(transactional_db) -> Callable[..., object]:
    """``make_user(username, staff=, active=, password=)``: a saved user; without a
    password, one that cannot log in with any."""

    def make(username: str, *, staff: bool = False, active: bool = True, password=None):
        return get_user_model().objects.create(
            username=username, is_staff=staff, is_active=active,
            password=password_hash(password) if password else make_password(None),
        )

    return make


@pytest.fixture
def token_for() -> Callable[..., str]:
    def make(username: str, ttl: int | None = None) -> str:
        return tokens.issue(username, ttl)[0]

    return make


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def database_env() -> dict[str, str]:
    """Environment that points a child process at this test run's database."""
    db = settings.DATABASES["default"]
    if db["ENGINE"].endswith("sqlite3"):
        return {"SQLITE_PATH": str(db["NAME"]), "DATABASE_URL": ""}
    port = db.get("PORT") or 5432
    user = db.get("USER") or ""
    auth = f"{user}:{db.get('PASSWORD')}@" if db.get("PASSWORD") else (f"{user}@" if user else "")
    return {"DATABASE_URL": f"postgres://{auth}{db.get('HOST') or '127.0.0.1'}:{port}/{db['NAME']}"}


class DaphneProcess:
    """A real ``manage.py serve`` process on a free port (or another server's command)."""

    def __init__(self, env: dict[str, str], log_path: Path,
                 command: list[str] | None = None,
                 fork_server: ForkServer | None = None) -> None:
        self.log_path = log_path
        command = command or [sys.executable, "manage.py", "serve", "--port", "{port}"]
        if command[0] != sys.executable or not (command[1] == "-m" or command[1].endswith(".py")):
            fork_server = None  # the fork server runs python scripts and modules only
        # free_port() frees its port before the server binds it; another pytest-xdist
        # worker may take it in between, so a server that could not bind tries another.
        for attempt in range(3):
            self.port = free_port()
            self.log = open(log_path, "wb")  # closed in stop()
            argv = [arg.format(port=self.port) for arg in command]
            if fork_server:
                self.process = fork_server.start(argv[1:], env, log_path)
            else:
                self.process = subprocess.Popen(
                    argv, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                )
            try:
                self.wait_ready()
                return
            except RuntimeError:
                if attempt == 2 or "Address already in use" not in self.output():
                    raise
                self.log.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"daphne exited early:\n{self.output()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"daphne did not listen within {timeout} s:\n{self.output()}")

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """``kill -9``: no disconnect handlers run."""
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


#: ``TEST_FORK_SERVER=false``: every test server is a new ``python manage.py serve``
#: rather than a child of :mod:`tests.forkserver`.
FORK_SERVERS = os.environ.get("TEST_FORK_SERVER", "true").lower() not in {"0", "false", "no"}


@pytest.fixture(scope="session")
def fork_server() -> Iterator[ForkServer | None]:
    """The fork server of this test process's ``manage.py serve`` processes (its
    module says why), or None when ``TEST_FORK_SERVER`` turns it off."""
    if not FORK_SERVERS:
        yield None
        return
    server = ForkServer(ROOT)
    yield server
    server.close()


@pytest.fixture
def daphne_server(transactional_db, tmp_path,
                  fork_server) -> Iterator[Callable[..., DaphneProcess]]:
    """Start daphne processes on the test database: ``daphne_server(**env)``.

    A server whose command is this Python running a script or a module (``manage.py
    serve``, the default; ``-m uvicorn``) is forked from ``fork_server``.
    """
    started: list[DaphneProcess] = []

    def start(*, command: list[str] | None = None, **extra_env: str) -> DaphneProcess:
        env = {
            **os.environ,
            **database_env(),
            "DEBUG": "false",
            "PYTHONUNBUFFERED": "1",
            **extra_env,
        }
        server = DaphneProcess(env, tmp_path / f"daphne-{len(started)}.log", command,
                               fork_server)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def expired(seconds: int = 10) -> timedelta:
    return timedelta(seconds=-seconds)


async def lose_the_database_connection() -> None:
    """Take the database worker's connection away, as a database restart would.

    On PostgreSQL the server ends the worker's session (``pg_terminate_backend``);
    on SQLite, which has no server, the worker's connection is closed under Django.
    """
    if connections["default"].vendor == "postgresql":
        # db.run connects the worker first, so its connection is open here.
        pid = await db.run(lambda: connections["default"].connection.info.backend_pid)

        def terminate() -> None:
            try:
                with connections["default"].cursor() as cursor:
                    cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
            finally:
                connections["default"].close()

        await asyncio.to_thread(terminate)
    else:
        await db.run(lambda: connections["default"].connection.close())


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def connect_slow_client(server, path: str, *, source: str = "127.0.0.1",
                              **options) -> websockets.ClientConnection:
    """A client of ``server`` at ``path`` whose socket takes 4 KiB at a time.

    The kernel then holds little of what the server sends, so what the client leaves
    unread backs up on the server after a few frames. ``source``: an address of 127/8
    to connect from; ``options`` go to ``websockets.connect``.
    """
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", server.port))
    return await websockets.connect(f"{server.ws_url}{path}", sock=sock, **options)


async def read_until_closed(server, stalled) -> websockets.ConnectionClosed:
    """Once ``server`` logs that it dropped the stalled client, read it to its end.

    Start it as a task before stalling the client: the server waits for the client's
    answer to its close only ``CLOSE_WAIT_SECONDS`` (under daphne without the
    adapter, autobahn's one second), and a client that reads later finds the close
    frame gone with the connection. Returns how the connection closed.
    """
    await wait_for(lambda: "stopped reading" in server.output(), timeout=60)
    # The test kept the receive buffer tiny to stall quickly; at 4 KiB a window,
    # the server's whole backlog may not come through within that second.
    stalled.transport.get_extra_info("socket").setsockopt(
        socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    with pytest.raises(websockets.ConnectionClosed) as closed:
        while True:
            await asyncio.wait_for(stalled.recv(), 10)
    return closed.value


@pytest.fixture
def gc_thresholds():
    """The test process's garbage-collection thresholds, put back afterwards, and nothing
    left frozen."""
    saved = gc.get_threshold()
    yield saved
    gc.set_threshold(*saved)
    gc.unfreeze()
