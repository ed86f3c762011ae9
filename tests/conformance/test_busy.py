"""Busy leases: try once, wait, time out, hand over promptly on release."""

from __future__ import annotations

import threading
import time

import pytest

from processor_guard import GuardError, LockBusy, date_lock
from processor_guard.stores import PollingWaiter, ReleaseWaiter

from .conftest import StoreKit


def test_busy_with_no_wait_names_key_holder_and_time_left(kit: StoreKit) -> None:
    with date_lock("pgs", "2026-02-03", store=kit.store, ttl=20, owner="first") as first:
        with (
            pytest.raises(LockBusy) as busy,
            date_lock("pgs", "2026-02-03", store=kit.store, ttl=20, owner="second"),
        ):
            pytest.fail("the body ran without the lease")
        assert isinstance(busy.value, GuardError)
        assert busy.value.key == first.key == "pgs:2026-02-03"
        assert busy.value.holder == "first"
        assert busy.value.remaining is not None and 0 < busy.value.remaining <= 20
        assert "first" in str(busy.value)
        holder = kit.store.holder(first.key)
        assert holder is not None and holder.owner == "first", "a busy attempt changed the lease"
        first.check()


def test_wait_times_out_with_lock_busy(kit: StoreKit) -> None:
    with date_lock("pgs", "2026-02-03", store=kit.store, ttl=20, owner="first"):
        started = time.monotonic()
        with (
            pytest.raises(LockBusy) as busy,
            date_lock("pgs", "2026-02-03", store=kit.store, ttl=20, wait=0.5),
        ):
            pytest.fail("the body ran without the lease")
        assert time.monotonic() - started >= 0.5, "gave up before the wait ran out"
        assert busy.value.holder == "first"


def test_waiter_gets_the_lease_when_the_holder_releases(kit: StoreKit) -> None:
    held = threading.Event()
    release = threading.Event()
    fences: dict[str, int] = {}

    def holder() -> None:
        with date_lock("pgs", "2026-02-03", store=kit.store, ttl=20, owner="first") as lease:
            fences["first"] = lease.fence
            held.set()
            release.wait(10)

    t = threading.Thread(target=holder)
    t.start()
    try:
        assert held.wait(10)
        threading.Timer(0.3, release.set).start()
        with date_lock(
            "pgs", "2026-02-03", store=kit.store, ttl=20, wait=15, owner="second"
        ) as lease:
            assert release.is_set()
            assert lease.fence > fences["first"]
            holder_now = kit.store.holder(lease.key)
            assert holder_now is not None and holder_now.owner == "second"
    finally:
        release.set()
        t.join()


def test_waiter_gets_the_lease_when_the_holder_expires(kit: StoreKit, key: str) -> None:
    first = kit.store.try_acquire(key, "crashed", 0.5)  # never renewed, never released
    assert first.acquired and first.fence is not None
    scope, day = key.split(":")
    with date_lock(scope, day, store=kit.store, ttl=5, wait=10) as lease:
        assert lease.fence > first.fence


def test_release_notice_wakes_a_waiter(kit: StoreKit, key: str) -> None:
    """Stores with release notices wake waiters at once; the rest poll."""
    first = kit.store.try_acquire(key, "first", 30)
    assert first.acquired and first.fence is not None
    with kit.store.release_waiter(key) as waiter:
        if isinstance(waiter, PollingWaiter):
            pytest.skip(f"the {kit.kind} store has no release notices; its waiters poll")
        releaser = threading.Timer(0.2, kit.store.release, (key, "first", first.fence))
        releaser.start()
        try:
            assert waiter.wait(20.0) is True, "the waiter slept through the release"
        finally:
            releaser.join()


class _Recording(ReleaseWaiter):
    """Wraps a store's waiter; records each wait's timeout and whether a notice woke it."""

    def __init__(self, inner: ReleaseWaiter, long_wait: threading.Event) -> None:
        self.inner = inner
        self.long_wait = long_wait
        self.calls: list[tuple[float, bool]] = []

    def wait(self, timeout: float) -> bool:
        if timeout >= 0.15:
            self.long_wait.set()
        woke = self.inner.wait(timeout)
        self.calls.append((timeout, woke))
        return woke

    def close(self) -> None:
        self.inner.close()


