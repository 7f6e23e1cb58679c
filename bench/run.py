#!/usr/bin/env python
"""Benchmark the project's server: echo, fan-out, notifications, idle connections.

Starts the project (daphne via ``manage.py serve``; optionally uvicorn too) on a fresh
SQLite file it migrates itself (or ``--database-url``), creates the bench users, and runs
the scenarios. With ``../shared/bench`` present (and its requirements installed, see
``--setup``) it also starts the reference app and measures both with ``loadgen.py``'s
compare mode, so every figure comes with a ratio project/seed from the same run.
Without it, the built-in client (``bench/wsclient.py``) measures the project alone.

    .venv/bin/python bench/run.py                                   # in-memory layer
    .venv/bin/python bench/run.py --redis redis://127.0.0.1:6379/5 --layers core,pubsub
    .venv/bin/python bench/run.py --scenarios echo --uvicorn        # daphne and uvicorn
    .venv/bin/python bench/run.py --scenarios notify --baseline HEAD~3  # A/B, same run

Results: ``bench/out/<UTC stamp>/`` (every loadgen JSON line, results.json, summary.md).
See bench/README.md.
"""

import argparse
import asyncio
import atexit
import contextlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "bench"
#: The reference app's and loadgen's own environment (``--setup``): apart from the project's
#: locked .venv, so that installing them never changes what the project runs on.
BENCH_VENV = ROOT / "bench" / ".venv"
BENCH_PYTHON = BENCH_VENV / "bin" / "python"
PEER_MODULES = ("picows", "uvloop", "orjson", "psutil", "fastapi", "uvicorn")
SECRET = "bench-jwt-secret-not-for-production"
USER_PREFIX, STAFF = "bench_u", "bench_staff"
#: While a scenario runs on a PostgreSQL server whose autovacuum is off, the bench runs
#: ``ANALYZE`` on the run's databases this often, in its place (Bench.analysing).
ANALYZE_EVERY = 5.0

# loadgen ends a fan-out run without reporting when nothing arrives for --idle-timeout
# (default 5 s) and counts the join storm over after --quiet (0.5 s) of silence; on a
# shared, loaded machine a server that pauses longer turns into an error instead of a
# slow figure, so both are widened (for every server alike).
FANOUT_PATIENCE = ["--quiet", "2", "--idle-timeout", "20"]
#: What the built-in client (``--no-peer``, or no loadgen) can run; the rest need loadgen.
BUILTIN_SCENARIOS = {"echo", "fanout100", "fanout1000", "notify", "notify64", "connections"}
#: name -> (loadgen scenario, loadgen arguments, layers it depends on)
SCENARIOS = {
    "echo": ("echo", ["--conns", "50", "--msgs", "1000000"], False),
    "fanout100": ("fanout", ["--members", "100", "--senders", "10", "--msgs", "100000",
                             *FANOUT_PATIENCE], True),
    "fanout1000": ("fanout", ["--members", "1000", "--senders", "10", "--msgs", "100000",
                              "--settle-timeout", "120", "--connect-deadline", "120",
                              *FANOUT_PATIENCE], True),
    "notify": ("notify", ["--users", "100", "--posts", "1000000", "--http-conns", "8"], True),
    "notify64": ("notify", ["--users", "100", "--posts", "1000000", "--http-conns", "64"], True),
    "connections": ("connections", [], False),
    # Many small rooms (issue 20): 200 rooms x 10 members, 2 senders each, open loop at
    # 2,000 and 10,000 messages/s offered (20,000 and 100,000 deliveries/s).
    "rooms2k": ("rooms", ["--rooms", "200", "--members", "10", "--senders", "2",
                          "--interval-ms", "200", *FANOUT_PATIENCE], True),
    "rooms10k": ("rooms", ["--rooms", "200", "--members", "10", "--senders", "2",
                           "--interval-ms", "40", *FANOUT_PATIENCE], True),
    # Reconnect storms (issue 20): every client at once, after a deploy or a proxy restart.
    "storm": ("connections", ["--endpoint", "notifications", "--conns", "10000",
                              "--connect-concurrency", "10000", "--hold", "2", "--timeout", "60",
                              "--connect-deadline", "180"], True),
    # 2,000 chat clients into one room, each with ?since= (bench/loadgen_since.py).
    "stormchat": ("connections", ["--endpoint", "chat", "--conns", "2000",
                                  "--connect-concurrency", "2000", "--hold", "2", "--timeout", "60",
                                  "--connect-deadline", "180"], True),
}
#: Scenarios run through bench/loadgen_since.py rather than loadgen itself.
WITH_SINCE = {"stormchat"}
DEFAULT_SCENARIOS = "echo,fanout100,fanout1000,notify,connections"

