"""Limits and stop signals: a measure that hangs is stopped, and SIGTERM stops genbench
the way Ctrl-C does.

:func:`time_limit` uses SIGALRM, so it works in the main thread of a POSIX process
(where the local executor computes measures); elsewhere (a worker thread, Windows) it
is a no-op, and a task executor that runs measures away from the main thread must
enforce the limit itself (e.g. by killing the worker). Python runs the alarm handler
between bytecodes, so a single long C call (one huge matrix product) finishes first.

This module must not import torch (the CLI imports it on the help path).
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


class TimeLimitExceeded(Exception):
    """Raised inside a body that ran past its :func:`time_limit`."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C's KeyboardInterrupt so that every ``finally`` runs and
    :func:`genbench.plugins.contain` never lets plugin code swallow it."""


def _can_alarm() -> bool:
    return hasattr(signal, "SIGALRM") and threading.current_thread() is threading.main_thread()


@contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise :class:`TimeLimitExceeded` ("timed out after N s") in the body once it has run
    ``seconds``; ``None``, ``0`` or ``inf`` mean no limit. Nests: an outer limit that is
    shorter still fires."""
    if not seconds or not math.isfinite(seconds) or not _can_alarm():
        yield
        return

    def on_alarm(signum: int, frame: object) -> None:
        raise TimeLimitExceeded(f"timed out after {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    started = time.monotonic()
    outer_left, outer_interval = signal.setitimer(signal.ITIMER_REAL, seconds)
    if outer_left and outer_left < seconds:  # a shorter outer limit keeps its deadline
        signal.setitimer(signal.ITIMER_REAL, outer_left)
        signal.signal(signal.SIGALRM, previous)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer_left:  # give the outer limit what is left of it (at least a tick)
            left = outer_left - (time.monotonic() - started)
            signal.setitimer(signal.ITIMER_REAL, max(left, 1e-3), outer_interval)


@contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM into :class:`Terminated` in the body (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_term(signum: int, frame: object) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def exit_code(stop: KeyboardInterrupt) -> int:
    """130 for Ctrl-C (SIGINT), 143 for SIGTERM: 128 + the signal number, as shells do."""
    return 143 if isinstance(stop, Terminated) else 130


STOPPED = "stopped; rerun to resume (everything stored so far is kept)"
