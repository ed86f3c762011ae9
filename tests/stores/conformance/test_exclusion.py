"""Mutual exclusion: many OS processes, one key, a non-atomic counter inside the lease."""

from __future__ import annotations

import itertools
import threading
from pathlib import Path

import pytest

from processor_guard import date_lock

from .conftest import StoreKit
from .support import Worker

pytestmark = pytest.mark.slow

# (processes, acquisitions each): >= 2,000 in all for Redis and SQLite; the Firestore
# emulator answers in tens of milliseconds, so it gets three contenders and fewer rounds.
# The other Redis topologies run the same store code: fewer rounds keep their share of a
# 2-core CI small.
PLAN = {
    "sqlite": (8, 250),
    "redis": (8, 250),
    "firestore": (3, 10),
    "redis-cluster": (4, 100),
    "redis-sentinel": (4, 100),
    "redis-tls": (4, 100),
}


def _fences_in_lock_order(log: Path) -> list[int]:
    return [int(line.split()[0]) for line in log.read_text().splitlines()]


# On the async API each process runs this many tasks, sharing its rounds.
TASKS = 4


def test_processes_never_overlap(shared_kit: StoreKit, tmp_path: Path) -> None:
    procs, rounds = PLAN[shared_kit.kind]
    tasks = TASKS if shared_kit.api == "async" and rounds >= TASKS else 1
    rounds //= tasks
    counter = tmp_path / "counter"
    counter.write_text("0")
    log = tmp_path / "fences.log"
    assert shared_kit.url is not None
    workers = [
        Worker(
            [
                "count",
                f"--url={shared_kit.url}",
                f"--name=w{i}",
                f"--n={rounds}",
                "--ttl=5",
                "--wait=300",
                f"--counter={counter}",
                f"--log={log}",
                f"--api={shared_kit.api}",
                f"--tasks={tasks}",
            ],
            shared_kit.child_env(),
        )
        for i in range(procs)
    ]
    try:
        for w in workers:
            assert w.next()["event"] == "ready"
        for w in workers:
            w.send("go")
        for w in workers:
            assert w.next(timeout=300) == {"event": "done", "acquired": rounds * tasks}
            assert w.finish() == 0
    finally:
        for w in workers:
            w.stop()

    total = procs * rounds * tasks
    assert int(counter.read_text()) == total, "two holders overlapped: an update was lost"
    fences = _fences_in_lock_order(log)
    assert len(fences) == total
    assert all(b > a for a, b in itertools.pairwise(fences)), "fences not strictly increasing"
    assert shared_kit.store.holders() == []


def test_threads_never_overlap_in_memory(tmp_path: Path) -> None:
    """The memory store is one process only: contend from threads instead."""
    from processor_guard import MemoryStore

    store = MemoryStore()
    counter = tmp_path / "counter"
    counter.write_text("0")
    fences: list[int] = []
    errors: list[BaseException] = []

    def work(name: str) -> None:
        try:
            for _ in range(250):
                with date_lock("conformance", "2026-02-03", store=store, ttl=5, wait=60) as lease:
                    value = int(counter.read_text())
                    counter.write_text(str(value + 1))
                    fences.append(lease.fence)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(f"t{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert int(counter.read_text()) == 2000
    assert all(b > a for a, b in itertools.pairwise(fences))
