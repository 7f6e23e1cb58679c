"""The fork server of the test servers (tests/forkserver.py) stands in for ``subprocess``:
a child runs its command with its own environment and output, and its end is reported
as Popen reports it."""

import os
import signal
import subprocess
import time

import pytest

from tests.conftest import FORK_SERVERS, ROOT
from tests.forkserver import ForkServer

pytestmark = pytest.mark.once  # the tests' own machinery: the stack changes nothing

SCRIPT = """
import os, sys, time

def is_open(fd):
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False

print("cwd", os.getcwd(), "argv", sys.argv[1:], "only", os.environ.get("ONLY_HERE"))
from tests.forkserver import PRELOADED
print("preloaded, not imported:", [name for name in PRELOADED if name not in sys.modules])
print("a reactor:", "twisted.internet.reactor" in sys.modules)
print("descriptors but 0-2:", [fd for fd in range(3, 1024) if is_open(fd)])
if sys.argv[1] == "sleep":
    time.sleep(60)
sys.exit(int(sys.argv[1]))
"""


@pytest.fixture
def forks():
    server = ForkServer(ROOT)
    yield server
    server.close()


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "child.py"
    path.write_text(SCRIPT)
    return str(path)


def test_a_child_runs_its_command_with_its_own_environment_and_log(forks, script,
                                                                   tmp_path):
    log = tmp_path / "child.log"
    child = forks.start([script, "3"], {"ONLY_HERE": "yes"}, log)
    assert child.wait(timeout=10) == 3
    assert child.poll() == child.returncode == 3
    assert log.read_text().splitlines() == [
        f"cwd {ROOT} argv ['3'] only yes",
        "preloaded, not imported: []",
        "a reactor: False",
        "descriptors but 0-2: []",
    ]
    assert "ONLY_HERE" not in os.environ


def test_a_signalled_child_reports_minus_the_signal(forks, script, tmp_path):
    child = forks.start([script, "sleep"], {}, tmp_path / "child.log")
    assert child.poll() is None
    with pytest.raises(subprocess.TimeoutExpired):
        child.wait(timeout=0.2)
    child.terminate()
    assert child.wait(timeout=10) == -signal.SIGTERM


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for init to reap it does not)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[1])


def test_closing_the_server_kills_its_children(script, tmp_path):
    server = ForkServer(ROOT)
    child = server.start([script, "sleep"], {}, tmp_path / "child.log")
    assert alive(child.pid)
    server.close()
    deadline = time.monotonic() + 10
    while alive(child.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(child.pid)


def test_the_test_servers_are_forked_unless_turned_off(daphne_server):
    """A test server is a child of this process's fork server, not a new interpreter,
    unless ``TEST_FORK_SERVER=false`` turns the fork server off."""
    server = daphne_server()
    forked = parent_of(server.process.pid) != os.getpid()
    assert forked == FORK_SERVERS
