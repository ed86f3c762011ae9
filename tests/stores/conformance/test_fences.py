"""Fences strictly increase across acquisitions, expiries, reconnects and lost records."""

from __future__ import annotations

import itertools
import time

import pytest

from fixtures.services import RedisServer
from processor_guard import date_lock
from processor_guard.stores import LeaseStore, fence_seed

from .conftest import StoreKit, redis_kit

TTL = 0.5


def _take(store: LeaseStore, key: str, owner: str, ttl: float = TTL) -> int:
    result = store.try_acquire(key, owner, ttl)
    assert result.acquired, result.holder
    assert isinstance(result.fence, int)
    return result.fence


def test_fences_rise_across_acquisitions(kit: StoreKit) -> None:
    fences = []
    for i in range(5):
        with date_lock("pgs", "2026-02-03", store=kit.store, ttl=2, owner=f"o{i}") as lease:
            assert isinstance(lease.fence, int)
            fences.append(lease.fence)
    assert all(b > a for a, b in itertools.pairwise(fences)), fences


def test_fence_is_derived_from_store_time(kit: StoreKit, key: str) -> None:
    """Even a key never seen before gets a fence no lower than the store's clock in µs."""
    before = fence_seed(time.time() - 60)  # generous: the server clock may differ a little
    assert _take(kit.store, key, "a") >= before


def test_fences_rise_across_expiry(kit: StoreKit, key: str) -> None:
    first = _take(kit.store, key, "a")
    time.sleep(TTL + 0.3)  # never released: it expires on the store's clock
    assert kit.store.holder(key) is None
    second = _take(kit.store, key, "b")
    assert second > first
    assert not kit.store.renew(key, "a", first, TTL)


def test_fences_rise_across_reconnects(kit: StoreKit, key: str) -> None:
    seen = [_take(kit.store, key, "a")]
    assert kit.store.release(key, "a", seen[-1])
    for i in range(3):
        store = kit.reconnect()
        seen.append(_take(store, key, f"r{i}"))
        assert store.release(key, f"r{i}", seen[-1])
    assert all(b > a for a, b in itertools.pairwise(seen)), seen


def test_fences_rise_when_the_store_lost_the_record(kit: StoreKit, key: str) -> None:
    """Redis restarted without data, Firestore TTL clean-up: the counter is reseeded."""
    first = _take(kit.store, key, "a")
    kit.forget(key)
    assert kit.store.holder(key) is None
    second = _take(kit.store, key, "b")
    assert second > first
    kit.forget(key)
    assert kit.store.break_lease(key) > second


def test_break_lease_raises_the_fence_above_the_holder(kit: StoreKit, key: str) -> None:
    held = _take(kit.store, key, "a", ttl=30)
    broken = kit.store.break_lease(key)
    assert broken > held
    assert kit.store.holder(key) is None
    assert not kit.store.renew(key, "a", held, 30)
    assert not kit.store.release(key, "a", held)
    assert _take(kit.store, key, "b") > broken


@pytest.mark.redis
def test_redis_fences_survive_a_restart_that_wiped_the_data(own_redis: RedisServer) -> None:
    kit = redis_kit(own_redis.url)
    try:
        key = "pgs:2026-02-03"
        fences = []
        for i in range(3):
            fences.append(_take(kit.store, key, f"o{i}"))
            assert kit.store.release(key, f"o{i}", fences[-1])
        held = _take(kit.store, key, "holder", ttl=30)
        own_redis.restart(persist=False, wipe=True)
        # Same store object: the client reconnects and the scripts are loaded again.
        assert kit.store.holder(key) is None, "the wiped server should hold nothing"
        after = _take(kit.store, key, "successor")
        assert after > held > fences[-1]
        # The old holder cannot touch the successor's lease.
        assert not kit.store.renew(key, "holder", held, 30)
        assert not kit.store.release(key, "holder", held)
        assert kit.store.holder(key) is not None
    finally:
        kit.close()
