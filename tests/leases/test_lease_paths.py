"""Every path where a run could report success after losing its lease (issue #12)."""

from __future__ import annotations

import datetime as dt
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from fixtures.pgs_rows import DUCKDB_PGS, game_rows
from processor_guard import ConfigError, LeaseLost, LockBusy, MemoryStore, leases, safe_merge
from processor_guard.leases import Lease, LeaseHooks, current_lease, date_lock, guarded
from processor_guard.writes.warehouse import as_warehouse

DAYS = [dt.date(2026, 2, 1), dt.date(2026, 2, 2), dt.date(2026, 2, 3)]
TABLE = "main.player_game_summary"
KEYS = ("game_date", "player_lookup")
RANGE = {"start_date": "2026-02-01", "end_date": "2026-02-03"}


@pytest.fixture
def warehouse() -> Iterator[Any]:
    import duckdb

    conn = duckdb.connect()
    conn.execute(DUCKDB_PGS.format(name=TABLE))
    yield conn
    conn.close()


def rows_of(*days: dt.date) -> list[dict[str, Any]]:
    return [row for day in days for row in game_rows(day, 0, players=2)]


class Acquired:
    """Hooks recording each acquired lease by date, and the lost/released events."""

    def __init__(self) -> None:
        self.by_day: dict[dt.date, Lease] = {}
        self.events: list[tuple[str, str]] = []

    def hooks(self) -> LeaseHooks:
        return LeaseHooks(
            acquired=lambda lease: self.by_day.__setitem__(lease.game_date, lease),
            lost=lambda lease: self.events.append(("lost", lease.key)),
            released=lambda lease: self.events.append(("released", lease.key)),
        )


# ------------------------------------------------------------------ 1. date ranges


def test_each_partition_carries_its_own_dates_fence(warehouse: Any) -> None:
    store, seen = MemoryStore(), Acquired()

    @guarded("player_game_summary", store=store, hooks=seen.hooks())
    def run(self: Any, opts: dict[str, Any]) -> bool:
        safe_merge(warehouse, TABLE, rows_of(*DAYS), keys=KEYS)
        return True

    assert run(None, RANGE) is True
    fences = {day: as_warehouse(warehouse).read_fence(TABLE, day) for day in DAYS}
    assert fences == {day: seen.by_day[day].fence for day in DAYS}
    assert len(set(fences.values())) == 3


def test_a_lost_first_date_stops_writes_to_every_date(warehouse: Any) -> None:
    store, seen = MemoryStore(), Acquired()

    @guarded("player_game_summary", store=store, ttl=0.6, hooks=seen.hooks())
    def run(self: Any, opts: dict[str, Any]) -> bool:
        first = seen.by_day[DAYS[0]]
        store.break_lease(first.key)
        assert store.try_acquire(first.key, "other-instance", 30).acquired
        assert first.wait_lost(2.0), "the next renewal did not notice the loss"
        safe_merge(warehouse, TABLE, rows_of(DAYS[2]), keys=KEYS)  # the last date only
        return True

    with pytest.raises(LeaseLost):
        run(None, RANGE)
    assert as_warehouse(warehouse).count_rows(TABLE) == 0


def test_a_date_taken_unnoticed_makes_the_run_raise_at_exit() -> None:
    store, seen = MemoryStore(), Acquired()

    @guarded("player_game_summary", store=store, ttl=30, hooks=seen.hooks())
    def run(self: Any, opts: dict[str, Any]) -> bool:
        first = seen.by_day[DAYS[0]]
        store.break_lease(first.key)  # renewal is 10 s away: nobody noticed
        assert store.try_acquire(first.key, "other-instance", 30).acquired
        return True

    with pytest.raises(LeaseLost) as lost:
        run(None, RANGE)
    assert lost.value.key == f"player_game_summary:{DAYS[0]}"
    assert ("lost", lost.value.key) in seen.events
    assert ("released", lost.value.key) not in seen.events


