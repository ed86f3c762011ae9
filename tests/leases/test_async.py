"""The async API: ``async with date_lock``, async ``@guarded``, tasks, cancellation and
faults. Plain ``asyncio.run`` in sync tests (no pytest plugin needed). The store
contract on the async API is the conformance suite's (tests/stores/conformance)."""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import itertools
import time
import weakref
from typing import Any

import pytest

from fixtures.pgs_rows import DUCKDB_PGS, date_rows
from fixtures.services import RedisServer
from processor_guard import (
    ConfigError,
    LeaseHooks,
    LeaseLost,
    LockBusy,
    MemoryStore,
    StoreUnavailable,
    asafe_merge,
    current_lease,
    date_lock,
    guarded,
)
from processor_guard.stores import AsyncRedisStore, open_async_store

DAY = "2026-02-03"


def test_current_lease_is_seen_by_the_task_and_the_tasks_it_creates() -> None:
    store = MemoryStore()

    async def main() -> None:
        async def child() -> Any:
            return current_lease()

        async with date_lock("pgs", DAY, store=store, ttl=10) as outer:
            assert current_lease() is outer
            assert await asyncio.create_task(child()) is outer
            async with date_lock("pgs", "2026-02-04", store=store, ttl=10) as inner:
                assert current_lease() is inner
                assert current_lease(DAY) is outer
            assert current_lease() is outer
            with pytest.raises(LockBusy, match="already held by this process"):
                async with date_lock("pgs", DAY, store=store, ttl=10):
                    pass
        assert current_lease() is None
        assert store.holders() == []

    asyncio.run(main())


def test_tasks_never_overlap_and_fences_rise() -> None:
    store = MemoryStore()
    counter = [0]
    fences: list[int] = []

    async def work(owner: str) -> None:
        for _ in range(100):
            async with date_lock("pgs", DAY, store=store, ttl=5, wait=60, owner=owner) as lease:
                value = counter[0]
                await asyncio.sleep(0)  # let every other task try to get in
                counter[0] = value + 1
                fences.append(lease.fence)

    async def main() -> None:
        await asyncio.gather(*(work(f"t{i}") for i in range(8)))

    asyncio.run(main())
    assert counter[0] == 800
    assert all(b > a for a, b in itertools.pairwise(fences))


def test_renewal_runs_on_the_loop_past_several_ttls() -> None:
    store = MemoryStore()

    async def main() -> None:
        async with date_lock("pgs", DAY, store=store, ttl=0.3) as lease:
            for _ in range(12):
                await asyncio.sleep(0.05)
                lease.check()
            holder = store.holder(lease.key)
            assert holder is not None and holder.fence == lease.fence

    asyncio.run(main())


def test_a_blocked_loop_ends_in_lease_lost_and_the_stale_write_is_refused() -> None:
    import duckdb

    store = MemoryStore()
    conn = duckdb.connect()
    conn.execute(DUCKDB_PGS.format(name="main.player_game_summary"))
    day = dt.date(2026, 2, 3)

    async def main() -> None:
        with pytest.raises(LeaseLost):
            async with date_lock("pgs", day, store=store, ttl=0.4) as lease:
                time.sleep(0.6)  # a blocking call: no renewal can run
                # Another instance takes the date meanwhile.
                with date_lock("pgs", day, store=store, ttl=10, owner="other") as other:
                    assert other.fence > lease.fence
                with pytest.raises(LeaseLost):
                    await asafe_merge(
                        conn, "main.player_game_summary", date_rows(day), keys=("game_date",)
                    )

    asyncio.run(main())
    assert conn.execute("SELECT count(*) FROM main.player_game_summary").fetchone() == (0,)
    conn.close()


def test_asafe_merge_writes_under_the_task_lease() -> None:
    import duckdb

    store = MemoryStore()
    conn = duckdb.connect()
    conn.execute(DUCKDB_PGS.format(name="main.player_game_summary"))
    day = dt.date(2026, 2, 3)

    async def main() -> int:
        async with date_lock("pgs", day, store=store, ttl=10) as lease:
            keys = ("game_date", "player_lookup")
            result = await asafe_merge(conn, "main.player_game_summary", date_rows(day), keys=keys)
            assert result.fence == lease.fence
            return result.inserted

    assert asyncio.run(main()) == 348
    conn.close()


def test_a_task_cancelled_inside_the_block_releases_its_lease() -> None:
    store = MemoryStore()
    entered = asyncio.Event

    async def main() -> None:
        inside = entered()

        async def body() -> None:
            async with date_lock("pgs", DAY, store=store, ttl=10):
                inside.set()
                await asyncio.sleep(60)

        task = asyncio.create_task(body())
        await inside.wait()
        assert store.holders() != []
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert store.holders() == []

    asyncio.run(main())


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def test_an_acquisition_cancelled_at_any_point_leaves_no_lease(
    kind: str, tmp_path: Any, request: pytest.FixtureRequest
) -> None:
    """The acquire and release calls are awaited without a shielding task: cut short at
    each of their suspension points, the lease is still given back (the repeated call
    answers for the cancelled one), and the next acquisition finds the date free."""
    if kind == "redis":
        url = request.getfixturevalue("redis_url")
    else:
        url = f"sqlite:///{tmp_path}/leases.db"

    async def main() -> list[int]:
        store = open_async_store(url)
        entered: list[int] = []

        async def take(steps: int) -> None:
            async with date_lock("cut", DAY, store=store, ttl=10, owner=f"cut-{steps}"):
                entered.append(steps)

        try:
            for steps in range(40):
                task = asyncio.create_task(take(steps))
                for _ in range(steps):
                    await asyncio.sleep(0)
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                assert await store.holders() == [], f"left behind after {steps} steps"
            async with date_lock("cut", DAY, store=store, ttl=10, wait=0):
                pass
        finally:
            await store.aclose()
        return entered

    entered = asyncio.run(main())
    assert entered and entered != list(range(40))  # cancelled inside and before the block


