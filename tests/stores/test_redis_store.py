"""What is specific to RedisStore: expiry rounding, ttl bounds (the conformance suite
covers the common contract)."""

from __future__ import annotations

import time

import pytest

from processor_guard import ConfigError

pytestmark = pytest.mark.redis


def test_expiry_is_never_shorter_than_the_ttl(redis_url: str) -> None:
    from processor_guard.stores.redis_store import RedisStore, ttl_ms

    # Truncated to whole ms (or set late in the server's current ms) the server could
    # expire a lease before its holder's own deadline.
    assert ttl_ms(0.0021) == 4
    assert ttl_ms(10) == 10_001
    store = RedisStore.from_url(redis_url)
    try:
        store.holders()  # connected, scripts loaded: the two calls below are sub-ms
        started = time.monotonic()
        assert store.try_acquire("pgs:2026-02-03", "me", 10.0001).acquired
        held = store.holder("pgs:2026-02-03")
        elapsed = time.monotonic() - started
        assert held is not None and held.remaining is not None
        # The live check only means something when both calls took under 1 ms (the
        # slack the rounding adds); on a busy machine the ttl_ms asserts above decide.
        assert held.remaining > 10.0 or elapsed >= 0.001, (held.remaining, elapsed)
    finally:
        store.close()


@pytest.mark.parametrize("ttl", [1e300, 0, -1, float("nan"), True])
def test_a_ttl_redis_cannot_hold_is_a_config_error(redis_url: str, ttl: float) -> None:
    from processor_guard.stores.redis_store import RedisStore

    store = RedisStore.from_url(redis_url)
    try:
        with pytest.raises(ConfigError, match="ttl"):
            store.try_acquire("pgs:2026-02-03", "me", ttl)
        assert store.holders() == []
    finally:
        store.close()


def test_a_waiter_that_lost_a_barging_race_polls_only_within_its_window(
    redis_url: str,
) -> None:
    import time

    from processor_guard.stores.redis_store import RedisStore

    window = 0.2
    store = RedisStore.from_url(redis_url, handoff_after=window)
    other = RedisStore.from_url(redis_url, handoff_after=window)
    key = "pgs:2026-02-03"
    try:
        first = other.try_acquire(key, "first", 60)
        assert first.acquired and first.fence is not None
        with store.release_waiter(key) as waiter:
            assert not store.try_acquire(key, "head", 60).acquired  # queued
            assert other.release(key, "first", first.fence)
            assert waiter.wait(20), "the head was not told about the release"
            again = other.try_acquire(key, "first", 60)  # the releaser barges back in
            assert again.acquired and again.fence is not None
            assert not store.try_acquire(key, "head", 60).acquired  # lost the race
            time.sleep(window + 0.05)
            started = time.monotonic()
            assert waiter.wait(0.5) is False
            assert time.monotonic() - started >= 0.45, "still polling after its window"
            # The window is over: the next release reserves the key for it and tells it.
            assert other.release(key, "first", again.fence)
            assert waiter.wait(20)
            mine = store.try_acquire(key, "head", 60)
            assert mine.acquired and mine.fence is not None
        assert store.release(key, "head", mine.fence)
    finally:
        store.close()
        other.close()


def test_fence_counters_expire_when_idle_and_fences_keep_rising(redis_url: str) -> None:
    from processor_guard.stores.redis_store import FENCE_KEEP_MS, RedisStore

    store = RedisStore.from_url(redis_url)
    key = "pgs:2026-02-03"
    try:
        first = store.try_acquire(key, "me", 5)
        assert first.acquired and first.fence is not None
        assert 0 < store.client.pttl(store.fence_key(key)) <= FENCE_KEEP_MS
        assert store.release(key, "me", first.fence)
        store.client.delete(store.fence_key(key))  # as if it expired
        again = store.try_acquire(key, "me", 5)
        assert again.fence is not None and again.fence > first.fence
    finally:
        store.close()


@pytest.mark.parametrize(
    ("info", "supported"),
    [
        ("# Server\r\nredis_version:4.0.9\r\n", False),
        ("# Server\r\nredis_version:3.2.12\r\n", False),
        ("# Server\r\nredis_version:5.0.0\r\n", True),
        ("# Server\r\nredis_version:7.0.15\r\n", True),
    ],
)
def test_servers_older_than_redis_5_are_refused(info: str, supported: bool) -> None:
    from processor_guard.stores.redis_store import check_server_version

    if supported:
        check_server_version(info)
    else:
        with pytest.raises(ConfigError, match=r"Redis 5\.0 or later"):
            check_server_version(info)


def test_the_server_version_is_checked_when_scripts_are_loaded(redis_url: str) -> None:
    from processor_guard.stores.redis_store import RedisStore

    store = RedisStore.from_url(redis_url)
    try:
        store.client.script_flush()
        store.client.config_resetstat()  # an INFO reply does not count itself
        assert store.holder("pgs:2026-02-03") is None  # NOSCRIPT: reload, version check
        calls = store.client.info("commandstats")
        assert calls.get("cmdstat_info", {}).get("calls", 0) >= 1
    finally:
        store.close()
