"""Redis Cluster and Sentinel: their store URLs, and RedisStores on redis-py's own clients.

``redis+cluster://[USER:PASSWORD@]HOST:PORT[,HOST:PORT...][?OPTIONS]`` opens a
``redis.cluster.RedisCluster`` seeded with the listed nodes (it discovers the rest).
``redis+sentinel://[USER:PASSWORD@]HOST:PORT[,HOST:PORT...]/SERVICE[/DB][?OPTIONS]``
asks the listed Sentinels for SERVICE's primary (``redis.sentinel.Sentinel.master_for``)
and follows it across failovers. ``rediss+cluster://`` and ``rediss+sentinel://`` use
TLS, for the Sentinels too. USER and PASSWORD (percent-encoded) are the data nodes' ACL
credentials. OPTIONS: ``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile`` (paths),
``ssl_check_hostname`` (``true``/``false``), ``prefix`` (the store's key prefix), and
``wait_replicas=N`` [``&wait_timeout=SECONDS``]: a ReplicatedRedisStore, whose
acquisitions and renewals count only once N replicas acknowledged them (WAIT).

Every key of a lease shares one hash tag, so each lease lives in one cluster slot and
its Lua scripts run on that slot's primary. Waiters subscribe with classic pub/sub:
redis-py's cluster client puts the subscription on the primary of the channel's slot,
which is the lease's slot (the channel carries the same hash tag), so the releasing
script's PUBLISH, whose count in a cluster covers only its own node's subscribers,
sees the waiter.

No password appears in an error raised here: URLs are shown with it masked, and
client errors are reported by type and host:port only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import RedisClusterException
from redis.retry import Retry
from redis.sentinel import Sentinel

from ..errors import ConfigError, StoreUnavailable
from .redis_store import (
    CONNECT_TIMEOUT,
    HANDOFF_AFTER,
    SOCKET_TIMEOUT,
    RedisStore,
    ReplicatedRedisStore,
)

__all__ = [
    "CLUSTER_SCHEMES",
    "SENTINEL_SCHEMES",
    "RedisTopology",
    "masked_url",
    "open_topology_store",
    "parse_topology_url",
]

CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
_TLS_OPTIONS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_check_hostname")
_OPTIONS = (*_TLS_OPTIONS, "prefix", "wait_replicas", "wait_timeout")
# A cluster client re-reads the slot map and retries a command that hit a moved slot or
# a dead node; a lease store must still answer within seconds, so it gets a few quick
# attempts, not redis-py's default of ten.
CLUSTER_ATTEMPTS = 3


@dataclass(frozen=True)
class RedisTopology:
    """What a cluster or sentinel URL names; ``repr`` never shows the password."""

    kind: str  # "cluster" or "sentinel"
    nodes: tuple[tuple[str, int], ...]
    tls: bool
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    service: str | None = None
    db: int = 0
    options: dict[str, str] = field(default_factory=dict)


def masked_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for errors and logs)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    netloc_end = len(rest)
    for stop in "/?#":
        found = rest.find(stop)
        if found != -1:
            netloc_end = min(netloc_end, found)
    netloc, tail = rest[:netloc_end], rest[netloc_end:]
    userinfo, at, hosts = netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user}:***@{hosts}{tail}"


def _bad(url: str, why: str) -> ConfigError:
    return ConfigError(f"bad store URL {masked_url(url)!r}: {why}")


def _host_port(url: str, item: str) -> tuple[str, int]:
    if item.startswith("["):  # [IPv6]:port
        host, close, rest = item[1:].partition("]")
        if not close or not rest.startswith(":"):
            raise _bad(url, f"node {item!r} must be [ADDRESS]:PORT")
        port_text = rest[1:]
    else:
        host, colon, port_text = item.rpartition(":")
        if not colon:
            raise _bad(url, f"node {item!r} needs a port, e.g. 127.0.0.1:7000")
    if not host:
        raise _bad(url, f"node {item!r} has no host")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise _bad(url, f"node {item!r} has no valid port (1-65535)")
    return host, int(port_text)


def _is_seconds(text: str) -> bool:
    try:
        return float(text) > 0
    except ValueError:
        return False


def parse_topology_url(url: str) -> RedisTopology:
    """Parse a ``redis+cluster``/``redis+sentinel`` URL (or their ``rediss+`` forms)."""
    if not isinstance(url, str):
        raise ConfigError(f"store URL must be a string, got {type(url).__name__}")
    scheme, sep, rest = url.strip().partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in CLUSTER_SCHEMES + SENTINEL_SCHEMES:
        raise _bad(
            url, f"not a cluster or sentinel URL (schemes: {CLUSTER_SCHEMES + SENTINEL_SCHEMES})"
        )
    rest, _, query = rest.partition("?")
    if "#" in query or "#" in rest:
        raise _bad(url, "fragments (#) are not allowed")
    netloc, slash, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user_text, colon, pass_text = userinfo.partition(":")
        username = unquote(user_text) or None
        password = unquote(pass_text) if colon else None
    if not hosts:
        raise _bad(url, "needs at least one HOST:PORT")
    nodes = tuple(_host_port(url, item) for item in hosts.split(","))
    options: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=True, strict_parsing=False):
        if name not in _OPTIONS:
            raise _bad(url, f"unknown option {name!r} (known: {', '.join(_OPTIONS)})")
        options[name] = value
    check = options.get("ssl_check_hostname", "false").lower()
    if check not in ("true", "false"):
        raise _bad(url, "ssl_check_hostname must be true or false")
    tls = scheme.startswith("rediss")
    if not tls and any(name in options for name in _TLS_OPTIONS):
        raise _bad(url, "ssl_* options need the rediss+ scheme")
    numeric: dict[str, Callable[[str], bool]] = {
        "wait_replicas": str.isdigit,
        "wait_timeout": _is_seconds,
    }
    for option, valid in numeric.items():
        if option in options and not valid(options[option]):
            raise _bad(url, f"{option} must be a positive number, got {options[option]!r}")
    if "wait_timeout" in options and "wait_replicas" not in options:
        raise _bad(url, "wait_timeout needs wait_replicas")
    if scheme in CLUSTER_SCHEMES:
        if path.strip("/"):
            raise _bad(url, "a cluster URL takes no path (a cluster has only db 0)")
        return RedisTopology("cluster", nodes, tls, username, password, options=options)
    parts = [p for p in path.split("/") if p] if slash else []
    if not parts:
        raise _bad(url, "sentinel needs the service name: redis+sentinel://HOST:PORT/SERVICE")
    if len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
        raise _bad(url, "sentinel path must be /SERVICE or /SERVICE/DB (DB a number)")
    db = int(parts[1]) if len(parts) == 2 else 0
    return RedisTopology("sentinel", nodes, tls, username, password, unquote(parts[0]), db, options)


def _connection_kwargs(topology: RedisTopology) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "socket_timeout": SOCKET_TIMEOUT,
    }
    if topology.tls:
        kwargs["ssl"] = True
        kwargs["ssl_check_hostname"] = topology.options.get("ssl_check_hostname") == "true"
        for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
            if name in topology.options:
                kwargs[name] = topology.options[name]
    return kwargs


def _unavailable(url: str, password: str | None, exc: BaseException) -> StoreUnavailable:
    # redis-py's texts name host:port only; the password is scrubbed anyway, in case a
    # client version ever quotes its connection arguments.
    text = str(exc).replace(password, "***") if password else str(exc)
    return StoreUnavailable(f"cannot open {masked_url(url)!r}: {type(exc).__name__}: {text}")


def cluster_client(topology: RedisTopology) -> RedisCluster:
    """A RedisCluster on the topology's seed nodes, with the store's short timeouts."""
    seeds = [ClusterNode(host, port) for host, port in topology.nodes]  # type: ignore[no-untyped-call]
    return RedisCluster(
        startup_nodes=seeds,
        username=topology.username,
        password=topology.password,
        retry=Retry(NoBackoff(), CLUSTER_ATTEMPTS),
        **_connection_kwargs(topology),
    )


def sentinel_client(topology: RedisTopology) -> redis.Redis:
    """A client on the service's current primary, found through the topology's Sentinels."""
    assert topology.service is not None
    kwargs = _connection_kwargs(topology)
    # Sentinels get the store's quick failure too: one retry, no backoff.
    asking = {**kwargs, "retry": Retry(NoBackoff(), 1)}
    sentinel = Sentinel(list(topology.nodes), sentinel_kwargs=asking, **kwargs)  # type: ignore[no-untyped-call]
    client: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
        topology.service,
        db=topology.db,
        username=topology.username,
        password=topology.password,
        retry=Retry(NoBackoff(), 1),
        **kwargs,
    )
    return client


def open_topology_store(url: str, *, handoff_after: float = HANDOFF_AFTER) -> RedisStore:
    """A RedisStore on the cluster or the Sentinel-managed primary ``url`` names."""
    topology = parse_topology_url(url)
    prefix = topology.options.get("prefix", "processor_guard")
    try:
        if topology.kind == "cluster":
            client: redis.Redis | RedisCluster = cluster_client(topology)
        else:
            client = sentinel_client(topology)
    except (redis.RedisError, RedisClusterException, OSError) as exc:
        raise _unavailable(url, topology.password, exc) from None
    if "wait_replicas" in topology.options:
        return ReplicatedRedisStore(
            client,
            replicas=int(topology.options["wait_replicas"]),
            replica_timeout=float(topology.options.get("wait_timeout", "0.5")),
            prefix=prefix,
            handoff_after=handoff_after,
        )
    return RedisStore(client, prefix=prefix, handoff_after=handoff_after)
