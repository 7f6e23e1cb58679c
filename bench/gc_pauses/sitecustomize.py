"""Log the long garbage collections of every Python process of a bench run.

    GC_PAUSES_DIR=/tmp/gc PYTHONPATH=$PWD/bench/gc_pauses .venv/bin/python bench/run.py ...

With this directory on ``PYTHONPATH`` (an absolute path: the reference runs in its own
directory), each process started by the run (the servers, the
reference, the load generator) appends to ``$GC_PAUSES_DIR/<pid>.log`` a line per full
collection and per collection of any generation that took longer than
``GC_PAUSES_MS`` (default 5): the time, the generation and its duration. The first line
is the process's command. ``bench/gc_pauses/report.py`` sums them up per process.
"""

import gc
import os
import sys
import time

_DIR = os.environ.get("GC_PAUSES_DIR")
_LONG_MS = float(os.environ.get("GC_PAUSES_MS", "5"))
_started = 0.0
_log = None


def _collected(phase: str, info: dict) -> None:
    global _started, _log
    if phase == "start":
        _started = time.perf_counter()
        return
    took_ms = (time.perf_counter() - _started) * 1000
    if info["generation"] < 2 and took_ms < _LONG_MS:
        return
    if _log is None:
        _log = open(os.path.join(_DIR, f"{os.getpid()}.log"), "a", buffering=1)
        _log.write("command " + " ".join(sys.argv[:3]) + "\n")
    _log.write(f"{time.time():.3f} gen{info['generation']} {took_ms:.1f} ms\n")


if _DIR:
    os.makedirs(_DIR, exist_ok=True)
    gc.callbacks.append(_collected)
