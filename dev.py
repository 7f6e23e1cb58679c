#!/usr/bin/env python3
"""Set up the project's virtual environment, then serve, test or run a command in it.

    python3 dev.py serve [--port P]   # venv + migrate + daphne on http://127.0.0.1:8000
    python3 dev.py test [PYTEST ARGS] # venv + ruff + the whole pytest suite, 4 workers
    python3 dev.py manage COMMAND     # any manage.py command, with serve's defaults
    python3 dev.py run SCRIPT [ARGS]  # a Python script (or - for stdin) in the venv
    python3 dev.py lock [--upgrade]   # re-resolve requirements.lock from pyproject.toml

Only python3 (3.11+) is needed. ``.venv`` is built from ``requirements.lock`` (exact
versions and hashes) and rebuilt from scratch whenever the lock changes, so what runs
is what the lock says and nothing else.
"""

import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / "python"
STAMP = VENV / ".installed"
LOCK = ROOT / "requirements.lock"

#: The resolver that writes requirements.lock (README, "Dependencies"); pinned so that
#: two engineers resolving the same pyproject.toml get the same lock.
LOCK_TOOL = "uv==0.13.8"
LOCK_COMMAND = [
    "pip", "compile", "pyproject.toml", "--extra", "test", "--universal",
    "--python-version", "3.11", "--generate-hashes", "--quiet",
    "--custom-compile-command", "python3 dev.py lock", "--output-file", str(LOCK),
]

#: What ``serve`` and ``manage`` assume on a developer's machine (README, "Configuration").
DEVELOPMENT_DEFAULTS = {"DEBUG": "true"}


def ensure_venv() -> None:
    """Build ``.venv`` from requirements.lock unless it was built from this very lock."""
    digest = hashlib.sha256(LOCK.read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == digest and PYTHON.exists():
        return
    if VENV.exists():
        # A new lock gets a new environment: packages the lock dropped must not linger.
        print("dev.py: requirements.lock changed, rebuilding .venv", flush=True)
        shutil.rmtree(VENV)
    print("dev.py: creating .venv from requirements.lock", flush=True)
    venv.create(VENV, with_pip=True)
    subprocess.run(
        [str(PYTHON), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "--require-hashes", "--no-deps", "-r", str(LOCK)],
        check=True,
    )
    STAMP.write_text(digest)


# Debian packages the tests use (a test skips when its program is missing):
# command on PATH -> package. chromium drives the browser tests; nginx checks the
# example configuration in deploy/.
DEBIAN_PACKAGES = {"chromium": "chromium", "nginx": "nginx-light"}


def ensure_debian_packages() -> None:
    """Install the missing Debian packages of the tests with apt-get when we are root.

    CI machines are new each time, so the project installs what its tests need
    instead of relying on a hand-installed program.
    """
    if os.environ.get("SKIP_APT_INSTALL"):
        return
    skip = {"chromium"} if os.environ.get("SKIP_BROWSER_INSTALL") else set()
    missing = [pkg for cmd, pkg in DEBIAN_PACKAGES.items()
               if cmd not in skip and not shutil.which(cmd) and not Path("/usr/sbin", cmd).exists()]
    if not missing:
        return
    if not shutil.which("apt-get") or os.geteuid() != 0:
        print(f"dev.py: {', '.join(missing)} missing and apt-get unavailable: "
              "the tests that need them will skip")
        return
    print(f"dev.py: installing {', '.join(missing)} (Debian packages) for the tests", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=False, env=env)
    for package in missing:  # one at a time: a failing one does not hold back the others
        subprocess.run(["apt-get", "install", "-y", "-qq", package],
                       check=False, env=env, stdout=subprocess.DEVNULL)


def run(*args: str, env: dict[str, str] | None = None) -> int:
    return subprocess.run([str(PYTHON), *args], cwd=ROOT, env=env).returncode


def development_env() -> dict[str, str]:
    return {**DEVELOPMENT_DEFAULTS, **os.environ}


def lock(rest: list[str]) -> int:
    """Resolve pyproject.toml into requirements.lock; ``--upgrade`` takes the newest allowed."""
    ensure_venv()
    if not (BIN / "uv").exists():
        subprocess.run([str(PYTHON), "-m", "pip", "install", "--quiet", LOCK_TOOL], check=True)
    code = subprocess.run([str(BIN / "uv"), *LOCK_COMMAND, *rest], cwd=ROOT).returncode
    if not code:
        print("dev.py: requirements.lock written; now run `python3 dev.py test` and the "
              "bench A/B (README, \"Dependencies\")")
    return code


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"serve", "test", "manage", "run", "lock"}:
        print(__doc__)
        return 2
    command, rest = argv[0], argv[1:]
    if command == "lock":
        return lock(rest)
    ensure_venv()
    if command == "run":
        return run(*rest, env=development_env())
    if command == "manage":
        return run("manage.py", *rest, env=development_env())
    if command == "serve":
        env = development_env()
        code = run("manage.py", "migrate", "--no-input", "-v", "0", env=env)
        return code or run("manage.py", "serve", *rest, env=env)
    # test
    ensure_debian_packages()
    code = run("-m", "ruff", "check", ".")
    if code:
        print("dev.py: ruff found problems (see above)")
        return code
    return run("-m", "pytest", *parallel(rest), *rest, env=suite_env())


#: pytest-xdist workers of ``dev.py test``. Most tests wait on a daphne process, a
#: browser or a database rather than compute, so more workers than cores pay off.
TEST_WORKERS = 4


def parallel(args: list[str]) -> list[str]:
    """The pytest-xdist options, unless ``args`` choose their own (``-n 0``: none).

    ``--dist loadfile`` keeps each test module on one worker: module-scoped
    fixtures are set up once, and a module's tests see each other's effects
    (``test_fuzz.py`` counts its own examples). ``--no-loadscope-reorder`` hands
    the modules out in collection order, where tests/conftest.py puts the slowest
    first (xdist would order them by their number of tests).
    """
    if any(arg.startswith(("-n", "--numprocesses", "--dist")) for arg in args):
        return []
    return ["-n", str(TEST_WORKERS), "--dist", "loadfile", "--no-loadscope-reorder"]


def suite_env() -> dict[str, str]:
    """The environment of the suite: Python writes bytecode, whatever the machine says.

    Where ``PYTHONDONTWRITEBYTECODE`` is set (as on CI machines), each of a run's
    workers would rewrite and compile every test module again at each collection
    (pytest keeps its rewritten modules as bytecode only where Python may write it:
    about 3 s of CPU a worker), and each of the ~200 servers the suite starts would
    compile the project's sources (60-70 ms). With it unset the workers' collection
    leaves the bytecode that every later process reads.
    """
    return {name: value for name, value in os.environ.items()
            if name != "PYTHONDONTWRITEBYTECODE"}


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
