"""Run a command that, on ``SIGUSR1``, counts what a full garbage collection finds in cycles.

``python -m tests.realtime.count_cycles OUT.json -- manage.py serve ...`` (or ``-- -m
module ...``): each ``SIGUSR1`` runs ``gc.collect()`` keeping the garbage
(``gc.DEBUG_SAVEALL``) and writes to OUT.json, by type (``module.QualName``), the objects
it found unreachable (``garbage``) and those still alive (``alive``; frozen objects are
not among them), with the process's collection thresholds (``threshold``), then lets
the garbage go. Automatic collection is off meanwhile, so that each count holds
every cycle made since the one before, however young.
"""

import collections
import gc
import json
import os
import signal
import sys

from tests.realtime.pretend_version import run_as_main


def type_name(o: object) -> str:
    """``module.QualName`` of the type; a function, coroutine or task by its own name."""
    kind = type(o).__qualname__
    if kind == "function":
        return f"function {o.__module__}.{o.__qualname__}"
    if kind == "coroutine":
        return f"coroutine {o.__qualname__}"
    if kind == "Task":
        return f"task {o.get_name()}"
    return f"{type(o).__module__}.{kind}"


def main() -> None:
    args = sys.argv[1:]
    out = args[0]
    command = args[args.index("--") + 1:]

    def count(*_) -> None:
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            gc.collect()
            garbage = collections.Counter(map(type_name, gc.garbage))
        finally:
            gc.garbage.clear()
            gc.set_debug(0)
            gc.collect()  # the saved cycles are still cycles: this one frees them
            gc.disable()
        alive = collections.Counter(map(type_name, gc.get_objects()))
        with open(out + ".part", "w") as file:
            json.dump({"garbage": garbage, "alive": alive, "threshold": gc.get_threshold()},
                      file)
        # Renamed whole, so that a reader never sees half a file.
        os.replace(out + ".part", out)

    gc.disable()
    signal.signal(signal.SIGUSR1, count)
    run_as_main(command)


if __name__ == "__main__":
    main()
