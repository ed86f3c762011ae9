"""Renewing a backfill's leases: 200 date leases of one process, one renewal period.

A season backfill holds hundreds of date leases. Per period the keeper either renews
them one by one (one round trip each: ``renew`` in a loop, the floor of the old path)
or in one ``renew_many`` call (one round trip, or one transaction on SQLite). Both are
timed in the same run, interleaved, on a private Redis, a SQLite file and the memory
store; the result is the time per period and the ratio one-by-one / batched.

``python -m benchmarks.bench_renew [leases] [periods]``
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from processor_guard.stores import LeaseStore, MemoryStore, SQLiteStore

LEASES = 200
PERIODS = 20
TTL = 60.0


def _take(store: LeaseStore, count: int) -> list[tuple[str, str, int, float]]:
    held = []
    for day in range(count):
        key = f"backfill:{2020 + day // 365}-{1 + day % 365 // 31:02d}-{1 + day % 28:02d}#{day}"
        result = store.try_acquire(key, "bench", TTL)
        assert result.acquired and result.fence is not None
        held.append((key, "bench", result.fence, TTL))
    return held


def _period_ms(fns: dict[str, Callable[[], None]], periods: int) -> dict[str, float]:
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()  # warm up: connections, scripts
    for i in range(periods):
        names = list(fns) if i % 2 == 0 else list(reversed(fns))
        for name in names:
            t0 = time.perf_counter()
            fns[name]()
            samples[name].append((time.perf_counter() - t0) * 1000)
    return {name: round(statistics.median(v), 3) for name, v in samples.items()}


def bench_store(store: LeaseStore, leases: int, periods: int) -> dict[str, Any]:
    held = _take(store, leases)

    def one_by_one() -> None:
        for key, owner, fence, ttl in held:
            assert store.renew(key, owner, fence, ttl)

    def batched() -> None:
        assert all(a is True for a in store.renew_many(held))

    ms = _period_ms({"one_by_one": one_by_one, "renew_many": batched}, periods)
    for key, owner, fence, _ in held:
        store.release(key, owner, fence)
    return {
        "leases": leases,
        "period_ms_one_by_one": ms["one_by_one"],
        "period_ms_renew_many": ms["renew_many"],
        "round_trips_one_by_one": leases,
        "round_trips_renew_many": 1 if store.batch_renewal else leases,
        "ratio": round(ms["one_by_one"] / max(ms["renew_many"], 1e-6), 1),
    }


def run(leases: int = LEASES, periods: int = PERIODS) -> dict[str, Any]:
    """Median time per renewal period of ``leases`` leases, per store."""
    results: dict[str, Any] = {"memory": bench_store(MemoryStore(), leases, periods)}
    with tempfile.TemporaryDirectory() as folder:
        results["sqlite"] = bench_store(SQLiteStore(Path(folder) / "l.db"), leases, periods)
    from benchmarks.bench_locks import start_redis
    from processor_guard.stores.redis_store import RedisStore

    server = start_redis()
    try:
        store = RedisStore.from_url(f"redis://127.0.0.1:{server.port}/0")
        try:
            results["redis"] = bench_store(store, leases, periods)
        finally:
            store.close()
    finally:
        server.stop()
    return results


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:3]]
    print(json.dumps(run(*args), indent=2))
