"""Serve the project with its chat store taken out, to see what the store costs.

    .venv/bin/python bench/run.py --layers memory --scenarios rooms2k --runs 5 \\
        --variant nosql:PYTHONPATH=$PWD/bench/without_store,WITHOUT_STORE=sql \\
        --variant nostore:PYTHONPATH=$PWD/bench/without_store,WITHOUT_STORE=all

A probe, never a way to run the project: messages are not stored, and their ids
come from a counter. With ``WITHOUT_STORE=sql`` the rooms' batches still go to
the database worker thread (``db.run``) as they do, but ``insert_batches`` runs
no SQL there. With ``WITHOUT_STORE=all`` the sequencer's ``store_messages`` is
answered on the event loop: no worker thread, no shared transaction, no SQL.
The server's log says which one is active. Without ``WITHOUT_STORE`` this does
nothing.
"""

import importlib.abc
import importlib.machinery
import itertools
import os
import sys

MODE = os.environ.get("WITHOUT_STORE", "")
MODULES = {"sql": "chat.store", "all": "chat.sequencer"}


class _Replace(importlib.abc.MetaPathFinder):
    """Once the module is imported, replace its store function with a counter's."""

    def find_spec(self, name, path, target=None):
        if name != MODULES[MODE]:
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        run_module = spec.loader.exec_module

        def exec_module(module) -> None:
            run_module(module)
            _replace(module)
            print(f"bench/without_store: WITHOUT_STORE={MODE} is active", file=sys.stderr)

        spec.loader.exec_module = exec_module
        return spec


def _replace(module) -> None:
    from django.utils import timezone

    ids = itertools.count(10**9)
    if MODE == "sql":
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
    sys.meta_path.insert(0, _Replace())
elif MODE:
    raise SystemExit(f"WITHOUT_STORE={MODE!r}: expected one of {sorted(MODULES)}")
