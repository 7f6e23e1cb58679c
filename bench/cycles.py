#!/usr/bin/env python3
"""Count what sockets that open and close leave to the garbage collector (a probe).

    .venv/bin/python bench/cycles.py [--server uvicorn|daphne] \\
        [--endpoint echo|notifications|chat] [--sockets 200] [--rounds 3]

Runs the server (uvicorn as the README runs it, or ``manage.py serve``) under
``tests/realtime/count_cycles.py`` on a fresh SQLite file. Each round opens
``--sockets`` sockets at once (each its own user; chat: ten to a room, each sends
one message), counts while they are open, closes them and counts again. Every
count is a full collection that keeps the garbage, with automatic collection off,
so it holds every cycle made since the count before. Prints what each count found
in cycles, by type (functions, coroutines and tasks by name), and the live types
that grew over the round.

A server whose connections leave no cycle shows only the count's own few dozen
objects after a close; that is what lets the servers space their full collections
(``GC_THRESHOLD2``). bench/RESULTS.md, "eighteenth part", has what it found.
"""

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from run import free_port, server_command  # bench/, this script's directory
from websockets.asyncio.client import connect

ROOT = Path(__file__).resolve().parent.parent
SHOWN = 12


def make_users(env: dict, count: int) -> list[str]:
    """``count`` users on the fresh database; a token for each."""
    script = (
        "import json\n"
        "from django.contrib.auth.models import User\n"
        "from realtime import tokens\n"
        f"names = [f'cycles{{i}}' for i in range({count})]\n"
        "User.objects.bulk_create([User(username=name) for name in names])\n"
        "print(json.dumps([tokens.issue(name)[0] for name in names]))\n"
    )
    done = subprocess.run([sys.executable, "manage.py", "shell", "-c", script], cwd=ROOT,
                          env=env, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


class Probe:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args, self.port, self.out = args, free_port(), workdir / "count.json"
        self.env = {**os.environ, "DATABASE_URL": f"sqlite:///{workdir / 'db.sqlite3'}",
                    "SECRET_KEY": "cycles-" + "s" * 50, "JWT_SECRET": "cycles-" + "j" * 50,
                    "DEBUG": "false", "LOG_LEVEL": "WARNING", "WS_RATE_LIMIT": "0"}
        subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT,
                       env=self.env, check=True)
        self.tokens = make_users(self.env, args.sockets)
        command = [sys.executable, "-m", "tests.realtime.count_cycles", str(self.out), "--",
                   *server_command(args.server, self.port)[1:]]
        self.process = subprocess.Popen(command, cwd=ROOT, env=self.env,
                                        stdout=subprocess.DEVNULL)

    def count(self) -> dict:
        self.out.unlink(missing_ok=True)
        self.process.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 60
        while not self.out.exists():
            if time.monotonic() > deadline:
                raise SystemExit("the server did not write its count")
            time.sleep(0.05)
        return json.loads(self.out.read_text())

    def url(self, index: int) -> str:
        base = f"ws://127.0.0.1:{self.port}"
        endpoint = self.args.endpoint
        if endpoint == "echo":
            return f"{base}/ws/echo/"
        path = "notifications/" if endpoint == "notifications" else f"chat/cycles{index // 10}/"
        return f"{base}/ws/{path}?token={self.tokens[index]}"

    async def open(self, index: int):
        ws = await connect(self.url(index), compression=None, open_timeout=60,
                           max_queue=None)
        if self.args.endpoint == "chat":
            await ws.send(json.dumps({"type": "message", "content": f"hello {index}"}))
        return ws

    async def wait_until_listening(self) -> None:
        for _ in range(300):
            try:
                async with connect(f"ws://127.0.0.1:{self.port}/ws/echo/"):
                    return
            except OSError:
                await asyncio.sleep(0.1)
        raise SystemExit("the server did not start")

    async def run(self) -> None:
        await self.wait_until_listening()
        before = self.count()["alive"]
        for number in range(self.args.rounds):
            sockets = await asyncio.gather(*map(self.open, range(self.args.sockets)))
            await asyncio.sleep(self.args.settle)
            report(f"round {number}, {len(sockets)} open", self.count())
            await asyncio.gather(*(ws.close() for ws in sockets))
            await asyncio.sleep(self.args.settle)
            counted = self.count()
            report(f"round {number}, closed", counted)
            grew = {name: n - before.get(name, 0) for name, n in counted["alive"].items()
                    if n > before.get(name, 0)}
            top = sorted(grew.items(), key=lambda item: -item[1])[:SHOWN]
            print("  live types that grew over the round:", top or "none")
            before = counted["alive"]


def report(label: str, counted: dict) -> None:
    garbage = counted["garbage"]
    top = sorted(garbage.items(), key=lambda item: -item[1])[:SHOWN]
    print(f"{label}: {sum(garbage.values())} objects in cycles")
    for name, n in top:
        print(f"  {n:7d}  {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--server", choices=["uvicorn", "daphne"], default="uvicorn")
    parser.add_argument("--endpoint", choices=["echo", "notifications", "chat"],
                        default="chat")
    parser.add_argument("--sockets", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--settle", type=float, default=2.0,
                        help="seconds between opening (or closing) and counting")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cycles-") as workdir:
        probe = Probe(args, Path(workdir))
        try:
            asyncio.run(probe.run())
        finally:
            probe.process.terminate()
            probe.process.wait(timeout=30)


if __name__ == "__main__":
    main()
