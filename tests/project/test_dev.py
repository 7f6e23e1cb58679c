"""``dev.py test`` runs the suite on pytest-xdist workers that share nothing they write."""

import importlib.util
import os
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

ROOT = Path(__file__).resolve().parents[2]


def load_dev():
    spec = importlib.util.spec_from_file_location("dev", ROOT / "dev.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("args", [[], ["tests/chat", "-x"], ["-k", "rooms"]])
def test_the_suite_runs_on_workers_that_keep_each_module_together(args):
    assert load_dev().parallel(args) == ["-n", "4", "--dist", "loadfile",
                                         "--no-loadscope-reorder"]


@pytest.mark.parametrize("args", [["-n", "0"], ["-n2"], ["--numprocesses=3"],
                                  ["--dist", "load"]])
def test_parallel_options_of_ones_own_replace_the_default(args):
    assert load_dev().parallel(args) == []


WORKER = os.environ.get("PYTEST_XDIST_WORKER")
needs_worker = pytest.mark.skipif(not WORKER, reason="runs on a pytest-xdist worker (dev.py test)")


@needs_worker
def test_each_worker_has_its_own_redis_prefix():
    assert settings.REDIS_PREFIX.startswith("test-")
    assert settings.REDIS_PREFIX.endswith("." + WORKER)


@needs_worker
def test_each_worker_has_its_own_test_database(transactional_db):
    assert str(connection.settings_dict["NAME"]).endswith("_" + WORKER)


def test_the_test_command_checks_then_runs_the_suite(monkeypatch):
    """``dev.py test``: ruff, then pytest on the workers, where Python may write bytecode
    (pytest keeps its rewritten test modules, the servers read the project's)."""
    dev = load_dev()
    calls = []
    monkeypatch.setattr(dev, "ensure_venv", lambda: None)
    monkeypatch.setattr(dev, "ensure_debian_packages", lambda: None)
    monkeypatch.setattr(dev, "run", lambda *args, env=None: calls.append((args, env)) or 0)
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    assert dev.main(["test", "-k", "rooms"]) == 0
    assert [args for args, _ in calls] == [
        ("-m", "ruff", "check", "."),
        ("-m", "pytest", "-n", "4", "--dist", "loadfile", "--no-loadscope-reorder",
         "-k", "rooms"),
    ]
    pytest_env = calls[-1][1]
    assert "PYTHONDONTWRITEBYTECODE" not in pytest_env, "pytest keeps its rewritten modules"
    assert pytest_env["PATH"] == os.environ["PATH"]


def test_the_modules_handed_out_first_exist():
    """A renamed module would silently fall back to its place in the collection."""
    from tests.conftest import SLOWEST_MODULES

    assert [module for module in SLOWEST_MODULES if not (ROOT / module).is_file()] == []
