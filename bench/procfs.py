"""CPU time and memory of a process, read from /proc (Linux only)."""

from __future__ import annotations

import os
from pathlib import Path

_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """Return the user plus system CPU time that process ``pid`` has used, in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name in field 2 may contain spaces, so fields are counted after its ")".
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / _TICKS_PER_S


def memory_mb(pid: int) -> dict[str, float]:
    """Return the resident set size now (``rss``) and its peak (``hwm``), in MiB."""
    values: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values["rss" if name == "VmRSS" else "hwm"] = int(rest.split()[0]) / 1024
    return values


def run_queue_wait_seconds(pid: int) -> float:
    """Return the time the threads of process ``pid`` spent runnable but waiting for a CPU.

    On a busy machine this is the CPU time the process wanted and did not get. It is the second
    field of /proc/<pid>/task/<tid>/schedstat (in nanoseconds), summed over the threads that
    exist now; threads that already ended are not counted.
    """
    total_ns = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "schedstat").read_text().split()
        except OSError:
            continue  # the thread ended while we looked
        total_ns += int(fields[1])
    return total_ns / 1e9
