"""The database worker (``realtime.db``): one thread, connections kept, broken ones dropped."""

import asyncio
import json
import os
import subprocess
import sys
import threading

import pytest
from django.contrib.auth import get_user_model
from django.db import DEFAULT_DB_ALIAS, OperationalError, connection, connections, transaction
from django.db.backends.sqlite3.base import DatabaseWrapper as SQLiteWrapper
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from realtime import db
from realtime.batching import DatabaseUnreachable, each_alone
from tests.conftest import ROOT, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def settings_shell(script: str, **env: str) -> str:
    """The last line ``manage.py shell -c script`` prints in a process of its own, whose
    settings are read with these environment variables (``DJANGO_SETTINGS_MODULE``
    unset)."""
    environ = {**os.environ, "DEBUG": "true", **env}
    environ.pop("DJANGO_SETTINGS_MODULE", None)
    result = subprocess.run([sys.executable, "manage.py", "shell", "-c", script], cwd=ROOT,
                            env=environ, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()[-1]


def connection_state() -> tuple[int, object]:
    """The running thread and its DB-API connection, after a query."""
    get_user_model().objects.exists()
    return threading.get_ident(), connection.connection


async def test_work_runs_off_the_event_loop_thread():
    thread, _ = await db.run(connection_state)
    assert thread != threading.get_ident()


async def test_the_connection_is_kept_between_calls():
    first = await db.run(connection_state)
    second = await db.run(connection_state)
    assert first == second


async def test_results_and_errors_come_back_to_the_caller():
    def fail():
        raise LookupError("nothing here")

    assert await db.run(lambda a, *, b: a + b, 1, b=2) == 3
    with pytest.raises(LookupError):
        await db.run(fail)


async def test_calls_run_one_at_a_time_in_the_order_they_were_made():
    ran, gate = [], threading.Event()

    def record(n: int) -> int:
        if n == 0:
            gate.wait(5)  # the others are queued behind it meanwhile
        ran.append((n, threading.get_ident()))
        return n

    calls = [asyncio.ensure_future(db.run(record, n)) for n in range(5)]
    await asyncio.sleep(0.05)
    assert ran == []
    gate.set()
    assert await asyncio.gather(*calls) == [0, 1, 2, 3, 4]
    assert [n for n, _ in ran] == [0, 1, 2, 3, 4]
    assert len({thread for _, thread in ran}) == 1


async def test_a_call_whose_caller_was_cancelled_before_it_started_is_not_run():
    ran, gate = [], threading.Event()
    first = asyncio.ensure_future(db.run(gate.wait, 5))
    await asyncio.sleep(0.05)  # the worker is in the first call
    cancelled = asyncio.ensure_future(db.run(ran.append, "cancelled"))
    await asyncio.sleep(0)
    cancelled.cancel()
    # The cancellation reaches the worker's queue from the event loop: once the caller
    # has finished being cancelled, not in the same instant.
    await asyncio.gather(cancelled, return_exceptions=True)
    after = asyncio.ensure_future(db.run(ran.append, "after"))
    gate.set()
    await first
    await after
    assert ran == ["after"]
    assert cancelled.cancelled()


def test_an_answer_to_a_closed_event_loop_does_not_stop_the_worker():
    gate = threading.Event()
    loop = asyncio.new_event_loop()
    call = loop.create_task(db.run(gate.wait, 5))
    loop.run_until_complete(asyncio.sleep(0.05))  # the worker is in the call
    call.cancel()
    loop.run_until_complete(asyncio.sleep(0))
    loop.close()
    gate.set()  # the call ends, and its answer finds its loop closed

    async def next_call() -> str:
        return await asyncio.wait_for(db.run(lambda: "still serving"), 5)

    assert asyncio.run(next_call()) == "still serving"


async def test_a_healthy_connection_survives_a_failed_call():
    _, before = await db.run(connection_state)
    with pytest.raises(get_user_model().DoesNotExist):
        await db.run(lambda: get_user_model().objects.get(username="nobody"))
    _, after = await db.run(connection_state)
    assert after is before


async def test_a_broken_connection_is_dropped_after_the_call_that_found_it():
    _, before = await db.run(connection_state)

    def break_it_then_query():
        connection.connection.close()  # as a server restart or an idle timeout would
        return connection_state()

    with pytest.raises(Exception):  # noqa: B017 - each backend raises its own error
        await db.run(break_it_then_query)
    _, after = await db.run(connection_state)
    assert after is not None and after is not before


async def test_an_idle_broken_connection_is_replaced_before_use(monkeypatch):
    _, before = await db.run(connection_state)
    await db.run(lambda: connection.connection.close())
    monkeypatch.setattr(db, "IDLE_CHECK_SECONDS", -1.0)
    _, after = await db.run(connection_state)  # no error: checked and reopened first
    assert after is not before


async def test_an_unreachable_database_fails_calls_at_once_until_the_pause_ends(monkeypatch):
    """A failed attempt to connect is a ``DatabaseUnreachable``; the calls of the next
    ``RECONNECT_PAUSE_SECONDS`` fail the same way without an attempt of their own (each
    could last ``DATABASE_CONNECT_TIMEOUT``), and the first call after it connects."""
    await db.run(lambda: connections[DEFAULT_DB_ALIAS].close())
    wrapper = type(connections[DEFAULT_DB_ALIAS])
    attempts = []

    def refused(self):
        attempts.append(threading.current_thread().name)
        raise OperationalError("connection refused")

    def the_workers() -> list[str]:  # not the SQLite checkpointer's
        return [name for name in attempts if name.startswith("db-worker")]

    monkeypatch.setattr(db, "RECONNECT_PAUSE_SECONDS", 0.2)
    with monkeypatch.context() as down:
        down.setattr(wrapper, "connect", refused)
        for _ in range(3):
            with pytest.raises(DatabaseUnreachable):
                await db.run(connection_state)
        assert len(the_workers()) == 1
        await asyncio.sleep(0.3)
        with pytest.raises(DatabaseUnreachable):
            await db.run(connection_state)
        assert len(the_workers()) == 2
    await asyncio.sleep(0.3)
    _, after = await db.run(connection_state)
    assert after is not None


async def test_each_alone_fails_the_rest_untried_once_the_database_is_unreachable():
    """After a failed batch each item is tried alone; one bad item fails only itself,
    but once the database cannot be reached, the items left fail with it, in one call."""
    tried, failed = [], []

    async def store(item: str) -> None:
        tried.append(item)
        if item == "bad":
            raise ValueError(item)
        if item == "unreachable":
            raise DatabaseUnreachable("down")

    await each_alone(["a", "bad", "b", "unreachable", "c", "d"], store, failed.append)
    assert tried == ["a", "bad", "b", "unreachable"]
    assert failed == [["bad"], ["unreachable", "c", "d"]]


async def test_close_closes_the_connections_and_a_later_call_starts_again():
    thread, conn = await db.run(connection_state)
    db.close()
    with pytest.raises(Exception):  # noqa: B017 - sqlite3 and psycopg differ
        conn.cursor().execute("SELECT 1")
    assert await db.run(connection_state) != (thread, conn)


# --- Lookups gathered into one call --------------------------------------------------------


class Recorded:
    """A ``fetch`` for :class:`db.Lookup` that records each call's keys and can be held."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.fail: Exception | None = None

    def __call__(self, keys: list[str]) -> dict[str, str]:
        self.calls.append(list(keys))
        self.gate.wait(5)
        if self.fail is not None:
            raise self.fail
        return {key: key.upper() for key in keys if key != "missing"}


async def test_lookups_made_together_share_one_call_and_each_gets_its_answer():
    fetch = Recorded()
    lookup = db.Lookup(fetch)
    answers = await asyncio.gather(*(lookup.get(key) for key in ["a", "b", "missing", "c"]))
    assert answers == ["A", "B", None, "C"]
    assert fetch.calls == [["a", "b", "missing", "c"]]


async def test_lookups_made_while_a_call_runs_wait_for_the_next_one():
    fetch = Recorded()
    lookup = db.Lookup(fetch)
    fetch.gate.clear()
    first = asyncio.ensure_future(lookup.get("a"))
    await wait_for(lambda: fetch.calls)
    later = [asyncio.ensure_future(lookup.get(key)) for key in ["b", "a", "b"]]
    fetch.gate.set()
    assert await first == "A"
    assert [await task for task in later] == ["B", "A", "B"]
    assert fetch.calls == [["a"], ["b", "a"]]


async def test_a_call_takes_at_most_max_batch_keys():
    fetch = Recorded()
    lookup = db.Lookup(fetch, max_batch=2)
    answers = await asyncio.gather(*(lookup.get(key) for key in "abcde"))
    assert answers == list("ABCDE")
    assert fetch.calls == [["a", "b"], ["c", "d"], ["e"]]


async def test_a_failed_call_fails_its_lookups_and_the_next_call_is_tried_anew():
    fetch = Recorded()
    lookup = db.Lookup(fetch)
    fetch.fail = LookupError("database down")
    results = await asyncio.gather(lookup.get("a"), lookup.get("b"), return_exceptions=True)
    assert [type(result) for result in results] == [LookupError, LookupError]
    fetch.fail = None
    assert await lookup.get("a") == "A"


async def test_a_cancelled_lookup_leaves_the_others_of_its_call_alone():
    fetch = Recorded()
    lookup = db.Lookup(fetch)
    fetch.gate.clear()
    gone, staying = asyncio.ensure_future(lookup.get("a")), asyncio.ensure_future(lookup.get("a"))
    await wait_for(lambda: fetch.calls)
    gone.cancel()
    fetch.gate.set()
    assert await staying == "A"
    assert gone.cancelled()


# --- SQLite checkpoints ------------------------------------------------------------------


@pytest.fixture
def wal_database(tmp_path, monkeypatch):
    """Settings of a SQLite file in WAL mode, as the project's; its checkpointer stopped after."""
    monkeypatch.setattr(db, "CHECKPOINT_SECONDS", 0.05)
    name = str(tmp_path / "wal.sqlite3")
    yield connections.configure_settings({DEFAULT_DB_ALIAS: {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": name,
        "OPTIONS": {"init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"},
    }})[DEFAULT_DB_ALIAS]
    checkpointer = db._checkpointers.pop(name, None)
    if checkpointer is not None:
        checkpointer.stop()


def open_wal(settings_dict):
    wrapper = SQLiteWrapper(settings_dict, alias="wal")
    wrapper.ensure_connection()
    return wrapper


def autocheckpoint(wrapper) -> int:
    return wrapper.connection.execute("PRAGMA wal_autocheckpoint").fetchone()[0]


async def test_the_workers_sqlite_commits_leave_checkpoints_to_a_thread_of_their_own(
    wal_database,
):
    """No commit on the worker waits for a checkpoint's flush; another thread copies the log."""

    def write_a_log():
        wrapper = open_wal(wal_database)
        wrapper.connection.execute("CREATE TABLE pages (blob BLOB)")
        for _ in range(40):
            wrapper.connection.execute("INSERT INTO pages VALUES (randomblob(4000))")
        return wrapper, autocheckpoint(wrapper)

    wrapper, worker_autocheckpoint = await db.run(write_a_log)
    try:
        assert worker_autocheckpoint == db.WORKER_CHECKPOINT_PAGES
        checkpointer = db._checkpointers[wal_database["NAME"]]
        assert checkpointer.is_alive() and checkpointer is not threading.current_thread()
        for _ in range(100):
            if checkpointer.last and checkpointer.last[1] >= 40:
                break
            await asyncio.sleep(0.05)
        _busy, in_log, copied = checkpointer.last
        assert in_log >= 40 and copied == in_log, "the whole log went into the database file"
    finally:
        await db.run(wrapper.close)


async def test_the_log_starts_again_while_writes_never_pause(wal_database, monkeypatch):
    """A checkpoint beside the writes always finds newer pages behind it; the worker's own,
    between its transactions, lets the next write start the log from its beginning."""
    monkeypatch.setattr(db, "WORKER_CHECKPOINT_PAGES", 50)

    def write_without_pause():
        wrapper = open_wal(wal_database)
        wrapper.connection.execute("CREATE TABLE pages (blob BLOB)")
        for _ in range(2000):
            wrapper.connection.execute("INSERT INTO pages VALUES (randomblob(3000))")
        return wrapper, os.path.getsize(wal_database["NAME"] + "-wal") // 4096

    wrapper, log_pages = await db.run(write_without_pause)
    try:
        # About 6,000 pages were written. The worker's checkpoint can be put off while
        # the other thread's runs (a few hundred pages at this test's write rate).
        assert log_pages < 2000, "the log started again at its beginning"
    finally:
        await db.run(wrapper.close)


def test_other_threads_keep_sqlites_own_checkpoints(wal_database):
    """Request threads and management commands: SQLite's default, a checkpoint per 1000 pages."""
    wrapper = open_wal(wal_database)
    try:
        assert autocheckpoint(wrapper) == 1000
        assert wal_database["NAME"] not in db._checkpointers
    finally:
        wrapper.close()


# --- hot_cursor ---------------------------------------------------------------------


def usernames(cursor, *names: str) -> list[str]:
    cursor.execute(
        f"SELECT username FROM auth_user WHERE username IN ({', '.join(['%s'] * len(names))})"
        " ORDER BY username",
        list(names),
    )
    return [row[0] for row in cursor.fetchall()]


def test_hot_cursor_is_the_drivers_and_takes_percent_s_placeholders(make_user):
    make_user("ann")
    make_user("bob")
    with db.hot_cursor() as cursor:
        assert isinstance(cursor, db.DriverCursor)
        assert cursor.db is connections[DEFAULT_DB_ALIAS]
        assert usernames(cursor, "bob", "ann", "cyd") == ["ann", "bob"]


def test_hot_cursor_statements_are_in_the_callers_transaction(make_user):
    """Inside atomic() the driver's cursor writes in Django's transaction: a rollback undoes it."""
    make_user("ann")
    with pytest.raises(RuntimeError), transaction.atomic():
        with db.hot_cursor() as cursor:
            cursor.execute("UPDATE auth_user SET username = %s WHERE username = %s",
                           ["zed", "ann"])
            assert cursor.rowcount == 1
        raise RuntimeError("roll back")
    assert get_user_model().objects.filter(username="ann").exists()


def test_hot_cursor_is_djangos_while_queries_are_watched(make_user):
    """With a query log (DEBUG, assertNumQueries) or an execute_wrapper, nothing goes unseen."""
    make_user("ann")
    with CaptureQueriesContext(connection) as captured, db.hot_cursor() as cursor:
        assert not isinstance(cursor, db.DriverCursor)
        assert usernames(cursor, "ann") == ["ann"]
    assert len(captured) == 1
    seen = []
    with connection.execute_wrapper(lambda execute, *args: seen.append(1) or execute(*args)):
        with db.hot_cursor() as cursor:
            assert usernames(cursor, "ann") == ["ann"]
    assert seen == [1]


# --- hot_transaction -------------------------------------------------------------------


def test_hot_transaction_commits_what_the_hot_cursor_wrote(make_user):
    make_user("ann")
    with db.hot_cursor() as cursor, db.hot_transaction(cursor):
        assert isinstance(cursor, db.DriverCursor)
        cursor.execute("UPDATE auth_user SET username = %s WHERE username = %s", ["zed", "ann"])
    assert connection.get_autocommit() and not connection.in_atomic_block
    assert get_user_model().objects.filter(username="zed").exists()


def test_hot_transaction_rolls_back_on_any_error_and_leaves_no_transaction_open(make_user):
    make_user("ann")
    with pytest.raises(RuntimeError), db.hot_cursor() as cursor:
        with db.hot_transaction(cursor):
            cursor.execute("UPDATE auth_user SET username = %s WHERE username = %s",
                           ["zed", "ann"])
            raise RuntimeError("roll back")
    assert get_user_model().objects.filter(username="ann").exists()
    with db.hot_cursor() as cursor, db.hot_transaction(cursor):  # BEGIN works again
        cursor.execute("SELECT 1", [])


@pytest.mark.skipif(connection.vendor != "postgresql", reason="psycopg's pipeline mode")
def test_on_postgresql_hot_transaction_statements_do_not_wait_for_each_others_answers(make_user):
    """Pipelined: a statement's error comes at the next read, or at the end; all rolls back."""
    make_user("ann")
    went_on = []
    with pytest.raises(Exception, match="division by zero"), db.hot_cursor() as cursor:
        with db.hot_transaction(cursor):
            cursor.execute("UPDATE auth_user SET username = %s WHERE username = %s",
                           ["zed", "ann"])
            assert cursor.rowcount == 1, "a count waits for its statement's answer"
            cursor.execute("SELECT 1 / %s", [0])
            went_on.append("past the failing statement")
            cursor.execute("SELECT 1", [])
            cursor.fetchall()
            went_on.append("past the read after it")
    assert went_on == ["past the failing statement"]
    assert get_user_model().objects.filter(username="ann").exists()
    with db.hot_cursor() as cursor, db.hot_transaction(cursor):  # BEGIN works again
        cursor.execute("SELECT %s", [2])
        assert cursor.fetchall() == [(2,)]


@pytest.mark.skipif(connection.vendor != "postgresql", reason="psycopg's pipeline mode")
def test_on_postgresql_inserted_ids_are_read_when_asked_not_before_the_commit():
    """In a pipelined transaction nothing waits for the INSERT before the end: a row it
    refuses fails the transaction there, and the ids come from the function returned."""
    from notifications.models import Notification
    from notifications.store import INSERT_FIELDS

    now = connection.ops.adapt_datetimefield_value(timezone.now())
    went_on = []
    with pytest.raises(Exception, match="null value"), db.hot_cursor() as cursor:
        with db.hot_transaction(cursor):
            db.insert_rows(cursor, Notification, INSERT_FIELDS, [(None, None, True, now)],
                           {"created_at": now})
            went_on.append("past the refused INSERT")
    assert went_on == ["past the refused INSERT"]
    assert not Notification.objects.exists()
    with db.hot_cursor() as cursor:
        with db.hot_transaction(cursor):
            inserted = db.insert_rows(cursor, Notification, INSERT_FIELDS,
                                      [(None, connection.ops.adapt_json_value({"n": n}, None),
                                        True, now) for n in (1, 2)], {"created_at": now})
        ids = inserted()
    assert [note.data["n"] for note in Notification.objects.filter(pk__in=ids).order_by("pk")] \
        == [1, 2] and ids == sorted(ids)


def test_insert_rows_gives_every_row_the_shared_values():
    """``shared`` values go to each row, in every chunk of a large insert, whatever the
    backend; the ids come back in the rows' order."""
    from notifications.models import Notification
    from notifications.store import INSERT_FIELDS

    moment = timezone.now()
    count = db.INSERT_CHUNK * 2 + 1
    rows = [(None, connection.ops.adapt_json_value({"n": n}, None), True,
             connection.ops.adapt_datetimefield_value(moment)) for n in range(count)]
    with db.hot_cursor() as cursor:
        with db.hot_transaction(cursor):
            inserted = db.insert_rows(cursor, Notification, INSERT_FIELDS, rows, {
                "created_at": connection.ops.adapt_datetimefield_value(moment)})
        ids = inserted()
    stored = Notification.objects.filter(pk__in=ids).order_by("pk")
    assert [note.data["n"] for note in stored] == list(range(count)) and ids == sorted(ids)
    assert {note.created_at for note in stored} == {moment}


def test_hot_transaction_is_a_savepoint_inside_the_callers_atomic(make_user):
    """A caller's transaction (the sync ``notify()``) decides: its rollback undoes the writes."""
    make_user("ann")
    with pytest.raises(RuntimeError), transaction.atomic():
        with db.hot_cursor() as cursor, db.hot_transaction(cursor):
            cursor.execute("UPDATE auth_user SET username = %s WHERE username = %s",
                           ["zed", "ann"])
        assert connection.in_atomic_block
        raise RuntimeError("roll back")
    assert get_user_model().objects.filter(username="ann").exists()


@pytest.mark.parametrize(("value", "pragma"), [("full", "2"), ("normal", "1"), ("", "2")])
def test_sqlite_commits_wait_for_what_sqlite_synchronous_says(tmp_path, value, pragma):
    """Each commit waits for the disk (2) by default and with full; with normal (1) it does not."""
    script = ("from django.db import connection; c = connection.cursor(); "
              "c.execute('PRAGMA synchronous'); print(c.fetchone()[0])")
    assert settings_shell(script, SQLITE_PATH=str(tmp_path / "s.sqlite3"), DATABASE_URL="",
                          SQLITE_SYNCHRONOUS=value) == pragma


def test_an_unknown_sqlite_synchronous_is_refused_at_start():
    """Anything but full or normal stops the process with a message that says the choices."""
    env = {**os.environ, "DATABASE_URL": "", "DEBUG": "true", "SQLITE_SYNCHRONOUS": "off"}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    result = subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "SQLITE_SYNCHRONOUS must be 'full' or 'normal', not 'off'" in result.stderr


@pytest.mark.parametrize("how", ["SQLITE_PATH", "DATABASE_URL"])
def test_a_sqlite_database_gets_the_same_settings_however_it_is_named(tmp_path, how):
    """DATABASE_URL=sqlite:///... runs with the embedded default's WAL, BEGIN IMMEDIATE,
    busy timeout and synchronous setting, as SQLITE_PATH does."""
    path = tmp_path / "named.sqlite3"
    script = ("from django.db import connection as c; k = c.cursor(); out = []\n"
              "for p in ('journal_mode', 'synchronous', 'busy_timeout'):\n"
              "    k.execute('PRAGMA ' + p); out.append(str(k.fetchone()[0]))\n"
              "print(' '.join(out), c.transaction_mode, c.settings_dict['NAME'])")
    printed = settings_shell(
        script, SQLITE_SYNCHRONOUS="full",
        SQLITE_PATH=str(path) if how == "SQLITE_PATH" else "",
        DATABASE_URL=f"sqlite:///{path}" if how == "DATABASE_URL" else "")
    assert printed.split() == ["wal", "2", "20000", "IMMEDIATE", str(path)]


def test_postgresql_connections_give_up_on_a_silent_host():
    """A PostgreSQL URL gets a connect timeout, TCP keepalives and a TCP user timeout
    from DATABASE_CONNECT_TIMEOUT and DATABASE_DEAD_PEER_SECONDS; parameters of the URL
    itself win."""
    script = ("import json; from django.conf import settings\n"
              "print(json.dumps(settings.DATABASES['default']['OPTIONS'], sort_keys=True))")
    printed = settings_shell(script, DATABASE_CONNECT_TIMEOUT="3", DATABASE_DEAD_PEER_SECONDS="16",
                             DATABASE_URL="postgres://nobody@127.0.0.1:1/none?keepalives_count=9")
    assert json.loads(printed) == {
        "connect_timeout": 3, "keepalives": 1, "keepalives_idle": 8, "keepalives_interval": 2,
        "keepalives_count": 9, "tcp_user_timeout": 16000}
