"""A store killed (SIGKILL) mid-hold and restarted: loss by the deadline, fences keep rising."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from fixtures.services import RedisServer
from processor_guard import LeaseLost, LeaseStore, StoreUnavailable, date_lock

CYCLES = 3
TTL = 0.8


def hold_through_a_crash(
    store: LeaseStore,
    kill: Callable[[], None],
    restart: Callable[[], None],
    fences: list[int],
    ttl: float = TTL,
) -> None:
    """Hold a lease, kill the store, check loss by the deadline, restart, take it again."""
    with (
        pytest.raises(LeaseLost),
        date_lock("crash", "2026-02-03", store=store, ttl=ttl, wait=0) as lease,
    ):
        assert not fences or lease.fence > fences[-1], (lease.fence, fences)
        fences.append(lease.fence)
        kill()
        # Lost at the deadline (the slack is only for a loaded machine's scheduling).
        assert lease.wait_lost(lease.remaining + ttl), "held past the deadline with the store down"
        with pytest.raises(LeaseLost):
            lease.check()
    restart()
    reachable(store, lease.key)
    # A restart that kept its data also kept the dead lease until its server-side expiry.
    with date_lock("crash", "2026-02-03", store=store, ttl=ttl, wait=ttl * 5) as again:
        assert again.fence > lease.fence, (again.fence, lease.fence)
        fences.append(again.fence)


def reachable(store: LeaseStore, key: str, timeout: float = 30.0) -> None:
    """Wait until the store answers again (a client may still be backing off its reconnect)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            store.holder(key)
            return
        except StoreUnavailable:
            if time.monotonic() > deadline:
                raise


@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.parametrize(
    ("persist", "wipe"),
    [(False, False), (True, False), (True, True)],
    ids=["no-persistence", "appendonly", "appendonly-data-lost"],
)
def test_redis_killed_mid_hold(
    private_redis: Callable[..., RedisServer], persist: bool, wipe: bool
) -> None:
    from processor_guard.stores.redis_store import RedisStore

    server = private_redis(persist=persist)
    store = RedisStore.from_url(server.url)
    fences: list[int] = []
    try:
        for _ in range(CYCLES):
            hold_through_a_crash(
                store, server.kill, lambda: server.restart(persist=persist, wipe=wipe), fences
            )
    finally:
        store.close()
    assert fences == sorted(fences) and len(set(fences)) == len(fences)


@contextlib.contextmanager
def env_kept(name: str) -> Iterator[None]:
    """Undo changes to one environment variable (the emulator helper sets its host)."""
    before = os.environ.get(name)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


@pytest.fixture(scope="module")
def own_emulator() -> Iterator[Any]:
    """A Firestore emulator of this module's own, so killing it disturbs no other test."""
    from fixtures import firestore_emulator as fixture

    reason = fixture.missing_reason()
    if reason:
        pytest.skip(reason)
    with env_kept("FIRESTORE_EMULATOR_HOST"):
        emulator = fixture.FirestoreEmulator(project="processor-guard-faults")
    try:
        yield emulator
    finally:
        with env_kept("FIRESTORE_EMULATOR_HOST"):
            emulator.stop()


@pytest.mark.firestore
@pytest.mark.slow
def test_firestore_emulator_killed_mid_hold(own_emulator: Any) -> None:
    from processor_guard.stores.firestore_store import FirestoreStore

    with env_kept("FIRESTORE_EMULATOR_HOST"):
        store = FirestoreStore(own_emulator.client(), collection="crash_leases")

    def restart() -> None:
        with env_kept("FIRESTORE_EMULATOR_HOST"):
            own_emulator.start()

    fences: list[int] = []
    for _ in range(2):
        # The emulator keeps nothing across a restart: the fence must be re-seeded
        # from server time, above every fence handed out before.
        hold_through_a_crash(store, own_emulator.kill, restart, fences, ttl=3.0)
    assert fences == sorted(fences) and len(set(fences)) == len(fences)