@pytest.mark.parametrize("kind", [pytest.param("redis", marks=pytest.mark.redis)])
def test_redis_handoff_is_woken_by_the_release_notice(
    kind: str, request: pytest.FixtureRequest
) -> None:
    """The waiter is asleep for a long backoff when the holder releases: only the
    pub/sub notice can explain a prompt hand-over."""
    from .conftest import redis_kit

    kit = redis_kit(request.getfixturevalue("redis_url"))
    store = kit.store
    long_wait = threading.Event()
    recorders: list[_Recording] = []
    real_waiter = store.release_waiter

    def recording_waiter(key: str) -> ReleaseWaiter:
        recorders.append(_Recording(real_waiter(key), long_wait))
        return recorders[-1]

    store.release_waiter = recording_waiter  # type: ignore[method-assign]
    first = store.try_acquire("pgs:2026-02-03", "first", 60)
    assert first.acquired and first.fence is not None

    def release_during_a_long_wait() -> None:
        long_wait.wait(30)
        store.release("pgs:2026-02-03", "first", first.fence)  # type: ignore[arg-type]

    t = threading.Thread(target=release_during_a_long_wait)
    t.start()
    try:
        with date_lock("pgs", "2026-02-03", store=store, ttl=10, wait=30) as lease:
            assert lease.fence > first.fence
        assert len(recorders) == 1
        timeout, woke = recorders[0].calls[-1]
        assert timeout >= 0.15 and woke, recorders[0].calls
    finally:
        t.join()
        kit.close()


@pytest.mark.parametrize("kind", [pytest.param("redis", marks=pytest.mark.redis)])
def test_redis_hands_over_in_arrival_order_and_the_releaser_cannot_barge(
    kind: str, request: pytest.FixtureRequest
) -> None:
    """Waiters are served first come, first served; the release reserves the key for
    the longest-waiting one, so a process looping on the key cannot starve the rest."""
    from processor_guard.stores.redis_store import HANDOVER_OWNER, RedisStore

    from .conftest import redis_kit

    kit = redis_kit(request.getfixturevalue("redis_url"))
    store = kit.store
    assert isinstance(store, RedisStore)
    key = "pgs:2026-02-03"
    order: list[str] = []
    first = store.try_acquire(key, "first", 60)
    assert first.acquired and first.fence is not None

    def waiter(name: str) -> None:
        with date_lock("pgs", "2026-02-03", store=store, ttl=10, wait=30, owner=name):
            order.append(name)

    threads = []
    try:
        for name in ("a", "b", "c"):
            threads.append(threading.Thread(target=waiter, args=(name,)))
            threads[-1].start()
            # Queued before the next one starts (its queue entry is in Redis).
            deadline = time.monotonic() + 10
            while store.client.zcard(store.queue_key(key)) < len(threads):
                assert time.monotonic() < deadline, "waiter never queued"
                time.sleep(0.01)
        assert store.release(key, "first", first.fence)
        # The releaser comes straight back: the key is already reserved for "a".
        busy = store.try_acquire(key, "first", 60)
        assert not busy.acquired
        assert busy.holder is not None and busy.holder.owner in (HANDOVER_OWNER, "a")
    finally:
        for t in threads:
            t.join(30)
        kit.close()
    assert order == ["a", "b", "c"]


@pytest.mark.parametrize("kind", [pytest.param("redis", marks=pytest.mark.redis)])
def test_redis_waiter_that_gives_up_passes_the_hand_over_on(
    kind: str, request: pytest.FixtureRequest
) -> None:
    from processor_guard.stores.redis_store import RedisStore

    from .conftest import redis_kit

    kit = redis_kit(request.getfixturevalue("redis_url"))
    store = kit.store
    assert isinstance(store, RedisStore)
    key = "pgs:2026-02-03"
    first = store.try_acquire(key, "first", 60)
    assert first.acquired and first.fence is not None
    quitter = store.release_waiter(key)  # joins the queue first
    second_queued = threading.Event()
    got: list[bool] = []

    def patient() -> None:
        with store.release_waiter(key) as waiter:
            second_queued.set()
            woke = waiter.wait(20)
            got.append(woke and store.try_acquire(key, "patient", 60).acquired)

    t = threading.Thread(target=patient)
    t.start()
    try:
        assert second_queued.wait(10)
        assert store.release(key, "first", first.fence)
        assert quitter.wait(5), "the first waiter in line was not woken"
        # The key is reserved for the quitter: nobody else may take it...
        assert not kit.reconnect().try_acquire(key, "barger", 60).acquired
        quitter.close()  # ...until it gives up, which hands the key to the next waiter
        t.join(20)
        assert got == [True]
        holder = store.holder(key)
        assert holder is not None and holder.owner == "patient"
    finally:
        t.join(20)
        kit.close()
