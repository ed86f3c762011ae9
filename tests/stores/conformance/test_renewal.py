"""Renewal keeps a lease alive; loss is detected and the body cannot finish cleanly."""

from __future__ import annotations

import os
import threading
import time

import pytest

from fixtures.services import RedisServer
from processor_guard import LeaseLost, LockBusy, MemoryStore, date_lock
from processor_guard.leases import Lease, LeaseHooks

from .conftest import StoreKit, redis_kit
from .support import Worker

# Long enough that a renewal (ttl/3 apart) lands well before the deadline even on a
# loaded CI machine, short enough to keep the suite quick.
TTL = 1.5


def test_renewal_keeps_the_lease_past_three_ttls(kit: StoreKit) -> None:
    ttl = 1.0 if kit.kind == "firestore" else 0.6  # emulator round trips are slower
    renewals: list[float] = []
    hooks = LeaseHooks(renewed=lambda lease: renewals.append(lease.remaining))
    with date_lock("pgs", "2026-02-03", store=kit.store, ttl=ttl, hooks=hooks) as lease:
        held_until = time.monotonic() + 3 * ttl + 0.3
        while time.monotonic() < held_until:
            lease.check()
            time.sleep(0.05)
        holder = kit.store.holder(lease.key)
        assert holder is not None
        assert (holder.owner, holder.fence) == (lease.owner, lease.fence)
        with (
            pytest.raises(LockBusy),
            date_lock("pgs", "2026-02-03", store=kit.store, ttl=ttl, owner="other"),
        ):
            pass
        assert not lease.lost
    assert len(renewals) >= 3
    assert kit.store.holder(lease.key) is None


@pytest.mark.parametrize("how", ["broken", "deleted", "taken_over"])
def test_stolen_lease_is_lost_within_one_renewal(kit: StoreKit, how: str) -> None:
    lost_calls: list[Lease] = []
    called = threading.Event()

    def on_lost(lease: Lease) -> None:
        lost_calls.append(lease)
        called.set()

    with (
        pytest.raises(LeaseLost) as err,
        date_lock("pgs", "2026-02-03", store=kit.store, ttl=TTL, on_lost=on_lost) as lease,
    ):
        if how == "broken":
            kit.store.break_lease(lease.key)
        else:
            kit.delete_lease(lease.key)
            if how == "taken_over":
                assert kit.store.try_acquire(lease.key, "thief", 30).acquired
        # The next renewal is at most ttl/3 away; allow it one round trip on top.
        # The deadline is still further off, so this is the renewal noticing.
        assert lease.wait_lost(TTL / 3 + TTL / 6), "loss not detected by the next renewal"
        assert "no longer holds" in lease.lost_reason
        with pytest.raises(LeaseLost):
            lease.check()
    assert err.value.key == lease.key and err.value.fence == lease.fence
    assert called.wait(5.0)  # runs on the keeper's thread right after `lost` is set
    assert lost_calls == [lease]
    if how == "taken_over":
        thief = kit.store.holder(lease.key)
        assert thief is not None and thief.owner == "thief", "release deleted the thief's lease"


def test_paused_holder_cannot_touch_its_successor(kit: StoreKit, key: str) -> None:
    first = kit.store.try_acquire(key, "paused", 0.4)
    assert first.acquired and first.fence is not None
    time.sleep(0.7)  # the holder "pauses" (GC, SIGSTOP) past its ttl
    second = kit.store.try_acquire(key, "successor", 30)
    assert second.acquired and second.fence is not None and second.fence > first.fence
    assert not kit.store.renew(key, "paused", first.fence, 30)
    assert not kit.store.release(key, "paused", first.fence)
    # Same owner name, old fence: still refused; (owner, fence) identifies a lease.
    assert not kit.store.release(key, "successor", first.fence)
    holder = kit.store.holder(key)
    assert holder is not None and (holder.owner, holder.fence) == ("successor", second.fence)
    assert kit.store.renew(key, "successor", second.fence, 30)