CREATE_USERS = """
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import make_password
User = get_user_model()
names = ["{staff}"] + ["{prefix}%d" % i for i in range({count})]
have = set(User.objects.filter(username__in=names).values_list("username", flat=True))
User.objects.bulk_create([User(username=n, password=make_password(None)) for n in names
                          if n not in have], batch_size=1000, ignore_conflicts=True)
User.objects.filter(username="{staff}").update(is_staff=True)
"""


def users_needed(names: list[str], conns: int) -> int:
    """Bench users the scenarios connect as: the rooms' 2,000, or a socket count above it."""
    counts = [conns if name == "connections" else int(extra[extra.index("--conns") + 1])
              for name in names for extra in [SCENARIOS[name][1]]
              if name == "connections" or "--conns" in extra]
    return max([2000, *counts])


def log(*parts) -> None:
    print(f"[{time.strftime('%H:%M:%S')}]", *parts, file=sys.stderr, flush=True)


def raise_fd_limit(wanted: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, wanted)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(kind: str, port: int) -> list[str]:
    """The command that serves the project with ``kind`` (daphne or uvicorn) on ``port``."""
    if kind == "daphne":
        return [sys.executable, "manage.py", "serve", "--host", "127.0.0.1", "--port", str(port)]
    # The same limits as `manage.py serve` (see README "Running daphne").
    return [sys.executable, "-m", "uvicorn", "project.asgi:application", "--host",
            "127.0.0.1", "--port", str(port), "--ws", "websockets-sansio", "--ws-max-size",
            str(4 * 65536), "--ws-ping-interval", "20", "--ws-ping-timeout", "30",
            "--lifespan", "off", "--no-access-log", "--log-level", "warning"]


def pinned(cmd: list[str], cpu: str | None) -> list[str]:
    return ["taskset", "-c", cpu, *cmd] if cpu and shutil.which("taskset") else cmd


def peer_available() -> bool:
    if not (SHARED / "loadgen.py").exists() or not BENCH_PYTHON.exists():
        return False
    probe = ("import importlib.util, sys; "
             "sys.exit(not all(map(importlib.util.find_spec, sys.argv[1:])))")
    return subprocess.run([str(BENCH_PYTHON), "-c", probe, *PEER_MODULES]).returncode == 0


