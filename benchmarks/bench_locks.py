"""Lock cycles on one private local Redis: processor_guard beside the floor and its peers.

- floor: bare ``SET key token NX PX`` + ``EVALSHA`` compare-and-delete through a
  redis-py client, no library code: what any correct Redis lock must at least send.
  Ratios are to this floor.
- floor (raw connection): the same two commands on a bare redis-py ``Connection``
  (no pool checkout, retry or response-callback layers), for reference: RedisStore
  runs its scripts on its own connections, so it can beat the client-level floor.
- processor_guard: ``with date_lock(scope, day, store=RedisStore(client), wait=0)``,
  fences, renewal keeper registration and release included.
- redis-py ``Lock``, python-redis-lock ``Lock``, pottery ``Redlock`` (one master).

Uncontended: acquire+release cycles on one key, every library on the same server in
the same run, interleaved in rounds so drift hits all alike; p50/p99 per cycle.
Contended: 8 processes loop on one key for a fixed time; each critical section does a
non-atomic read-modify-write of a counter and an "inside" gauge, so any overlap shows
up as a violation (gauge above 1, or counter below the acquisitions).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .timing import summarise, time_cycles

ROOT = Path(__file__).resolve().parents[1]
CONTENDED = ("processor_guard", "redis-py Lock", "python-redis-lock", "pottery Redlock")
KEY_DAY = "2026-02-03"
TTL = 30.0


def start_redis() -> Any:
    """A private redis-server on a free loopback port (never the shared 6379)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from fixtures.services import RedisServer

    return RedisServer(persist=False)


def client_for(port: int) -> Any:
    import redis

    return redis.Redis(host="127.0.0.1", port=port)


# ------------------------------------------------------------------ uncontended cycles

RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""


def make_cycles(port: int) -> dict[str, Callable[[], None]]:
    """One acquire+release cycle per library, each on its own client."""
    import redis_lock
    from pottery import Redlock

    from processor_guard import date_lock
    from processor_guard.stores.redis_store import RedisStore

    cycles: dict[str, Callable[[], None]] = {}

    floor_client = client_for(port)
    sha = floor_client.script_load(RELEASE_LUA)
    ttl_ms = int(TTL * 1000)

    def floor() -> None:
        token = uuid.uuid4().hex
        if not floor_client.set("floor:lock", token, nx=True, px=ttl_ms):
            raise RuntimeError("floor: key busy")
        floor_client.evalsha(sha, 1, "floor:lock", token)

    cycles["floor"] = floor

    # The same two commands on one redis-py Connection, skipping the client's command
    # machinery (pool checkout, retries, callbacks): the network-bound lower limit.
    raw_conn = floor_client.connection_pool.connection_class(
        **floor_client.connection_pool.connection_kwargs
    )

    def floor_raw() -> None:
        token = uuid.uuid4().hex
        raw_conn.send_command("SET", "rawfloor:lock", token, "NX", "PX", ttl_ms)
        if raw_conn.read_response() is None:
            raise RuntimeError("raw floor: key busy")
        raw_conn.send_command("EVALSHA", sha, 1, "rawfloor:lock", token)
        raw_conn.read_response()

    cycles["floor (raw connection)"] = floor_raw

    store = RedisStore(client_for(port))

    def ours() -> None:
        with date_lock("bench", KEY_DAY, store=store, ttl=TTL, wait=0):
            pass

    cycles["processor_guard"] = ours

    redispy_client = client_for(port)

    def redispy() -> None:
        lock = redispy_client.lock("redispy:lock", timeout=TTL, blocking=False)
        if not lock.acquire():
            raise RuntimeError("redis-py: key busy")
        lock.release()

    cycles["redis-py Lock"] = redispy

    rl_client = client_for(port)

    def python_redis_lock() -> None:
        lock = redis_lock.Lock(rl_client, "prl", expire=int(TTL))
        if not lock.acquire(blocking=False):
            raise RuntimeError("python-redis-lock: key busy")
        lock.release()

    cycles["python-redis-lock"] = python_redis_lock

    pottery_client = client_for(port)

    def pottery() -> None:
        lock = Redlock(key="pottery", masters={pottery_client}, auto_release_time=TTL)
        if not lock.acquire(blocking=False):
            raise RuntimeError("pottery: key busy")
        lock.release()

    cycles["pottery Redlock"] = pottery
    return cycles


