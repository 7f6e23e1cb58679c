"""Database work off the event loop: one worker thread that keeps its connections.

Every database call made from the event loop goes through this module:

* :func:`run` hands a function to one long-lived worker thread whose
  connections stay open (channels' ``database_sync_to_async`` opens and closes
  one per call, which the WebSocket hot paths cannot afford). A connection is
  dropped when a call leaves it unusable, and checked after
  :data:`IDLE_CHECK_SECONDS` of quiet. Work from one event loop runs in order.
  While no connection can be made, calls fail at once with
  :class:`~realtime.batching.DatabaseUnreachable` (one attempt per
  :data:`RECONNECT_PAUSE_SECONDS`).
* :class:`Lookup` gathers the lookups by key made while the worker is busy
  into one call: a reconnect storm's handshakes then share their queries.
* :func:`run_blocking` is for the rare call that may hold a thread for long
  (a password hash): it runs in channels' thread pool, so it never delays
  the worker's queue.

On SQLite a thread of its own copies the write-ahead log back every
:data:`CHECKPOINT_SECONDS`, so that no commit of the worker waits for a
checkpoint's flushes; the worker itself checkpoints only every
:data:`WORKER_CHECKPOINT_PAGES`, which restarts the log (only a checkpoint
between its own transactions can, while writes never pause). The
measurements behind both are in bench/RESULTS.md.
"""

import asyncio
import atexit
import contextlib
import functools
import itertools
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, TypeVar

from channels.db import database_sync_to_async
from django.db import DEFAULT_DB_ALIAS, InterfaceError, OperationalError, connections, transaction
from django.db.backends.signals import connection_created
from django.dispatch import receiver

from realtime.batching import MAX_BATCH, DatabaseUnreachable

__all__ = [
    "CHECKPOINT_SECONDS",
    "IDLE_CHECK_SECONDS",
    "INSERT_CHUNK",
    "RECONNECT_PAUSE_SECONDS",
    "UNAVAILABLE_ERRORS",
    "WORKER_CHECKPOINT_PAGES",
    "Lookup",
    "close",
    "hot_cursor",
    "hot_transaction",
    "in_one_array",
    "insert_rows",
    "list_shape",
    "one_of",
    "placeholders",
    "run",
    "run_blocking",
    "statement",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")
K = TypeVar("K")
V = TypeVar("V")

#: The database errors that mean it cannot serve now: down, unreachable, out of
#: connections, a deadlock (``OperationalError``), a closed connection
#: (``InterfaceError``). Answered "try again later"; any other database error is a
#: statement the database refused, a bug, and goes on to the server's error log.
UNAVAILABLE_ERRORS = (OperationalError, InterfaceError)

#: After this long without work, connections are checked before the next call.
IDLE_CHECK_SECONDS = 30.0
#: After a failed attempt to connect, calls fail at once (:class:`DatabaseUnreachable`)
#: for this long instead of each waiting for an attempt of its own.
RECONNECT_PAUSE_SECONDS = 1.0
#: How often the worker's SQLite write-ahead logs are copied back, off the worker.
CHECKPOINT_SECONDS = 0.2
#: The log size (pages) at which the worker checkpoints (and so restarts the log) itself:
#: at most about 40 MB of log at the default 4 KiB pages.
WORKER_CHECKPOINT_PAGES = 10_000

_lock = threading.Lock()
_executor: ThreadPoolExecutor | None = None
_last_used = 0.0  # only read and written on the worker thread
_no_attempt_until = 0.0  # the same (and by close(), once the worker has stopped)
_worker = threading.local()
#: The checkpointing threads, by database file.
_checkpointers: dict[str, "Checkpointer"] = {}


def _get_executor() -> ThreadPoolExecutor:
    global _executor
    with _lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="db-worker",
                                           initializer=_mark_worker)
        return _executor


def _mark_worker() -> None:
    _worker.is_worker = True


