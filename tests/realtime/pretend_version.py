"""Run a command as if some packages had other versions (an untested server, say).

``python -m tests.realtime.pretend_version uvicorn=0.55.0 -- -m uvicorn ...`` or
``... twisted=26.11.0 -- manage.py serve ...``: ``importlib.metadata.version``
reports the given versions, everything else is the real install.
"""

import importlib.metadata
import runpy
import sys


def main() -> None:
    args = sys.argv[1:]
    split = args.index("--")
    pretended = dict(arg.lower().split("=", 1) for arg in args[:split])
    command = args[split + 1:]
    real = importlib.metadata.version
    importlib.metadata.version = lambda name: pretended.get(name.lower()) or real(name)
    run_as_main(command)


def run_as_main(command: list[str]) -> None:
    """Run ``command`` (``-m module args...`` or ``script args...``) as ``__main__``."""
    if command[0] == "-m":
        sys.argv = [command[1], *command[2:]]
        runpy.run_module(command[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = command
        runpy.run_path(command[0], run_name="__main__")


if __name__ == "__main__":
    main()
