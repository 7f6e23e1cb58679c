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
    ensure_debian_packages()
    code = run("-m", "ruff", "check", ".")
    if code:
        print("dev.py: ruff found problems (see above)")
        return code
    return run("-m", "pytest", *rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
