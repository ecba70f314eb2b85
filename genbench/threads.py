"""Torch thread counts fitted to the machine (used by executors and the measure stage)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask, which containers narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def cpu_sample() -> tuple[float, float, int] | None:
    """(busy seconds of the CPUs this process may use, CPU seconds of this process, CPUs
    counted) from /proc/stat (its per-CPU lines, so a container's affinity mask counts, not
    the host) and /proc/self/stat; None where there is no /proc (not Linux)."""
    try:
        with open("/proc/stat") as f:
            lines = f.read().splitlines()
        with open("/proc/self/stat") as f:
            mine = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    try:
        usable = {f"cpu{i}" for i in os.sched_getaffinity(0)}
    except AttributeError:  # pragma: no cover - no affinity: every CPU
        usable = None
    busy, cpus = 0, 0
    for line in lines:
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and (usable is None or name in usable):
            ticks = [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
            busy += sum(ticks) - ticks[3] - ticks[4]
            cpus += 1
    hz = os.sysconf("SC_CLK_TCK")
    return busy / hz, (int(mine[11]) + int(mine[12])) / hz, cpus


def busy_elsewhere(window: float = 0.1) -> float:
    """Cores other processes keep busy: the CPU time all processes but this one used over
    ``window`` seconds (this process sleeping, its idle OpenMP threads still spinning),
    so a stage sees the machine as it is now, not a minute ago: the 1-minute load
    average still counts the previous stage's own workers. Off Linux, the load average
    less this process."""
    first = cpu_sample()
    if first is not None:
        time.sleep(window)
        second = cpu_sample()
        if second is not None and second[2] == first[2]:
            return max(0.0, ((second[0] - first[0]) - (second[1] - first[1])) / window)
    try:
        return max(0.0, os.getloadavg()[0] - 1.0)
    except OSError:  # pragma: no cover
        return 0.0


def idle_cores(cores: int | None = None) -> int:
    """The usable cores other processes leave idle (at least 1)."""
    cores = cores or usable_cores()
    return max(1, min(cores, int(cores - busy_elsewhere() + 0.5)))


def sensible_threads(cores: int | None = None, idle: int | None = None) -> int:
    """Torch threads for one process: :func:`idle_cores` (``idle`` when the caller has just
    measured it), or ``OMP_NUM_THREADS`` when the user sets it.

    OpenMP parallel regions wait for every thread, so when other processes keep the
    cores busy a thread that is descheduled stalls the rest; on this project's shared
    2-core machine two threads trained a small MLP 20-30x slower than one (see
    docs/performance-training.md).
    """
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    return idle if idle is not None else idle_cores(cores)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Set torch's intra-op thread count for a block, then restore it."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(before)
