"""Django for the bench's scripts that call the project's code in-process
(``store_cost.py``, ``notify_cost.py``)."""

import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def setup(name: str) -> None:
    """Set Django up with the project's settings, on ``DATABASE_URL`` (migrated by you)
    or else on a fresh SQLite file ``<name>.sqlite3`` that this migrates."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    os.environ.setdefault("SECRET_KEY", f"bench-{name}-not-for-production".replace("_", "-"))
    os.environ.setdefault("JWT_SECRET", "bench-jwt-secret-not-for-production")
    fresh = not os.environ.get("DATABASE_URL")
    if fresh:
        os.environ["SQLITE_PATH"] = str(Path(tempfile.mkdtemp()) / f"{name}.sqlite3")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    if fresh:
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
