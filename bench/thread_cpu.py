"""CPU of each thread of a process over some seconds (user and system, % of one core).

    python bench/thread_cpu.py PID SECONDS

Shows how a server's CPU splits between its event loop and its database thread,
which py-spy's samples do not tell apart reliably while threads wait for the GIL.
"""

import os
import sys
import time


def snapshot(pid: str) -> dict[str, tuple[str, int, int]]:
    """``{tid: (name, user ticks, system ticks)}`` of every thread of ``pid``."""
    threads = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{pid}/task/{tid}/comm") as comm:
                name = comm.read().strip()
        except OSError:
            continue  # the thread ended meanwhile
        threads[tid] = (name, int(fields[11]), int(fields[12]))
    return threads


def main() -> None:
    pid, seconds = sys.argv[1], float(sys.argv[2])
    before = snapshot(pid)
    time.sleep(seconds)
    after = snapshot(pid)
    ticks = os.sysconf("SC_CLK_TCK") * seconds / 100
    for tid, (name, user, system) in after.items():
        _, user0, system0 = before.get(tid, (name, 0, 0))
        if user + system - user0 - system0 > 0:
            print(f"thread {tid} {name}: user {(user - user0) / ticks:.1f}%"
                  f" sys {(system - system0) / ticks:.1f}%")


if __name__ == "__main__":
    main()
