"""Cycle timing shared by the lock benchmarks: interleaved rounds and p50/p99 summaries."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any


def percentile(sorted_values: list[float], q: float) -> float:
    """The ``q`` quantile of already sorted values (nearest rank)."""
    idx = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[idx]


def time_cycles(
    fns: dict[str, Callable[[], None]],
    *,
    cycles_per_round: int,
    rounds: int,
    warmup: int,
    scale_ns: float,
) -> dict[str, list[float]]:
    """Each call's duration (nanoseconds / ``scale_ns``), per function.

    Each function is warmed up first; every round runs each function's block of
    ``cycles_per_round`` calls, the order rotated per round so drift hits all of them.
    """
    for fn in fns.values():  # connections, script caches, imports
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    clock = time.perf_counter_ns
    for name in blocks(list(fns), rounds):
        fn, out = fns[name], samples[name]
        for _ in range(cycles_per_round):
            t0 = clock()
            fn()
            out.append((clock() - t0) / scale_ns)
    return samples


def blocks(names: list[str], rounds: int) -> Iterator[str]:
    """Whose block of cycles runs next: every name once a round, the order rotated per
    round so drift hits all of them; garbage collected before each block."""
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            gc.collect()
            yield name


def summarise(
    samples: dict[str, list[float]], floor: str, unit: str, digits: int
) -> dict[str, Any]:
    """Cycles, p50, p99 and mean in ``unit`` per name, and the p50 ratio to ``floor``."""
    floor_p50 = statistics.median(samples[floor])
    out: dict[str, Any] = {}
    for name, values in samples.items():
        values = sorted(values)
        p50 = statistics.median(values)
        out[name] = {
            "cycles": len(values),
            f"p50_{unit}": round(p50, digits),
            f"p99_{unit}": round(percentile(values, 0.99), digits),
            f"mean_{unit}": round(statistics.fmean(values), digits),
            "ratio_p50_to_floor": round(p50 / floor_p50, 3),
        }
    return out
