"""Settings of the test run: the project's own, with a test environment.

The defaults below are set before ``project.settings`` reads the environment;
daphne processes started by tests inherit them.
"""

import os
import secrets
import tempfile

os.environ.setdefault("DEBUG", "true")
os.environ.setdefault("SECRET_KEY", "test-secret-key-" + "x" * 40)
os.environ.setdefault("JWT_SECRET", "test-jwt-secret-" + "y" * 40)
# A file, not :memory:, so daphne processes started by tests share the test database.
os.environ.setdefault(
    "SQLITE_TEST_PATH", os.path.join(tempfile.mkdtemp(prefix="rt-test-"), "test.sqlite3")
)
# Keys of this run live apart from anything else in the same Redis database; each
# pytest-xdist worker of a run has its own (its processes inherit the controller's).
os.environ.setdefault("REDIS_PREFIX", "test-" + secrets.token_hex(4))
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["REDIS_PREFIX"] = (
        os.environ["REDIS_PREFIX"].split(".")[0] + "." + os.environ["PYTEST_XDIST_WORKER"]
    )

from project.settings import *  # noqa: F403

if DATABASES["default"]["ENGINE"].endswith("postgresql"):  # noqa: F405
    # One test database per run, so concurrent runs on one server don't collide.
    DATABASES["default"]["TEST"] = {  # noqa: F405
        "NAME": f"test_{DATABASES['default']['NAME']}_{os.getpid()}"  # noqa: F405
    }