def test_current_lease_by_date() -> None:
    store, seen = MemoryStore(), Acquired()

    @guarded("player_game_summary", store=store, hooks=seen.hooks())
    def run(self: Any, opts: dict[str, Any]) -> list[Lease | None]:
        return [current_lease(day) for day in DAYS] + [current_lease("2026-02-04")]

    found = run(None, RANGE)
    assert found == [seen.by_day[day] for day in DAYS] + [None]


# ------------------------------------------------------------------ 2. release finds it gone


@pytest.mark.parametrize("what", ["broken", "taken"])
def test_release_that_finds_the_lease_gone_raises_and_reports_a_loss(what: str) -> None:
    store, seen = MemoryStore(), Acquired()
    with (
        pytest.raises(LeaseLost) as lost,
        date_lock("pgs", "2026-02-03", store=store, ttl=30, hooks=seen.hooks()) as lease,
    ):
        store.break_lease(lease.key)
        if what == "taken":
            assert store.try_acquire(lease.key, "other", 30).acquired
    assert "no longer held" in lost.value.reason
    assert seen.events == [("lost", "pgs:2026-02-03")]
    assert lease.lost and not lease.active


def test_the_bodys_own_error_still_wins_over_a_loss_found_at_release() -> None:
    store, seen = MemoryStore(), Acquired()
    with (
        pytest.raises(KeyError),
        date_lock("pgs", "2026-02-03", store=store, ttl=30, hooks=seen.hooks()) as lease,
    ):
        store.break_lease(lease.key)
        raise KeyError("body")
    assert seen.events == [("lost", "pgs:2026-02-03")]


# ------------------------------------------------------------------ 13. threads


def test_a_write_in_a_worker_thread_must_carry_the_lease(warehouse: Any) -> None:
    store = MemoryStore()
    with (
        date_lock("player_game_summary", DAYS[0], store=store) as lease,
        ThreadPoolExecutor(1) as pool,
    ):
        unbound = pool.submit(safe_merge, warehouse, TABLE, rows_of(DAYS[0]), keys=KEYS)
        with pytest.raises(ConfigError, match="bind_leases"):
            unbound.result()
        assert as_warehouse(warehouse).count_rows(TABLE) == 0
        bound = pool.submit(
            leases.bind_leases(safe_merge), warehouse, TABLE, rows_of(DAYS[0]), keys=KEYS
        )
        assert bound.result().fence == lease.fence
        assert pool.submit(leases.bind_leases(current_lease)).result() is lease
    assert as_warehouse(warehouse).read_fence(TABLE, DAYS[0]) == lease.fence


def test_a_worker_thread_writing_another_date_is_not_refused(warehouse: Any) -> None:
    with (
        date_lock("player_game_summary", DAYS[0], store=MemoryStore()),
        ThreadPoolExecutor(1) as pool,
    ):
        result = pool.submit(safe_merge, warehouse, TABLE, rows_of(DAYS[1]), keys=KEYS).result()
    assert result.fence is None


# ------------------------------------------------------------------ 14. keeper death, fork


def test_a_dying_keeper_thread_marks_its_leases_lost(monkeypatch: pytest.MonkeyPatch) -> None:
    def clock() -> float:
        if threading.current_thread().name == "processor_guard-keeper":
            raise MemoryError("keeper out of memory")
        return time.monotonic()

    monkeypatch.setattr(leases, "_keeper", leases._Keeper(clock))
    monkeypatch.setattr(threading, "excepthook", lambda args: None)
    seen = Acquired()
    with (
        pytest.raises(LeaseLost, match="keeper"),
        date_lock("pgs", "2026-02-03", store=MemoryStore(), ttl=30, hooks=seen.hooks()) as lease,
    ):
        assert lease.wait_lost(5.0), "the keeper died and the lease still looks held"
    deadline = time.monotonic() + 5  # the hook runs on the dying keeper, just after
    while not seen.events and time.monotonic() < deadline:
        time.sleep(0.01)
    assert seen.events == [("lost", "pgs:2026-02-03")]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_leaving_the_block_gets_lease_lost() -> None:
    store = MemoryStore()
    lock = date_lock("pgs", "2026-02-03", store=store, ttl=30)
    lease = lock.__enter__()
    pid = os.fork()
    if pid == 0:  # the child: leaving the block must not look like success
        try:
            lock.__exit__(None, None, None)
        except LeaseLost:
            os._exit(0)
        except BaseException:
            os._exit(2)
        os._exit(1)
    _, status = os.waitpid(pid, 0)
    try:
        assert os.WEXITSTATUS(status) == 0, "the child left the block without LeaseLost"
        lease.check()  # the parent's lease is untouched
    finally:
        lock.__exit__(None, None, None)


