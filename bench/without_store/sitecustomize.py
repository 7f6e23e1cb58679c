"""Serve the project with its stores taken out, to see what storing costs.

    .venv/bin/python bench/run.py --layers memory --scenarios rooms2k --runs 5 \\
        --variant nosql:PYTHONPATH=$PWD/bench/without_store,WITHOUT_STORE=sql \\
        --variant nostore:PYTHONPATH=$PWD/bench/without_store,WITHOUT_STORE=all

A probe, never a way to run the project: nothing is stored, and ids come from a
counter. With ``WITHOUT_STORE=sql`` the batches still go to the database worker
thread (``db.run``) as they do, but run no SQL there:

* chat: ``chat.store.insert_batches`` returns ids;
* notifications: the writer's ``store_batch`` checks each post against users
  read once per username (the first time, with the real query), records no
  ack, and returns ids.

With ``WITHOUT_STORE=all`` (chat only) the sequencer's ``store_messages`` is
answered on the event loop: no worker thread, no shared transaction, no SQL.
The server's log says what is active. Without ``WITHOUT_STORE`` this does
nothing.
"""

import importlib.abc
import importlib.machinery
import itertools
import os
import sys

MODE = os.environ.get("WITHOUT_STORE", "")
MODULES = {"sql": {"chat.store", "notifications.writer"}, "all": {"chat.sequencer"}}


class _Replace(importlib.abc.MetaPathFinder):
    """Once each module is imported, replace its store function with a counter's."""

    def __init__(self, modules: set[str]) -> None:
        self.waiting = set(modules)

    def find_spec(self, name, path, target=None):
        if name not in self.waiting:
            return None
        self.waiting.discard(name)
        if not self.waiting:
            sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        run_module = spec.loader.exec_module

        def exec_module(module) -> None:
            run_module(module)
            _replace(module)
            print(f"bench/without_store: WITHOUT_STORE={MODE} is active in {name}",
                  file=sys.stderr)

        spec.loader.exec_module = exec_module
        return spec


def _replace(module) -> None:
    from django.utils import timezone

    ids = itertools.count(10**9)
    if module.__name__ == "notifications.writer":
        from notifications import store
        from realtime import db

        users: dict[str, tuple[int, bool, bool]] = {}

        def store_batch(posts, acks):
            names = {p.actor for p in posts if p.actor is not None}
            names |= {p.target for p in posts if p.target is not None and p.target_pk is None}
            if names - users.keys():
                with db.hot_cursor() as cursor:
                    users.update(store._users_named(cursor, names - users.keys()))
            results, accepted = store._checked(posts, users)
            now = timezone.now()
            for index, user_id, data in accepted:
                results[index] = store.Stored(next(ids), user_id, data, now, user_id is None)
            return results

        module.store_batch = store_batch
    elif MODE == "sql":
        def insert_batches(batches):
            now = timezone.now()
            return [[module.Stored(next(ids), now) for _ in batch] for _, batch in batches]

        module.insert_batches = insert_batches
    else:
        from chat.store import Stored

        async def store_messages(room, batch):
            now = timezone.now()
            return [Stored(next(ids), now) for _ in batch]

        module.store_messages = store_messages


if MODE in MODULES:
    sys.meta_path.insert(0, _Replace(MODULES[MODE]))
elif MODE:
    raise SystemExit(f"WITHOUT_STORE={MODE!r}: expected one of {sorted(MODULES)}")
