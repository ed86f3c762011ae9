"""Busy leases: try once, wait, time out, hand over promptly on release."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from processor_guard import GuardError, LockBusy, date_lock
from processor_guard.stores import PollingWaiter, ReleaseWaiter

from .conftest import TOPOLOGY_KINDS, StoreKit


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
        # Redis pads its expiry by up to 2 ms (ms rounding, its clock step).
        assert busy.value.remaining is not None and 0 < busy.value.remaining <= 20.002
        assert "first" in str(busy.value)
        holder = kit.store.holder(first.key)
        assert holder is not None and holder.owner == "first", "a busy attempt changed the lease"
        first.check()


def test_wait_times_out_with_lock_busy(kit: StoreKit) -> None:
    outcome: list[BaseException] = []

    def compete() -> None:  # another thread: not nested in the holder's block
        try:
            with date_lock("pgs", "2026-02-03", store=kit.store, ttl=20, wait=0.5):
                pytest.fail("the body ran without the lease")
        except BaseException as exc:
            outcome.append(exc)

    with date_lock("pgs", "2026-02-03", store=kit.store, ttl=20, owner="first"):
        started = time.monotonic()
        t = threading.Thread(target=compete)
        t.start()
        t.join(30)
        assert time.monotonic() - started >= 0.5, "gave up before the wait ran out"
    assert len(outcome) == 1 and isinstance(outcome[0], LockBusy), outcome
    assert outcome[0].holder == "first"


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


@pytest.mark.parametrize(
    "kind",
    [pytest.param(kind, marks=pytest.mark.redis) for kind in ("redis", *TOPOLOGY_KINDS)],
)
def test_redis_handoff_is_woken_by_the_release_notice(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """The waiter is asleep for a long backoff when the holder releases: only the
    pub/sub notice can explain a prompt hand-over. On a cluster the waiter's
    subscription sits on the primary of the lease's slot, where the releasing script's
    PUBLISH runs."""
    from .conftest import build_kit

    kit = build_kit(kind, request, tmp_path)
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
def test_redis_without_a_barging_window_hands_over_in_arrival_order(
    kind: str, request: pytest.FixtureRequest
) -> None:
    """handoff_after=0: waiters are served first come, first served; every release
    reserves the key for the longest-waiting one, so the releaser cannot barge."""
    from processor_guard.stores.redis_store import HANDOVER_OWNER, RedisStore

    store = RedisStore.from_url(request.getfixturevalue("redis_url"), handoff_after=0)
    key = "pgs:2026-02-03"
    order: list[str] = []
    first = store.try_acquire(key, "first", 60)
    assert first.acquired and first.fence is not None

    go = threading.Event()

    def waiter(name: str) -> None:
        with date_lock("pgs", "2026-02-03", store=store, ttl=10, wait=30, owner=name):
            order.append(name)
            go.wait(30)  # "a" holds until the releaser has tried to come back

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
        go.set()
        for t in threads:
            t.join(30)
        store.close()
    assert order == ["a", "b", "c"]


@pytest.mark.parametrize("kind", [pytest.param("redis", marks=pytest.mark.redis)])
def test_redis_releaser_may_barge_while_the_head_is_in_its_window(
    kind: str, request: pytest.FixtureRequest
) -> None:
    """Within the window a release leaves the key free and tells the head, which keeps
    its place when someone else got there first; having lost, it is not told again
    within the window (a barger usually re-took the key) but retries on its own."""
    from processor_guard.stores.redis_store import RedisStore

    url = request.getfixturevalue("redis_url")
    store = RedisStore.from_url(url, handoff_after=600)
    other = RedisStore.from_url(url, handoff_after=600)
    key = "pgs:2026-02-03"
    try:
        first = other.try_acquire(key, "first", 60)
        assert first.acquired and first.fence is not None
        with store.release_waiter(key) as waiter:
            assert not store.try_acquire(key, "head", 60).acquired  # queued
            place = store.client.zscore(store.queue_key(key), waiter.id)  # type: ignore[attr-defined]
            assert other.release(key, "first", first.fence)
            assert waiter.wait(20), "the head was not told about the release"
            again = other.try_acquire(key, "first", 60)
            assert again.acquired and again.fence is not None, "the releaser could not barge"
            busy = store.try_acquire(key, "head", 60)
            assert not busy.acquired and busy.holder is not None
            assert busy.holder.owner == "first"
            assert store.client.zscore(store.queue_key(key), waiter.id) == place  # type: ignore[attr-defined]
            assert other.release(key, "first", again.fence)
            waiter.wait(20)  # returns within LOST_POLL: no notice comes for a lost head
            mine = store.try_acquire(key, "head", 60)
            assert mine.acquired and mine.fence is not None and mine.fence > again.fence
        assert store.client.zcard(store.queue_key(key)) == 0
        assert store.release(key, "head", mine.fence)
    finally:
        store.close()
        other.close()


@pytest.mark.parametrize("kind", [pytest.param("redis", marks=pytest.mark.redis)])
def test_redis_head_that_waited_past_the_window_gets_the_key_reserved(
    kind: str, request: pytest.FixtureRequest
) -> None:
    from processor_guard.stores.redis_store import HANDOVER_OWNER, RedisStore

    url = request.getfixturevalue("redis_url")
    store = RedisStore.from_url(url, handoff_after=0.01)
    other = RedisStore.from_url(url, handoff_after=0.01)
    key = "pgs:2026-02-03"
    try:
        first = other.try_acquire(key, "first", 60)
        assert first.acquired and first.fence is not None
        with store.release_waiter(key) as waiter:
            assert not store.try_acquire(key, "head", 60).acquired
            time.sleep(0.05)  # well past the window: a lower bound, whatever the load
            assert other.release(key, "first", first.fence)
            busy = other.try_acquire(key, "first", 60)
            assert not busy.acquired and busy.holder is not None
            assert busy.holder.owner == HANDOVER_OWNER
            assert waiter.wait(20)
            mine = store.try_acquire(key, "head", 60)
            assert mine.acquired and mine.fence is not None and mine.fence > first.fence
        assert store.release(key, "head", mine.fence)
    finally:
        store.close()
        other.close()


@pytest.mark.parametrize("kind", [pytest.param("redis", marks=pytest.mark.redis)])
def test_redis_barging_is_bounded_under_contention(
    kind: str, request: pytest.FixtureRequest
) -> None:
    """A process looping on the key (each hold longer than the window) takes it at most
    twice more once another process is waiting: once before the waiter queued, once
    while the waiter is inside its window; the next release hands the key over."""
    from processor_guard.stores.redis_store import RedisStore

    window = 0.02
    store = RedisStore.from_url(request.getfixturevalue("redis_url"), handoff_after=window)
    key = "pgs:2026-02-03"
    stop = threading.Event()
    held = threading.Event()
    barger_fences: list[int] = []
    errors: list[BaseException] = []

    def barger() -> None:
        try:
            while not stop.is_set():
                with date_lock(
                    "pgs", "2026-02-03", store=store, ttl=10, wait=30, owner="barger"
                ) as lease:
                    barger_fences.append(lease.fence)
                    held.set()
                    time.sleep(2.5 * window)  # a lower bound: the head outgrows its window
        except BaseException as exc:  # surfaced by the main thread
            errors.append(exc)

    t = threading.Thread(target=barger)
    t.start()
    try:
        for i in range(6):
            assert held.wait(30)
            holder = store.holder(key)
            while holder is None or holder.owner != "barger":
                time.sleep(0.001)
                holder = store.holder(key)
            seen = holder.fence
            with date_lock(
                "pgs", "2026-02-03", store=store, ttl=10, wait=30, owner=f"w{i}"
            ) as lease:
                mine = lease.fence
            between = [f for f in list(barger_fences) if seen < f < mine]
            assert len(between) <= 2, (i, seen, mine, between)
            held.clear()
    finally:
        stop.set()
        t.join(30)
        store.close()
    assert not errors, errors
    assert not t.is_alive()


@pytest.mark.parametrize("kind", [pytest.param("redis", marks=pytest.mark.redis)])
@pytest.mark.parametrize("bad", [-0.001, float("nan"), "5ms", 3600])
def test_redis_barging_window_must_be_seconds(
    kind: str, bad: object, request: pytest.FixtureRequest
) -> None:
    from processor_guard import ConfigError
    from processor_guard.stores.redis_store import RedisStore

    with pytest.raises(ConfigError, match="handoff_after"):
        RedisStore.from_url(request.getfixturevalue("redis_url"), handoff_after=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", [pytest.param("redis", marks=pytest.mark.redis)])
@pytest.mark.parametrize("window", [0, 600])
def test_redis_waiter_that_gives_up_passes_the_hand_over_on(
    kind: str, window: float, request: pytest.FixtureRequest
) -> None:
    """A reserved key (window 0) or a release notice (window 600: the key is left free)
    goes on to the next waiter when the first one in line gives up instead of trying."""
    from processor_guard.stores.redis_store import RedisStore

    url = request.getfixturevalue("redis_url")
    store = RedisStore.from_url(url, handoff_after=window)
    other = RedisStore.from_url(url, handoff_after=window)
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
        if window == 0:
            # The key is reserved for the quitter: nobody else may take it...
            assert not other.try_acquire(key, "barger", 60).acquired
        quitter.close()  # ...until it gives up, which hands the key to the next waiter
        t.join(20)
        assert got == [True]
        holder = store.holder(key)
        assert holder is not None and holder.owner == "patient"
    finally:
        t.join(20)
        store.close()
        other.close()
