"""Serve :mod:`bench.trivial_asgi` under daphne as ``manage.py serve`` runs daphne.

The daphne adapter's start-up patches (``realtime.servers.prepare_daphne``: no
form parsing of POST bodies, the body bound, autobahn's debug-log arguments
skipped, ...) apply to daphne itself, whatever the application: the ceiling of
the daphne the project runs is measured with them. The application stays the
trivial one (no Django request handling, no database, no layer); settings are
loaded only because some patches read their limits.

    python bench/trivial_serve.py [--plain] -- -v 0 -b 127.0.0.1 -p 8001

``--plain`` serves it under daphne without the patches.
"""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str]) -> None:
    plain = "--plain" in argv
    args = argv[argv.index("--") + 1:] if "--" in argv else []
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    if not plain:
        import django

        django.setup()
        from realtime import servers

        if not servers.prepare_daphne():
            raise SystemExit("the daphne adapter is off for the installed versions")
    from daphne.cli import CommandLineInterface

    CommandLineInterface().run([*args, "bench.trivial_asgi:application"])


if __name__ == "__main__":
    main(sys.argv[1:])
