"""Lease basics on the in-memory store (the conformance suite covers every store)."""

from __future__ import annotations

import datetime as dt

import pytest

from processor_guard import ConfigError, LeaseLost, LockBusy, MemoryStore, current_lease, date_lock


def test_fence_increases_and_busy_names_holder() -> None:
    store = MemoryStore()
    with date_lock("pgs", "2026-02-03", store=store, ttl=5, owner="a") as first:
        assert current_lease() is first
        other = date_lock("pgs", dt.date(2026, 2, 3), store=store, ttl=5, owner="b")
        with pytest.raises(LockBusy) as busy, other:
            pass
        assert busy.value.holder == "a"
        assert busy.value.remaining is not None and 0 < busy.value.remaining <= 5
    with date_lock("pgs", "2026-02-03", store=store, ttl=5, owner="b") as second:
        assert second.fence > first.fence
    assert current_lease() is None


@pytest.mark.parametrize("bad", ["2026-2-3", "20260203", dt.datetime(2026, 2, 3), None, 20260203])
def test_bad_dates_are_config_errors(bad: object) -> None:
    with pytest.raises(ConfigError) as err, date_lock("pgs", bad, store=MemoryStore()):  # type: ignore[arg-type]
        pass
    assert isinstance(err.value, ValueError)


def test_stolen_lease_is_lost_and_exit_raises() -> None:
    store = MemoryStore()
    with pytest.raises(LeaseLost), date_lock("pgs", "2026-02-03", store=store, ttl=0.3) as lease:
        store.break_lease(lease.key)
        assert lease.wait_lost(1.0)
