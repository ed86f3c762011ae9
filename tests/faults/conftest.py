"""Fixtures for the fault-injection suite: stores several OS processes can share."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from fixtures.services import RedisServer
from processor_guard import LeaseStore, open_store

CROSS_PROCESS_STORES = [
    pytest.param("redis", marks=pytest.mark.redis),
    pytest.param("sqlite"),
    pytest.param("firestore", marks=pytest.mark.firestore),
]


@dataclass
class SharedStore:
    """A store reachable from other processes by ``url`` (with ``env`` set)."""

    kind: str
    url: str
    env: dict[str, str] = field(default_factory=dict)
    opened: list[LeaseStore] = field(default_factory=list)

    def open(self) -> LeaseStore:
        """A new store object (and client) on the same backing store."""
        old = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)
        try:
            store = open_store(self.url)
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        self.opened.append(store)
        return store

    def child_env(self) -> dict[str, str]:
        """The environment a subprocess needs to reach the store."""
        return {**os.environ, **self.env}

    def close(self) -> None:
        for store in self.opened:
            store.close()


@pytest.fixture(params=CROSS_PROCESS_STORES)
def shared_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SharedStore]:
    """Each store that several processes can share: Redis, SQLite, the Firestore emulator."""
    kind: str = request.param
    if kind == "redis":
        spec = SharedStore(kind, request.getfixturevalue("redis_url"))
    elif kind == "sqlite":
        spec = SharedStore(kind, f"sqlite:///{tmp_path / 'leases.db'}")
    else:
        # The fixture itself skips, naming the missing jar, where there is no emulator.
        emulator = request.getfixturevalue("firestore_emulator")
        emulator.start()
        collection = f"faults_{uuid.uuid4().hex[:12]}"
        spec = SharedStore(
            kind,
            f"firestore://{emulator.project}/{collection}",
            env={"FIRESTORE_EMULATOR_HOST": emulator.host},
        )
    try:
        yield spec
    finally:
        spec.close()


@pytest.fixture
def private_redis() -> Iterator[Callable[..., RedisServer]]:
    """Factory of private redis-servers that this test alone may kill and restart."""
    servers: list[RedisServer] = []

    def make(**kwargs: Any) -> RedisServer:
        server = RedisServer(**kwargs)
        servers.append(server)
        return server

    try:
        yield make
    finally:
        for server in servers:
            server.stop()
