"""What is specific to RedisStore: expiry rounding, ttl bounds (the conformance suite
covers the common contract)."""

from __future__ import annotations

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
        assert store.try_acquire("pgs:2026-02-03", "me", 10.0001).acquired
        held = store.holder("pgs:2026-02-03")
        assert held is not None and held.remaining is not None and held.remaining > 10.0
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