def bench_uncontended(port: int, cycles_per_round: int = 1000, rounds: int = 6) -> dict[str, Any]:
    """p50/p99 (µs) per acquire+release cycle for every library, interleaved in rounds."""
    samples = time_cycles(
        make_cycles(port),
        cycles_per_round=cycles_per_round,
        rounds=rounds,
        warmup=200,
        scale_ns=1000,
    )
    return summarise(samples, "floor", "us", 1)


# ------------------------------------------------------------------ contended


def _worker(
    lib: str, port: int, key: str, start_at: float, stop_at: float, out: Any, index: int
) -> None:
    """Loop acquire -> non-atomic counter update -> release until ``stop_at``."""
    import redis_lock

    from processor_guard import LockBusy, date_lock
    from processor_guard.stores.redis_store import RedisStore

    client = client_for(port)
    counter, inside = f"{key}:counter", f"{key}:inside"
    acquired = violations = timeouts = 0

    def critical() -> None:
        nonlocal violations
        if client.incr(inside) != 1:
            violations += 1
        value = int(client.get(counter) or 0)
        client.set(counter, value + 1)
        if client.decr(inside) != 0:
            violations += 1

    store = RedisStore(client_for(port))
    lock_client = client_for(port)
    while time.time() < start_at:
        time.sleep(0.001)
    while time.time() < stop_at:
        if lib == "processor_guard":
            try:
                with date_lock("contended", KEY_DAY, store=store, ttl=TTL, wait=10):
                    critical()
                    acquired += 1
            except LockBusy:
                timeouts += 1
        elif lib == "redis-py Lock":
            lock = lock_client.lock(f"{key}:lock", timeout=TTL, blocking_timeout=10)
            if lock.acquire():
                critical()
                acquired += 1
                lock.release()
            else:
                timeouts += 1
        elif lib == "python-redis-lock":
            plock = redis_lock.Lock(lock_client, f"{key}:lock", expire=int(TTL))
            if plock.acquire(timeout=10):
                critical()
                acquired += 1
                plock.release()
            else:
                timeouts += 1
        elif lib == "pottery Redlock":
            from pottery import Redlock

            rlock = Redlock(key=f"{key}:lock", masters={lock_client}, auto_release_time=TTL)
            if rlock.acquire(timeout=10):
                critical()
                acquired += 1
                rlock.release()
            else:
                timeouts += 1
        else:
            raise ValueError(lib)
    out.put((index, acquired, violations, timeouts))


def bench_contended(
    port: int, lib: str, processes: int = 8, seconds: float = 4.0
) -> dict[str, Any]:
    """Acquisitions/s over ``processes`` processes on one key, with a mutual-exclusion check."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    key = f"contended:{lib.replace(' ', '_')}"
    client = client_for(port)
    client.delete(f"{key}:counter", f"{key}:inside")
    start_at = time.time() + 3.0  # spawned interpreters need a moment to import
    stop_at = start_at + seconds
    procs = [
        ctx.Process(target=_worker, args=(lib, port, key, start_at, stop_at, out, i))
        for i in range(processes)
    ]
    for p in procs:
        p.start()
    reports = [out.get(timeout=seconds + 60) for _ in procs]
    for p in procs:
        p.join(30)
    per_process = [acq for _, acq, _, _ in sorted(reports)]
    total = sum(per_process)
    counter = int(client.get(f"{key}:counter") or 0)
    overlaps = sum(v for _, _, v, _ in reports)
    client.close()
    return {
        "processes": processes,
        "seconds": seconds,
        "acquisitions": total,
        "per_second": round(total / seconds, 1),
        "per_process": per_process,
        "min_per_process": min(per_process),
        "max_per_process": max(per_process),
        "timeouts": sum(t for _, _, _, t in reports),
        "counter": counter,
        "violations": overlaps + (total - counter),
    }


def run(contended_seconds: float = 4.0) -> dict[str, Any]:
    """Every Redis lock benchmark on one private server."""
    from processor_guard.stores.redis_store import RedisStore  # noqa: F401 - fail early

    server = start_redis()
    try:
        version = client_for(server.port).info("server")["redis_version"]
        uncontended = bench_uncontended(server.port)
        contended = {
            lib: bench_contended(server.port, lib, seconds=contended_seconds) for lib in CONTENDED
        }
    finally:
        server.stop()
    return {"redis_version": version, "uncontended": uncontended, "contended": contended}


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
    os._exit(0)
