"""Async lock cycles on one private local Redis: ``async with date_lock`` beside the floor
and redis-py's asyncio Lock.

- floor: bare ``SET key token NX PX`` + ``EVALSHA`` compare-and-delete through a
  ``redis.asyncio`` client, no library code. Ratios are to this floor.
- processor_guard: ``async with date_lock(scope, day, store=AsyncRedisStore(client))``,
  fences, the renewal timer and the release included.
- redis-py asyncio ``Lock`` (``client.lock(...)``, non-blocking acquire).

Uncontended acquire+release cycles on one key, every contender on the same server and
the same event loop in the same run, interleaved in rounds (as bench_locks does for the
sync API); p50/p99 per cycle.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from .bench_locks import KEY_DAY, RELEASE_LUA, TTL, start_redis
from .timing import blocks, summarise


async def _time_cycles(
    fns: dict[str, Callable[[], Awaitable[None]]], *, per_round: int, rounds: int, warmup: int
) -> dict[str, list[float]]:
    """timing.time_cycles for coroutines: each awaited call's duration in µs."""
    for fn in fns.values():
        for _ in range(warmup):
            await fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    clock = time.perf_counter_ns
    for name in blocks(list(fns), rounds):
        fn, out = fns[name], samples[name]
        for _ in range(per_round):
            t0 = clock()
            await fn()
            out.append((clock() - t0) / 1000)
    return samples


async def _uncontended(port: int, per_round: int, rounds: int) -> dict[str, Any]:
    import redis.asyncio as aioredis

    from processor_guard import LockBusy, date_lock
    from processor_guard.stores import AsyncRedisStore

    def client() -> Any:
        return aioredis.Redis(host="127.0.0.1", port=port)

    floor_client = client()
    release_sha = await floor_client.script_load(RELEASE_LUA)

    async def floor() -> None:
        token = uuid.uuid4().hex
        if not await floor_client.set("floor:lock", token, nx=True, px=int(TTL * 1000)):
            raise RuntimeError("floor: key busy")
        await floor_client.evalsha(release_sha, 1, "floor:lock", token)

    store = AsyncRedisStore(client())

    async def guard() -> None:
        async with date_lock("bench-async", KEY_DAY, store=store, ttl=TTL):
            pass

    redispy_client = client()

    async def redispy() -> None:
        lock = redispy_client.lock("redispy-async:lock", timeout=TTL, blocking=False)
        if not await lock.acquire():
            raise RuntimeError("redis-py asyncio Lock: key busy")
        await lock.release()

    fns = {"floor": floor, "processor_guard": guard, "redis-py asyncio Lock": redispy}
    try:
        samples = await _time_cycles(fns, per_round=per_round, rounds=rounds, warmup=200)
    except LockBusy as exc:  # pragma: no cover - a leftover key would be a bug here
        raise RuntimeError(f"processor_guard: {exc}") from exc
    finally:
        await store.aclose()
        for c in (floor_client, redispy_client):
            await c.aclose()
    return summarise(samples, floor="floor", unit="us", digits=1)


def run(per_round: int = 500, rounds: int = 10) -> dict[str, Any]:
    """The async Redis lock benchmark on one private server."""
    server = start_redis()
    try:
        return {"uncontended": asyncio.run(_uncontended(server.port, per_round, rounds))}
    finally:
        server.stop()


if __name__ == "__main__":
    import json
    import sys

    quick = "--quick" in sys.argv
    print(json.dumps(run(per_round=200 if quick else 500, rounds=4 if quick else 10), indent=2))
    os._exit(0)
