#!/usr/bin/env python3
"""Measure what a client that stops reading costs the server while its room is busy.

    .venv/bin/python bench/slow_reader.py [--seconds 15] [--senders 5] [--baseline]

Starts ``manage.py serve`` on a fresh SQLite file (rate limit off), joins one room
with a reader that never reads (the websockets client stops draining the socket
once its small queue is full, so TCP backs up into the server) and with senders
that post 4000-character messages as fast as they are echoed back. Prints the
server's RSS over time and how the slow reader's connection ended.
"""

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import websockets
from run import free_port  # bench/, this script's directory
from wsclient import Proc

ROOT = Path(__file__).resolve().parent.parent


def token(env: dict, user: str) -> str:
    out = subprocess.run([sys.executable, "manage.py", "issue_token", user, "--create"],
                         cwd=ROOT, env=env, check=True, capture_output=True, text=True)
    return out.stdout.strip().splitlines()[-1]


async def sender(url: str, tok: str, stop: float) -> int:
    sent = 0
    async with websockets.connect(f"{url}?token={tok}", max_size=None) as ws:
        while time.monotonic() < stop:
            ref = str(sent)
            await ws.send(json.dumps({"type": "message", "content": "x" * 4000, "ref": ref}))
            # Read everything up to our own message: a sender is a fast reader.
            while json.loads(await ws.recv()).get("ref") != ref:
                pass
            sent += 1
    return sent


def start_server(senders: int) -> tuple[subprocess.Popen, int, list[str]]:
    """Migrate a fresh SQLite file, make users, and start daphne (rate limit off)."""
    tmp = tempfile.mkdtemp(prefix="slow-reader-")
    env = {**os.environ, "DEBUG": "true", "SQLITE_PATH": f"{tmp}/db.sqlite3",
           "DATABASE_URL": "", "REDIS_URL": "", "WS_RATE_LIMIT": "0",
           "WS_MAX_CONNECTIONS_PER_USER": "0"}
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env,
                   check=True)
    tokens = [token(env, f"u{i}") for i in range(senders + 1)]
    port = free_port()
    server = subprocess.Popen([sys.executable, "manage.py", "serve", "--port", str(port)],
                              cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    return server, port, tokens


async def measure(pid: int, port: int, tokens: list[str], seconds: float,
                  with_slow_reader: bool) -> None:
    proc = Proc(pid)
    url = f"ws://127.0.0.1:{port}/ws/chat/busy/"
    slow = await websockets.connect(f"{url}?token={tokens[0]}", max_queue=1, max_size=None)
    if not with_slow_reader:
        await slow.close()
    before = proc.sample()[1]
    stop = time.monotonic() + seconds
    tasks = [asyncio.create_task(sender(url, t, stop)) for t in tokens[1:]]
    while time.monotonic() < stop:
        await asyncio.sleep(1)
        grown = (proc.sample()[1] - before) / 2**20
        elapsed = seconds - (stop - time.monotonic())
        state = "open" if slow.state.name == "OPEN" else slow.state.name
        print(f"t={elapsed:5.1f}s  rss=+{grown:7.1f} MiB  slow reader {state}")
    sent = sum(await asyncio.gather(*tasks))
    print(f"messages sent: {sent} (~{sent * 4 / 1024:.0f} MiB to each member)")
    try:
        while True:
            await asyncio.wait_for(slow.recv(), 2)
    except websockets.ConnectionClosed as closed:
        print(f"slow reader closed by server: code={closed.rcvd.code if closed.rcvd else None}")
    except TimeoutError:
        print("slow reader still open (drained everything)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--senders", type=int, default=5)
    parser.add_argument("--baseline", action="store_true",
                        help="close the slow reader at once (growth without it)")
    args = parser.parse_args()
    server, port, tokens = start_server(args.senders)
    try:
        asyncio.run(measure(server.pid, port, tokens, args.seconds, not args.baseline))
    finally:
        server.terminate()
        server.wait()
