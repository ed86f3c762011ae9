"""Slow and cut links to Redis: outages are StoreUnavailable, never "free" or "held"."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

import pytest

from faults.proxy import LOOPBACK, FaultyProxy
from processor_guard import Lease, LeaseLost, LeaseStore, LockBusy, StoreUnavailable, date_lock

pytestmark = pytest.mark.redis

TIMEOUT = 0.4  # client socket timeout for the short-fused stores below


@pytest.fixture
def proxy(redis_url: str) -> Iterator[FaultyProxy]:
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    link = FaultyProxy(port)
    try:
        yield link
    finally:
        link.close()


def short_fused(port: int, timeout: float = TIMEOUT) -> LeaseStore:
    """A RedisStore whose client gives up after ``timeout`` seconds."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from processor_guard.stores.redis_store import RedisStore

    client = redis.Redis(
        host=LOOPBACK,
        port=port,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 1),
    )
    return RedisStore(client)


def direct(redis_url: str) -> LeaseStore:
    from processor_guard.stores.redis_store import RedisStore

    return RedisStore.from_url(redis_url)


@pytest.mark.parametrize("fault", ["stall", "cut"])
def test_acquire_through_a_dead_link_is_store_unavailable(
    proxy: FaultyProxy, redis_url: str, fault: str
) -> None:
    store = short_fused(proxy.port)
    assert store.holder("net:2026-02-03") is None  # the healthy link works
    getattr(proxy, fault)()
    for wait in (0.0, 1.0):
        with (
            pytest.raises(StoreUnavailable),
            date_lock("net", "2026-02-03", store=store, wait=wait),
        ):
            pytest.fail("acquired through a dead link")
    with pytest.raises(StoreUnavailable):
        store.holder("net:2026-02-03")  # an outage is never reported as "free"
    with pytest.raises(StoreUnavailable):
        store.holders()
    # Nothing was left behind on the server: the key is free for a healthy client.
    healthy = direct(redis_url)
    assert healthy.holder("net:2026-02-03") is None
    with date_lock("net", "2026-02-03", store=healthy, wait=0):
        pass
    proxy.heal()
    with date_lock("net", "2026-02-03", store=store, wait=0) as again:
        again.check()
    healthy.close()
    store.close()


@pytest.mark.parametrize("fault", ["stall", "cut"])
def test_held_lease_is_lost_by_its_deadline(proxy: FaultyProxy, redis_url: str, fault: str) -> None:
    # Client timeouts longer than the ttl: the loss must come from the lease's own
    # deadline, not from the client giving up.
    store = short_fused(proxy.port, timeout=1.0)
    healthy = direct(redis_url)
    ttl = 0.6
    lost_remaining: list[float] = []
    called = threading.Event()

    def on_lost(lease: Lease) -> None:
        lost_remaining.append(lease.remaining)
        called.set()

    with (
        pytest.raises(LeaseLost),
        date_lock(
            "net",
            "2026-02-03",
            store=store,
            ttl=ttl,
            on_lost=on_lost,
        ) as lease,
    ):
        getattr(proxy, fault)()
        assert lease.wait_lost(lease.remaining + 2.0), "lease outlived its deadline on a dead link"
        with pytest.raises(LeaseLost):
            lease.check()
        # Lost on the deadline, not before a renewal could have saved it (the callback
        # runs on the keeper right after the event is set).
        assert called.wait(5)
        assert lost_remaining == [0.0]
        # The server still holds the lease until its own expiry: a competitor is refused
        # (never read as free because the holder's link is down).
        # The server's expiry is at or after the holder's deadline, so it may be a few
        # ms away: only try a competitor while the server gives the lease some time.
        other = healthy.holder(lease.key)
        if other is not None:
            assert (other.owner, other.fence) == (lease.owner, lease.fence)
            if other.remaining is not None and other.remaining > 0.1:
                with (
                    pytest.raises(LockBusy),
                    date_lock("net", "2026-02-03", store=healthy, wait=0),
                ):
                    pass
    with date_lock("net", "2026-02-03", store=healthy, wait=ttl * 3) as successor:
        assert successor.fence > lease.fence
    proxy.heal()
    store.close()
    healthy.close()


def test_slow_link_under_the_timeout_keeps_the_lease(proxy: FaultyProxy) -> None:
    store = short_fused(proxy.port)
    proxy.latency = 0.02  # each direction: 40 ms round trips, well under the timeout
    renewed: list[int] = []
    # Room for the first call of each script on a fresh connection (handshake,
    # NOSCRIPT, SCRIPT LOAD: several round trips) inside one renewal period.
    ttl = 1.5
    from processor_guard import LeaseHooks

    hooks = LeaseHooks(renewed=lambda lease: renewed.append(lease.fence))
    with date_lock("net", "2026-02-03", store=store, ttl=ttl, hooks=hooks) as lease:
        while len(renewed) < 4:  # more than a ttl's worth of renewals over the slow link
            assert not lease.wait_lost(0.05), lease.lost_reason
        lease.check()
    assert set(renewed) == {lease.fence}
    store.close()


