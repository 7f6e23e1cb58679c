#!/usr/bin/env python3
"""Set up the project's virtual environment, then serve or test.

    python3 dev.py serve   # venv + migrate + daphne on 127.0.0.1:8000 (SQLite, in-memory layer)
    python3 dev.py test    # venv + ruff + the whole pytest suite (extra args go to pytest)

Only python3 (3.11+) is needed. The environment lives in ``.venv`` and is
reinstalled only when ``pyproject.toml`` changes, so a second run starts at once.
"""

import hashlib
import os
import shutil
import subprocess
import sys
import tomllib
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / "python"
STAMP = VENV / ".installed"


def ensure_venv() -> None:
    """Create ``.venv`` and install the dependencies (with test extras) if needed."""
    pyproject = (ROOT / "pyproject.toml").read_bytes()
    digest = hashlib.sha256(pyproject).hexdigest()
    if STAMP.exists() and STAMP.read_text() == digest and PYTHON.exists():
        return
    if not PYTHON.exists():
        print("dev.py: creating .venv", flush=True)
        venv.create(VENV, with_pip=True)
    meta = tomllib.loads(pyproject.decode())["project"]
    requirements = meta["dependencies"] + meta["optional-dependencies"]["test"]
    print("dev.py: installing dependencies", flush=True)
    subprocess.run(
        [str(PYTHON), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         *requirements],
        check=True,
    )
    STAMP.write_text(digest)


def ensure_chromium() -> None:
    """Install Debian's chromium for the browser tests when missing and we may."""
    if shutil.which("chromium") or os.environ.get("SKIP_BROWSER_INSTALL"):
        return
    if not shutil.which("apt-get") or os.geteuid() != 0:
        print("dev.py: chromium missing and apt-get unavailable: browser tests will skip")
        return
    print("dev.py: installing chromium (Debian package) for the browser tests", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=False, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=False, env=env,
                   stdout=subprocess.DEVNULL)


def run(*args: str) -> int:
    return subprocess.run([str(PYTHON), *args], cwd=ROOT).returncode


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"serve", "test", "manage"}:
        print(__doc__)
        return 2
    command, rest = argv[0], argv[1:]
    ensure_venv()
    if command == "manage":
        return run("manage.py", *rest)
    if command == "serve":
        os.environ.setdefault("DEBUG", "true")
        code = run("manage.py", "migrate", "--no-input", "-v", "0")
        return code or run("manage.py", "serve", *rest)
    # test
    ensure_chromium()
    code = run("-m", "ruff", "check", ".")
    if code:
        print("dev.py: ruff found problems (see above)")
        return code
    return run("-m", "pytest", *rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