def _responds(connection) -> bool:
    # Django's is_usable() is always True on SQLite; ask the DB-API connection itself.
    try:
        cursor = connection.connection.cursor()
        try:
            cursor.execute("SELECT 1")
        finally:
            cursor.close()
    except Exception:
        return False
    return True


def _drop_unusable() -> None:
    for connection in connections.all(initialized_only=True):
        if connection.connection is None:
            continue
        if connection.in_atomic_block or not _responds(connection):
            connection.close()
        elif connection.get_autocommit() != connection.settings_dict["AUTOCOMMIT"]:
            connection.close()
        else:
            connection.errors_occurred = False


def _connect() -> None:
    """Make sure the worker has a connection, or raise :class:`DatabaseUnreachable`.

    A failed attempt is not made again for :data:`RECONNECT_PAUSE_SECONDS`: while
    the database is down (or its host is silent, each attempt lasting up to
    ``DATABASE_CONNECT_TIMEOUT``), every call in the queue fails at once.
    """
    global _no_attempt_until
    if time.monotonic() < _no_attempt_until:
        raise DatabaseUnreachable("the database could not be reached a moment ago")
    try:
        connections[DEFAULT_DB_ALIAS].ensure_connection()
    except Exception as exc:
        _no_attempt_until = time.monotonic() + RECONNECT_PAUSE_SECONDS
        raise DatabaseUnreachable(f"the database could not be reached: {exc}") from exc


def _call(func: Callable[..., T], args: tuple, kwargs: dict) -> T:
    global _last_used
    if time.monotonic() - _last_used > IDLE_CHECK_SECONDS:
        _drop_unusable()
    try:
        _connect()
        return func(*args, **kwargs)
    except Exception:
        _drop_unusable()
        raise
    finally:
        _last_used = time.monotonic()


async def run(func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``func(*args, **kwargs)`` on the database worker thread."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(
        _get_executor(), functools.partial(_call, func, args, kwargs)
    )


class Lookup(Generic[K, V]):
    """Lookups by key from the event loop, answered together: one worker call per batch.

    The first lookup starts a call at once; lookups made while it runs wait for
    the next call, which takes them all (up to ``max_batch`` keys, by default
    :data:`realtime.batching.MAX_BATCH`). When every handshake of a reconnect
    storm needs one row, one query with an ``IN`` list costs little more than a
    query for one key, and the worker's queue holds one call instead of
    thousands. Lookups of one key in one batch share its answer.

    ``fetch(keys)`` runs on the worker and returns a dict; a key it leaves out is
    answered ``None``. If it raises, every lookup of that batch raises the same
    exception; the next batch is tried anew.
    """

    def __init__(self, fetch: Callable[[list[K]], dict[K, V]],
                 max_batch: int = MAX_BATCH) -> None:
        self.fetch = fetch
        self.max_batch = max_batch
        #: Per event loop: the lookups waiting for the next call.
        self._pending: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    async def get(self, key: K) -> V | None:
        """The value of ``key``, from the batch that takes it."""
        loop = asyncio.get_running_loop()
        pending = self._pending.get(loop)
        if pending is None:
            pending = self._pending[loop] = _Pending()
        future = pending.futures.get(key)
        if future is None:
            future = pending.futures[key] = loop.create_future()
            if pending.calls is None:
                pending.calls = loop.create_task(self._answer(pending))
        # A cancelled lookup leaves the batch (and the other lookups of its key) alone.
        return await asyncio.shield(future)

    async def _answer(self, pending: "_Pending") -> None:
        """Answer the waiting lookups, a batch per call, until none is left."""
        waiting = pending.futures
        futures: list[asyncio.Future] = []
        try:
            while waiting:
                keys = list(itertools.islice(waiting, self.max_batch))
                futures = [waiting.pop(key) for key in keys]
                try:
                    found = await run(self.fetch, keys)
                except Exception as exc:
                    for future in futures:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for key, future in zip(keys, futures, strict=True):
                    if not future.done():
                        future.set_result(found.get(key))
        finally:
            pending.calls = None
            # Cancelled (the loop is closing): no lookup may wait for ever.
            for future in [*futures, *waiting.values()]:
                future.cancel()
            waiting.clear()


