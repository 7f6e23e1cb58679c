"""Summarise a py-spy ``--format raw`` (collapsed stacks) file: top self and inclusive frames.

    python bench/pyspy_top.py out/profile.txt [--top 25]
"""

import argparse
import re
from collections import Counter

_SITE = re.compile(r"/(?:site-packages|lib/python3\.\d+)/")


def short(frame: str) -> str:
    """``func (path/to/file.py:12)`` -> ``func (file.py:12)`` with the package kept."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    parts = _SITE.split(where)
    where = parts[-1]
    if "/work/" in where or where.startswith("/"):
        where = "/".join(where.split("/")[-2:])
    return f"{name} ({where})" if where else name


def summarise(path: str, top: int = 25) -> dict:
    self_c: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            total += n
            frames = [short(f) for f in stack.split(";") if f and not f.startswith("process ")
                      and not f.startswith("thread ")]
            if not frames:
                continue
            self_c[frames[-1]] += n
            for frame in set(frames):
                incl[frame] += n
    pct = (lambda n: round(100 * n / total, 1)) if total else (lambda n: 0.0)
    return {
        "samples": total,
        "self": [(f, pct(n)) for f, n in self_c.most_common(top)],
        "inclusive": [(f, pct(n)) for f, n in incl.most_common(top)],
    }


def render(summary: dict) -> str:
    lines = [f"samples: {summary['samples']}", "", "| self % | frame |", "|---:|---|"]
    lines += [f"| {p} | `{f}` |" for f, p in summary["self"]]
    lines += ["", "| inclusive % | frame |", "|---:|---|"]
    lines += [f"| {p} | `{f}` |" for f, p in summary["inclusive"]]
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("path")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    print(render(summarise(args.path, args.top)))
