"""Timing on the runtime's floor, so export (its latency figures) and bench share it without
export importing bench (which imports evaluate, which imports the run's Keras models)."""

from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np


def time_ms(fn: Callable[[], None], runs: int, warmup: int = 1) -> list[float]:
    """Milliseconds of ``runs`` calls of ``fn`` after ``warmup`` untimed ones.

    Args:
      fn: what to time (one call).
      runs: timed calls.
      warmup: untimed calls first (caches, lazy allocations, the delegate's first run).

    Returns:
      The ``runs`` durations in milliseconds, in order.
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - t0))
    return times


def latency_stats(ms: Sequence[float]) -> dict:
    """p50, p90, p99, mean and std of durations in milliseconds.

    Args:
      ms: durations in milliseconds.

    Returns:
      {"p50", "p90", "p99", "mean", "std"} in milliseconds.
    """
    a = np.asarray(ms, dtype=np.float64)
    return {"p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)),
            "p99": float(np.percentile(a, 99)), "mean": float(a.mean()), "std": float(a.std())}
