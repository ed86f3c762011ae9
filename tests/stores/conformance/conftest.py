"""Fixtures for the conformance suite: every lease store, built the same way, on real servers.

``kit`` is parametrized over the store kinds; each kit gives the store under test, a
URL (and environment) that other OS processes can open, a way to open a second,
independent store object on the same data ("reconnect"), and ways to damage the
backing data the way real incidents do (a deleted lease record, a lost fence record).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import uuid
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

import processor_guard
from fixtures.services import RedisServer
from processor_guard.leases import Lease
from processor_guard.stores import AsyncLeaseStore, LeaseStore, MemoryStore, open_async_store
from processor_guard.stores.aio import as_async

T = TypeVar("T")

TOPOLOGY_KINDS = ("redis-cluster", "redis-sentinel", "redis-tls")
KINDS = [
    pytest.param("memory"),
    pytest.param("sqlite"),
    pytest.param("redis", marks=pytest.mark.redis),
    pytest.param("firestore", marks=pytest.mark.firestore),
    # The same Redis store on other topologies: a 3+3 Redis Cluster, a Sentinel-managed
    # primary, and one server reached over TLS only, as an ACL user (a TLS + ACL cluster
    # gets a smoke test in tests/stores/test_topology_tls.py: its handshakes make the
    # whole suite too slow for CI).
    *(pytest.param(kind, marks=pytest.mark.redis) for kind in TOPOLOGY_KINDS),
]
CROSS_PROCESS_KINDS = KINDS[1:]
# Every test on a kit runs on both APIs: ``with date_lock`` and ``async with date_lock``
# (the test body drives the async one through AsyncBridge).
APIS = ("sync", "async")
# Kinds whose async API is a store of its own (the others go through ThreadedStore).
NATIVE_ASYNC_KINDS = ("redis", "firestore")


def _with_apis(kinds: list[Any]) -> list[Any]:
    return [
        pytest.param((p.values[0], api), marks=p.marks, id=f"{p.values[0]}-{api}")
        for p in kinds
        for api in APIS
    ]


class AsyncBridge:
    """An event loop on a thread of its own, so a synchronous test body can enter
    ``async with date_lock(...)`` blocks whose renewals run on that loop."""

    def __init__(self, kit: StoreKit) -> None:
        self.kit = kit
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self._stores: dict[int, AsyncLeaseStore] = {}

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 300) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def async_store(self, store: object) -> object:
        """The kit's store as its native async store (Redis on redis.asyncio, Firestore
        on AsyncClient)."""
        if not isinstance(store, LeaseStore):
            return store
        if id(store) not in self._stores:
            native_kind = self.kit.kind in NATIVE_ASYNC_KINDS
            native = store is self.kit.store and self.kit.url and native_kind
            self._stores[id(store)] = (
                open_async_store(self.kit.url) if native and self.kit.url else as_async(store)
            )
        return self._stores[id(store)]

    def date_lock(self, *args: Any, store: object = None, **kwargs: Any) -> Any:
        """``date_lock`` entered with ``async with`` on the bridge's loop."""
        lock = processor_guard.date_lock(*args, store=self.async_store(store), **kwargs)

        @contextlib.contextmanager
        def held() -> Iterator[Lease]:
            lease = self.run(lock.__aenter__())
            try:
                yield lease
            except BaseException as exc:
                self.run(lock.__aexit__(type(exc), exc, exc.__traceback__))
                raise
            self.run(lock.__aexit__(None, None, None))

        return held()

    def close(self) -> None:
        for store in self._stores.values():
            with contextlib.suppress(Exception):
                self.run(store.aclose(), timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@dataclass
class StoreKit:
    """One store under test plus what the tests need to reach and damage its data."""

    kind: str
    store: LeaseStore
    url: str | None
    env: dict[str, str] = field(default_factory=dict)
    _reconnect: Callable[[], LeaseStore] | None = None
    _delete_lease: Callable[[LeaseStore, str], None] | None = None
    _forget: Callable[[LeaseStore, str], None] | None = None
    opened: list[LeaseStore] = field(default_factory=list)
    api: str = "sync"
    bridge: AsyncBridge | None = None

    def reconnect(self) -> LeaseStore:
        """A second store object with its own connection on the same data."""
        if self._reconnect is None:
            return self.store
        store = self._reconnect()
        self.opened.append(store)
        return store

    def delete_lease(self, key: str) -> None:
        """Delete the live lease record behind the holder's back (an operator, a bug)."""
        assert self._delete_lease is not None
        self._delete_lease(self.store, key)

    def forget(self, key: str) -> None:
        """Lose every record of ``key``, fence included (restart without data, TTL clean-up)."""
        assert self._forget is not None
        self._forget(self.store, key)

    def child_env(self) -> dict[str, str]:
        """Environment for a subprocess that opens ``url``."""
        return {**os.environ, **self.env}

    def close(self) -> None:
        if self.bridge is not None:
            self.bridge.close()
        for store in [*self.opened, self.store]:
            store.close()


def _memory_kit() -> StoreKit:
    def drop(store: LeaseStore, key: str) -> None:
        assert isinstance(store, MemoryStore)
        with store._cond:
            store._records.pop(key, None)

    return StoreKit("memory", MemoryStore(), None, _delete_lease=drop, _forget=drop)


def _sqlite_kit(tmp_path: Path) -> StoreKit:
    import sqlite3

    from processor_guard.stores.sqlite_store import SQLiteStore

    path = tmp_path / "leases.db"
    store = SQLiteStore(path)
    store.holders()  # create the file and schema before processes race to

    def drop(_: LeaseStore, key: str) -> None:
        with sqlite3.connect(path, timeout=10) as conn:
            conn.execute("DELETE FROM leases WHERE key = ?", (key,))
        conn.close()

    return StoreKit(
        "sqlite",
        store,
        f"sqlite:///{path}",
        _reconnect=lambda: SQLiteStore(path),
        _delete_lease=drop,
        _forget=drop,
    )


def redis_kit(url: str, kind: str = "redis") -> StoreKit:
    """A kit on the Redis server, cluster or Sentinel set at ``url`` (any URL
    ``open_store`` takes for Redis)."""
    from processor_guard.stores import open_store
    from processor_guard.stores.redis_store import RedisStore

    def open_redis() -> RedisStore:
        store = open_store(url)
        assert isinstance(store, RedisStore)
        return store

    def delete_lease(store: LeaseStore, key: str) -> None:
        assert isinstance(store, RedisStore)
        store.client.delete(store.lease_key(key))

    def forget(store: LeaseStore, key: str) -> None:
        assert isinstance(store, RedisStore)
        store.client.delete(store.lease_key(key), store.fence_key(key))

    return StoreKit(
        kind,
        open_redis(),
        url,
        _reconnect=open_redis,
        _delete_lease=delete_lease,
        _forget=forget,
    )


def _firestore_kit(request: pytest.FixtureRequest) -> StoreKit:
    from processor_guard.stores.firestore_store import FirestoreStore

    emulator = request.getfixturevalue("firestore_emulator")
    emulator.start()  # restarted if an earlier test killed it
    collection = f"conformance_{uuid.uuid4().hex[:12]}"
    client = emulator.client()

    def wipe(store: LeaseStore, key: str) -> None:
        # The document id encoding is the store's business: drop the whole collection
        # (each test has its own), which is what a TTL clean-up does to expired leases.
        for ref in client.collection(collection).list_documents():
            ref.delete()

    def warm(store: FirestoreStore) -> FirestoreStore:
        # A new client's first call sets up its channel (~0.5 s): not part of any lease.
        store.holders()
        return store

    store = warm(FirestoreStore(client, collection=collection))
    return StoreKit(
        "firestore",
        store,
        f"firestore://{emulator.project}/{collection}",
        env={"FIRESTORE_EMULATOR_HOST": emulator.host},
        _reconnect=lambda: warm(FirestoreStore(emulator.client(), collection=collection)),
        _delete_lease=wipe,
        _forget=wipe,
    )


def _topology_kit(kind: str, request: pytest.FixtureRequest) -> StoreKit:
    """A kit on a session-wide topology, emptied first (tests list every holder)."""
    if kind == "redis-cluster":
        url = request.getfixturevalue("redis_cluster").url
    elif kind == "redis-cluster-tls":
        url = request.getfixturevalue("redis_cluster_tls_acl").url
    elif kind == "redis-sentinel":
        url = request.getfixturevalue("redis_sentinels").url
    else:
        url = request.getfixturevalue("redis_tls_acl").store_url
    built = redis_kit(url, kind)
    client = built.store.client  # type: ignore[attr-defined]
    if kind.startswith("redis-cluster"):
        from redis.cluster import RedisCluster

        client.flushall(target_nodes=RedisCluster.PRIMARIES)
    else:
        client.flushall()
    return built


def build_kit(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> StoreKit:
    """The store of ``kind`` for one test."""
    if kind == "memory":
        return _memory_kit()
    if kind == "sqlite":
        return _sqlite_kit(tmp_path)
    if kind == "redis":
        return redis_kit(request.getfixturevalue("redis_url"))
    if kind == "firestore":
        return _firestore_kit(request)
    if kind in TOPOLOGY_KINDS:
        return _topology_kit(kind, request)
    raise AssertionError(f"unknown store kind {kind!r}")


def _kit_for(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> StoreKit:
    kind, api = request.param
    built = build_kit(kind, request, tmp_path)
    built.api = api
    if api == "async":
        built.bridge = AsyncBridge(built)
        # The test module's date_lock becomes the async one, driven through the bridge.
        if hasattr(request.module, "date_lock"):
            monkeypatch.setattr(request.module, "date_lock", built.bridge.date_lock)
    return built


@pytest.fixture(params=_with_apis(KINDS))
def kit(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[StoreKit]:
    """Every store kind in turn, on each API."""
    built = _kit_for(request, tmp_path, monkeypatch)
    try:
        yield built
    finally:
        built.close()


@pytest.fixture(params=_with_apis(CROSS_PROCESS_KINDS))
def shared_kit(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[StoreKit]:
    """Every store kind that several OS processes can share, on each API."""
    built = _kit_for(request, tmp_path, monkeypatch)
    try:
        yield built
    finally:
        built.close()


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A private redis-server for one test, free to be killed or wiped."""
    server = RedisServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def key() -> str:
    """A lease key unique to the test."""
    return f"conformance-{uuid.uuid4().hex[:8]}:2026-02-03"
