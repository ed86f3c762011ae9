"""Clocks: lease deadlines follow the monotonic clock; wall-clock jumps change nothing
on Redis or Firestore, whose expiry and fences come from the server."""

from __future__ import annotations

import sys
import time
import types
from collections.abc import Callable, Iterator

import pytest

from faults.conftest import SharedStore
from processor_guard import LeaseHooks, LeaseLost, LockBusy, MemoryStore, date_lock

JUMPS = [3600.0, -86400.0, 7 * 86400.0]  # forward an hour, back a day, forward a week


@pytest.fixture
def library_wall_clock(monkeypatch: pytest.MonkeyPatch) -> Callable[[float], None]:
    """Shift ``time.time`` as every processor_guard module sees it; returns the setter.

    Patching ``time.time`` process-wide would also skew gRPC's own deadlines (computed
    from ``time.time()`` and checked against the real clock), a fault no real clock jump
    produces, so only the library's view moves.
    """
    offset = [0.0]
    shifted = types.SimpleNamespace(**{k: getattr(time, k) for k in dir(time) if k[0] != "_"})
    shifted.time = lambda: time.time() + offset[0]
    shifted.time_ns = lambda: time.time_ns() + int(offset[0] * 1e9)
    for name, module in list(sys.modules.items()):
        if name.split(".")[0] == "processor_guard" and getattr(module, "time", None) is time:
            monkeypatch.setattr(module, "time", shifted)

    def move(seconds: float) -> None:
        offset[0] = seconds

    return move


@pytest.fixture
def server_clock_store(shared_store: SharedStore) -> Iterator[SharedStore]:
    if shared_store.kind == "sqlite":
        pytest.skip("SQLite's expiry is the host's wall clock by design (its clock= parameter)")
    yield shared_store


def test_wall_clock_jumps_change_nothing_on_server_clock_stores(
    server_clock_store: SharedStore, request: pytest.FixtureRequest
) -> None:
    store = server_clock_store.open()
    move_wall_clock = request.getfixturevalue("library_wall_clock")  # after the store loaded
    renewals: list[float] = []
    hooks = LeaseHooks(renewed=lambda lease: renewals.append(lease.remaining))
    # Emulator transactions on a loaded 2-core machine can take a good part of a second.
    ttl = 3.0 if server_clock_store.kind == "firestore" else 1.5
    fences = []
    with date_lock("clock", "2026-02-03", store=store, ttl=ttl, hooks=hooks) as lease:
        fences.append(lease.fence)
        for jump in JUMPS:
            move_wall_clock(jump)
            seen = len(renewals)
            while len(renewals) < seen + 1:  # renewals keep succeeding across the jump
                assert not lease.wait_lost(0.05), lease.lost_reason
            lease.check()
            assert 0 < lease.remaining <= ttl
            held = store.holder(lease.key)
            assert held is not None and (held.owner, held.fence) == (lease.owner, lease.fence)
            assert held.remaining is not None and 0 < held.remaining <= ttl + 0.5
            with pytest.raises(LockBusy), date_lock("clock", "2026-02-03", store=store, owner="b"):
                pass
    # Fences come from the server's clock and counter: a wall clock a day behind
    # (or a week ahead) hands out no lower fence.
    for jump in (-86400.0, 0.0):
        move_wall_clock(jump)
        with date_lock("clock", "2026-02-03", store=store, ttl=ttl) as again:
            assert again.fence > fences[-1]
            fences.append(again.fence)


def test_deadline_follows_the_injected_monotonic_clock(
    library_wall_clock: Callable[[float], None],
) -> None:
    # The store's own time is fixed; only the lease's monotonic clock moves.
    store = MemoryStore(clock=lambda: 1_790_000_000.0)
    mono = [500.0]
    with (
        pytest.raises(LeaseLost, match="deadline"),
        date_lock("clock", "2026-02-03", store=store, ttl=30, clock=lambda: mono[0]) as lease,
    ):
        library_wall_clock(10 * 86400)
        lease.check()  # a wall clock ten days ahead does not expire the lease
        assert lease.remaining == 30
        library_wall_clock(-10 * 86400)
        lease.check()
        mono[0] += 31  # the monotonic clock passing the deadline does
        with pytest.raises(LeaseLost):
            lease.check()
        assert lease.lost
