"""The CPU and wall time of one chat transaction (``chat.store.insert_batches``).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/bench_rt \\
        .venv/bin/python bench/store_cost.py [--server-binding] [--profile] [--statements]

Stores batches of several shapes (rooms x messages per room) in a migrated
database, as the sequencer's RoomsWriter does, and prints the CPU time of this
thread (what holds the GIL the event loop needs) and the wall time per
transaction. ``--server-binding`` runs the statements on psycopg's
server-binding cursor instead of the client-binding one Django gives (an
experiment: the project does not do this); ``--profile`` prints a cProfile of
the 100-room shape; ``--statements`` (SQLite only) prints the CPU of a one-message
transaction's bare statements, sent on the driver's connection without the project's
Python around them. Without DATABASE_URL it runs on a fresh SQLite file.
"""

import argparse
import asyncio
import cProfile
import os
import pstats
import time

import scratch_django  # bench/, this script's directory

SHAPES = ((1, 1), (10, 2), (100, 2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--server-binding", action="store_true")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--statements", action="store_true")
    args = parser.parse_args()
    scratch_django.setup("store_cost")
    from django.contrib.auth import get_user_model

    from chat import store
    from chat.sequencer import Outgoing

    if args.server_binding:
        import psycopg

        from realtime import db

        def driver_cursor(self, connection) -> None:
            connection.ensure_connection()
            self.db, self._qmark = connection, False
            self.cursor = psycopg.Cursor(connection.connection)

        db.DriverCursor.__init__ = driver_cursor

    loop = asyncio.new_event_loop()
    user, _ = get_user_model().objects.get_or_create(username="store-cost")

    def batches(rooms: int, per_room: int) -> list:
        return [(f"store-cost-{room}", [Outgoing(sender=user, content="x" * 64,
                                                 done=loop.create_future())
                                        for _ in range(per_room)])
                for room in range(rooms)]

    backend = database_backend_cpu()
    for rooms, per_room in SHAPES:
        store.insert_batches(batches(rooms, per_room))  # rooms made, statements built
        work = [batches(rooms, per_room) for _ in range(200 if rooms < 100 else 60)]
        server = backend()
        cpu, wall = time.thread_time(), time.perf_counter()
        for transaction in work:
            store.insert_batches(transaction)
        cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
        server = backend() - server
        per_message = len(work) * rooms * per_room
        line = (f"{rooms:4d} rooms x {per_room} messages: {1e3 * cpu / len(work):.2f} ms CPU, "
                f"{1e3 * wall / len(work):.2f} ms wall per transaction "
                f"({1e6 * cpu / per_message:.0f} us CPU per message")
        if server:
            line += f"; the PostgreSQL backend's: {1e6 * server / per_message:.0f} us"
        print(line + ")")
    if args.profile:
        work = [batches(100, 2) for _ in range(60)]
        profile = cProfile.Profile()
        profile.enable()
        for transaction in work:
            store.insert_batches(transaction)
        profile.disable()
        pstats.Stats(profile).sort_stats("tottime").print_stats(15)
    if args.statements:
        bare_statements(user.pk)


def bare_statements(sender: int, count: int = 2000) -> None:
    """The CPU per transaction of the one-message shape's statements, sent bare (SQLite).

    The statements are the server's own, from the builders ``chat.store`` uses.
    """
    from django.db import connection

    from chat import store
    from chat.models import Message
    from realtime import db

    if connection.vendor != "sqlite":
        raise SystemExit("--statements: SQLite only")
    cursor = connection.connection.cursor()
    (room,) = cursor.execute("SELECT id FROM chat_room WHERE name = 'store-cost-0'").fetchone()
    fields = (*store.INSERT_FIELDS, "created_at")
    insert = db._qmark(db._insert_sql(connection, Message, fields, (), 1))
    select = db._qmark(store._rooms_sql(connection, 1))
    moment = "2026-01-01 00:00:00"

    def empty() -> None:
        cursor.execute("BEGIN IMMEDIATE")
        cursor.execute("COMMIT")

    def inserting() -> None:
        cursor.execute("BEGIN IMMEDIATE")
        cursor.execute(insert, (room, sender, "x" * 64, None, moment)).fetchall()
        cursor.execute("COMMIT")

    def selecting_and_inserting() -> None:
        cursor.execute("BEGIN IMMEDIATE")
        cursor.execute(select, (moment, "store-cost-0")).fetchall()
        cursor.execute(insert, (room, sender, "x" * 64, None, moment)).fetchall()
        cursor.execute("COMMIT")

    for label, transaction in (("BEGIN + COMMIT", empty),
                               ("BEGIN + INSERT + COMMIT", inserting),
                               ("BEGIN + SELECT rooms + INSERT + COMMIT", selecting_and_inserting)):
        cpu = time.thread_time()
        for _ in range(count):
            transaction()
        print(f"{label:>40}: {1e6 * (time.thread_time() - cpu) / count:.0f} us CPU per transaction")


def database_backend_cpu():
    """A function that returns the CPU seconds of this connection's PostgreSQL backend
    so far (read from /proc: the server must run on this machine), or 0 elsewhere."""
    from django.db import connection

    if connection.vendor != "postgresql":
        return lambda: 0.0
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
    from thread_cpu import snapshot  # bench/, this script's directory

    ticks = os.sysconf("SC_CLK_TCK")

    def seconds() -> float:
        try:
            threads = snapshot(str(pid)).values()
        except OSError:  # the backend is gone, or runs on another machine
            return 0.0
        return sum(user + system for _, user, system in threads) / ticks

    return seconds


if __name__ == "__main__":
    main()
