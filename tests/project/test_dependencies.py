"""requirements.lock is what pyproject.toml asks for, and what this environment runs.

``python3 dev.py lock`` writes the lock from pyproject.toml; ``dev.py`` installs it with
``--require-hashes``. These tests catch an edit of one without the other, and an
environment that drifted from the lock.
"""

import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
#: The packages whose internals the server adapters use: bounded above in pyproject.toml.
INTERNALS_USED = {"django", "channels", "channels-redis", "daphne", "twisted", "autobahn",
                  "uvicorn"}


def locked() -> dict[str, tuple[Version, Marker | None, list[str]]]:
    """Name -> (version, marker, hashes) of every entry of requirements.lock that applies here."""
    entries: dict[str, tuple[Version, Marker | None, list[str]]] = {}
    text = (ROOT / "requirements.lock").read_text().replace("\\\n", " ")
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip() if not line.lstrip().startswith("--") else ""
        if not line:
            continue
        spec, *options = line.split(" --hash=")
        requirement = Requirement(spec)
        if requirement.marker and not requirement.marker.evaluate():
            continue
        (pin,) = requirement.specifier
        assert pin.operator == "==", f"{spec}: the lock pins exact versions"
        entries[canonicalize_name(requirement.name)] = (
            Version(pin.version), requirement.marker, [h.strip() for h in options]
        )
    return entries


def declared() -> list[Requirement]:
    extras = PYPROJECT["optional-dependencies"]
    return [Requirement(r) for r in [*PYPROJECT["dependencies"], *extras["test"],
                                     *extras["uvicorn"]]]


def test_every_declared_requirement_is_locked_at_a_version_it_allows():
    """Adding a dependency or moving a range in pyproject.toml needs `dev.py lock`."""
    lock = locked()
    for requirement in declared():
        name = canonicalize_name(requirement.name)
        assert name in lock, f"{name} is in pyproject.toml but not in requirements.lock"
        version = lock[name][0]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"requirements.lock has {name}=={version}, pyproject.toml asks {requirement}: "
            "run `python3 dev.py lock`"
        )


def test_every_locked_package_has_hashes():
    """pip installs the lock with --require-hashes: a pin without a hash would fail there."""
    for name, (_, _, hashes) in locked().items():
        assert hashes and all(h.startswith("sha256:") for h in hashes), name


def test_the_packages_whose_internals_are_used_have_an_upper_bound():
    """A new release of these is taken deliberately, never by an install on a new day."""
    bounded = {canonicalize_name(r.name) for r in declared()
               if any(s.operator in {"<", "<=", "==", "~="} for s in r.specifier)}
    assert INTERNALS_USED <= bounded, INTERNALS_USED - bounded


@pytest.mark.parametrize("name", sorted(locked()))
def test_the_environment_runs_the_locked_version(name):
    """What the suite runs on is what the lock says (dev.py rebuilds .venv when it changes)."""
    assert Version(metadata.version(name)) == locked()[name][0]


def test_redis_replies_are_parsed_in_c():
    """redis-py takes hiredis when it can import it, and falls back to its own parser in
    Python without a word: 30 times the CPU for a room's presence list. Fails if the
    lock or the environment silently loses it."""
    import redis.utils

    assert redis.utils.HIREDIS_AVAILABLE
