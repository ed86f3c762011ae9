"""The asyncio face of the lease stores: one interface, and the store for a URL.

Redis gets a store of its own on ``redis.asyncio`` (``redis_aio``), running the same
Lua scripts, and Firestore one on Google's ``AsyncClient`` (``firestore_aio``), running
the same compare-and-set steps. The other stores are driven through
:class:`ThreadedStore`: the memory store's calls are dictionary updates under a lock,
made on the loop; SQLite's calls may wait on a file lock and run on a small thread
pool of the store's own, so they never block the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, ClassVar, TypeVar

from .._backoff import full_jitter
from .base import AcquireResult, Holder, LeaseStore
from .memory import MemoryStore

__all__ = [
    "AsyncLeaseStore",
    "AsyncPollingWaiter",
    "AsyncReleaseWaiter",
    "ThreadedStore",
    "open_async_store",
]

T = TypeVar("T")

# A polling waiter sleeps a jittered slice of its timeout growing from 2 ms to 25 ms: the
# acquisition loop's own pause (up to 1 s) bounds it from above.
POLL_BASE = 0.002
POLL_CAP = 0.025
# Threads one ThreadedStore may keep busy; a call beyond waits for a free one.
MAX_THREADS = 16


class AsyncReleaseWaiter(ABC):
    """Waits for a release notice on one key; used between acquisition attempts."""

    @abstractmethod
    async def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds; True when woken by a release notice."""

    async def close(self) -> None:  # noqa: B027 - optional hook; most waiters hold nothing
        """Stop listening, leaving no trace of this waiter in the store."""


class AsyncPollingWaiter(AsyncReleaseWaiter):
    """A waiter for stores without release notices: it sleeps a short backoff slice."""

    def __init__(self) -> None:
        self._polls = 0

    async def wait(self, timeout: float) -> bool:
        if timeout > 0:
            await asyncio.sleep(min(timeout, full_jitter(POLL_BASE, POLL_CAP, self._polls)))
            self._polls += 1
        return False


class AsyncLeaseStore(ABC):
    """:class:`~processor_guard.stores.LeaseStore`'s contract, with coroutines.

    ``try_acquire`` takes the waiter the caller is waiting with (from
    ``release_waiter``), so a store with a queue of waiters acquires as that waiter.

    ``try_acquire`` and ``release`` cancelled before their answer may still take effect:
    the next identical call (same key and owner, and fence for a release) answers for
    the cancelled one too (it acquired: acquired with that fence; it released: True).
    So the caller awaits them directly, and only after a cancellation repeats them to
    learn the outcome (see leases_async).
    """

    scheme: ClassVar[str] = ""

    @abstractmethod
    def check_key(self, key: str) -> None:
        """ConfigError when ``key`` is longer than this store can hold (nothing written)."""

    @abstractmethod
    async def try_acquire(
        self, key: str, owner: str, ttl: float, *, waiter: AsyncReleaseWaiter | None = None
    ) -> AcquireResult:
        """Take ``key`` for ``ttl`` seconds if free or expired (a strictly greater fence)."""

    @abstractmethod
    async def renew(self, key: str, owner: str, fence: int, ttl: float) -> bool:
        """Extend the lease to ``ttl`` seconds from now; False when it is no longer ours."""

    @abstractmethod
    async def release(self, key: str, owner: str, fence: int) -> bool:
        """Free the lease if it is still ours; True when this call freed it."""

    @abstractmethod
    async def holder(self, key: str) -> Holder | None:
        """The live holder of ``key``, or None when free or expired."""

    @abstractmethod
    async def holders(self) -> list[Holder]:
        """Every live holder in this store."""

    @abstractmethod
    async def break_lease(self, key: str) -> int:
        """Free ``key`` whoever holds it and raise its fence; returns the raised fence."""

    async def release_waiter(self, key: str) -> AsyncReleaseWaiter:
        """A waiter woken when ``key`` is released (stores without notices poll)."""
        return AsyncPollingWaiter()

    async def aclose(self) -> None:  # noqa: B027 - optional hook, most stores hold nothing
        """Release client resources owned by this store."""


