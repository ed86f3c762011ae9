"""Leaving the block: a lease the store no longer holds is a loss, on every store."""

from __future__ import annotations

import pytest

from processor_guard import LeaseLost, date_lock
from processor_guard.leases import LeaseHooks

from .conftest import StoreKit


@pytest.mark.parametrize("what", ["broken", "taken"])
def test_release_that_finds_the_lease_gone_is_lease_lost(kit: StoreKit, what: str) -> None:
    events: list[str] = []
    hooks = LeaseHooks(
        lost=lambda lease: events.append("lost"),
        released=lambda lease: events.append("released"),
    )
    other = kit.reconnect()
    with (
        pytest.raises(LeaseLost, match="no longer held"),
        date_lock("pgs", "2026-02-03", store=kit.store, ttl=30, hooks=hooks) as lease,
    ):
        other.break_lease(lease.key)  # the next renewal is 10 s away: nobody noticed
        if what == "taken":
            assert other.try_acquire(lease.key, "other-instance", 30).acquired
    assert events == ["lost"]
    assert lease.lost and not lease.active
    holder = kit.store.holder(lease.key)
    if what == "taken":
        assert holder is not None and holder.owner == "other-instance"
    else:
        assert holder is None
