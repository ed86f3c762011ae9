"""Cluster and Sentinel store URLs: what they name, clear errors, and never a password."""

from __future__ import annotations

import logging

import pytest

from fixtures.services import free_port
from processor_guard import ConfigError, StoreUnavailable, open_store
from processor_guard.stores.redis_topologies import masked_url, parse_topology_url

SECRET = "pa:ss@w/rd-9f3"  # percent-encoded in URLs below
ENCODED = "pa%3Ass%40w%2Frd-9f3"


def test_cluster_url_names_seed_nodes_credentials_and_tls_options() -> None:
    topology = parse_topology_url(
        f"rediss+cluster://app:{ENCODED}@10.0.0.1:7000,10.0.0.2:7001,[::1]:7002"
        "?ssl_ca_certs=/etc/ca.pem&prefix=pg"
    )
    assert topology.kind == "cluster" and topology.tls
    assert topology.nodes == (("10.0.0.1", 7000), ("10.0.0.2", 7001), ("::1", 7002))
    assert (topology.username, topology.password) == ("app", SECRET)
    assert topology.options == {"ssl_ca_certs": "/etc/ca.pem", "prefix": "pg"}
    assert SECRET not in repr(topology) and ENCODED not in repr(topology)


def test_sentinel_url_names_sentinels_service_and_db() -> None:
    topology = parse_topology_url("redis+sentinel://h1:26379,h2:26380/mymaster/2")
    assert topology.kind == "sentinel" and not topology.tls
    assert topology.nodes == (("h1", 26379), ("h2", 26380))
    assert (topology.service, topology.db, topology.password) == ("mymaster", 2, None)
    assert parse_topology_url("redis+sentinel://h1:26379/mymaster").db == 0


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis+cluster://", "at least one HOST:PORT"),
        ("redis+cluster://h1", "needs a port"),
        ("redis+cluster://h1:0", "valid port"),
        ("redis+cluster://h1:70000", "valid port"),
        ("redis+cluster://h1:7000/3", "no path"),
        ("redis+cluster://h1:7000?ssl_ca_certs=/x", "rediss+"),
        ("rediss+cluster://h1:7000?verify=no", "unknown option 'verify'"),
        ("rediss+cluster://h1:7000?ssl_check_hostname=maybe", "true or false"),
        ("redis+sentinel://h1:26379", "service name"),
        ("redis+sentinel://h1:26379/svc/db1", "/SERVICE/DB"),
        ("redis+sentinel://h1:26379/svc/1/2", "/SERVICE/DB"),
        ("redis+sentinel://h1:26379/svc?wait_replicas=one", "wait_replicas must be"),
        ("redis+sentinel://h1:26379/svc?wait_replicas=1&wait_timeout=0", "wait_timeout must"),
        ("redis+cluster://h1:7000?wait_timeout=1", "wait_timeout needs wait_replicas"),
    ],
)
def test_bad_urls_get_one_line_config_errors_without_the_password(url: str, says: str) -> None:
    with_secret = url.replace("://", f"://app:{ENCODED}@", 1)
    with pytest.raises(ConfigError) as caught:
        open_store(with_secret)
    message = str(caught.value)
    assert says in message and "\n" not in message
    assert SECRET not in message and ENCODED not in message
    assert "app:***@" in message


def test_masked_url_hides_only_the_password() -> None:
    assert masked_url(f"redis+cluster://app:{ENCODED}@h:1,h:2/x?y=1") == (
        "redis+cluster://app:***@h:1,h:2/x?y=1"
    )
    assert masked_url("redis+cluster://h:1") == "redis+cluster://h:1"
    assert masked_url("redis+cluster://app@h:1") == "redis+cluster://app@h:1"


@pytest.mark.parametrize("scheme", ["redis+cluster", "redis+sentinel"])
def test_unreachable_topology_is_store_unavailable_without_the_password(
    scheme: str, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()  # nothing listens there
    url = f"{scheme}://app:{ENCODED}@127.0.0.1:{port}" + ("/svc" if "sentinel" in scheme else "")
    caplog.set_level(logging.DEBUG)
    with pytest.raises(StoreUnavailable) as caught:
        store = open_store(url)
        # A Sentinel client connects lazily: its first command finds no Sentinel.
        store.holder("scope:2026-02-03")
    message = str(caught.value)
    assert str(port) in message
    for text in (message, repr(caught.value), caplog.text):
        assert SECRET not in text and ENCODED not in text


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"replicas": 0}, "replicas must be an int >= 1"),
        ({"replicas": True}, "replicas must be an int >= 1"),
        ({"replicas": 1, "replica_timeout": 0}, "replica_timeout must be seconds"),
        ({"replicas": 1, "replica_timeout": "1s"}, "replica_timeout must be seconds"),
    ],
)
def test_replicated_store_checks_its_arguments(options: dict[str, object], says: str) -> None:
    import redis

    from processor_guard.stores.redis_store import ReplicatedRedisStore

    client = redis.Redis(host="127.0.0.1", port=free_port())  # never contacted
    with pytest.raises(ConfigError, match=says):
        ReplicatedRedisStore(client, **options)  # type: ignore[arg-type]
    client.close()


@pytest.mark.redis
def test_wrong_password_over_tls_is_store_unavailable_without_it(
    redis_tls_acl: object, caplog: pytest.LogCaptureFixture
) -> None:
    from fixtures.redis_topologies import TlsAclRedis

    assert isinstance(redis_tls_acl, TlsAclRedis)
    wrong = "Wr0ng-" + redis_tls_acl.password
    url = redis_tls_acl.store_url.replace(redis_tls_acl.password, wrong)
    caplog.set_level(logging.DEBUG)
    store = open_store(url)
    try:
        with pytest.raises(StoreUnavailable) as caught:
            store.holder("scope:2026-02-03")
    finally:
        store.close()
    for text in (str(caught.value), repr(caught.value), caplog.text, repr(store)):
        assert wrong not in text and redis_tls_acl.password not in text


def test_open_store_dispatches_exactly_the_topology_schemes() -> None:
    # stores/__init__ names them without importing redis (an optional extra).
    from processor_guard import stores
    from processor_guard.stores.redis_topologies import CLUSTER_SCHEMES, SENTINEL_SCHEMES

    assert set(stores._TOPOLOGY_SCHEMES) == {*CLUSTER_SCHEMES, *SENTINEL_SCHEMES}
    assert set(stores._TOPOLOGY_SCHEMES) <= set(stores.SUPPORTED_SCHEMES)
