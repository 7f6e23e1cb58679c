"""The built-in client of ``bench/run.py``: the project alone, on the ``websockets`` library.

It speaks PROTOCOL.md (JWT in ``?token=``) and measures what ``../shared/bench/loadgen.py``
measures, in fewer lines and more slowly: it is pure Python, so on a small machine it
saturates before a fast server does (``client_cpu_pct`` near 100 says so). Use it to
benchmark a deployment without ``../shared``; use loadgen for ratios against the reference.
"""

import asyncio
import json
import os
import statistics
import time

import jwt
from websockets.asyncio.client import connect


def token(secret: str, user: str, ttl: int = 3600) -> str:
    now = int(time.time())
    return jwt.encode({"user_id": user, "iat": now, "exp": now + ttl}, secret, algorithm="HS256")


def pcts(values_ns: list[int]) -> dict:
    if not values_ns:
        return {"n": 0}
    v = sorted(values_ns)
    at = lambda p: round(v[min(len(v) - 1, int(p / 100 * len(v)))] / 1e6, 3)  # noqa: E731
    return {"n": len(v), "p50": at(50), "p99": at(99), "max": round(v[-1] / 1e6, 3)}


class Proc:
    """CPU seconds and RSS of a server process and its children, from /proc."""

    def __init__(self, pid: int) -> None:
        self.pids = [pid]
        try:
            with open(f"/proc/{pid}/task/{pid}/children") as fh:
                self.pids += [int(x) for x in fh.read().split()]
        except OSError:
            pass

    def sample(self) -> tuple[float, int]:
        cpu, rss, tick, page = 0.0, 0, os.sysconf("SC_CLK_TCK"), os.sysconf("SC_PAGE_SIZE")
        for pid in self.pids:
            try:
                with open(f"/proc/{pid}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
                with open(f"/proc/{pid}/statm") as fh:
                    rss += int(fh.read().split()[1]) * page
            except OSError:
                continue
            cpu += (int(fields[11]) + int(fields[12])) / tick
        return cpu, rss


async def _open(url: str, n: int, concurrency: int = 100) -> list:
    sem = asyncio.Semaphore(concurrency)

    async def one(i):
        async with sem:
            try:
                return await connect(url(i), max_size=None, ping_interval=None, open_timeout=30)
            except Exception:
                return None

    return await asyncio.gather(*(one(i) for i in range(n)))


async def _until(done, seconds: float) -> None:
    """Poll ``done()`` for at most ``seconds`` (what is still in flight after the senders stop)."""
    end = time.monotonic() + seconds
    while not done() and time.monotonic() < end:  # noqa: ASYNC110 - a counter, not an event
        await asyncio.sleep(0.02)


async def _drain(ws, quiet: float) -> int:
    n = 0
    try:
        while True:
            await asyncio.wait_for(ws.recv(), quiet)
            n += 1
    except (TimeoutError, Exception):
        return n


def _finish(m: dict, proc: Proc | None, s0, c0: float, wall: float) -> dict:
    if proc is not None:
        s1 = proc.sample()
        m["server_cpu_pct"] = round(100 * (s1[0] - s0[0]) / wall, 1)
        m["server_rss_mb"] = round(s1[1] / 2**20, 1)
    m["client_cpu_pct"] = round(100 * (time.process_time() - c0) / wall, 1)
    return m


async def echo(ws_base: str, conns: int, duration: float, proc: Proc | None) -> dict:
    socks = [s for s in await _open(lambda i: ws_base + "/ws/echo/", conns) if s]
    rtts: list[int] = []
    stop = time.monotonic() + duration

    async def loop(ws):
        while time.monotonic() < stop:
            t0 = time.perf_counter_ns()
            await ws.send("x" * 32)
            await ws.recv()
            rtts.append(time.perf_counter_ns() - t0)

    s0, c0, t0 = proc.sample() if proc else None, time.process_time(), time.monotonic()
    await asyncio.gather(*(loop(ws) for ws in socks))
    wall = time.monotonic() - t0
    await asyncio.gather(*(ws.close() for ws in socks))
    lat = pcts(rtts)
    return _finish({"connected": len(socks), "msgs_per_s": round(len(rtts) / wall, 1),
                    "rtt_p50_ms": lat.get("p50"), "rtt_p99_ms": lat.get("p99")}, proc, s0, c0, wall)


async def fanout(ws_base: str, secret: str, members: int, senders: int, duration: float,
                 proc: Proc | None, prefix: str = "bench_u") -> dict:
    room = f"wsc{os.getpid()}x{int(time.time())}"
    socks = await _open(
        lambda i: f"{ws_base}/ws/chat/{room}/?token={token(secret, prefix + str(i))}", members)
    live = [s for s in socks if s]
    await asyncio.gather(*(_drain(ws, 1.0) for ws in live))  # history + the join storm
    last: dict[str, int] = {}
    sent_at: dict[str, int] = {}
    counts = {"deliveries": 0, "sent": 0}
    stop = time.monotonic() + duration
    own = [asyncio.Event() for _ in range(senders)]

    async def reader(i, ws):
        try:
            async for raw in ws:
                if '"type":"message"' not in raw[:40]:
                    continue
                content = json.loads(raw)["content"]
                last[content] = time.perf_counter_ns()
                counts["deliveries"] += 1
                if i < senders and content.startswith(f"{i}|"):
                    own[i].set()
        except Exception:
            pass

    async def sender(i, ws):
        seq = 0
        while time.monotonic() < stop:
            content = f"{i}|{seq}"
            own[i].clear()
            sent_at[content] = time.perf_counter_ns()
            await ws.send(json.dumps({"type": "message", "content": content}))
            counts["sent"] += 1
            seq += 1
            try:
                await asyncio.wait_for(own[i].wait(), 10)
            except TimeoutError:
                break

    readers = [asyncio.create_task(reader(i, ws)) for i, ws in enumerate(socks) if ws]
    s0, c0, t0 = proc.sample() if proc else None, time.process_time(), time.monotonic()
    await asyncio.gather(*(sender(i, socks[i]) for i in range(senders) if socks[i]))
    expected = counts["sent"] * len(live)
    await _until(lambda: counts["deliveries"] >= expected, 5)
    wall = time.monotonic() - t0
    await asyncio.gather(*(ws.close() for ws in live))
    for task in readers:
        task.cancel()
    lat = pcts([last[c] - t for c, t in sent_at.items() if c in last])
    return _finish({
        "connected": len(live), "sent": counts["sent"],
        "deliveries_per_s": round(counts["deliveries"] / wall, 1),
        "last_p50_ms": lat.get("p50"), "last_p99_ms": lat.get("p99"),
        "lost": max(0, expected - counts["deliveries"]),
        "delivered_frac": round(counts["deliveries"] / expected, 4) if expected else None,
    }, proc, s0, c0, wall)


async def _post(reader, writer, host: str, path: str, auth: str, body: bytes) -> int:
    writer.write((f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {auth}\r\n"
                  f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
                 + body)
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin1").lower()
    if "content-length:" in head:
        await reader.readexactly(int(head.split("content-length:", 1)[1].split("\r\n", 1)[0]))
    return int(head.split(" ", 2)[1])


async def notify(host: str, port: int, secret: str, users: int, duration: float, http_conns: int,
                 proc: Proc | None, prefix: str = "bench_u", staff: str = "bench_staff") -> dict:
    base = f"ws://{host}:{port}"
    socks = await _open(
        lambda i: f"{base}/ws/notifications/?token={token(secret, prefix + str(i))}", users)
    live = [s for s in socks if s]
    lat: list[int] = []
    counts = {"delivered": 0, "posted": 0, "failed": 0}
    run = f"{os.getpid()}-{time.time()}"

    async def reader(ws):
        try:
            async for raw in ws:
                frame = json.loads(raw)
                if frame.get("type") != "notification":
                    continue
                await ws.send(json.dumps({"type": "ack", "ids": [frame["id"]]}))
                if frame["data"].get("r") == run:  # not a queued one of an earlier run
                    lat.append(time.perf_counter_ns() - frame["data"]["t"])
                    counts["delivered"] += 1
        except Exception:
            pass

    readers = [asyncio.create_task(reader(ws)) for ws in live]
    await asyncio.sleep(1.0)  # the queues of earlier runs go out (and are acked) first
    staff_token, stop, seq = token(secret, staff), time.monotonic() + duration, iter(range(10**9))

    async def poster():
        r, w = await asyncio.open_connection(host, port)
        for i in seq:
            if time.monotonic() >= stop:
                break
            body = json.dumps({"t": time.perf_counter_ns(), "n": i, "r": run}).encode()
            status = await _post(r, w, f"{host}:{port}", f"/api/notify/{prefix}{i % users}",
                                 staff_token, body)
            counts["posted" if 200 <= status < 300 else "failed"] += 1
        w.close()

    s0, c0, t0 = proc.sample() if proc else None, time.process_time(), time.monotonic()
    await asyncio.gather(*(poster() for _ in range(http_conns)))
    await _until(lambda: counts["delivered"] >= counts["posted"], 5)
    wall = time.monotonic() - t0
    await asyncio.gather(*(ws.close() for ws in live))
    for task in readers:
        task.cancel()
    p = pcts(lat)
    return _finish({
        "connected": len(live), "posted_ok": counts["posted"], "http_failed": counts["failed"],
        "notify_per_s": round(counts["delivered"] / wall, 1),
        "deliver_p50_ms": p.get("p50"), "deliver_p99_ms": p.get("p99"),
        "lost": max(0, counts["posted"] - counts["delivered"]),
    }, proc, s0, c0, wall)


async def connections(ws_base: str, secret: str, conns: int, hold: float, proc: Proc | None,
                      prefix: str = "bench_u") -> dict:
    before = proc.sample()[1] if proc else 0
    socks = await _open(
        lambda i: f"{ws_base}/ws/notifications/?token={token(secret, prefix + str(i))}", conns)
    live = [s for s in socks if s]
    peak = before
    end = time.monotonic() + hold
    while time.monotonic() < end:
        peak = max(peak, proc.sample()[1] if proc else 0)
        await asyncio.sleep(0.5)
    pongs = await asyncio.gather(*(_ping(ws) for ws in live))
    peak = max(peak, proc.sample()[1] if proc else 0)
    await asyncio.gather(*(ws.close() for ws in live), return_exceptions=True)
    m = {"connected": len(live), "alive": sum(pongs)}
    if proc and live:
        m["rss_per_conn_kib"] = round((peak - before) / 1024 / len(live), 1)
        m["server_rss_mb"] = round(peak / 2**20, 1)
    return m


async def _ping(ws) -> bool:
    try:
        await ws.send("ping")
        while True:
            if "pong" in await asyncio.wait_for(ws.recv(), 10):
                return True
    except Exception:
        return False


def summarise_runs(runs: list[dict]) -> dict:
    keys = {k for r in runs for k, v in r.items() if isinstance(v, int | float)}
    return {k: statistics.median([r[k] for r in runs if isinstance(r.get(k), int | float)])
            for k in sorted(keys)}
