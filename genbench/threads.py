"""Torch thread counts fitted to the machine (used by executors and the measure stage)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask, which containers narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def idle_cores(cores: int | None = None) -> int:
    """The usable cores other processes leave idle: the 1-minute load average, less this
    process, estimates the busy ones (at least 1)."""
    cores = cores or usable_cores()
    try:
        others = max(0.0, os.getloadavg()[0] - 1.0)
    except OSError:  # pragma: no cover
        others = 0.0
    return max(1, min(cores, int(cores - others + 0.5)))


def sensible_threads(cores: int | None = None) -> int:
    """Torch threads for one process: :func:`idle_cores`, or ``OMP_NUM_THREADS`` when the
    user sets it.

    OpenMP parallel regions wait for every thread, so when other processes keep the
    cores busy a thread that is descheduled stalls the rest; on this project's shared
    2-core machine two threads trained a small MLP 20-30x slower than one (see
    docs/performance-training.md).
    """
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    return idle_cores(cores)


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
