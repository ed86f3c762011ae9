"""A Redis Cluster reached only over TLS (nodes, bus, replication) as an ACL user: the
lease cycle, a pub/sub hand-over, and no password in any error or log line."""

from __future__ import annotations

import logging
import threading

import pytest

from fixtures.redis_topologies import RedisClusterSet
from processor_guard import StoreUnavailable, date_lock, open_store
from processor_guard.stores import RedisStore

pytestmark = pytest.mark.redis
KEY = "tls:2026-02-03"


def test_lease_cycle_and_hand_over_on_a_tls_acl_cluster(
    redis_cluster_tls_acl: RedisClusterSet,
) -> None:
    url = redis_cluster_tls_acl.url
    assert url.startswith("rediss+cluster://pguser:")
    store, other = open_store(url), open_store(url)
    assert isinstance(store, RedisStore)
    try:
        first = store.try_acquire(KEY, "first", 30)
        assert first.acquired and first.fence is not None
        assert store.renew(KEY, "first", first.fence, 30)
        held = other.holder(KEY)
        assert held is not None and (held.owner, held.fence) == ("first", first.fence)
        with other.release_waiter(KEY) as waiter:
            assert not other.try_acquire(KEY, "second", 30).acquired  # queued
            releaser = threading.Timer(0.2, store.release, (KEY, "first", first.fence))
            releaser.start()
            try:
                assert waiter.wait(20.0), "the waiter slept through the release"
            finally:
                releaser.join()
        with date_lock("tls", "2026-02-03", store=other, ttl=10) as lease:
            assert lease.fence > first.fence
            assert [h.key for h in store.holders()] == [KEY]
    finally:
        store.close()
        other.close()


def test_wrong_password_on_a_tls_cluster_never_shows_it(
    redis_cluster_tls_acl: RedisClusterSet, caplog: pytest.LogCaptureFixture
) -> None:
    secure = redis_cluster_tls_acl.secure
    assert secure is not None
    wrong = "Wr0ng-" + secure.password
    caplog.set_level(logging.DEBUG)
    with pytest.raises(StoreUnavailable) as caught:
        open_store(redis_cluster_tls_acl.url.replace(secure.password, wrong))
    for text in (str(caught.value), repr(caught.value), caplog.text):
        assert wrong not in text and secure.password not in text
    assert "pguser:***@" in str(caught.value)