class _Pending:
    """The lookups of one :class:`Lookup` on one event loop that wait for a call."""

    def __init__(self) -> None:
        self.futures: dict[Any, asyncio.Future] = {}
        #: The task making the calls, while there are lookups to answer.
        self.calls: asyncio.Task | None = None


async def run_blocking(func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``func(*args, **kwargs)`` in a thread of its own, for work that may take long."""
    return await database_sync_to_async(func)(*args, **kwargs)


def _close_connections() -> None:
    for connection in connections.all(initialized_only=True):
        connection.close()


def close() -> None:
    """Close the worker's connections and stop it (a later :func:`run` starts a new one,
    which tries to connect at once)."""
    global _executor, _no_attempt_until
    with _lock:
        executor, _executor = _executor, None
        checkpointers = list(_checkpointers.values())
        _checkpointers.clear()
    for checkpointer in checkpointers:
        checkpointer.stop()
    if executor is None:
        return
    try:
        executor.submit(_close_connections).result()
    except RuntimeError:
        pass  # interpreter shutdown has already stopped the thread (and its connections)
    executor.shutdown()
    _no_attempt_until = 0.0


# --- SQLite checkpoints ---------------------------------------------------------------


@receiver(connection_created)
def _leave_checkpoints_to_a_thread(sender, connection, **kwargs) -> None:
    """A worker's SQLite connection in WAL mode: checkpoints mostly done by another thread."""
    if connection.vendor != "sqlite" or not getattr(_worker, "is_worker", False):
        return
    database = connection.connection
    if database.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
        return  # in memory, or another journal: nothing to checkpoint
    name = str(connection.settings_dict["NAME"])
    with _lock:
        checkpointer = _checkpointers.get(name)
        if checkpointer is None or not checkpointer.is_alive():
            checkpointer = _checkpointers[name] = Checkpointer(connection)
            checkpointer.start()
    database.execute(f"PRAGMA wal_autocheckpoint = {int(WORKER_CHECKPOINT_PAGES)}")


class Checkpointer(threading.Thread):
    """Checkpoints one SQLite database every :data:`CHECKPOINT_SECONDS`, on its own connection.

    Passive checkpoints: they copy what no reader still needs and wait for
    nobody, so the writer goes on meanwhile (and finds its own checkpoint, at
    :data:`WORKER_CHECKPOINT_PAGES`, nearly done).
    """

    def __init__(self, connection) -> None:
        super().__init__(name="db-checkpoint", daemon=True)
        self.wrapper_class, self.alias = type(connection), connection.alias
        self.settings_dict = dict(connection.settings_dict)
        self.connection = None
        self.stopping = threading.Event()
        #: What the last checkpoint reported: ``(busy, frames in the log, frames copied)``.
        self.last: tuple[int, int, int] | None = None

    def run(self) -> None:
        # The same settings, and a connection of this thread's own (Django ties a
        # connection to the thread that made it).
        self.connection = self.wrapper_class(self.settings_dict, self.alias)
        try:
            while not self.stopping.wait(CHECKPOINT_SECONDS):
                self.checkpoint()
        finally:
            self.connection.close()

    def checkpoint(self) -> None:
        try:
            self.connection.ensure_connection()
            self.last = self.connection.connection.execute(
                "PRAGMA wal_checkpoint(PASSIVE)"
            ).fetchone()
        except Exception:
            logger.warning("a checkpoint of the SQLite database failed", exc_info=True)
            self.connection.close()  # the next one reconnects

    def stop(self) -> None:
        self.stopping.set()
        self.join(10)


