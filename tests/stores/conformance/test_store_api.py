"""The LeaseStore contract itself: holder(s), owner+fence checks, idempotent release."""

from __future__ import annotations

import pytest

from processor_guard import LeaseLost, date_lock

from .conftest import StoreKit


def test_holder_and_holders_report_live_leases(kit: StoreKit) -> None:
    a = kit.store.try_acquire("pgs:2026-02-01", "alpha", 20)
    b = kit.store.try_acquire("tds:2026-02-01", "beta", 20)
    assert a.acquired and b.acquired
    one = kit.store.holder("pgs:2026-02-01")
    assert one is not None
    assert (one.key, one.owner, one.fence) == ("pgs:2026-02-01", "alpha", a.fence)
    # Redis pads its expiry by up to 2 ms (ms rounding, its clock step).
    assert one.remaining is not None and 0 < one.remaining <= 20.002
    assert kit.store.holder("pgs:2026-02-02") is None
    found = {(h.key, h.owner, h.fence) for h in kit.store.holders()}
    assert found == {("pgs:2026-02-01", "alpha", a.fence), ("tds:2026-02-01", "beta", b.fence)}
    assert kit.store.release("pgs:2026-02-01", "alpha", a.fence)  # type: ignore[arg-type]
    assert [h.key for h in kit.store.holders()] == ["tds:2026-02-01"]


def test_busy_attempt_reports_the_holder(kit: StoreKit, key: str) -> None:
    first = kit.store.try_acquire(key, "alpha", 20)
    busy = kit.store.try_acquire(key, "beta", 20)
    assert not busy.acquired and busy.fence is None
    assert busy.holder is not None
    assert (busy.holder.owner, busy.holder.fence) == ("alpha", first.fence)
    # Asking again as the holder is no re-entry either: one lease per key.
    assert not kit.store.try_acquire(key, "alpha", 20).acquired


def test_release_checks_owner_and_fence_and_is_idempotent(kit: StoreKit, key: str) -> None:
    got = kit.store.try_acquire(key, "alpha", 20)
    assert got.fence is not None
    assert not kit.store.release(key, "beta", got.fence)
    assert not kit.store.release(key, "alpha", got.fence - 1)
    assert kit.store.holder(key) is not None, "a wrong (owner, fence) freed the lease"
    assert kit.store.release(key, "alpha", got.fence)
    assert not kit.store.release(key, "alpha", got.fence)
    assert kit.store.holder(key) is None


def test_renew_checks_owner_and_fence(kit: StoreKit, key: str) -> None:
    got = kit.store.try_acquire(key, "alpha", 20)
    assert got.fence is not None
    assert not kit.store.renew(key, "beta", got.fence, 20)
    assert not kit.store.renew(key, "alpha", got.fence + 1, 20)
    assert kit.store.renew(key, "alpha", got.fence, 20)
    assert kit.store.release(key, "alpha", got.fence)
    assert not kit.store.renew(key, "alpha", got.fence, 20), "renew revived a released lease"
    assert kit.store.holder(key) is None


def test_nested_leases_and_current_lease(kit: StoreKit) -> None:
    from processor_guard import current_lease

    if kit.api == "async":
        # The bridge enters each block in a task of its own; the async API's
        # current_lease is covered in tests/leases/test_async.py.
        pytest.skip("current_lease is per task: not visible from the bridged test body")

    with date_lock("pgs", "2026-02-01", store=kit.store, ttl=10) as outer:
        assert current_lease() is outer
        with date_lock("pgs", "2026-02-02", store=kit.store, ttl=10) as inner:
            assert current_lease() is inner
        assert current_lease() is outer
        assert not inner.active and outer.active
    assert current_lease() is None
    assert kit.store.holders() == []
    with pytest.raises(LeaseLost, match="released"):
        outer.check()  # a released lease's fence must not be written with any more


@pytest.mark.redis
@pytest.mark.parametrize("client_kind", ["single_connection", "subclass", "decode_responses"])
def test_redis_store_on_any_redis_client(redis_url: str, client_kind: str) -> None:
    """Clients the store does not run its own connections for go through redis-py."""
    import redis

    from processor_guard.stores.redis_store import RedisStore

    class MyRedis(redis.Redis):
        pass

    if client_kind == "single_connection":
        client = redis.Redis.from_url(redis_url, single_connection_client=True)
    elif client_kind == "subclass":
        client = MyRedis.from_url(redis_url)
    else:
        client = redis.Redis.from_url(redis_url, decode_responses=True)
    store = RedisStore(client, prefix="custom")
    try:
        with date_lock("pgs", "2026-02-03", store=store, ttl=5, owner="me") as lease:
            holder = store.holder(lease.key)
            assert holder is not None and (holder.owner, holder.fence) == ("me", lease.fence)
            assert [h.key for h in store.holders()] == [lease.key]
            busy = store.try_acquire(lease.key, "other", 5)
            assert busy.holder is not None and busy.holder.owner == "me"
        assert store.holder(lease.key) is None
        assert store.break_lease(lease.key) > lease.fence
    finally:
        store.close()
