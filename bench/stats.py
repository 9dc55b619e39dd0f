"""The numbers behind the report: percentiles, medians and CPU time read from ``/proc``.

Everything here is a pure function of its input (``/proc`` text is passed in), so the smoke tests
pin it with plain values; :func:`process_cpu_seconds` and :func:`machine_busy_ticks` are the only
readers, and they only open files.
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from llmproxy.replay.stats import percentile as sorted_percentile

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0–100) with linear interpolation, like ``numpy.percentile``.

    ``percentile([1, 2, 3, 4], 50)`` is 2.5; an empty input gives NaN, not an exception, so a run
    that completed nothing still renders as a row. (The replay client's, on unsorted values.)
    """
    return sorted_percentile(sorted(values), q)


def nan_to_null(value: Any) -> Any:
    """Strict JSON has no NaN: a metric that was not measured becomes null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: nan_to_null(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [nan_to_null(item) for item in value]
    return value


def median(values: Iterable[float]) -> float:
    """The median of the values that are numbers; NaN when there are none."""
    finite = [v for v in values if not math.isnan(v)]
    return statistics.median(finite) if finite else math.nan


def parse_proc_pid_stat(text: str) -> tuple[int, int]:
    """``(ppid, utime + stime in clock ticks)`` from the text of ``/proc/<pid>/stat``.

    The command name (field 2) is in parentheses and may hold spaces or parentheses itself, so the
    fields are counted from the *last* ``)``: state, ppid, …, utime (14th), stime (15th).
    """
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[1]), int(fields[11]) + int(fields[12])


def parse_proc_stat_busy(text: str) -> tuple[int, int]:
    """``(busy, total)`` clock ticks of all CPUs from the ``cpu`` line of ``/proc/stat``.

    Busy is user + nice + system + steal: time some process (or the hypervisor) took. irq and
    softirq are left out of busy, though not of the total, because the kernel does the loopback
    network work of our own traffic there, outside any process's CPU time; counting them would
    look like load from other processes. Guest time is already part of user time.
    """
    for line in text.splitlines():
        if line.startswith("cpu "):
            user, nice, system, _idle, _iowait, _irq, _softirq, steal = (
                int(v) for v in line.split()[1:9]
            )
            total = sum(int(v) for v in line.split()[1:9])
            return user + nice + system + steal, total
    raise ValueError("/proc/stat has no aggregate 'cpu' line")


def process_cpu_seconds(pid: int, *, with_children: bool = True) -> float:
    """CPU seconds (user + system) used so far by ``pid`` and, by default, its live children.

    nginx serves from a worker process under its master, so its cost is the master's plus the
    worker's. Children are found by scanning ``/proc`` for their parent pid.
    """
    _, ticks = parse_proc_pid_stat(Path(f"/proc/{pid}/stat").read_text())
    if with_children:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or entry.name == str(pid):
                continue
            try:
                ppid, child_ticks = parse_proc_pid_stat((entry / "stat").read_text())
            except (OSError, ValueError, IndexError):
                continue  # the process ended while we looked
            if ppid == pid:
                ticks += child_ticks
    return ticks / CLOCK_TICKS


def machine_busy_ticks() -> tuple[int, int]:
    """``(busy, total)`` clock ticks of the whole machine so far; diff two readings for a share."""
    return parse_proc_stat_busy(Path("/proc/stat").read_text())