atexit.register(close)


def placeholders(count: int, width: int = 1) -> str:
    """``count`` placeholders (``%s``), or ``count`` rows of ``width`` of them."""
    one = "%s" if width == 1 else f"({', '.join(['%s'] * width)})"
    return ", ".join([one] * count)


def in_one_array(conn) -> bool:
    """Whether a hot statement's list of values goes as one array parameter.

    On PostgreSQL (``= ANY(%s)``, ``UNNEST(%s)``) the statement's text is then the
    same whatever the number of values, so psycopg parses it once (it caches the
    parse only of statements of up to 50 parameters), and it is one entry in
    ``pg_stat_statements``. SQLite has no arrays: one parameter per value there,
    where a statement's shape is built once per count.
    """
    return conn.vendor == "postgresql"


def list_shape(cursor, values: list) -> tuple[int | None, list]:
    """The shape of a statement over ``values`` (:func:`one_of`) and its parameters."""
    if in_one_array(cursor.db):
        return None, [values]
    return len(values), values


def one_of(count: int | None, kind: str) -> str:
    """The SQL that a column is one of :func:`list_shape`'s values of type ``kind``:
    ``= ANY(%s::kind[])`` for one array (``count`` is ``None``), else ``IN (...)``."""
    return f"= ANY(%s::{kind}[])" if count is None else f"IN ({placeholders(count)})"


#: The hot paths' SQL by (backend, builder, shape): built once, not per batch.
_statements: dict[tuple, str] = {}


def statement(cursor, build: Callable[..., str], *shape: Any) -> str:
    """``build(connection, *shape)``: the SQL of that shape on the cursor's backend.

    Table and column names come from the models, so the text depends only on the
    backend's quoting and the shape (a number of rows, say): each shape is built
    once, not per batch.
    """
    key = (cursor.db.vendor, build, shape)
    sql = _statements.get(key)
    if sql is None:
        sql = _statements[key] = build(cursor.db, *shape)
    return sql


#: Rows per multi-row ``INSERT`` on SQLite, fewer where their parameters would pass
#: the backend's ``max_query_params`` (999: SQLite before 3.32).
INSERT_CHUNK = 150


def insert_rows(cursor, model: Any, fields: tuple[str, ...], rows: list[tuple],
                shared: dict[str, Any] | None = None) -> Callable[[], list[int]]:
    """Insert ``rows`` (the values of ``model``'s ``fields``, in that order).

    ``shared`` holds the values that every row has (a batch's ``created_at``), by
    field name: on PostgreSQL each is one parameter, not one per row.

    Returns a function that gives their ids, in the order of the rows, as
    ``bulk_create`` relies on too. In a pipelined :func:`hot_transaction` the
    statement goes on a cursor of its own, and its ids are read only when
    asked: asked after the transaction, they do not make it wait for the
    server once more. Everywhere else they are read at once.

    * PostgreSQL: one ``INSERT ... SELECT * FROM UNNEST(...) RETURNING``, one array
      per column, as ``bulk_create`` does: the statement's text is the same whatever
      the number of rows, so psycopg parses it once (it caches the parse only of
      statements of up to 50 parameters). A shared value is one parameter beside
      the arrays: psycopg writes an array's values out one by one (a timestamp
      costs it microseconds).
    * SQLite 3.35+: one multi-row ``INSERT ... RETURNING`` per :data:`INSERT_CHUNK`.
    * Older SQLite: one statement per row.

    Values are as the driver takes them: ``connection.ops.adapt_*`` already applied.
    """
    conn = cursor.db
    shared = shared or {}
    names = tuple(shared)
    if rows and conn.vendor == "postgresql" and conn.features.can_return_rows_from_bulk_insert:
        deferred = getattr(cursor, "pipeline", None) is not None
        target = DriverCursor(conn) if deferred else cursor
        target.execute(statement(cursor, _insert_sql, model, fields, names, None),
                       [*shared.values(), *map(list, zip(*rows, strict=True))])
        if not deferred:
            ids = [row[0] for row in target.fetchall()]
            return lambda: ids

        def later() -> list[int]:
            try:
                return [row[0] for row in target.fetchall()]
            finally:
                target.cursor.close()

        return later
    ids = _insert_values(cursor, model, fields + names, rows, tuple(shared.values()))
    return lambda: ids