def test_paused_holder_process_loses_and_leaves_successor_alone(shared_kit: StoreKit) -> None:
    """A real process frozen with SIGSTOP past its ttl: on waking it must not succeed."""
    assert shared_kit.url is not None
    ttl = 1.0
    holder = Worker(
        ["hold", f"--url={shared_kit.url}", "--name=paused", f"--ttl={ttl}"],
        shared_kit.child_env(),
    )
    try:
        held = holder.next()
        assert held["event"] == "held"
        holder.pause()
        time.sleep(ttl + 0.5)
        with date_lock(
            "conformance", "2026-02-03", store=shared_kit.store, ttl=30, wait=5, owner="next"
        ) as successor:
            assert successor.fence > held["fence"]
            holder.resume()
            holder.send("go")
            events = [holder.next(), holder.next()]
            assert events[-1]["event"] == "lost", events
            assert holder.finish() == 0
            still = shared_kit.store.holder(successor.key)
            assert still is not None
            assert (still.owner, still.fence) == ("next", successor.fence)
            successor.check()
    finally:
        holder.resume()
        holder.stop()


@pytest.mark.parametrize("kind", [pytest.param("redis", marks=pytest.mark.redis)])
def test_redis_killed_during_hold_loses_the_lease_by_its_deadline(
    own_redis: RedisServer, kind: str
) -> None:
    kit = redis_kit(own_redis.url)
    ttl = 1.0
    try:
        with (
            pytest.raises(LeaseLost) as err,
            date_lock("pgs", "2026-02-03", store=kit.store, ttl=ttl) as lease,
        ):
            own_redis.kill()
            assert lease.wait_lost(ttl + 2.0), "not lost by the lease's deadline"
            assert "deadline passed" in lease.lost_reason
            assert "unreachable" in lease.lost_reason
            with pytest.raises(LeaseLost):
                lease.check()
            # The body finishes "normally": leaving the block must still raise.
        assert err.value.fence == lease.fence
    finally:
        kit.close()


@pytest.mark.parametrize(
    "kind",
    [pytest.param("sqlite"), pytest.param("redis", marks=pytest.mark.redis)],
)
def test_forked_child_never_renews_or_releases_the_parents_lease(
    kind: str, request: pytest.FixtureRequest, tmp_path: os.PathLike[str]
) -> None:
    from .conftest import build_kit

    kit = build_kit(kind, request, tmp_path)  # type: ignore[arg-type]
    try:
        with date_lock("pgs", "2026-02-03", store=kit.store, ttl=0.6) as lease:
            pid = os.fork()
            if pid == 0:  # child: report through the exit code only
                code = 0
                try:
                    if lease.active:
                        code |= 1
                    try:
                        lease.check()
                        code |= 2
                    except LeaseLost:
                        pass
                    lease._release()  # what leaving the block does
                finally:
                    os._exit(code)
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0
            time.sleep(1.0)  # past the ttl: the parent's keeper must have renewed it
            holder = kit.store.holder(lease.key)
            assert holder is not None and (holder.owner, holder.fence) == (
                lease.owner,
                lease.fence,
            )
            lease.check()
    finally:
        kit.close()


class _HangingRenewals(MemoryStore):
    """A store whose renewals hang (a black-holed link) until ``unblock`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.unblock = threading.Event()

    def renew(self, key: str, owner: str, fence: int, ttl: float) -> bool:
        self.unblock.wait(30)
        return super().renew(key, owner, fence, ttl)


def test_slow_loss_callback_does_not_delay_other_leases_deadlines() -> None:
    """Loss callbacks run off the keeper's scheduling thread: one slow on_lost hook must
    not hold up the deadline of every other lease in the process."""
    store = _HangingRenewals()
    slow_started = threading.Event()

    def slow_on_lost(lease: Lease) -> None:
        slow_started.set()
        time.sleep(3.0)

    try:
        with (
            pytest.raises(LeaseLost),
            date_lock("pgs", "2026-02-01", store=store, ttl=0.5, on_lost=slow_on_lost) as first,
        ):
            time.sleep(0.1)
            with (
                pytest.raises(LeaseLost),
                date_lock("pgs", "2026-02-02", store=store, ttl=0.5) as second,
            ):
                assert first.wait_lost(2.0)
                assert slow_started.wait(2.0)
                # The first callback is still sleeping; the second deadline comes anyway.
                assert second.wait_lost(1.0), "a slow on_lost callback held up the keeper"
    finally:
        store.unblock.set()
