"""Sum up what ``bench/gc_pauses/sitecustomize.py`` logged: per process, its full
collections (count, longest, total) and its other long ones.

    .venv/bin/python bench/gc_pauses/report.py /tmp/gc
"""

import sys
from pathlib import Path


def main() -> None:
    for path in sorted(Path(sys.argv[1]).glob("*.log")):
        lines = path.read_text().splitlines()
        command = lines[0].removeprefix("command ")
        full = [float(line.split()[2]) for line in lines[1:] if line.split()[1] == "gen2"]
        other = [float(line.split()[2]) for line in lines[1:] if line.split()[1] != "gen2"]
        longest = max(full, default=0.0)
        print(f"{path.stem:>8} {command[:70]:70} full: {len(full):3d}, longest {longest:6.1f} ms,"
              f" total {sum(full):7.1f} ms; other long: {len(other)}")


if __name__ == "__main__":
    main()