def _insert_values(cursor, model: Any, fields: tuple[str, ...], rows: list[tuple],
                   shared: tuple) -> list[int]:
    """:func:`insert_rows` with ``VALUES``: rows in chunks, or one by one; ids read at once.

    ``fields`` ends with the shared ones, whose values (``shared``) follow each row's.
    """
    conn = cursor.db
    ids: list[int] = []
    if not rows:
        return ids
    if conn.features.can_return_rows_from_bulk_insert:
        size = min(INSERT_CHUNK, (conn.features.max_query_params or 999) // len(fields))
        for start in range(0, len(rows), size):
            chunk = rows[start : start + size]
            params: list[Any] = []
            for row in chunk:
                params += row
                params += shared
            cursor.execute(statement(cursor, _insert_sql, model, fields, (), len(chunk)), params)
            ids.extend(row[0] for row in cursor.fetchall())
        return ids
    returning = conn.features.can_return_columns_from_insert
    for row in rows:
        cursor.execute(statement(cursor, _insert_sql, model, fields, (), 1), row + shared)
        ids.append(cursor.fetchone()[0] if returning else cursor.lastrowid)
    return ids


def _insert_sql(conn, model: Any, fields: tuple[str, ...], shared: tuple[str, ...],
                count: int | None) -> str:
    """The ``INSERT`` of ``count`` rows of ``fields`` and then ``shared`` (``VALUES``), or
    (``None``) of one array per field of ``fields`` and one value per ``shared``."""
    opts, quote = model._meta, conn.ops.quote_name
    columns = [opts.get_field(name) for name in fields + shared]
    head = f"INSERT INTO {quote(opts.db_table)} ({', '.join(quote(f.column) for f in columns)})"
    if count is None:
        # As bulk_create: the types without their parameters (varchar[], not varchar(64)[]).
        types = [f.db_type(conn).split("(")[0] for f in columns]
        arrays = ", ".join(f"(%s)::{kind}[]" for kind in types[: len(fields)])
        values = "".join(f", (%s)::{kind}" for kind in types[len(fields) :])
        values = f" SELECT *{values} FROM UNNEST({arrays})"
    else:
        values = f" VALUES {placeholders(count, len(columns))}"
    returning = (f" RETURNING {quote(opts.pk.column)}"
                 if conn.features.can_return_columns_from_insert else "")
    return head + values + returning


@functools.lru_cache(maxsize=1024)
def _qmark(sql: str) -> str:
    # Hot paths run the same few statements (built once each): convert each once.
    # The SQL given here holds no literal "%", so no "%%" to undo.
    return sql.replace("%s", "?")


class DriverCursor:
    """The database driver's own cursor, taking SQL with ``%s`` placeholders.

    ``db`` is the Django connection it belongs to, as on Django's ``CursorWrapper``.
    """

    def __init__(self, db) -> None:
        db.ensure_connection()
        self.db = db
        self.cursor = db.connection.cursor()
        self._qmark = db.Database.paramstyle == "qmark"
        #: The psycopg pipeline of a :func:`hot_transaction`, while one is open.
        self.pipeline: Any = None

    def execute(self, sql: str, params: list | tuple) -> None:
        self.cursor.execute(_qmark(sql) if self._qmark else sql, params)

    def fetchall(self) -> list[tuple]:
        return self.cursor.fetchall()

    def fetchone(self) -> tuple | None:
        return self.cursor.fetchone()

    @property
    def rowcount(self) -> int:
        # In a pipeline the count arrives with the statement's result: wait for it.
        if self.pipeline is not None:
            self.pipeline.sync()
        return self.cursor.rowcount

    @property
    def lastrowid(self) -> int:
        return self.cursor.lastrowid


@contextlib.contextmanager
def hot_cursor(alias: str = DEFAULT_DB_ALIAS) -> Iterator[Any]:
    """A cursor for SQL that runs with every batch of a hot path (``%s`` placeholders).

    Django's ``CursorWrapper`` adds its checks, error wrapping and (SQLite) a
    regex over the SQL to every statement, which the notification writer would
    pay per batch (bench/RESULTS.md). So when nothing watches
    this connection's queries (no ``DEBUG`` query log, no ``execute_wrapper``,
    e.g. ``assertNumQueries``) this is the driver's own cursor
    (:class:`DriverCursor`), else Django's. Either way it is the thread's
    connection, so inside ``atomic()`` its statements are in that transaction;
    but errors are then the driver's (``sqlite3.Error``, ``psycopg.Error``), not
    ``django.db.Error``, and APM tools that patch ``CursorWrapper`` do not see
    these statements.
    """
    db = connections[alias]
    if db.queries_logged or db.execute_wrappers:
        with db.cursor() as cursor:
            yield cursor
        return
    cursor = DriverCursor(db)
    try:
        yield cursor
    finally:
        cursor.cursor.close()


@contextlib.contextmanager
def hot_transaction(cursor) -> Iterator[None]:
    """A transaction around statements of a :func:`hot_cursor` that runs with every batch.

    ``transaction.atomic()`` adds Python to its ``BEGIN`` and ``COMMIT`` (two
    autocommit switches, savepoint bookkeeping) that the notification writer
    would pay per batch (bench/RESULTS.md). With the driver's own
    cursor on a connection in autocommit mode (no ``atomic`` block around it)
    this sends ``BEGIN`` (SQLite: with the configured ``transaction_mode``)
    and ``COMMIT`` itself, and ``ROLLBACK`` on any error; a connection that
    cannot roll back is closed, never left inside a transaction. Everywhere
    else it is ``atomic()``. Inside, use only this cursor: Django does not
    know of the transaction, and an ORM write would try to begin its own.

    On PostgreSQL the transaction is a psycopg pipeline: statements go to the
    server without waiting for each other's answers, until one whose rows (or
    ``rowcount``) are read; the ``COMMIT`` goes with the statements after the
    last read. A batch then waits for the server once per read, not once per
    statement. An error of any statement is raised at the next read or at
    the end, and the transaction is rolled back.
    """
    db = cursor.db
    if not isinstance(cursor, DriverCursor) or db.in_atomic_block or not db.get_autocommit():
        with transaction.atomic(using=db.alias):
            yield
        return
    driver = cursor.cursor
    mode = getattr(db, "transaction_mode", None) if db.vendor == "sqlite" else None
    try:
        with _pipeline(cursor):
            driver.execute(f"BEGIN {mode}" if mode else "BEGIN")
            yield
            driver.execute("COMMIT")
    except BaseException:
        try:
            driver.execute("ROLLBACK")
        except Exception:
            db.close()
        raise


@contextlib.contextmanager
def _pipeline(cursor: DriverCursor) -> Iterator[None]:
    """Run the cursor's statements in a psycopg pipeline, where there is one.

    Leaving it waits for every statement's answer and raises the first error.
    """
    pipelines = getattr(cursor.db.Database, "Pipeline", None)  # psycopg 3, not psycopg2
    if cursor.db.vendor != "postgresql" or pipelines is None or not pipelines.is_supported():
        yield
        return
    with cursor.db.connection.pipeline() as pipeline:
        cursor.pipeline = pipeline
        try:
            yield
        finally:
            cursor.pipeline = None
