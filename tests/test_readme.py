"""The README's shell and Python blocks run as written, against a live ``dev.py serve``.

Each ```sh and ```python block of README.md runs in a new shell from the repository
root, in the environment a newcomer has (no SECRET_KEY, no DEBUG, the embedded
default), against a server started with the README's own command on a free port:
"127.0.0.1:8000" and "--port 8000" in a block become that server's address. A block says how it runs
in an HTML comment on the line before its fence (a block without one must exit 0):

    <!-- readme-test: expect "TEXT" -->      exits 0 and prints TEXT
    <!-- readme-test: django-shell -->       Python fed to ``python3 dev.py manage shell``
    <!-- readme-test: server -->             a server on its own port: it must answer /healthz
    <!-- readme-test: until-stopped -->      runs until stopped: still running after 3 s
    <!-- readme-test: skip REASON -->        not run here, for the REASON given
"""

import os
import re
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port

pytestmark = [pytest.mark.daphne, pytest.mark.once]

BLOCK = re.compile(
    r"(?:<!-- readme-test: (?P<how>[^\n]*?) -->\n)?^```(?P<lang>sh|python)\n(?P<body>.*?)^```$",
    re.S | re.M,
)
README_ADDRESS = "127.0.0.1:8000"


def readme_blocks() -> list[tuple[int, str, str, str]]:
    text = (ROOT / "README.md").read_text()
    return [(text.count("\n", 0, m.start("body")) + 1, m["how"] or "", m["lang"], m["body"])
            for m in BLOCK.finditer(text)]


def newcomer_env(tmp_path: Path) -> dict[str, str]:
    """This process's environment less what the test settings added: a new user's shell."""
    env = {name: value for name, value in os.environ.items()
           if name not in {"SECRET_KEY", "JWT_SECRET", "DEBUG", "DJANGO_SETTINGS_MODULE",
                           "SQLITE_TEST_PATH", "REDIS_PREFIX"}}
    return {**env, "SQLITE_PATH": str(tmp_path / "readme.sqlite3"), "DATABASE_URL": "",
            "REDIS_URL": "", "PYTHONUNBUFFERED": "1"}


def wait_for_output(process: subprocess.Popen, log: Path, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"no {text!r} in time; output:\n{log.read_text(errors='replace')}")
        time.sleep(0.1)


def stop(process: subprocess.Popen) -> None:
    """Stop a shell and everything it started (its own process group)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def start(command: str, env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(["bash", "-c", command], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def test_every_block_says_how_it_runs_or_runs_plainly():
    """A block's comment is one of the forms above, so a typo cannot turn a test off."""
    forms = re.compile(r'(expect ".+"|django-shell|server|until-stopped|skip .+)?')
    blocks = readme_blocks()
    assert len(blocks) >= 5
    for line, how, _, _ in blocks:
        assert forms.fullmatch(how), f"README.md:{line}: unknown readme-test form {how!r}"


def test_the_readme_blocks_run_as_written(tmp_path):
    """Quick start, the terminal client, uvicorn and the notify snippet all work as printed."""
    env = newcomer_env(tmp_path)
    port = free_port()
    server_log = tmp_path / "serve.log"
    server = start(f"python3 dev.py serve --port {port}", env, server_log)
    try:
        # `serve` says where to go: the test waits for that very line.
        wait_for_output(server, server_log, f"http://127.0.0.1:{port}/", timeout=60)
        for line, how, lang, body in readme_blocks():
            where = f"README.md:{line}"
            if how.startswith("skip "):
                continue
            own_port = free_port() if how == "server" else port
            body = body.replace("--port 8000", f"--port {own_port}")
            body = body.replace(README_ADDRESS, f"127.0.0.1:{own_port}")
            if lang == "python":
                runner = "manage shell" if how == "django-shell" else "run -"
                body = f"python3 dev.py {runner} <<'README_PYTHON'\n{body}README_PYTHON\n"
            log = tmp_path / f"block-{line}.log"
            if how in {"server", "until-stopped"}:
                process = start(body, env, log)
                try:
                    if how == "server":
                        wait_for_listening(process, log, own_port, where)
                    else:
                        time.sleep(3)
                        assert process.poll() is None, f"{where} exited:\n{log.read_text()}"
                finally:
                    stop(process)
                continue
            result = subprocess.run(["bash", "-euo", "pipefail", "-c", body], cwd=ROOT, env=env,
                                    stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                    timeout=120)
            output = result.stdout + result.stderr
            assert result.returncode == 0, f"{where} exited {result.returncode}:\n{output}"
            if how.startswith("expect "):
                expected = how.removeprefix("expect ").strip('"')
                assert expected in result.stdout, f"{where}: no {expected!r} in:\n{output}"
    finally:
        stop(server)


def wait_for_listening(process: subprocess.Popen, log: Path, port: int, where: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as answer:
                assert answer.status == 200
                return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{where} did not serve /healthz:\n{log.read_text(errors='replace')}")
            time.sleep(0.2)
