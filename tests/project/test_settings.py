"""README's configuration table lists every environment variable the project reads, and
only those.

The variables are found in the source, not in a list kept by hand: every name that
``project/settings.py`` (the one settings reader of the server), ``manage.py``,
``dev.py`` and the tests read with ``os.environ``, ``os.getenv`` or one of the
settings' ``env_*`` helpers.
"""

import ast
import re

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.once  # reads files; the stack does not change it

#: Read, but not set by whoever runs the project or its tests.
NOT_CONFIGURATION = {
    "PYTEST_XDIST_WORKER": "set by pytest-xdist on each of its workers",
    "PATH": "the shell's; a test compares the environments it passes on",
    "ONLY_HERE": "a test's own child process reads it",
}


def readers() -> list:
    return [ROOT / "project" / "settings.py", ROOT / "manage.py", ROOT / "dev.py",
            *sorted((ROOT / "tests").rglob("*.py"))]


def names_read(source: str) -> set[str]:
    """The environment variables ``source`` reads by a literal name."""
    names = set()

    def environ(node: ast.AST) -> bool:
        return ast.unparse(node).endswith("environ")

    for node in ast.walk(ast.parse(source)):
        name = None
        if isinstance(node, ast.Call) and node.args:
            func = node.func
            if ((isinstance(func, ast.Attribute) and func.attr == "get" and environ(func.value))
                    or (isinstance(func, ast.Attribute) and func.attr == "getenv")
                    or (isinstance(func, ast.Name) and func.id.startswith("env_"))):
                name = node.args[0]
        elif isinstance(node, ast.Subscript) and environ(node.value):
            name = node.slice
        elif (isinstance(node, ast.Compare) and isinstance(node.ops[0], ast.In | ast.NotIn)
              and environ(node.comparators[0])):
            name = node.left
        if isinstance(name, ast.Constant) and isinstance(name.value, str):
            names.add(name.value)
    return names


def configuration_table() -> set[str]:
    """The variables in the first column of README's "Configuration" table."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    first_cells = re.findall(r"^\| ([^|]*) \|", section, re.M)
    return {name for cell in first_cells for name in re.findall(r"`([A-Z][A-Z0-9_]*)`", cell)}


def read_by_the_project() -> set[str]:
    names = set().union(*(names_read(path.read_text()) for path in readers()))
    return names - set(NOT_CONFIGURATION)


def test_the_scan_finds_each_way_of_reading_a_variable():
    source = """
import os
a = env_int("A", 1)
b = os.environ.get("B")
c = os.environ["C"]
d = "D" in os.environ
e = os.getenv("E")
f = env_list(
    "F", "")
g = settings.get("G")
"""
    assert names_read(source) == {"A", "B", "C", "D", "E", "F"}


def test_every_variable_the_project_reads_is_in_the_readme():
    assert read_by_the_project() - configuration_table() == set()


def test_every_variable_in_the_readme_is_read_by_the_project():
    assert configuration_table() - read_by_the_project() == set()


def test_the_settings_read_their_variables():
    # A check that the scan sees the settings at all, so the two tests above cannot
    # pass on an empty set.
    assert {"SECRET_KEY", "DATABASE_URL", "REDIS_URL", "WS_MAX_ANONYMOUS_CONNECTIONS"} <= (
        names_read((ROOT / "project/settings.py").read_text()))