@pytest.mark.redis
def test_a_cancelled_redis_waiter_leaves_no_queue_state(redis_url: str) -> None:
    async def main() -> None:
        store = open_async_store(redis_url)
        assert isinstance(store, AsyncRedisStore)
        key = "cancel:2026-02-03"
        queue = f"{store.prefix}:{{{key}}}:queue"
        held, leave = asyncio.Event(), asyncio.Event()

        async def holder() -> None:
            async with date_lock("cancel", DAY, store=store, ttl=10, owner="holder"):
                held.set()
                await leave.wait()

        async def waiter() -> None:
            async with date_lock("cancel", DAY, store=store, ttl=10, wait=30, owner="w"):
                raise AssertionError("the waiter got the lease while it was held")

        try:
            holding = asyncio.create_task(holder())
            await held.wait()
            waiting = asyncio.create_task(waiter())
            for _ in range(200):
                if await store.client.zcard(queue) == 1:
                    break
                await asyncio.sleep(0.01)
            assert await store.client.zcard(queue) == 1
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            assert await store.client.zcard(queue) == 0
            leave.set()
            await holding
            assert await store.holders() == []
        finally:
            await store.aclose()

    asyncio.run(main())


def test_guarded_async_run_locks_the_range_in_order_with_one_group() -> None:
    store = MemoryStore()

    class Processor:
        @guarded("pgs", store=store, ttl=10)
        async def run(self, opts: dict[str, Any]) -> list[str]:
            lease = current_lease()
            assert lease is not None
            return [held.key for held in lease.group]

    result = asyncio.run(Processor().run({"start_date": "2026-02-01", "end_date": "2026-02-03"}))
    assert result == [f"pgs:2026-02-0{d}" for d in (1, 2, 3)]
    assert store.holders() == []


def test_guarded_async_busy_raises_or_skips() -> None:
    store = MemoryStore()

    class Processor:
        def __init__(self, on_busy: Any) -> None:
            self.on_busy = on_busy

        async def body(self, opts: dict[str, Any]) -> bool:
            return True

    @guarded("pgs", store=store, ttl=10, wait=0.2)
    async def strict(self: Any, opts: dict[str, Any]) -> bool:
        return True

    @guarded("pgs", store=store, ttl=10, on_busy="skip")
    async def lenient(self: Any, opts: dict[str, Any]) -> bool:
        return True

    async def main() -> None:
        with date_lock("pgs", DAY, store=store, ttl=10, owner="other"):
            with pytest.raises(LockBusy) as busy:
                await strict(None, {"game_date": DAY, "start_date": DAY})
            assert busy.value.holder == "other" and busy.value.remaining is not None
            assert await lenient(None, {"start_date": DAY}) is False
        assert await strict(None, {"start_date": DAY}) is True

    asyncio.run(main())


def test_guarded_refuses_bad_opts_before_locking() -> None:
    @guarded("pgs", store=MemoryStore())
    async def run(self: Any, opts: Any) -> bool:
        return True

    with pytest.raises(ConfigError, match="opts"):
        asyncio.run(run(None, "2026-02-03"))


def test_a_killed_redis_gives_store_unavailable_then_lease_lost_by_the_deadline() -> None:
    server = RedisServer()
    try:

        async def main() -> None:
            store = open_async_store(server.url)
            try:
                lost_at: list[float] = []
                with pytest.raises(LeaseLost, match="deadline"):
                    async with date_lock(
                        "pgs", DAY, store=store, ttl=0.6, on_lost=lambda _: lost_at.append(1)
                    ) as lease:
                        server.kill()
                        await asyncio.sleep(1.0)
                        assert lease.lost and lost_at
                with pytest.raises(StoreUnavailable):
                    async with date_lock("pgs", DAY, store=store, ttl=5):
                        pass
            finally:
                await store.aclose()

        asyncio.run(main())
    finally:
        server.stop()


def test_leases_are_renewed_after_many_short_blocks_and_interleaved_ones() -> None:
    # Short blocks leave entries in the loop's renewal schedule; more of them than it
    # keeps before compacting, then leases entered in an order their first renewals
    # are not due in (a longer ttl first).
    store = MemoryStore()
    renewed: list[str] = []
    hooks = LeaseHooks(renewed=lambda lease: renewed.append(lease.key))

    async def hold(day: str, ttl: float) -> None:
        async with date_lock("pgs", day, store=store, ttl=ttl, hooks=hooks) as lease:
            await asyncio.sleep(1.2)
            lease.check()

    async def main() -> None:
        for _ in range(2100):
            async with date_lock("pgs", DAY, store=store, ttl=30):
                pass
        await asyncio.gather(hold("2026-02-04", 1.5), hold("2026-02-05", 0.6))

    asyncio.run(main())
    assert "pgs:2026-02-05" in renewed and "pgs:2026-02-04" in renewed
    assert store.holders() == []


def test_an_event_loop_is_not_kept_alive_by_the_leases_it_held() -> None:
    store = MemoryStore()
    loop = asyncio.new_event_loop()

    async def main() -> None:
        # Ended before its first renewal was due: the loop's schedule still lists it.
        async with date_lock("pgs", DAY, store=store, ttl=30):
            pass
        async with date_lock("pgs", "2026-02-04", store=store, ttl=30):
            await asyncio.sleep(0)

    loop.run_until_complete(main())
    loop.close()
    gone = weakref.ref(loop)
    del loop
    gc.collect()
    assert gone() is None
