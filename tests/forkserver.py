"""A fork server for the tests' ``manage.py serve`` processes.

A daphne process spends about 0.6 s of CPU importing Django, Twisted, autobahn, uvicorn,
OpenSSL, redis and psycopg before it listens, and a pass of the suite starts nearly
200 of them on a two-core machine: close to a third of the pass's CPU. This process
imports those libraries once, then forks one child per request. The child takes the
request's working directory, environment and log file and runs its command as
``python <command>`` would, to the interpreter's normal exit.

What is imported here is libraries only: never the project, its settings or
``daphne.server`` (which installs a reactor on import, see ``NOT_BEFORE_THE_FORK``).
Each child reads its own settings from its own environment, as a newly started process
does, and starts with no descriptor of the server's but its standard streams.

One JSON object per line each way::

    -> {"command": ["manage.py", "serve", ...], "cwd": "...", "env": {...}, "log": "..."}
    <- {"pid": 1234}                          (the child is running)
    <- {"exited": 1234, "returncode": 0}      (when it exits; -N for signal N, as Popen)

When its standard input closes (the test process ended), the server kills its
children and exits.
"""

import contextlib
import gc
import importlib
import json
import os
import queue
import select
import signal
import subprocess
import sys
import threading
from pathlib import Path

#: What a test server imports that depends on neither the project nor its settings.
#: A name that fails to import is left to the child (tests/test_forkserver.py fails).
PRELOADED = (
    "django.core.management", "django.core.checks", "django.db.models", "django.http",
    "django.urls", "django.forms", "django.template", "django.db.migrations",
    "django.core.serializers.json", "django.contrib.auth.hashers",
    "django.db.backends.sqlite3.base", "django.db.backends.postgresql.base", "statistics",
    "asgiref.sync", "channels.layers", "channels.generic.websocket",
    "channels_redis.core", "channels_redis.pubsub", "redis.asyncio", "psycopg", "jwt",
    "twisted.internet.asyncioreactor", "twisted.internet.tcp", "twisted.internet.endpoints",
    "autobahn.twisted.websocket", "OpenSSL.SSL", "cryptography.x509",
    "daphne.endpoints", "daphne.ws_protocol", "daphne.http_protocol",
    "uvicorn.main", "uvicorn.protocols.http.httptools_impl",
    "uvicorn.protocols.websockets.websockets_sansio_impl",
)


#: Modules that must not be imported before the fork: they make an event loop (a reactor)
#: whose self-pipe all the children would share, so that one child's thread could wake
#: another child's loop and not its own.
NOT_BEFORE_THE_FORK = ("twisted.internet.reactor", "daphne.server")


def preload() -> None:
    for name in PRELOADED:
        with contextlib.suppress(Exception):
            importlib.import_module(name)
    shared = [name for name in NOT_BEFORE_THE_FORK if name in sys.modules]
    if shared:
        raise RuntimeError(f"the fork server must not import {shared}: see NOT_BEFORE_THE_FORK")
    # What was imported stays: the children's collections need not walk it again.
    gc.freeze()


def serve() -> dict:
    """Fork a child per request until standard input closes; return, in a child, its
    request. Exit statuses are reported as children end."""
    children: set[int] = set()
    wakeup_read, wakeup_write = os.pipe()
    os.set_blocking(wakeup_write, False)
    signal.set_wakeup_fd(wakeup_write)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    pending = b""

    def report(message: dict) -> None:
        os.write(1, json.dumps(message).encode() + b"\n")

    while True:
        readable, _, _ = select.select([0, wakeup_read], [], [])
        if wakeup_read in readable:
            os.read(wakeup_read, 4096)
            while children:
                pid, status = os.waitpid(-1, os.WNOHANG)
                if not pid:
                    break
                children.discard(pid)
                report({"exited": pid, "returncode": os.waitstatus_to_exitcode(status)})
        if 0 not in readable:
            continue
        chunk = os.read(0, 1 << 16)
        if not chunk:
            for pid in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            sys.exit(0)
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            request = json.loads(line)
            pid = os.fork()
            if pid == 0:
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                os.close(wakeup_read)
                os.close(wakeup_write)
                return request
            children.add(pid)
            report({"pid": pid})


def become(request: dict) -> None:
    """Turn this child into ``python <command>`` run in the request's place."""
    log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.path[0] = request["cwd"]
    from tests.realtime.pretend_version import run_as_main

    run_as_main(request["command"])


class ForkedProcess:
    """What the tests use of :class:`subprocess.Popen`, for a child of a fork server."""

    def __init__(self, server: "ForkServer", pid: int) -> None:
        self.server = server
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        self.returncode = self.server.returncode(self.pid)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self.server.wait(self.pid, timeout):
            raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout)
        return self.poll()

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class ForkServer:
    """The test process's end: starts the server, asks it for children, hears their exits."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.process = subprocess.Popen(
            [sys.executable, "-u", "-m", "tests.forkserver"], cwd=root,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )
        self.one_request = threading.Lock()
        self.started: queue.Queue[int | None] = queue.Queue()
        self.changed = threading.Condition()
        self.exits: dict[int, int] = {}
        threading.Thread(target=self.read_reports, daemon=True).start()

    def read_reports(self) -> None:
        for line in self.process.stdout:
            report = json.loads(line)
            if "pid" in report:
                self.started.put(report["pid"])
                continue
            with self.changed:
                self.exits[report["exited"]] = report["returncode"]
                self.changed.notify_all()
        self.started.put(None)

    def start(self, command: list[str], env: dict[str, str], log: Path) -> ForkedProcess:
        """Run ``python *command`` in a child, with ``env``, output appended to ``log``."""
        request = {"command": command, "cwd": str(self.root), "env": env, "log": str(log)}
        with self.one_request:
            self.process.stdin.write(json.dumps(request).encode() + b"\n")
            self.process.stdin.flush()
            pid = self.started.get(timeout=30)
        if pid is None:
            raise RuntimeError("the fork server exited")
        return ForkedProcess(self, pid)

    def returncode(self, pid: int) -> int | None:
        with self.changed:
            return self.exits.get(pid)

    def wait(self, pid: int, timeout: float | None) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: pid in self.exits, timeout)

    def close(self) -> None:
        """Stop the server; children still running are killed."""
        self.process.stdin.close()
        self.process.wait(timeout=30)


if __name__ == "__main__":
    preload()
    become(serve())