def test_slow_link_over_the_timeout_is_unavailable_and_never_free(
    proxy: FaultyProxy, redis_url: str
) -> None:
    store = short_fused(proxy.port)
    healthy = direct(redis_url)
    proxy.latency = TIMEOUT * 1.5
    with pytest.raises(StoreUnavailable), date_lock("net", "2026-02-03", store=store, ttl=1.0):
        pytest.fail("acquired although every reply came after the timeout")
    # The script may still have run on the server: then the key is held, never
    # handed to a second owner before it expires; either way fences only rise.
    with date_lock("net", "2026-02-03", store=healthy, ttl=1.0, wait=3.0) as lease:
        held = healthy.holder(lease.key)
        assert held is not None and held.fence == lease.fence
    proxy.heal()
    with date_lock("net", "2026-02-03", store=healthy, wait=0) as later:
        assert later.fence > lease.fence
    store.close()
    healthy.close()


@pytest.mark.parametrize("fault", ["stall", "cut"])
def test_waiter_on_a_dead_link_is_unavailable_never_busy_or_acquired(
    proxy: FaultyProxy, redis_url: str, fault: str
) -> None:
    healthy = direct(redis_url)
    store = short_fused(proxy.port)
    outcome: list[str] = []

    def wait_for_it() -> None:
        try:
            with date_lock("net", "2026-02-03", store=store, wait=10):
                outcome.append("acquired")
        except StoreUnavailable:
            outcome.append("unavailable")
        except LockBusy:
            outcome.append("busy")

    with date_lock("net", "2026-02-03", store=healthy, ttl=30) as held:
        waiter = threading.Thread(target=wait_for_it)
        waiter.start()
        time.sleep(0.3)  # the waiter is subscribed and queued behind the holder
        getattr(proxy, fault)()
        waiter.join(20)
        assert not waiter.is_alive()
        held.check()
    # Its wait (10 s) had not run out: an outage must not be reported as "busy".
    assert outcome == ["unavailable"]
    store.close()
    healthy.close()


def test_an_acquire_whose_reply_is_lost_gets_its_own_lease(
    proxy: FaultyProxy, redis_url: str
) -> None:
    store = short_fused(proxy.port, timeout=2.0)
    healthy = direct(redis_url)
    assert store.holder("net:2026-02-03") is None  # connected, scripts loaded
    proxy.drop_replies(1)  # the server runs the acquire script; its reply is lost
    with date_lock("net", "2026-02-03", store=store, ttl=10, owner="me") as lease:
        held = healthy.holder(lease.key)
        assert held is not None and (held.owner, held.fence) == ("me", lease.fence)
    assert healthy.holder(lease.key) is None, "an orphan lease was left behind"
    store.close()
    healthy.close()


def test_a_caller_whose_acquire_failed_ambiguously_is_not_locked_out(
    proxy: FaultyProxy, redis_url: str
) -> None:
    store = short_fused(proxy.port, timeout=2.0)
    healthy = direct(redis_url)
    assert store.holder("net:2026-02-03") is None
    proxy.drop_replies(2)  # the call and its one retry both lose their replies
    with (
        pytest.raises(StoreUnavailable),
        date_lock("net", "2026-02-03", store=store, ttl=10, owner="me"),
    ):
        pytest.fail("acquired without an answer")
    orphan = healthy.holder("net:2026-02-03")
    assert orphan is not None and orphan.owner == "me"  # the server did take it
    with date_lock("net", "2026-02-03", store=store, ttl=10, owner="me", wait=0) as lease:
        assert lease.fence == orphan.fence
        held = healthy.holder(lease.key)
        assert held is not None and held.remaining is not None and held.remaining > 9
    assert healthy.holder("net:2026-02-03") is None
    store.close()
    healthy.close()


def test_a_release_whose_reply_is_lost_is_neither_a_loss_nor_a_warning(
    proxy: FaultyProxy, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = short_fused(proxy.port, timeout=2.0)
    healthy = direct(redis_url)
    caplog.set_level(logging.WARNING, logger="processor_guard")
    with date_lock("net", "2026-02-03", store=store, ttl=30) as lease:
        proxy.drop_replies(1)  # the release runs on the server; its reply is lost
    assert not lease.lost
    assert healthy.holder(lease.key) is None
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    store.close()
    healthy.close()


def test_renewal_capacity_does_not_limit_how_many_leases_a_process_keeps(
    proxy: FaultyProxy,
) -> None:
    from contextlib import ExitStack

    store = short_fused(proxy.port, timeout=2.0)
    ttl, count = 3.0, 40  # the first renewal also opens a connection: 3 more round trips
    lost: list[Lease] = []
    with ExitStack() as held:
        for i in range(count):
            held.enter_context(
                date_lock(f"cap{i}", "2026-02-03", store=store, ttl=ttl, on_lost=lost.append)
            )
        # Every renewal is answered in ~0.3 s, well inside its ttl/3 period; one after
        # another they would take 40 x 0.3 s = 12 s per round.
        proxy.latency = 0.15
        time.sleep(2 * ttl)
        proxy.latency = 0.0
        assert [lease.key for lease in lost] == []
    store.close()
