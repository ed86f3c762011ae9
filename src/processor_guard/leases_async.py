"""``async with date_lock(...)`` and ``@guarded`` on ``async def run``.

The lease, its checks, its loss and its release decisions are those of ``leases``; this
module only awaits the store instead of calling it:

- Renewal is a task on the lease's event loop, started ttl/3 after the acquisition by
  the loop's one renewal scheduler (until then a lease is a heap entry: a short block
  costs no task and no timer of its own). The keeper thread cannot renew an
  async store: its client belongs to the loop. A blocked loop renews nothing, and hides
  nothing either: ``check()`` compares the lease's own deadline with the clock, so the
  first check after the deadline raises LeaseLost, as does leaving the block.
- A cancelled task still releases its leases; an acquisition attempt or a waiter's
  queueing cut short by a cancellation is completed and then undone, so no lease or
  queue place is left behind. The fast path (an attempt, a release) awaits the store
  directly: only a cancellation pays for a clean-up task (the stores answer a repeated
  call for a cancelled one, see AsyncLeaseStore).
- ``current_lease()`` reads a context variable: tasks created inside the block copy it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import itertools
import logging
import math
import os
import time
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from .errors import ConfigError, LeaseLost, LockBusy
from .leases import STORE_ENV, Lease, date_lock, upkeep
from .stores import (
    AsyncLeaseStore,
    AsyncReleaseWaiter,
    LeaseStore,
    as_async,
    open_async_store,
)

if TYPE_CHECKING:
    import contextvars
    import datetime as dt

    from .leases import DateLock

__all__ = ["AsyncHold", "guard_coroutine", "resolve_async_store"]

log = logging.getLogger("processor_guard.leases")
T = TypeVar("T")

# Async stores opened from a URL, per event loop (a Redis asyncio client is bound to the
# loop it connected on), and the async faces of store objects passed in.
_by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, AsyncLeaseStore]] = (
    weakref.WeakKeyDictionary()
)
_adapted: weakref.WeakKeyDictionary[LeaseStore, AsyncLeaseStore] = weakref.WeakKeyDictionary()


def resolve_async_store(store: object) -> AsyncLeaseStore:
    """The async store for ``store=``: an AsyncLeaseStore as is, a LeaseStore's async
    face, or the store a URL (or ``PROCESSOR_GUARD_STORE``) names on this loop."""
    if isinstance(store, AsyncLeaseStore):
        return store
    if isinstance(store, LeaseStore):
        found = _adapted.get(store)
        if found is None:
            found = _adapted[store] = as_async(store)
        return found
    url = store if store is not None else os.environ.get(STORE_ENV)
    if not url:
        raise ConfigError(f"no lease store: pass store= or set {STORE_ENV}")
    if not isinstance(url, str):
        raise ConfigError(f"store must be a lease store or a URL string, got {url!r}")
    opened = _by_loop.setdefault(asyncio.get_running_loop(), {})
    if url not in opened:
        opened[url] = open_async_store(url)
    return opened[url]


# Clean-ups started by a cancellation, kept referenced until they end.
_settling: set[asyncio.Future[Any]] = set()


async def _run_to_the_end(step: Coroutine[Any, Any, T]) -> T:
    """Await ``step`` as a task of its own: a further cancellation of the caller stops
    the waiting, not the step. Only for clean-ups after a cancellation: the task and the
    shield cost loop turns that the fast path does without."""
    task = asyncio.ensure_future(step)
    _settling.add(task)
    task.add_done_callback(_settling.discard)
    return await asyncio.shield(task)


async def _give_back(store: AsyncLeaseStore, key: str, owner: str, ttl: float) -> None:
    result = await store.try_acquire(key, owner, ttl)
    if result.acquired and result.fence is not None:
        await store.release(key, owner, result.fence)


async def _acquire(store: AsyncLeaseStore, request: Any) -> Lease:
    """leases._acquire, awaited: attempts until acquired or the wait budget is spent."""
    key, owner, ttl, clock = request.key, request.owner, request.ttl, request.clock
    give_up = clock() + request.wait
    attempt = 0
    waiter: AsyncReleaseWaiter | None = None
    try:
        while True:
            started = clock()
            try:
                result = await store.try_acquire(key, owner, ttl, waiter=waiter)
            except asyncio.CancelledError:
                # The attempt may still have taken the lease: the same call again
                # answers for it (AsyncLeaseStore's contract); give back what it took.
                with contextlib.suppress(Exception):
                    await _run_to_the_end(_give_back(store, key, owner, ttl))
                raise
            if result.acquired:
                assert result.fence is not None
                lease: Lease = request.new_lease(store, result.fence, started)
                return lease
            pause = request.next_pause(result.holder, give_up, attempt)
            if waiter is None:
                # Queue before the next attempt so a release in between is not missed.
                waiter = await _queue(store, key)
                continue
            await waiter.wait(pause)
            attempt += 1
    finally:
        if waiter is not None:
            await _run_to_the_end(waiter.close())


async def _queue(store: AsyncLeaseStore, key: str) -> AsyncReleaseWaiter:
    """A waiter in ``key``'s queue; queueing cut short by a cancellation is completed
    and then undone (off the fast path: only a busy key gets here)."""
    queueing = asyncio.ensure_future(store.release_waiter(key))
    try:
        return await asyncio.shield(queueing)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await _run_to_the_end(_leave_queue(queueing))
        raise


async def _leave_queue(queueing: asyncio.Future[AsyncReleaseWaiter]) -> None:
    await (await queueing).close()


async def _keep(lease: Lease, store: AsyncLeaseStore) -> None:
    """Renew ``lease`` every ttl/3 until it ends; mark it lost at its deadline."""
    book = upkeep(lease)
    next_renewal = book.now()
    while lease.active:
        now = book.now()
        left = lease.remaining
        if left <= 0:
            book.expire_if_due()
            return
        if now < next_renewal:
            await asyncio.sleep(min(next_renewal - now, left))
            continue
        try:
            # A renewal answered after the deadline is worth nothing: stop waiting then.
            renewing = store.renew(lease.key, lease.owner, lease.fence, lease.ttl)
            ok = await asyncio.wait_for(renewing, timeout=max(left, 0.001))
        except asyncio.TimeoutError:
            follow = book.renew_failed(TimeoutError("no answer before the lease's deadline"))
        except Exception as exc:
            follow = book.renew_failed(exc)
        else:
            follow = book.renewed(ok, now)
        if follow is None:
            return
        next_renewal = follow


async def _finish(lease: Lease, store: AsyncLeaseStore) -> str | None:
    """Lease._finish, awaited. A release cancelled before its answer is sent again (the
    same call answers for it) as a task a further cancellation cannot stop."""
    book = upkeep(lease)
    must_release, reason = book.finish_start()
    if not must_release:
        return reason
    try:
        try:
            freed = await store.release(lease.key, lease.owner, lease.fence)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await _run_to_the_end(store.release(lease.key, lease.owner, lease.fence))
            raise
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        book.release_failed(exc)
        return None
    return book.release_answered(freed)


class _RenewalStarts:
    """One per event loop: starts each held lease's renewal task when its first renewal
    is due, from a single timer on the earliest due time. A block that ends before
    then leaves a dead heap entry, dropped when due (or in a compaction), so entering
    and leaving costs a heap push and no timer of its own.

    It refers to its loop through nothing it holds (the holds and the timer weakly, the
    loop not at all): as a WeakKeyDictionary value it must not keep its key alive."""

    def __init__(self) -> None:
        self._due: list[tuple[float, int, weakref.ref[AsyncHold]]] = []
        self._seq = itertools.count()
        self._timer: weakref.ref[asyncio.TimerHandle] | None = None
        self._timer_at = math.inf
        self._ended = 0  # entries of holds that ended before their renewal was due

    def add(self, hold: AsyncHold, delay: float) -> None:
        loop = asyncio.get_running_loop()
        at = loop.time() + delay
        heapq.heappush(self._due, (at, next(self._seq), weakref.ref(hold)))
        if at < self._timer_at:
            timer = self._timer() if self._timer is not None else None
            if timer is not None:
                timer.cancel()
            self._arm(loop, at)

    def _arm(self, loop: asyncio.AbstractEventLoop, at: float) -> None:
        self._timer, self._timer_at = weakref.ref(loop.call_at(at, self._start_due)), at

    def ended(self) -> None:
        """A hold still in the heap ended; compact once most entries are dead."""
        self._ended += 1
        if self._ended > COMPACT_MIN and self._ended * 2 > len(self._due):
            self._due = [entry for entry in self._due if _waiting(entry[2])]
            heapq.heapify(self._due)
            self._ended = 0

    def _start_due(self) -> None:
        self._timer, self._timer_at = None, math.inf
        loop = asyncio.get_running_loop()
        due, now = self._due, loop.time()
        while due and due[0][0] <= now:
            hold = heapq.heappop(due)[2]()
            if hold is not None and not hold.ended:
                hold.start_keeping()
            else:
                self._ended = max(0, self._ended - 1)
        if due:
            self._arm(loop, due[0][0])


def _waiting(hold: weakref.ref[AsyncHold]) -> bool:
    """A heap entry whose hold still waits for its first renewal."""
    found = hold()
    return found is not None and not found.ended


# Dead entries a _RenewalStarts heap may hold before it is compacted.
COMPACT_MIN = 1024
_renewal_starts: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _RenewalStarts] = (
    weakref.WeakKeyDictionary()
)


def _renewal_starts_of(loop: asyncio.AbstractEventLoop) -> _RenewalStarts:
    starts = _renewal_starts.get(loop)
    if starts is None:
        starts = _renewal_starts[loop] = _RenewalStarts()
    return starts


class AsyncHold:
    """One ``async with date_lock(...)`` block: acquisition, renewal and release."""

    def __init__(self, request: Any) -> None:
        self._request = request
        self._lease: Lease | None = None
        self._store: AsyncLeaseStore | None = None
        self._token: contextvars.Token[tuple[Lease, ...]] | None = None
        self._starts: _RenewalStarts | None = None
        self._keeper: asyncio.Task[None] | None = None
        self.ended = False

    async def enter(self) -> Lease:
        request = self._request
        store = resolve_async_store(request.store)
        store.check_key(request.key)
        request.refuse_nested(store)
        lease = await _acquire(store, request)
        self._lease, self._store = lease, store
        self._starts = _renewal_starts_of(asyncio.get_running_loop())
        self._starts.add(self, lease.ttl / 3)
        request.announce(lease)
        self._token = request.enter(lease)
        return lease

    def start_keeping(self) -> None:
        """Start the renewal task (the loop's _RenewalStarts calls it when due)."""
        lease, store = self._lease, self._store
        if lease is not None and store is not None and lease.active:
            self._keeper = asyncio.get_running_loop().create_task(_keep(lease, store))

    async def exit(self, body_error: BaseException | None) -> None:
        lease, store, token = self._lease, self._store, self._token
        assert lease is not None and store is not None and token is not None
        self.ended = True
        if self._keeper is not None:
            self._keeper.cancel()
        elif self._starts is not None:
            self._starts.ended()
        self._request.leave(token, lease)
        lost_reason = await _finish(lease, store)
        if lost_reason is not None and body_error is None:
            raise LeaseLost(lease.key, lease.owner, lease.fence, lost_reason)


def guard_coroutine(
    run: Callable[..., Awaitable[Any]],
    scope_and_dates: Callable[[Any, Any], tuple[str, list[dt.date]]],
    *,
    method: bool,
    budget: float,
    on_busy: Literal["raise", "skip"],
    lock_options: dict[str, Any],
) -> Callable[..., Awaitable[Any]]:
    """``guarded``'s wrapper for ``async def run(self, opts)`` (``method``) or
    ``async def process(opts)``: every date locked in order with one wait budget, the
    leases one group, released when the body returns."""

    async def locked(scope_arg: Any, opts: Any, call: Callable[[], Awaitable[Any]]) -> Any:
        scope, days = scope_and_dates(scope_arg, opts)
        give_up = time.monotonic() + budget
        async with contextlib.AsyncExitStack() as held:
            leases: list[Lease] = []
            for day in days:
                lock: DateLock = date_lock(
                    scope, day, wait=max(0.0, give_up - time.monotonic()), **lock_options
                )
                try:
                    leases.append(await held.enter_async_context(lock))
                except LockBusy as busy:
                    if on_busy == "skip":
                        log.warning("skipping %s: %s", run.__qualname__, busy)
                        return False
                    raise
            group = tuple(leases)
            for lease in leases:
                lease.group = group
            return await call()

    if method:

        @functools.wraps(run)
        async def method_wrapper(self: Any, opts: Any, *args: Any, **kwargs: Any) -> Any:
            return await locked(self, opts, lambda: run(self, opts, *args, **kwargs))

        return method_wrapper

    @functools.wraps(run)
    async def wrapper(opts: Any, *args: Any, **kwargs: Any) -> Any:
        return await locked(opts, opts, lambda: run(opts, *args, **kwargs))

    return wrapper
