"""``renew_many``: one answer per lease, one lease's loss never another's, and the
keeper renews a process's leases on a batching store together (issue 14, item 8)."""

from __future__ import annotations

import time
from collections import Counter
from contextlib import ExitStack
from typing import Any

import pytest

from processor_guard import LeaseLost, date_lock
from processor_guard.leases import Lease, LeaseHooks

from .conftest import StoreKit

DAYS = [f"2026-01-{day:02d}" for day in range(1, 21)]


def take(kit: StoreKit, owner: str, count: int, ttl: float) -> list[tuple[str, str, int, float]]:
    held = []
    for day in DAYS[:count]:
        key = f"pgs:{day}"
        result = kit.store.try_acquire(key, owner, ttl)
        assert result.acquired and result.fence is not None
        held.append((key, owner, result.fence, ttl))
    return held


def test_renew_many_answers_each_lease_and_extends_the_live_ones(kit: StoreKit) -> None:
    held = take(kit, "me", 6, 5.0)
    assert kit.store.renew_many([]) == []
    broken_key = held[2][0]
    kit.store.break_lease(broken_key)
    stale = (held[4][0], "someone-else", held[4][2], 5.0)
    requests = [
        (held[0][0], "me", held[0][2], 30.0),
        (held[1][0], "me", held[1][2], 30.0),
        held[2],
        (held[3][0], "me", held[3][2], 30.0),
        stale,
        (held[5][0], "me", held[5][2] - 1, 30.0),
    ]
    answers = kit.store.renew_many(requests)
    assert answers == [True, True, False, True, False, False]
    for key, _, fence, _ in (requests[0], requests[1], requests[3]):
        holder = kit.store.holder(key)
        assert holder is not None and holder.fence == fence
        assert holder.remaining is not None and holder.remaining > 10, "extended to 30 s"
    holder = kit.store.holder(held[4][0])
    assert holder is not None and holder.owner == "me", "a stale request changed nothing"
    assert kit.store.holder(broken_key) is None


def test_keeper_renews_many_leases_and_loses_only_the_broken_one(kit: StoreKit) -> None:
    if kit.api == "async":
        pytest.skip("the async API renews each lease in a task on its loop, not in the keeper")
    ttl = 1.5 if kit.kind == "firestore" else 0.9
    renewed: Counter[str] = Counter()
    hooks = LeaseHooks(renewed=lambda lease: renewed.update([lease.key]))
    batches: list[int] = []
    store: Any = kit.store
    original = store.renew_many

    def counting(leases: Any) -> Any:
        batches.append(len(leases))
        return original(leases)

    store.renew_many = counting
    try:
        with pytest.raises(LeaseLost) as lost, ExitStack() as stack:
            leases: list[Lease] = [
                stack.enter_context(date_lock("pgs", day, store=store, ttl=ttl, hooks=hooks))
                for day in DAYS
            ]
            broken, others = leases[7], leases[:7] + leases[8:]
            time.sleep(ttl * 0.5)
            kit.store.break_lease(broken.key)
            assert broken.wait_lost(ttl * 2)
            time.sleep(ttl)
            for lease in others:
                lease.check()  # still held: the broken one failed nobody else
            assert min(renewed[lease.key] for lease in others) >= 2, renewed
    finally:
        del store.renew_many
    assert lost.value.key == broken.key
    assert kit.store.holders() == [], "every other lease was released at the end"
    if kit.store.batch_renewal:
        assert batches and max(batches) > 1, f"no batch was sent: {batches}"
    else:
        assert batches == [], "a store that renews one by one keeps the per-lease path"