# ------------------------------------------------------------------ 5. exit elsewhere


def test_leaving_the_block_from_another_thread_still_releases() -> None:
    store = MemoryStore()
    lock = date_lock("pgs", "2026-02-03", store=store, ttl=30)
    lease = lock.__enter__()
    errors: list[BaseException] = []

    def leave() -> None:
        try:
            lock.__exit__(None, None, None)
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=leave)
    t.start()
    t.join(10)
    assert errors == []
    assert store.holder(lease.key) is None and not lease.active
    assert current_lease() is None, "the entering context still lists the finished lease"


# ------------------------------------------------------------------ 6. async


def test_guarded_refuses_async_generators_when_decorating() -> None:
    with pytest.raises(ConfigError, match="async generator"):

        @guarded("pgs", store=MemoryStore())
        async def run(self: Any, opts: dict[str, Any]) -> Any:
            yield True


# ------------------------------------------------------------------ 10. lost is a boolean


def test_lost_is_a_plain_boolean_and_loss_can_be_waited_for() -> None:
    store = MemoryStore()
    with pytest.raises(LeaseLost), date_lock("pgs", "2026-02-03", store=store, ttl=0.6) as lease:
        assert lease.lost is False and lease.active is True
        assert lease.wait_lost(0.01) is False
        store.break_lease(lease.key)
        assert lease.wait_lost(2.0) is True
        assert lease.lost is True and lease.active is False


# ------------------------------------------------------------------ 7, 8, 9. guarded options


def test_wait_is_one_budget_for_the_whole_range() -> None:
    store = MemoryStore()
    keys = [f"pgs:{day}" for day in DAYS]
    first = store.try_acquire(keys[0], "other", 30)
    assert first.acquired and store.try_acquire(keys[1], "other", 30).acquired
    assert first.fence is not None
    threading.Timer(0.6, store.release, (keys[0], "other", first.fence)).start()

    @guarded("pgs", store=store, wait=1.0)
    def run(self: Any, opts: dict[str, Any]) -> bool:
        return True

    started = time.monotonic()
    with pytest.raises(LockBusy) as busy:
        run(None, RANGE)
    assert busy.value.key == keys[1]
    assert time.monotonic() - started < 1.4, "each date got the whole wait again"


def test_opts_with_none_dates_count_as_absent() -> None:
    store, seen = MemoryStore(), Acquired()

    @guarded("pgs", store=store, hooks=seen.hooks())
    def run(self: Any, opts: dict[str, Any]) -> bool:
        return True

    assert run(None, {"start_date": None, "end_date": "2026-02-03"}) is True
    assert run(None, {"start_date": "2026-02-02", "end_date": None}) is True
    assert sorted(seen.by_day) == [DAYS[1], DAYS[2]]


def test_a_nested_lock_on_a_key_this_context_holds_fails_at_once() -> None:
    store = MemoryStore()
    with date_lock("pgs", "2026-02-03", store=store, ttl=30) as lease:
        started = time.monotonic()
        with (
            pytest.raises(LockBusy, match="this process") as busy,
            date_lock("pgs", "2026-02-03", store=store, ttl=30, wait=5),
        ):
            pytest.fail("nested body ran")
        assert time.monotonic() - started < 1.0
        assert busy.value.holder == lease.owner
        lease.check()