class ThreadedStore(AsyncLeaseStore):
    """A synchronous store behind the async interface.

    ``inline=True`` calls it on the loop (for a store whose calls never wait, the
    memory store); otherwise each call runs on this adapter's own threads, so a slow
    store holds up neither the loop nor the default executor.
    """

    def __init__(self, store: LeaseStore, *, inline: bool = False) -> None:
        self.store = store
        self.scheme = store.scheme  # type: ignore[misc]
        self._inline = inline
        self._pool: ThreadPoolExecutor | None = None
        # Calls whose awaiting was cancelled while their thread ran on, by their
        # arguments: the next identical call gets their answer.
        self._running_on: dict[tuple[Any, ...], Future[Any]] = {}

    def _submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(MAX_THREADS, thread_name_prefix="processor_guard-aio")
        return self._pool.submit(fn, *args)

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        if self._inline:
            return fn(*args)
        return await asyncio.wrap_future(self._submit(fn, *args))

    async def _answered_once(self, fn: Callable[..., T], *args: Any) -> T:
        """``_call``, whose answer a cancelled caller leaves to the next identical call."""
        if self._inline:
            return fn(*args)  # on the loop: nothing is cut short
        call = (fn.__name__, *args)
        running = self._running_on.pop(call, None) or self._submit(fn, *args)
        try:
            return await asyncio.wrap_future(running)
        except asyncio.CancelledError:
            if not running.cancelled():  # its thread ran it or runs it: keep the answer
                self._running_on[call] = running
            raise

    def check_key(self, key: str) -> None:
        self.store.check_key(key)

    async def try_acquire(
        self, key: str, owner: str, ttl: float, *, waiter: AsyncReleaseWaiter | None = None
    ) -> AcquireResult:
        return await self._answered_once(self.store.try_acquire, key, owner, ttl)

    async def renew(self, key: str, owner: str, fence: int, ttl: float) -> bool:
        return await self._call(self.store.renew, key, owner, fence, ttl)

    async def release(self, key: str, owner: str, fence: int) -> bool:
        return await self._answered_once(self.store.release, key, owner, fence)

    async def holder(self, key: str) -> Holder | None:
        return await self._call(self.store.holder, key)

    async def holders(self) -> list[Holder]:
        return await self._call(self.store.holders)

    async def break_lease(self, key: str) -> int:
        return await self._call(self.store.break_lease, key)

    async def aclose(self) -> None:
        """Stop this adapter's threads; the wrapped store stays open (it is the caller's)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None

    def __repr__(self) -> str:
        return f"<ThreadedStore {self.store!r}>"


def as_async(store: LeaseStore) -> AsyncLeaseStore:
    """The async face of a synchronous store object (calls run on threads, except the
    memory store's). Pass an ``AsyncRedisStore`` (or a ``redis://`` URL) for Redis's
    native asyncio client."""
    return ThreadedStore(store, inline=isinstance(store, MemoryStore))


def open_async_store(url: str) -> AsyncLeaseStore:
    """The async store a URL names (see :func:`~processor_guard.stores.open_store`):
    ``redis://`` and ``rediss://`` on ``redis.asyncio``, ``firestore://`` on Google's
    ``AsyncClient``; the others through :class:`ThreadedStore`. Bound to the running
    event loop for Redis and Firestore."""
    from . import open_store

    store = open_store(url)  # validates the URL, whatever the scheme
    scheme, _, rest = url.strip().partition("://")
    if scheme.lower() in ("redis", "rediss"):
        from .redis_aio import AsyncRedisStore

        with contextlib.closing(store):
            # redis-py knows its schemes in lower case only.
            return AsyncRedisStore.from_url(f"{scheme.lower()}://{rest}")
    if scheme.lower() == "firestore":
        from .firestore_aio import AsyncFirestoreStore
        from .firestore_store import FirestoreStore

        assert isinstance(store, FirestoreStore)
        with contextlib.closing(store):
            return AsyncFirestoreStore.from_project(store.client.project, store.collection)
    return as_async(store)
