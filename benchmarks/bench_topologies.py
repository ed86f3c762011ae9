"""Acquire + release on a Redis Cluster and a Sentinel-managed primary beside one node.

Every topology is started privately on loopback for this run (a single redis-server,
a 3-primary/3-replica cluster, a primary + replica + 3 Sentinels) and timed in the
same interleaved rounds, so the ratios to the single node hold on any machine:
``with date_lock(...)`` through ``open_store(url)``, fences, keeper registration and
release included. ``+ WAIT 1`` is the same with ``wait_replicas=1``: the acquisition
returns only once a replica acknowledged it (one more round trip and the replica's
acknowledgement).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .timing import summarise, time_cycles

ROOT = Path(__file__).resolve().parents[1]
SINGLE = "single node"
TTL = 30.0


def _cycle(url: str, opened: list[Any]) -> Callable[[], None]:
    from processor_guard import date_lock, open_store

    store = open_store(url)
    opened.append(store)

    def cycle() -> None:
        with date_lock("bench", "2026-02-03", store=store, ttl=TTL, wait=0):
            pass

    return cycle


def run(cycles_per_round: int = 300, rounds: int = 4) -> dict[str, Any]:
    """p50/p99 (µs) per acquire+release cycle per topology, ratio to the single node."""
    sys.path.insert(0, str(ROOT / "tests"))
    from fixtures.redis_topologies import RedisClusterSet, RedisSentinelSet, missing_tools
    from fixtures.services import RedisServer

    missing = missing_tools("redis-server", "redis-cli")
    if missing:
        return {"skipped": missing}
    started: list[Any] = []
    opened: list[Any] = []
    try:
        single = RedisServer()
        started.append(single)
        cluster = RedisClusterSet()
        started.append(cluster)
        sentinels = RedisSentinelSet()
        started.append(sentinels)
        cycles = {
            SINGLE: _cycle(single.url, opened),
            "cluster (3+3)": _cycle(cluster.url, opened),
            "cluster + WAIT 1": _cycle(f"{cluster.url}?wait_replicas=1", opened),
            "sentinel (1+1, 3 Sentinels)": _cycle(sentinels.url, opened),
            "sentinel + WAIT 1": _cycle(f"{sentinels.url}?wait_replicas=1", opened),
        }
        samples = time_cycles(
            cycles, cycles_per_round=cycles_per_round, rounds=rounds, warmup=100, scale_ns=1000
        )
    finally:
        for store in opened:
            store.close()
        for topology in reversed(started):
            topology.stop()
    return summarise(samples, SINGLE, "us", 1)


if __name__ == "__main__":
    import json
    import os

    print(json.dumps(run(), indent=2))
    os._exit(0)
