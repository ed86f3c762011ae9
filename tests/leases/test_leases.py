"""Lease behaviour that does not depend on the store: hooks, callbacks, margins, config."""

from __future__ import annotations

import logging
import threading

import pytest

from processor_guard import (
    ConfigError,
    Lease,
    LeaseHooks,
    LeaseLost,
    MemoryStore,
    StoreUnavailable,
    date_lock,
    register_hooks,
)
from processor_guard.stores.base import AcquireResult


class FlakyRenewals(MemoryStore):
    """A memory store whose renewals fail as if the network were cut (a fault no
    healthy in-process store produces)."""

    def __init__(self) -> None:
        super().__init__()
        self.renew_calls = 0

    def renew(self, key: str, owner: str, fence: int, ttl: float) -> bool:
        self.renew_calls += 1
        raise StoreUnavailable("connection refused", key=key)


def test_hooks_see_every_event_in_order() -> None:
    events: list[tuple[str, int]] = []
    hooks = LeaseHooks(
        acquired=lambda lease: events.append(("acquired", lease.fence)),
        renewed=lambda lease: events.append(("renewed", lease.fence)),
        released=lambda lease: events.append(("released", lease.fence)),
    )
    with date_lock("pgs", "2026-02-03", store=MemoryStore(), ttl=0.3, hooks=hooks) as lease:
        threading.Event().wait(0.35)  # more than one renewal period (ttl/3)
    names = [name for name, _ in events]
    assert names[0] == "acquired" and names[-1] == "released"
    assert "renewed" in names
    assert {fence for _, fence in events} == {lease.fence}


def test_global_hooks_can_be_removed() -> None:
    seen: list[Lease] = []
    remove = register_hooks(LeaseHooks(acquired=seen.append))
    try:
        with date_lock("pgs", "2026-02-03", store=MemoryStore()):
            pass
    finally:
        remove()
    with date_lock("pgs", "2026-02-04", store=MemoryStore()):
        pass
    assert [lease.key for lease in seen] == ["pgs:2026-02-03"]


def test_unreachable_store_loses_lease_by_deadline(caplog: pytest.LogCaptureFixture) -> None:
    store = FlakyRenewals()
    lost: list[Lease] = []
    caplog.set_level(logging.WARNING, logger="processor_guard")
    lock = date_lock("pgs", "2026-02-03", store=store, ttl=0.6, on_lost=lost.append)
    with pytest.raises(LeaseLost) as err, lock as lease:
        assert lease.wait_lost(2.0), "lease not marked lost after its deadline"
    for _ in range(250):  # on_lost runs on the keeper's thread right after the flag
        if lost:
            break
        threading.Event().wait(0.02)
    assert lost == [lease]
    assert store.renew_calls >= 1
    assert "store unreachable" in err.value.reason
    assert "connection refused" in err.value.reason
    assert any("renewal of pgs:2026-02-03" in r.getMessage() for r in caplog.records)
    assert any(r.levelno == logging.ERROR and "lost" in r.getMessage() for r in caplog.records)


def test_check_refuses_inside_safety_margin() -> None:
    now = [100.0]
    with date_lock("pgs", "2026-02-03", store=MemoryStore(), ttl=30, clock=lambda: now[0]) as lease:
        lease.check()
        now[0] += 28.0  # 2 s left, under the 3 s default margin (ttl / 10)
        with pytest.raises(LeaseLost, match="safety margin"):
            lease.check()
        now[0] -= 28.0


def test_body_error_wins_over_lease_loss() -> None:
    store = MemoryStore()
    with pytest.raises(KeyError), date_lock("pgs", "2026-02-03", store=store, ttl=5) as lease:
        store.break_lease(lease.key)
        raise KeyError("body failed first")


def test_no_store_anywhere_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROCESSOR_GUARD_STORE", raising=False)
    with pytest.raises(ConfigError, match="PROCESSOR_GUARD_STORE"), date_lock("pgs", "2026-02-03"):
        pass


def test_store_url_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROCESSOR_GUARD_STORE", "memory://env-test")
    with date_lock("pgs", "2026-02-03") as first:
        pass
    with date_lock("pgs", "2026-02-03") as second:
        pass
    assert second.fence > first.fence


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"ttl": 0}, "ttl"),
        ({"ttl": -1}, "ttl"),
        ({"ttl": float("nan")}, "ttl"),
        ({"ttl": float("inf")}, "ttl"),
        ({"wait": -0.1}, "wait"),
        ({"owner": ""}, "owner"),
    ],
)
def test_bad_arguments_name_themselves(kwargs: dict[str, object], word: str) -> None:
    with (
        pytest.raises(ConfigError, match=word),
        date_lock(
            "pgs",
            "2026-02-03",
            store=MemoryStore(),
            **kwargs,  # type: ignore[arg-type]
        ),
    ):
        pass


@pytest.mark.parametrize("scope", ["", "has space", "a/b", "a:b", None])
def test_bad_scopes(scope: object) -> None:
    with (
        pytest.raises(ConfigError, match="scope"),
        date_lock(scope, "2026-02-03", store=MemoryStore()),
    ):  # type: ignore[arg-type]
        pass


def test_acquire_result_carries_holder_on_busy() -> None:
    store = MemoryStore()
    assert store.try_acquire("k", "a", 10).acquired
    busy = store.try_acquire("k", "b", 10)
    assert busy == AcquireResult(False, holder=busy.holder)
    assert busy.holder is not None and busy.holder.owner == "a"
