"""A hypothesis state machine of acquire/renew/release/break/expire against a reference model."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from processor_guard import LeaseStore, MemoryStore

OWNERS = ("a", "b", "c")
KEYS = ("k1", "k2")
# Times are in whole milliseconds of a fake clock, so no step lands ambiguously near
# an expiry instant because of float rounding; EDGE covers stores that round.
EDGE = 0.002


@dataclass
class Key:
    owner: str | None = None
    fence: int = 0
    expires: float = 0.0
    issued: list[int] = field(default_factory=list)
    owned: dict[str, int] = field(default_factory=dict)  # last fence each owner got
    # owner/fence/expires mirror the store's record: an expired record keeps its owner
    # (so that owner may still release it) but is not live.


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_790_000_000.0

    def __call__(self) -> float:
        return self.now


class LeaseModel(RuleBasedStateMachine):
    """Drives one store from several owners; each step checks it against the model."""

    def make_store(self, clock: FakeClock) -> LeaseStore:
        raise NotImplementedError

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.store = self.make_store(self.clock)
        self.keys = {k: Key() for k in KEYS}

    def teardown(self) -> None:
        self.store.close()

    # -- model helpers
    def live(self, k: Key) -> bool | None:
        """True/False, or None when the clock is too close to the expiry to say."""
        if k.owner is None:
            return False
        if abs(k.expires - self.clock.now) <= EDGE:
            return None
        return k.expires > self.clock.now

    # -- rules
    @rule(key=st.sampled_from(KEYS), owner=st.sampled_from(OWNERS), ttl_ms=st.integers(50, 3000))
    def acquire(self, key: str, owner: str, ttl_ms: int) -> None:
        k = self.keys[key]
        live = self.live(k)
        result = self.store.try_acquire(key, owner, ttl_ms / 1000)
        if live is not None:
            assert result.acquired == (not live), (result, k, self.clock.now)
        if result.acquired:
            assert result.fence is not None
            assert all(result.fence > f for f in k.issued), (result.fence, k.issued)
            k.issued.append(result.fence)
            k.owner, k.fence, k.expires = owner, result.fence, self.clock.now + ttl_ms / 1000
            k.owned[owner] = result.fence
        else:
            assert result.holder is not None
            assert (result.holder.owner, result.holder.fence) == (k.owner, k.fence)
            if result.holder.remaining is not None:
                assert result.holder.remaining <= k.expires - self.clock.now + EDGE

    @rule(
        key=st.sampled_from(KEYS),
        owner=st.sampled_from(OWNERS),
        stale=st.booleans(),
        ttl_ms=st.integers(50, 3000),
    )
    def renew(self, key: str, owner: str, stale: bool, ttl_ms: int) -> None:
        k = self.keys[key]
        fence = k.owned.get(owner, 0) - (1 if stale else 0)
        live = self.live(k)
        ok = self.store.renew(key, owner, fence, ttl_ms / 1000)
        mine = k.owner == owner and k.fence == fence
        if not mine:
            assert not ok, f"{owner} renewed {key} with fence {fence}; model {k}"
        elif live is not None:
            assert ok == live
        if ok:
            k.expires = self.clock.now + ttl_ms / 1000

    @rule(key=st.sampled_from(KEYS), owner=st.sampled_from(OWNERS), stale=st.booleans())
    def release(self, key: str, owner: str, stale: bool) -> None:
        k = self.keys[key]
        fence = k.owned.get(owner, 0) - (1 if stale else 0)
        live = self.live(k)
        freed = self.store.release(key, owner, fence)
        mine = k.owner == owner and k.fence == fence
        if not mine:
            assert not freed, f"{owner} released {key} with fence {fence}; model {k}"
        elif live:
            assert freed
        if freed:
            k.owner = None
        # Release is idempotent: the same call again never frees anything.
        assert not self.store.release(key, owner, fence)

    @rule(key=st.sampled_from(KEYS))
    def break_lease(self, key: str) -> None:
        k = self.keys[key]
        fence = self.store.break_lease(key)
        assert all(fence > f for f in k.issued)
        k.issued.append(fence)
        k.owner, k.fence = None, fence

    @rule(ms=st.integers(1, 2000))
    def advance(self, ms: int) -> None:
        self.clock.now += ms / 1000

    @invariant()
    def holders_match_model(self) -> None:
        for key, k in self.keys.items():
            live = self.live(k)
            held = self.store.holder(key)
            if live is None:
                continue
            if live:
                assert held is not None, (key, k, self.clock.now)
                assert (held.owner, held.fence) == (k.owner, k.fence)
            else:
                assert held is None, (key, held, k)
        listed = {h.key: (h.owner, h.fence) for h in self.store.holders()}
        for key, k in self.keys.items():
            if self.live(k):
                assert listed.get(key) == (k.owner, k.fence)
            elif self.live(k) is False:
                assert key not in listed


SETTINGS = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


class MemoryModel(LeaseModel):
    def make_store(self, clock: FakeClock) -> LeaseStore:
        return MemoryStore(clock=clock)


class SQLiteModel(LeaseModel):
    def make_store(self, clock: FakeClock) -> LeaseStore:
        from processor_guard.stores.sqlite_store import SQLiteStore

        self._dir = tempfile.TemporaryDirectory(prefix="pg-stateful-")
        return SQLiteStore(Path(self._dir.name) / "leases.db", clock=clock)

    def teardown(self) -> None:
        super().teardown()
        self._dir.cleanup()


def test_memory_store_matches_the_model() -> None:
    MemoryModel.TestCase.settings = SETTINGS
    MemoryModel.TestCase().runTest()


def test_sqlite_store_matches_the_model() -> None:
    pytest.importorskip("processor_guard.stores.sqlite_store")
    SQLiteModel.TestCase.settings = settings(SETTINGS, max_examples=30)
    SQLiteModel.TestCase().runTest()