class Server:
    """A server process (its own session, so stopping it takes its children too)."""

    def __init__(self, label: str, cmd: list[str], env: dict, cwd: Path, port: int, log_path: Path):
        self.label, self.port = label, port
        self.log = open(log_path, "ab")
        self.proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"{label} exited with {self.proc.returncode}; see {log_path}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
                return
            time.sleep(0.2)
        self.stop()
        raise SystemExit(f"{label} did not listen on {port} within 60 s; see {log_path}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.log.close()


class Bench:
    def __init__(self, args) -> None:
        self.args = args
        self.out = Path(args.out) / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        self.out.mkdir(parents=True, exist_ok=True)
        self.peer = peer_available() and not args.no_peer
        #: PostgreSQL's round trip and commit on this machine (:meth:`measure_postgres`).
        self.database_latency: dict = {}
        self.results: list[dict] = []
        self.servers: list[Server] = []
        self.db = self.out / "bench.sqlite3"
        #: The PostgreSQL databases made for one server each (see own_database).
        self.own_databases: list[str] = []
        self.server_cpu = "0" if (os.cpu_count() or 1) >= 2 and not args.no_pin else None
        self.client_cpu = "1" if self.server_cpu else None

    # --- project and peer -------------------------------------------------------------

    def project_env(self, layer: str) -> dict:
        env = dict(os.environ)
        for name in ("REDIS_URL", "DATABASE_URL", "REDIS_LAYER"):
            env.pop(name, None)
        env.update(
            DEBUG="false", SECRET_KEY="bench-" + "s" * 50, JWT_SECRET=SECRET, LOG_LEVEL="WARNING",
            # The reference has no limits; these would cap echo at 20 frames/s per
            # connection and 20 sockets from one address, and the idle test at 10,000
            # connections.
            WS_RATE_LIMIT="0", WS_MAX_CONNECTIONS="0", WS_MAX_CONNECTIONS_PER_ADDRESS="0",
            SQLITE_PATH=str(self.db),
            # The reference and the project's uvicorn run with --no-access-log.
            ACCESS_LOG="false",
        )
        if self.args.database_url:
            env["DATABASE_URL"] = self.args.database_url
        if layer != "memory":
            env.update(REDIS_URL=self.args.redis, REDIS_PREFIX="bench", REDIS_LAYER=layer)
        return env

    def manage(self, env: dict, *argv: str, root: Path = ROOT) -> None:
        subprocess.run([sys.executable, "manage.py", *argv], env=env, cwd=root, check=True,
                       timeout=600)

    def prepare_database(self, users: int, env: dict | None = None, root: Path = ROOT) -> None:
        """Migrate the database and make the users. The main PostgreSQL database is
        emptied first (the SQLite files and the other databases are new with each run)
        and copied to ``<name>_template`` for the servers that get a database of their
        own."""
        main = env is None
        env = env or self.project_env("memory")
        self.users = users
        log(f"migrating {env.get('DATABASE_URL') or env['SQLITE_PATH']}")
        self.manage(env, "migrate", "-v0", root=root)
        if main and self.postgres():
            self.manage(env, "flush", "--no-input", "-v0", root=root)
        self.manage(env, "shell", "-c",
                    CREATE_USERS.format(staff=STAFF, prefix=USER_PREFIX, count=users), root=root)
        if main and self.postgres():
            name = self.database_name()
            self.remake_database(name + "_template", template=name)

    def postgres(self) -> bool:
        return (self.args.database_url or "").startswith(("postgres://", "postgresql://"))

    def measure_postgres(self) -> dict:
        """This machine's PostgreSQL round trip and commit, medians of 300 each, in ms.

        Every notify batch waits for a commit, so the notify ratios move with it from
        one machine to the next (bench/RESULTS.md, "twenty-third part"): the run
        records it beside its figures.
        """
        if not self.postgres():
            return {}
        import psycopg

        def median_ms(work) -> float:
            times = []
            for _ in range(300):
                started = time.perf_counter()
                work()
                times.append(time.perf_counter() - started)
            return round(1000 * statistics.median(times), 3)

        with psycopg.connect(self.args.database_url) as conn:
            conn.execute("CREATE TEMPORARY TABLE bench_commit (n int)")
            conn.commit()

            def insert_and_commit() -> None:
                conn.execute("INSERT INTO bench_commit VALUES (1)")
                conn.commit()

            measured = {"postgres_roundtrip_ms": median_ms(lambda: conn.execute("SELECT 1")),
                        "postgres_commit_ms": median_ms(insert_and_commit)}
        log(f"PostgreSQL: SELECT 1 in {measured['postgres_roundtrip_ms']} ms, INSERT + COMMIT "
            f"in {measured['postgres_commit_ms']} ms (medians)")
        return measured

    def vacuum_database(self) -> None:
        """``VACUUM ANALYZE`` every PostgreSQL database of the run before a scenario.

        Every scenario then starts from the same state, as under PostgreSQL's
        autovacuum: without it (it is off on the bench machine) the acked
        notifications of every earlier run stay in the partial index of
        undelivered ones, and the planner's statistics are never refreshed
        (bench/RESULTS.md, "eighth part").
        """
        if not self.postgres():
            return
        import psycopg

        for url in self.databases():
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("VACUUM ANALYZE")
        log(f"vacuumed and analysed {len(self.databases())} database(s)")

    def databases(self) -> list[str]:
        """The URLs of the run's PostgreSQL databases: ``--database-url`` and the servers'
        own (:meth:`own_database`)."""
        return [self.args.database_url, *self.own_databases]

    @contextlib.contextmanager
    def analysing(self):
        """While the block runs, ``ANALYZE`` the run's PostgreSQL databases every
        ``ANALYZE_EVERY`` seconds, if the server's autovacuum is off.

        A deployment's autovacuum keeps the planner's statistics close to its tables
        (autoanalyze). The bench's start empty, and without it they would stay those of
        the empty tables through the scenario, which no deployment runs on: before the
        notification writer stopped planning bitmap scans, notify fell from run to run
        so (bench/RESULTS.md, "sixteenth part"). Dead rows are left to the product, as
        between two of autovacuum's vacuums.
        """
        if not self.postgres():
            yield
            return
        import psycopg

        with psycopg.connect(self.args.database_url, autocommit=True) as conn:
            if conn.execute("SHOW autovacuum").fetchone()[0] == "on":
                yield
                return
        stop = threading.Event()

        def analyse() -> None:
            while not stop.wait(ANALYZE_EVERY):
                for url in self.databases():
                    with contextlib.suppress(psycopg.Error), \
                            psycopg.connect(url, autocommit=True) as conn:
                        conn.execute("ANALYZE")

        log(f"autovacuum is off: the bench analyses every {ANALYZE_EVERY:g} s in its place")
        thread = threading.Thread(target=analyse, name="analyse", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def own_database(self, label: str, root: Path) -> str:
        """A PostgreSQL database of the server ``label`` alone (its URL), made afresh.

        Servers that shared one database would share its rooms: loadgen names a
        run's room by the run alone, so the second server of a run would send
        the first one's messages as history (bench/RESULTS.md, "eighth part").
        """
        name = self.database_name()
        own = f"{name}_{re.sub(r'[^a-z0-9]+', '_', label.lower())}"
        # Under this tree: a copy of the prepared database, made before any server ran.
        url = self.remake_database(own, template=name + "_template" if root == ROOT else None)
        self.own_databases.append(url)
        if root != ROOT:  # the baseline's own schema, which may be older
            self.prepare_database(self.users, {**self.project_env("memory"),
                                               "DATABASE_URL": url}, root)
        return url

    def database_name(self) -> str:
        import psycopg

        return psycopg.conninfo.conninfo_to_dict(self.args.database_url)["dbname"]

    def remake_database(self, name: str, template: str | None = None) -> str:
        """Drop the PostgreSQL database ``name`` on the server of ``--database-url`` and
        create it again, empty or as a copy of ``template``; return its URL."""
        import psycopg
        from psycopg import sql

        server = self.args.database_url.rsplit("/", 1)[0]
        create = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template:
            create += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
        with psycopg.connect(server + "/postgres", autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))
            conn.execute(create)
        return f"{server}/{name}"

    def flush_redis(self) -> None:
        import redis

        client = redis.Redis.from_url(self.args.redis)
        keys = list(client.scan_iter(match="bench*", count=1000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start:start + 1000])
        client.close()

    def redis_pid(self) -> int | None:
        import redis

        with contextlib.suppress(Exception):
            client = redis.Redis.from_url(self.args.redis)
            pid = int(client.info("server")["process_id"])
            client.close()
            return pid
        return None

    def start_project(self, layer: str, kind: str = "daphne", root: Path = ROOT,
                      label: str = "", extra_env: dict | None = None) -> Server:
        """The project served by ``kind``, from ``root`` (a baseline's worktree, else this tree)."""
        env, port = {**self.project_env(layer), **(extra_env or {})}, free_port()
        label = label or f"project-{kind}"
        if not self.args.database_url and (kind != "daphne" or root != ROOT or extra_env):
            # One SQLite file per server process: two processes writing one file stalled
            # fan-out runs for seconds (lock waits), which is a deployment question (use
            # PostgreSQL with several processes), not what a side-by-side run measures.
            own = self.db.with_name(f"bench-{label.removeprefix('project-')}.sqlite3")
            if not own.exists():
                env["SQLITE_PATH"] = str(own)
                if root != ROOT:  # the baseline's own schema, which may be older
                    self.prepare_database(self.users, env, root)
                else:
                    shutil.copyfile(self.db, own)
            env["SQLITE_PATH"] = str(own)
            if env.get("DATABASE_URL", "").startswith("sqlite:"):
                # --variant NAME:DATABASE_URL=sqlite: serves the same copy, named by a URL.
                env["DATABASE_URL"] = f"sqlite:///{own}"
        if self.postgres() and (kind != "daphne" or root != ROOT or extra_env):
            env["DATABASE_URL"] = self.own_database(label, root)
            # Nor do they share a cluster on Redis (presence, the registry, the room locks).
            if "REDIS_PREFIX" in env:
                env["REDIS_PREFIX"] = f"bench-{label.removeprefix('project-')}"
        cmd = server_command(kind, port)
        server = Server(label, pinned(cmd, self.server_cpu), env, root, port,
                        self.out / f"{label}-{layer}.log")
        self.servers.append(server)
        return server

    def baseline_tree(self) -> Path | None:
        """A worktree of ``--baseline`` (removed at exit), to serve beside this tree."""
        rev = self.args.baseline
        if not rev:
            return None
        tree = self.out / "baseline"
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), rev], cwd=ROOT,
                       check=True, capture_output=True)
        atexit.register(subprocess.run, ["git", "worktree", "remove", "--force", str(tree)],
                        cwd=ROOT, capture_output=True)
        described = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=tree,
                                   capture_output=True, text=True).stdout.strip()
        log(f"baseline {rev} ({described}) in {tree}")
        return tree

    def start_trivial(self, layer: str, deliver: bool) -> Server:
        """bench/trivial_asgi.py under daphne, on the project's core: one of daphne's
        ceilings, ``trivial-http`` (posts answered) or ``trivial-notify`` (delivered too).

        Served by bench/trivial_serve.py: daphne with the start-up patches and the
        ``-v 0`` that ``manage.py serve`` gives the project's daphne here
        (``ACCESS_LOG=false``). Without them the ceiling would pay costs the
        project's daphne does not (Twisted's form parsing of every POST: a fifth of
        each post's time, bench/RESULTS.md "twenty-third part").
        """
        port = free_port()
        label = "trivial-notify" if deliver else "trivial-http"
        cmd = [sys.executable, "bench/trivial_serve.py", "--", "-v", "0", "-b", "127.0.0.1",
               "-p", str(port)]
        env = dict(self.project_env(layer), TRIVIAL_DELIVER="1" if deliver else "0")
        server = Server(label, pinned(cmd, self.server_cpu), env, ROOT, port,
                        self.out / f"{label}.log")
        self.servers.append(server)
        return server

    def start_seed(self) -> Server:
        port = free_port()
        cmd = [str(BENCH_PYTHON), "-m", "uvicorn", "peer_seed.app:app", "--host", "127.0.0.1",
               "--port", str(port), "--log-level", "warning", "--no-access-log"]
        server = Server("seed", pinned(cmd, self.server_cpu), dict(os.environ), SHARED, port,
                        self.out / "seed.log")
        self.servers.append(server)
        return server

    def stop(self, *servers: Server) -> None:
        for server in servers:
            server.stop()
            self.servers.remove(server)

    # --- one scenario -----------------------------------------------------------------

    def run_scenario(self, name: str, layer: str, projects: list[Server], seed: Server | None):
        args = self.args
        kind, extra, _ = SCENARIOS[name]
        if name == "connections":
            extra = ["--conns", str(args.conns), "--hold", str(args.hold), "--endpoint",
                     "notifications", "--connect-concurrency", "100", "--connect-deadline", "180"]
        self.vacuum_database()
        load_before = os.getloadavg()
        started = time.time()
        with self.analysing():
            if self.peer:
                record = self.run_loadgen(name, kind, extra, layer, projects, seed)
            else:
                record = self.run_builtin(name, layer, projects[0])
        record.update(scenario=name, layer=layer, loadavg_before=load_before,
                      loadavg_after=os.getloadavg(), seconds=round(time.time() - started, 1))
        self.results.append(record)
        self.save()
        return record

    def run_loadgen(self, name, kind, extra, layer, projects, seed) -> dict:
        args = self.args
        runs = 1 if name == "connections" else args.runs
        aux = self.redis_pid() if layer != "memory" else None
        script = (ROOT / "bench" / "loadgen_since.py" if name in WITH_SINCE
                  else SHARED / "loadgen.py")
        cmd = [str(BENCH_PYTHON), str(script), kind, *extra,
               "--duration", str(args.duration), "--runs", str(runs), "--jwt-secret", SECRET]
        if self.client_cpu:
            cmd += ["--client-cpus", self.client_cpu]
        if seed is not None:
            cmd += ["--server", f"label=seed,target=seed,url=http://127.0.0.1:{seed.port},"
                                f"pid={seed.pid}"]
        for p in projects:
            spec = f"label={p.label},target=project,url=http://127.0.0.1:{p.port},pid={p.pid}"
            cmd += ["--server", spec + (f",aux={aux}" if aux else "")]
        if len(cmd) and sum(1 for c in cmd if c == "--server") == 1:
            # loadgen's compare mode needs two servers; one is a plain run.
            i = cmd.index("--server")
            spec = dict(kv.split("=", 1) for kv in cmd[i + 1].split(","))
            cmd[i:i + 2] = ["--target", spec["target"], "--url", spec["url"], "--label",
                            spec["label"], "--server-pid", spec["pid"]]
        tag = "-".join(p.label.removeprefix("project-") for p in projects)
        base = self.out / f"{layer}-{name}-{tag}"
        log(f"{layer} {name}: {' '.join(cmd[2:])}")
        with open(f"{base}.jsonl", "w") as out, open(f"{base}.log", "w") as err:
            proc = subprocess.run(cmd, cwd=ROOT, stdout=out, stderr=err,
                                  timeout=args.duration * runs * 8 + 900)
        lines = [json.loads(x) for x in open(f"{base}.jsonl") if x.strip().startswith("{")]
        summary = next((x for x in reversed(lines) if x.get("kind") == "summary"), None)
        if summary is None:  # one server: build the same shape from its runs
            runs_ = [x for x in lines if x.get("kind") == "run" and "metrics" in x]
            summary = {"median": {x["label"]: x["metrics"] for x in runs_[-1:]}, "ratios": {},
                       "errors": [x.get("error") for x in lines if "error" in x]}
        if kind == "notify":
            # Answered posts per second of each server, beside the deliveries.
            for label in {x["label"] for x in lines if x.get("kind") == "run"}:
                rates = sorted(x["posted_ok"] / x["window_s"] for x in lines
                               if x.get("kind") == "run" and x["label"] == label
                               and x.get("window_s"))
                if rates and label in (summary.get("median") or {}):
                    summary["median"][label]["posts_per_s"] = round(rates[len(rates) // 2], 1)
        tail = open(f"{base}.log").read().strip().splitlines()[-6:]
        log("\n  ".join(["done", *tail]))
        return {"client": "loadgen", "returncode": proc.returncode, "command": cmd,
                "median": summary.get("median"), "ratios": summary.get("ratios"),
                "errors": summary.get("errors"),
                "runs": [x for x in lines if x.get("kind") == "run"]}

    def run_builtin(self, name, layer, project: Server) -> dict:
        import wsclient

        if name not in BUILTIN_SCENARIOS:
            # Not a smaller run of the same thing: it would measure something else.
            error = f"{name} needs loadgen.py (bench/run.py --setup); the built-in client has none"
            log(f"{layer} {name}: {error}")
            return {"client": "builtin", "median": {}, "errors": [error], "runs": []}
        args, ws = self.args, f"ws://127.0.0.1:{project.port}"
        proc = wsclient.Proc(project.pid)
        if self.client_cpu:
            saved = os.sched_getaffinity(0)
            os.sched_setaffinity(0, {int(self.client_cpu)})
        runs = []
        try:
            for _ in range(1 if name == "connections" else args.runs):
                if name == "echo":
                    coro = wsclient.echo(ws, 50, args.duration, proc)
                elif name.startswith("fanout"):
                    coro = wsclient.fanout(ws, SECRET, int(name[6:]), 10, args.duration, proc)
                elif name in ("notify", "notify64"):
                    coro = wsclient.notify("127.0.0.1", project.port, SECRET, 100, args.duration,
                                           64 if name == "notify64" else 8, proc)
                else:
                    coro = wsclient.connections(ws, SECRET, args.conns, args.hold, proc)
                runs.append(asyncio.run(coro))
                log(f"{layer} {name}: {runs[-1]}")
        finally:
            if self.client_cpu:
                os.sched_setaffinity(0, saved)
        return {"client": "builtin", "median": {project.label: wsclient.summarise_runs(runs)},
                "runs": runs}

    # --- profiles ---------------------------------------------------------------------

    def profile(self, name: str, layer: str, project: Server) -> None:
        """py-spy on the project while loadgen (or the built-in client) drives ``name``."""
        py_spy = shutil.which("py-spy") or str(BENCH_PYTHON.with_name("py-spy"))
        if not Path(py_spy).exists():
            log("py-spy not found: pip install py-spy")
            return
        raw = self.out / f"profile-{layer}-{name}.txt"
        seconds = max(4, int(self.args.duration) - 2)
        members = {"fanout1000": 1000, "fanout100": 100, "notify": 100, "notify64": 100,
                   "rooms2k": 2000, "rooms10k": 2000}.get(name, 50)

        def spy():
            # Start once the clients are connected (and settled), not during the join storm.
            base, deadline = len(os.listdir(f"/proc/{project.pid}/fd")), time.monotonic() + 180
            while time.monotonic() < deadline:
                if len(os.listdir(f"/proc/{project.pid}/fd")) >= base + members:
                    break
                time.sleep(0.25)
            time.sleep(self.args.profile_delay)
            # Non-blocking sampling disturbs the server least, but on a saturated
            # machine many of its stacks come back truncated: --profile-blocking.
            mode = [] if self.args.profile_blocking else ["--nonblocking"]
            subprocess.run([py_spy, "record", "--pid", str(project.pid), "--duration",
                            str(seconds), "--rate", "200", "--format", "raw", *mode,
                            "--output", str(raw)], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=seconds + 60)

        import threading

        thread = threading.Thread(target=spy, daemon=True)
        thread.start()
        saved_runs, self.args.runs = self.args.runs, 1
        saved_duration, self.args.duration = self.args.duration, self.args.duration + 4
        try:
            self.run_scenario(name, layer, [project], None)
            self.results[-1]["profile_run"] = True
        finally:
            self.args.runs, self.args.duration = saved_runs, saved_duration
        thread.join(120)
        if raw.exists():
            sys.path.insert(0, str(Path(__file__).parent))
            import pyspy_top

            (raw.with_suffix(".md")).write_text(pyspy_top.render(pyspy_top.summarise(str(raw))))
            log(f"profile: {raw.with_suffix('.md')}")

    # --- output -----------------------------------------------------------------------

    def machine(self) -> dict:
        versions = {}
        for dist in ("django", "channels", "channels-redis", "daphne", "twisted", "autobahn",
                     "redis", "uvicorn", "websockets"):
            with contextlib.suppress(importlib.metadata.PackageNotFoundError):
                versions[dist] = importlib.metadata.version(dist)
        if self.peer:  # the reference's and the client's, from their own environment
            for dist in ("picows", "fastapi", "uvicorn"):
                versions[f"bench {dist}"] = subprocess.run(
                    [str(BENCH_PYTHON), "-c", "import sys, importlib.metadata as m; "
                     "print(m.version(sys.argv[1]))", dist],
                    capture_output=True, text=True).stdout.strip()
        free = subprocess.run(["free", "-h"], capture_output=True, text=True).stdout
        git = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT,
                             capture_output=True, text=True).stdout.strip()
        return {"nproc": os.cpu_count(), "python": platform.python_version(), "git": git,
                "platform": platform.platform(), "free_h": free, "versions": versions,
                "fd_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
                "server_cpu": self.server_cpu, "client_cpu": self.client_cpu,
                "client": "loadgen" if self.peer else "builtin (websockets)",
                **self.database_latency}

    def save(self) -> None:
        data = {"machine": self.machine(), "args": vars(self.args), "results": self.results}
        (self.out / "results.json").write_text(json.dumps(data, indent=1, default=str))
        (self.out / "summary.md").write_text(render(data))


KEYS = {
    "echo": ("msgs_per_s", "rtt_p99_ms"),
    "fanout": ("deliveries_per_s", "last_p99_ms", "delivered_frac"),
    "notify": ("notify_per_s", "deliver_p99_ms", "posts_per_s"),
    "rooms": ("deliveries_per_s", "lat_p50_ms", "lat_p99_ms", "delivered_frac"),
    "connections": ("connected", "handshake_p50_ms", "handshake_p99_ms", "rss_per_conn_kib"),
}


def render(data: dict) -> str:
    rows = ["| scenario | layer | server | metric | value | ratio to seed | load 1m |",
            "|---|---|---|---|---:|---:|---:|"]
    for r in data["results"]:
        keys = KEYS[SCENARIOS[r["scenario"]][0]] + ("server_cpu_pct", "client_cpu_pct")
        tag = " (profiled)" if r.get("profile_run") else ""
        for label, med in (r.get("median") or {}).items():
            if label == "seed":
                continue
            ratios = (r.get("ratios") or {}).get(f"{label}/seed", {})
            head, seed = keys[0], (r.get("median") or {}).get("seed") or {}
            if med.get(head) and med.get("server_cpu_pct") and seed.get(head) \
                    and seed.get("server_cpu_pct") and head != "connected":
                # Throughput per server CPU second: steadier than the raw ratio when other
                # work shares the server's core.
                eff = (med[head] / med["server_cpu_pct"]) / (seed[head] / seed["server_cpu_pct"])
                rows.append(f"| {r['scenario']}{tag} | {r['layer']} | {label} | {head} per "
                            f"server CPU | | {round(eff, 3)} | |")
            for k in keys:
                if k in med:
                    ratio = ratios.get(k)
                    rows.append(f"| {r['scenario']}{tag} | {r['layer']} | {label} | {k} | "
                                f"{med[k]} | {'' if ratio is None else ratio} | "
                                f"{round(r['loadavg_before'][0], 2)} |")
            if "seed" in r["median"]:
                seed = r["median"]["seed"]
                rows.append(f"| {r['scenario']} | {r['layer']} | seed | "
                            + ", ".join(f"{k}={seed.get(k)}" for k in keys if k in seed)
                            + " | | | |")
        medians = r.get("median") or {}
        ceilings = {"daphne's HTTP ceiling (trivial-http posts_per_s)":
                    (medians.get("trivial-http") or {}).get("posts_per_s"),
                    "daphne's notify ceiling (trivial-notify notify_per_s)":
                    (medians.get("trivial-notify") or {}).get("notify_per_s")}
        for label, med in medians.items():
            for what, ceiling in ceilings.items():
                if ceiling and label.startswith("project") and med.get("notify_per_s"):
                    rows.append(f"| {r['scenario']} | {r['layer']} | {label} | notify_per_s / "
                                f"{what} | {round(med['notify_per_s'] / ceiling, 3)} | | |")
        for e in r.get("errors") or []:
            rows.append(f"| {r['scenario']} | {r['layer']} | ERROR | {e} | | | |")
    m = data["machine"]
    latency = (f", PostgreSQL: SELECT 1 {m['postgres_roundtrip_ms']} ms, INSERT + COMMIT "
               f"{m['postgres_commit_ms']} ms" if "postgres_commit_ms" in m else "")
    return "\n".join([f"# Bench run ({m['client']})", "",
                      f"nproc={m['nproc']}, python {m['python']}, {m['versions']}{latency}", "",
                      *rows])


def setup() -> None:
    """Install the reference app's and loadgen's requirements into bench/.venv."""
    req = SHARED / "requirements.txt"
    if not req.exists():
        raise SystemExit(f"{req} is missing: the built-in client needs nothing more")
    if not BENCH_PYTHON.exists():
        subprocess.run([sys.executable, "-m", "venv", str(BENCH_VENV)], check=True)
    subprocess.run([str(BENCH_PYTHON), "-m", "pip", "install", "--quiet", "-r", str(req),
                    "py-spy"], check=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenarios", default=DEFAULT_SCENARIOS,
                   help=f"comma list of {', '.join(SCENARIOS)}")
    p.add_argument("--layers", default="memory",
                   help="comma list of memory, core, pubsub (the last two need --redis)")
    p.add_argument("--redis", default=None, help="Redis URL, e.g. redis://127.0.0.1:6379/5")
    p.add_argument("--database-url", default=None, help="instead of a fresh SQLite file")
    p.add_argument("--duration", type=float, default=6.0, help="measured seconds per run")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--conns", type=int, default=10000, help="idle connections")
    p.add_argument("--hold", type=float, default=10.0, help="seconds the idle connections stay")
    p.add_argument("--uvicorn", action="store_true", help="also serve the project with uvicorn")
    p.add_argument("--no-daphne", action="store_true", help="with --uvicorn: uvicorn only")
    p.add_argument("--ceiling", action="store_true",
                   help="also serve bench/trivial_asgi.py under daphne (notify: daphne's ceilings)")
    p.add_argument("--baseline", default="", metavar="REV",
                   help="also serve git revision REV (label project-<server>-base): an A/B run")
    p.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE,...",
                   help="also serve this tree with extra settings (label project-<server>-NAME)")
    p.add_argument("--profile", default="", help="comma list of scenarios to profile (py-spy)")
    p.add_argument("--profile-delay", type=float, default=3.0, metavar="S",
                   help="start py-spy this long after the clients are connected (default 3)")
    p.add_argument("--profile-blocking", action="store_true",
                   help="py-spy pauses the server for each sample (whole stacks, slower server)")
    p.add_argument("--no-peer", action="store_true", help="project only, built-in client")
    p.add_argument("--no-pin", action="store_true", help="do not pin server/client to cores")
    p.add_argument("--setup", action="store_true",
                   help="install the reference's requirements and py-spy in bench/.venv")
    p.add_argument("--out", default=str(ROOT / "bench" / "out"))
    args = p.parse_args(argv)
    if args.setup:
        setup()
        return
    names = [n for n in args.scenarios.split(",") if n]
    layers = [x for x in args.layers.split(",") if x]
    for n in names:
        if n not in SCENARIOS:
            raise SystemExit(f"unknown scenario {n!r}")
    if any(x != "memory" for x in layers) and not args.redis:
        raise SystemExit("--layers core/pubsub need --redis URL")
    fds = raise_fd_limit(2 * args.conns + 1000)
    if "connections" in names and fds < args.conns + 500:
        args.conns = max(100, fds - 500)
        log(f"open-file limit is {fds}: idle connections capped at {args.conns}")
    sys.path.insert(0, str(Path(__file__).parent))
    bench = Bench(args)
    if (SHARED / "loadgen.py").exists() and not bench.peer and not args.no_peer:
        log("../shared/bench found but its requirements are missing: run with --setup for "
            "ratios against the reference; measuring the project alone")
    log(f"output: {bench.out} (client: {'loadgen' if bench.peer else 'built-in'})")
    bench.prepare_database(users_needed(names, args.conns))
    bench.database_latency = bench.measure_postgres()
    kinds = ([] if args.no_daphne else ["daphne"]) + (["uvicorn"] if args.uvicorn else [])
    baseline = bench.baseline_tree()
    variants = [(name, dict(pair.split("=", 1) for pair in pairs.split(",")))
                for name, pairs in (v.split(":", 1) for v in args.variant)]
    try:
        for layer in layers:
            todo = [n for n in names if layer == layers[0] or SCENARIOS[n][2]]
            if not todo:
                continue
            steady = [n for n in todo if n != "connections"]
            if steady:
                if layer != "memory":
                    bench.flush_redis()
                seed = bench.start_seed() if bench.peer else None
                projects = [bench.start_project(layer, k) for k in kinds]
                if baseline is not None:
                    projects += [bench.start_project(layer, k, baseline, f"project-{k}-base")
                                 for k in kinds]
                for name, extra in variants:
                    projects += [bench.start_project(layer, k, label=f"project-{k}-{name}",
                                                     extra_env=extra) for k in kinds]
                ceiling = args.ceiling and any(SCENARIOS[n][0] == "notify" for n in steady)
                trivial = ([bench.start_trivial(layer, False), bench.start_trivial(layer, True)]
                           if ceiling else [])
                for name in steady:
                    bench.run_scenario(name, layer, projects + (
                        trivial if SCENARIOS[name][0] == "notify" else []), seed)
                for name in [n for n in args.profile.split(",") if n in steady]:
                    bench.profile(name, layer, projects[0])
                bench.stop(*projects, *trivial, *([seed] if seed else []))
            if "connections" in todo:
                # Fresh servers: CPython keeps freed memory, so only a first run is clean.
                for kind in kinds:
                    if layer != "memory":
                        bench.flush_redis()
                    seed = bench.start_seed() if bench.peer else None
                    project = bench.start_project(layer, kind)
                    time.sleep(2)
                    bench.run_scenario("connections", layer, [project], seed)
                    bench.stop(project, *([seed] if seed else []))
    finally:
        for server in list(bench.servers):
            bench.stop(server)
        bench.save()
    log(f"results: {bench.out / 'summary.md'}")
    print((bench.out / "summary.md").read_text())


if __name__ == "__main__":
    main()
