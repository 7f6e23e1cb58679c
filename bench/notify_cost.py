"""The time of each statement of a notify batch (``notifications.store.store_batch``) as the
table fills.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/notify_cost \\
        .venv/bin/python bench/notify_cost.py [--batches 3500] [--analyze-every 500] \
        [--no-acks] [--posts 40]

Stores batches as the writer does under notify64: 40 posts (``--posts``) to 100 users each, every
batch carrying the acks of the one before (``--no-acks``: none, so the queues fill up to
``NOTIFICATIONS_QUEUE_LIMIT`` and then every batch trims them, as for offline users).
Every ``--report`` batches it prints the wall and CPU time per batch (the CPU this
thread spends: what the server's event loop shares its core with), and on PostgreSQL per
statement (by its first words; in the pipelined transaction a statement's time is its
sending, and the wait for the server falls to the next that reads rows). With
``--analyze-every N`` it runs ``ANALYZE`` every N batches, as autoanalyze would on a
deployment. The database must be migrated (``manage.py migrate``); its notifications
are deleted first. Without DATABASE_URL it runs on a fresh SQLite file.
"""

import argparse
import collections
import time

import scratch_django  # bench/, this script's directory

USERS = 100


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, default=3500)
    parser.add_argument("--report", type=int, default=250, help="batches per line")
    parser.add_argument("--analyze-every", type=int, default=0, metavar="N")
    parser.add_argument("--no-acks", action="store_true", help="never acknowledge")
    parser.add_argument("--posts", type=int, default=40, help="posts per batch")
    args = parser.parse_args()
    scratch_django.setup("notify_cost")
    from django.contrib.auth import get_user_model
    from django.db import connection

    from notifications import store
    from notifications.models import Notification

    names = [f"notify-cost-{i}" for i in range(USERS)]
    for name in names:
        get_user_model().objects.get_or_create(username=name)
    Notification.objects.all().delete()
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(f"VACUUM ANALYZE {Notification._meta.db_table}")

    seconds: dict[str, float] = collections.defaultdict(float)
    timed_cursor_class(connection, seconds)
    acks: dict[int, set[int]] = {}
    stored = 0
    started, cpu_started = time.perf_counter(), time.thread_time()
    for batch in range(1, args.batches + 1):
        posts = [store.Post(target=names[(stored + i) % USERS], data={"n": stored + i})
                 for i in range(args.posts)]
        acks_now, acks = acks, collections.defaultdict(set)
        for result in store.store_batch(posts, acks_now):
            if not args.no_acks:
                acks[result.user_id].add(result.pk)
        stored += args.posts
        if args.analyze_every and batch % args.analyze_every == 0:
            with connection.cursor() as cursor:
                cursor.execute(f"ANALYZE {Notification._meta.db_table}")
        if batch % args.report == 0:
            wall, cpu = time.perf_counter() - started, time.thread_time() - cpu_started
            parts = "  ".join(f"{name} {1e3 * spent / args.report:.2f}"
                              for name, spent in sorted(seconds.items()))
            print(f"{stored:7d} stored: {1e3 * wall / args.report:.2f} ms a batch,"
                  f" {1e3 * cpu / args.report:.2f} ms of this thread's CPU  ({parts})",
                  flush=True)
            seconds.clear()
            started, cpu_started = time.perf_counter(), time.thread_time()


def timed_cursor_class(connection, seconds: dict[str, float]) -> None:
    """Time every statement of the driver's cursors of ``connection`` into ``seconds``,
    by the statement's first three words (PostgreSQL: psycopg's ``cursor_factory``;
    elsewhere only the batch is timed)."""
    connection.ensure_connection()
    if connection.vendor != "postgresql":
        return
    driver = connection.connection

    class Timed(driver.cursor_factory):
        def execute(self, query, params=None, *args, **kwargs):
            start = time.perf_counter()
            try:
                return super().execute(query, params, *args, **kwargs)
            finally:
                words = str(query).split()[:3]
                seconds[" ".join(words).lower()] += time.perf_counter() - start

    driver.cursor_factory = Timed


if __name__ == "__main__":
    main()
