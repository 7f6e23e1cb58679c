"""The CPU redis-py spends on one reply of N strings, with hiredis and with its own parser.

    .venv/bin/python bench/redis_parse.py [--url redis://127.0.0.1:6379/7] [--size 2000]

A room's presence scripts (``ROOM_JOIN``, ``ROOM_LEAVE``) answer with the room's user
list; this times ``HVALS`` of a hash of ``--size`` entries, as that reply, in a child
process with hiredis and in one where it is hidden. It writes and deletes one key.
"""

import argparse
import subprocess
import sys

CHILD = """
import asyncio, sys, time
if sys.argv[1] == "python":
    sys.modules["hiredis"] = None  # redis-py then falls back to its own parser
import redis.utils
import redis.asyncio

async def main(url, size, rounds=300):
    client = redis.asyncio.Redis.from_url(url)
    await client.hset("redis-parse", mapping={f"conn{i}": f"user{i}" for i in range(size)})
    cpu = time.process_time()
    for _ in range(rounds):
        await client.hvals("redis-parse")
    cpu = time.process_time() - cpu
    await client.delete("redis-parse")
    await client.aclose()
    parser = "hiredis" if redis.utils.HIREDIS_AVAILABLE else "redis-py's parser"
    print(f"{parser}: {1e3 * cpu / rounds:.2f} ms of CPU per reply of {size} strings")

asyncio.run(main(sys.argv[2], int(sys.argv[3])))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="redis://127.0.0.1:6379/7")
    parser.add_argument("--size", type=int, default=2000)
    args = parser.parse_args()
    for kind in ("hiredis", "python"):
        subprocess.run([sys.executable, "-c", CHILD, kind, args.url, str(args.size)],
                       check=True)


if __name__ == "__main__":
    main()
