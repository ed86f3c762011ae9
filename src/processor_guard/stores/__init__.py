"""Lease stores behind one interface, chosen by URL scheme (as tooz does)."""

from __future__ import annotations

import contextlib
import os
import re
import threading
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .._extras import needs_extra
from ..errors import ConfigError
from .aio import AsyncLeaseStore, AsyncReleaseWaiter, ThreadedStore, as_async, open_async_store
from .base import AcquireResult, Holder, LeaseStore, PollingWaiter, ReleaseWaiter, fence_seed
from .memory import MemoryStore

if TYPE_CHECKING:
    from .firestore_store import FirestoreStore
    from .redis_aio import AsyncRedisStore
    from .redis_store import RedisStore
    from .sqlite_store import SQLiteStore

__all__ = [
    "SUPPORTED_SCHEMES",
    "AcquireResult",
    "AsyncLeaseStore",
    "AsyncRedisStore",
    "AsyncReleaseWaiter",
    "FirestoreStore",
    "Holder",
    "LeaseStore",
    "MemoryStore",
    "PollingWaiter",
    "RedisStore",
    "ReleaseWaiter",
    "SQLiteStore",
    "ThreadedStore",
    "as_async",
    "fence_seed",
    "open_async_store",
    "open_store",
    "redacted",
]

# Redis Cluster and Sentinel URLs are parsed by .redis_topologies.
_TOPOLOGY_SCHEMES = ("redis+cluster", "rediss+cluster", "redis+sentinel", "rediss+sentinel")
SUPPORTED_SCHEMES = ("redis", "rediss", *_TOPOLOGY_SCHEMES, "firestore", "sqlite", "memory")

_LAZY = {
    "AsyncRedisStore": ".redis_aio",
    "RedisStore": ".redis_store",
    "FirestoreStore": ".firestore_store",
    "SQLiteStore": ".sqlite_store",
}
_LAZY_EXTRA = {"AsyncRedisStore": "redis", "RedisStore": "redis", "FirestoreStore": "firestore"}

_memory_stores: dict[str, MemoryStore] = {}
_memory_lock = threading.Lock()


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        if name not in _LAZY_EXTRA:
            return getattr(importlib.import_module(_LAZY[name], __name__), name)
        with needs_extra(_LAZY_EXTRA[name], name):
            return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def redacted(url: object) -> object:
    """``url`` with any password replaced by ``***``: the only form errors may show."""
    if not isinstance(url, str):
        return url
    return re.sub(r"(?<=://)([^/@?#]*?):[^/@?#]*@", r"\1:***@", url)


def _bad(url: object, why: str) -> ConfigError:
    schemes = ", ".join(f"{s}://" for s in SUPPORTED_SCHEMES)
    if isinstance(url, str):
        with contextlib.suppress(ValueError):
            password = urlsplit(url).password
            if password:
                why = why.replace(password, "***")
    return ConfigError(f"bad store URL {redacted(url)!r}: {why} (supported schemes: {schemes})")


def open_store(url: str) -> LeaseStore:
    """Open the lease store a URL names.

    ``redis://host:port/db`` and ``rediss://``, ``redis+cluster://host:port,...`` and
    ``redis+sentinel://host:port,.../SERVICE`` (``rediss+`` for TLS; see
    ``redis_topologies``), ``firestore://PROJECT[/COLLECTION]``,
    ``sqlite:///path/to/leases.db``, ``memory://[NAME]`` (one shared store per name in
    this process).
    """
    if not isinstance(url, str) or not url.strip():
        raise _bad(url, "expected a non-empty string")
    if url.strip().partition("://")[0].lower() in _TOPOLOGY_SCHEMES:
        from .redis_topologies import open_topology_store

        return open_topology_store(url)
    try:
        parts = urlsplit(url.strip())
    except ValueError as exc:
        raise _bad(url, str(exc)) from None
    scheme = parts.scheme.lower()
    if scheme not in SUPPORTED_SCHEMES or "://" not in url:
        raise _bad(url, f"unknown scheme {parts.scheme!r}" if parts.scheme else "no scheme")
    if scheme == "memory":
        name = (parts.netloc + parts.path).strip("/")
        with _memory_lock:
            return _memory_stores.setdefault(name, MemoryStore())
    if scheme == "sqlite":
        if not parts.path or parts.path == "/":
            raise _bad(url, "sqlite needs a file path, e.g. sqlite:///tmp/leases.db")
        if not os.path.isdir(os.path.dirname(parts.path) or "."):
            raise _bad(url, f"the directory of {parts.path!r} does not exist")
        from .sqlite_store import SQLiteStore

        return SQLiteStore(parts.path)
    if scheme in ("redis", "rediss"):
        if not parts.hostname:
            raise _bad(url, "redis needs a host, e.g. redis://127.0.0.1:6379/0")
        try:
            _ = parts.port
        except ValueError as exc:
            raise _bad(url, str(exc)) from None
        db = parts.path.strip("/")
        if db and not db.isdigit():
            raise _bad(url, f"the redis database must be a number, got {db!r}")
        with needs_extra("redis", f"the {scheme}:// lease store"):
            from .redis_store import RedisStore
        try:
            # redis-py knows its schemes in lower case only.
            return RedisStore.from_url(scheme + url.strip()[len(parts.scheme) :])
        except (ValueError, TypeError) as exc:
            raise _bad(url, f"bad redis option: {exc}") from None
    # firestore://PROJECT[/COLLECTION]
    project = parts.netloc
    collection = parts.path.strip("/")
    if not project:
        raise _bad(url, "firestore needs a project, e.g. firestore://my-project")
    if "/" in collection:
        raise _bad(url, "firestore takes one collection name after the project")
    with needs_extra("firestore", "the firestore:// lease store"):
        from .firestore_store import FirestoreStore
    return FirestoreStore.from_project(project, collection or None)
