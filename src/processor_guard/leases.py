"""Leases per (scope, game date): acquisition, renewal, loss detection and release."""

from __future__ import annotations

import contextvars
import datetime as dt
import functools
import heapq
import itertools
import logging
import math
import os
import random
import re
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, TypeVar

from .dates import date_range, parse_game_date
from .errors import ConfigError, GuardError, LeaseLost, LockBusy
from .stores import LeaseStore, open_store
from .stores.base import jittered

__all__ = [
    "Lease",
    "LeaseHooks",
    "current_lease",
    "date_lock",
    "date_range",
    "default_owner",
    "guarded",
    "held_leases",
    "lease_key",
    "parse_game_date",
    "register_hooks",
]

log = logging.getLogger("processor_guard.leases")

STORE_ENV = "PROCESSOR_GUARD_STORE"
_SCOPE_RE = re.compile(r"^[A-Za-z0-9_.-]+$")

_current: contextvars.ContextVar[tuple[Lease, ...]] = contextvars.ContextVar(
    "processor_guard_leases", default=()
)


# --------------------------------------------------------------------------- inputs


def _check_scope(scope: object) -> str:
    if not isinstance(scope, str) or not _SCOPE_RE.match(scope):
        raise ConfigError(f"scope must match [A-Za-z0-9_.-]+, got {scope!r}")
    return scope


def lease_key(scope: str, game_date: object) -> str:
    """The store key of a (scope, game date) lease: ``scope:YYYY-MM-DD``."""
    return f"{_check_scope(scope)}:{parse_game_date(game_date).isoformat()}"


# This process's id, refreshed in a forked child (see _after_fork_in_child): os.getpid()
# is a system call, and leases compare it on every check, renewal and release.
_pid = os.getpid()
_owner_cache: tuple[int, str | None, str] | None = None


def default_owner() -> str:
    """``host:pid``, plus Cloud Run's revision when ``K_REVISION`` is set."""
    global _owner_cache
    revision = os.environ.get("K_REVISION")
    cached = _owner_cache
    if cached is not None and cached[0] == _pid and cached[1] == revision:
        return cached[2]
    owner = f"{socket.gethostname()}:{_pid}"
    owner = f"{owner}:{revision}" if revision else owner
    _owner_cache = (_pid, revision, owner)
    return owner


_env_stores: dict[str, LeaseStore] = {}
_env_lock = threading.Lock()


def _resolve_store(store: LeaseStore | str | None) -> LeaseStore:
    if isinstance(store, LeaseStore):
        return store
    url = store if store is not None else os.environ.get(STORE_ENV)
    if not url:
        raise ConfigError(
            f"no lease store: pass store= or set {STORE_ENV} "
            "(e.g. redis://127.0.0.1:6379/0); there is no local default, "
            "since it would give every instance its own lock"
        )
    if not isinstance(url, str):
        raise ConfigError(f"store must be a LeaseStore or a URL string, got {url!r}")
    with _env_lock:
        if url not in _env_stores:
            _env_stores[url] = open_store(url)
        return _env_stores[url]


# --------------------------------------------------------------------------- hooks


@dataclass
class LeaseHooks:
    """Callbacks for lease events, e.g. to feed metrics; each receives the Lease."""

    acquired: Callable[[Lease], None] | None = None
    renewed: Callable[[Lease], None] | None = None
    lost: Callable[[Lease], None] | None = None
    released: Callable[[Lease], None] | None = None


_global_hooks: list[LeaseHooks] = []


def register_hooks(hooks: LeaseHooks) -> Callable[[], None]:
    """Register hooks for every lease in this process; returns a function that removes them."""
    _global_hooks.append(hooks)
    return lambda: _global_hooks.remove(hooks) if hooks in _global_hooks else None


# --------------------------------------------------------------------------- lease


class Lease:
    """A held lease: its fence, owner, deadline and loss state."""

    def __init__(
        self,
        *,
        store: LeaseStore,
        key: str,
        scope: str,
        game_date: dt.date,
        owner: str,
        fence: int,
        ttl: float,
        started: float,
        clock: Callable[[], float],
        safety_margin: float,
        on_lost: Callable[[Lease], None] | None,
        hooks: list[LeaseHooks],
    ) -> None:
        self.store = store
        self.key = key
        self.scope = scope
        self.game_date = game_date
        self.owner = owner
        self.fence = fence
        self.ttl = ttl
        self.lost = threading.Event()
        self.lost_reason = ""
        self.safety_margin = safety_margin
        self._clock = clock
        self._deadline = started + ttl
        self._on_lost = on_lost
        self._hooks = hooks
        self._pid = _pid
        self._released = False
        self._last_renew_error: BaseException | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        state = "lost" if self.lost.is_set() else "released" if self._released else "held"
        return f"<Lease {self.key} owner={self.owner!r} fence={self.fence} {state}>"

    @property
    def remaining(self) -> float:
        """Seconds until the lease's own deadline (monotonic clock), never negative."""
        return max(0.0, self._deadline - self._clock())

    @property
    def active(self) -> bool:
        """True while held by this process: not released, not lost."""
        return not self._released and not self.lost.is_set() and self._pid == _pid

    def check(self) -> None:
        """Raise LeaseLost when lost, or when less than the safety margin remains."""
        if self._pid != _pid:
            raise LeaseLost(self.key, self.owner, self.fence, "lease belongs to the parent process")
        if self._released and not self.lost.is_set():
            # After the with block the fence must not be used to write any more.
            raise LeaseLost(self.key, self.owner, self.fence, "the lease was released")
        if not self.lost.is_set() and self._clock() >= self._deadline and not self._released:
            self._mark_lost(self._expiry_reason())
        if self.lost.is_set():
            raise LeaseLost(self.key, self.owner, self.fence, self.lost_reason)
        left = self.remaining
        if left < self.safety_margin:
            raise LeaseLost(
                self.key,
                self.owner,
                self.fence,
                f"only {left:.2f}s left, under the {self.safety_margin:.2f}s safety margin",
            )

    # Called by the keeper.
    def _renew_once(self) -> float | None:
        """Renew now; returns when to renew next (monotonic), None when done with."""
        if not self.active:
            return None
        started = self._clock()
        try:
            ok = self.store.renew(self.key, self.owner, self.fence, self.ttl)
        except Exception as exc:
            self._last_renew_error = exc
            now = self._clock()
            if now >= self._deadline:
                self._mark_lost(self._expiry_reason())
                return None
            level = logging.WARNING if isinstance(exc, GuardError) else logging.ERROR
            log.log(
                level,
                "renewal of %s (owner %s, fence %s) failed, %.1fs left: %r",
                self.key,
                self.owner,
                self.fence,
                self._deadline - now,
                exc,
                exc_info=level >= logging.ERROR,
            )
            retry_in = min(max(self.ttl / 10, 0.05), 1.0)
            return min(now + retry_in, self._deadline)
        if not ok:
            self._mark_lost("the store no longer holds this lease (expired or taken over)")
            return None
        with self._lock:
            if self._released:
                return None
            self._deadline = max(self._deadline, started + self.ttl)
        self._emit("renewed")
        return started + self.ttl / 3

    def _expire_if_due(self) -> None:
        if self.active and self._clock() >= self._deadline:
            self._mark_lost(self._expiry_reason())

    def _expiry_reason(self) -> str:
        reason = "deadline passed without a successful renewal"
        if self._last_renew_error is not None:
            reason += f" (store unreachable; last error: {self._last_renew_error!r})"
        return reason

    def _mark_lost(self, reason: str) -> None:
        with self._lock:
            if self.lost.is_set() or self._released:
                return
            self.lost_reason = reason
            self.lost.set()
        log.error(
            "lease %s lost (owner %s, fence %s): %s", self.key, self.owner, self.fence, reason
        )
        if self._on_lost is not None:
            try:
                self._on_lost(self)
            except Exception:
                log.exception("on_lost callback for %s raised", self.key)
        self._emit("lost")

    def _emit(self, event: str) -> None:
        for hooks in self._hooks:
            callback = getattr(hooks, event)
            if callback is None:
                continue
            try:
                callback(self)
            except Exception:
                log.exception("%s hook for %s raised", event, self.key)

    def _release(self) -> None:
        if self._pid != _pid:
            # A forked child never releases its parent's lease, nor takes its lock
            # (another thread may have held it at the fork).
            return
        with self._lock:
            if self._released:
                return
            self._released = True
        if self.lost.is_set():
            # The store no longer holds it for us, or could not be reached until the
            # deadline: a release would be a no-op or wait out a timeout.
            return
        try:
            freed = self.store.release(self.key, self.owner, self.fence)
        except Exception as exc:
            log.warning(
                "release of %s (fence %s) failed; it expires by itself within %.1fs: %r",
                self.key,
                self.fence,
                self.ttl,
                exc,
            )
            return
        if not freed:
            log.warning(
                "release of %s (fence %s): the store no longer held it", self.key, self.fence
            )
        self._emit("released")


# --------------------------------------------------------------------------- keeper


class _Task(NamedTuple):
    # A tuple so heap comparisons run in C; seq is unique, so kind/lease never compare.
    when: float
    seq: int
    kind: str
    lease: weakref.ref[Lease]


_COMPACT_MIN = 1024


class _Keeper:
    """One scheduler thread per process renews every lease at ttl/3 and expires the
    ones whose deadline passes; renewals run on a small pool so a hung store call
    cannot delay other leases or the deadline checks."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._cond = threading.Condition(threading.Lock())
        self._heap: list[_Task] = []
        self._compact_at = _COMPACT_MIN
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._inflight: set[int] = set()

    def add(self, lease: Lease) -> None:
        ref = weakref.ref(lease)
        now = self._clock()
        renew = _Task(now + lease.ttl / 3, next(self._seq), "renew", ref)
        expire = _Task(self._at(lease, lease._deadline, now), next(self._seq), "expire", ref)
        with self._cond:
            if len(self._heap) > self._compact_at:
                self._compact()
            heap = self._heap
            heapq.heappush(heap, renew)
            heapq.heappush(heap, expire)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="processor_guard-keeper", daemon=True
                )
                self._thread.start()
            # Wake the keeper only when it must wake earlier than planned: short leases
            # in a loop would otherwise cost a thread switch per acquisition.
            if heap[0] is renew or heap[0] is expire:
                self._cond.notify()

    def _at(self, lease: Lease, when: float, now: float | None = None) -> float:
        """A time on the lease's clock as a time on the keeper's (they differ in tests)."""
        return (self._clock() if now is None else now) + (when - lease._clock())

    def _compact(self) -> None:
        """Drop tasks of released or lost leases (caller holds the lock)."""
        self._heap = [t for t in self._heap if (lease := t.lease()) is not None and lease.active]
        heapq.heapify(self._heap)
        self._compact_at = max(_COMPACT_MIN, 2 * len(self._heap))

    def _schedule(self, when: float, kind: str, lease: Lease) -> None:
        with self._cond:
            heapq.heappush(self._heap, _Task(when, next(self._seq), kind, weakref.ref(lease)))
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    now = self._clock()
                    if self._heap and self._heap[0].when <= now:
                        task = heapq.heappop(self._heap)
                        break
                    timeout = self._heap[0].when - now if self._heap else None
                    self._cond.wait(timeout)
            lease = task.lease()
            if lease is None or not lease.active:
                continue
            try:
                if task.kind == "expire":
                    if lease._clock() >= lease._deadline:
                        # Loss runs the user's on_lost and hooks: on a thread of its own,
                        # so a slow one cannot hold up the deadlines of other leases.
                        threading.Thread(
                            target=self._expire,
                            args=(lease,),
                            name="processor_guard-lost",
                            daemon=True,
                        ).start()
                    else:
                        self._schedule(self._at(lease, lease._deadline), "expire", lease)
                elif id(lease) not in self._inflight:
                    self._inflight.add(id(lease))
                    if self._pool is None:
                        self._pool = ThreadPoolExecutor(
                            4, thread_name_prefix="processor_guard-renew"
                        )
                    self._pool.submit(self._renew, lease)
            except Exception:
                log.exception("keeper failed on %s", lease.key)

    def _expire(self, lease: Lease) -> None:
        try:
            lease._expire_if_due()
        except Exception:
            log.exception("expiring %s failed", lease.key)
        if lease.active:  # renewed just in time: keep watching the new deadline
            self._schedule(self._at(lease, lease._deadline), "expire", lease)

    def _renew(self, lease: Lease) -> None:
        try:
            follow = lease._renew_once()
        except Exception as exc:
            log.exception("renewal of %s raised unexpectedly", lease.key)
            lease._mark_lost(f"renewal raised {exc!r}")
            follow = None
        finally:
            self._inflight.discard(id(lease))
        if follow is not None:
            # The lease's single "expire" task re-arms itself at the moved deadline.
            self._schedule(self._at(lease, follow), "renew", lease)


_keeper = _Keeper()


def _after_fork_in_child() -> None:
    global _keeper, _pid
    _pid = os.getpid()
    _keeper = _Keeper()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


# --------------------------------------------------------------------------- API


@contextmanager
def date_lock(
    scope: str,
    game_date: dt.date | str,
    *,
    store: LeaseStore | str | None = None,
    ttl: float = 60.0,
    wait: float = 0.0,
    owner: str | None = None,
    on_lost: Callable[[Lease], None] | None = None,
    hooks: LeaseHooks | None = None,
    safety_margin: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[Lease]:
    """Hold the lease for (scope, game_date) for the ``with`` block, renewing it."""
    the_scope = _check_scope(scope)
    day = parse_game_date(game_date)
    key = f"{the_scope}:{day.isoformat()}"
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not 0 < ttl < math.inf:
        raise ConfigError(f"ttl must be a number of seconds > 0, got {ttl!r}")
    if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not wait >= 0:
        raise ConfigError(f"wait must be a number of seconds >= 0, got {wait!r}")
    if owner is not None and (not isinstance(owner, str) or not owner):
        raise ConfigError(f"owner must be a non-empty string, got {owner!r}")
    margin = ttl / 10 if safety_margin is None else safety_margin
    if not 0 <= margin < ttl:
        raise ConfigError(f"safety_margin must be in [0, ttl), got {safety_margin!r}")
    the_store = _resolve_store(store)
    who = owner or default_owner()
    all_hooks = [*_global_hooks, *([hooks] if hooks else [])]

    lease = _acquire(
        the_store,
        key,
        scope,
        day,
        who,
        float(ttl),
        float(wait),
        clock,
        margin,
        on_lost,
        all_hooks,
    )
    token = _current.set((*_current.get(), lease))
    body_ok = False
    try:
        yield lease
        body_ok = True
    finally:
        _current.reset(token)
        lost = lease.lost.is_set()
        if not lost and body_ok and lease._clock() >= lease._deadline:
            lease._mark_lost(lease._expiry_reason())
            lost = True
        lease._release()
        if lost and body_ok:
            raise LeaseLost(lease.key, lease.owner, lease.fence, lease.lost_reason)


def _acquire(
    store: LeaseStore,
    key: str,
    scope: str,
    day: dt.date,
    owner: str,
    ttl: float,
    wait: float,
    clock: Callable[[], float],
    margin: float,
    on_lost: Callable[[Lease], None] | None,
    hooks: list[LeaseHooks],
) -> Lease:
    give_up = clock() + wait
    attempt = 0
    waiter = None
    try:
        while True:
            started = clock()
            result = store.try_acquire(key, owner, ttl)
            if result.acquired:
                assert result.fence is not None
                lease = Lease(
                    store=store,
                    key=key,
                    scope=scope,
                    game_date=day,
                    owner=owner,
                    fence=result.fence,
                    ttl=ttl,
                    started=started,
                    clock=clock,
                    safety_margin=margin,
                    on_lost=on_lost,
                    hooks=hooks,
                )
                _keeper.add(lease)
                lease._emit("acquired")
                log.debug("acquired %s as %s with fence %s", key, owner, lease.fence)
                return lease
            holder = result.holder
            left = give_up - clock()
            if left <= 0:
                raise LockBusy(
                    key, holder.owner if holder else None, holder.remaining if holder else None
                )
            if waiter is None:
                # Subscribe before the next attempt so a release in between is not missed.
                waiter = store.release_waiter(key)
                continue
            pause = jittered(0.02, 1.0, attempt)
            if holder is not None and holder.remaining is not None:
                pause = min(pause, holder.remaining + random.uniform(0, 0.01))
            waiter.wait(min(left, max(pause, 0.001)))
            attempt += 1
    finally:
        if waiter is not None:
            waiter.close()


def current_lease() -> Lease | None:
    """The innermost lease held by this context, or None."""
    stack = _current.get()
    return stack[-1] if stack else None


def held_leases() -> tuple[Lease, ...]:
    """Every lease held by this context, outermost first (``guarded`` holds one per date)."""
    return _current.get()


F = TypeVar("F", bound=Callable[..., Any])


def guarded(
    scope: str | Callable[[Any], str],
    *,
    store: LeaseStore | str | None = None,
    ttl: float = 60.0,
    wait: float = 0.0,
    on_busy: Literal["raise", "skip"] = "raise",
    **lock_options: Any,
) -> Callable[[F], F]:
    """Decorate ``run(self, opts)``: lock every date of opts' start..end range first.

    Busy: ``on_busy="raise"`` raises LockBusy (push endpoints answer non-2xx so Pub/Sub
    redelivers); ``"skip"`` logs a WARNING and returns False. Never True for work not done.
    """
    if on_busy not in ("raise", "skip"):
        raise ConfigError(f"on_busy must be 'raise' or 'skip', got {on_busy!r}")
    if not callable(scope):
        _check_scope(scope)

    def decorate(run: F) -> F:
        @functools.wraps(run)
        def wrapper(self: Any, opts: Any, *args: Any, **kwargs: Any) -> Any:
            if not isinstance(opts, dict):
                raise ConfigError(f"opts must be a dict, got {type(opts).__name__}")
            start = opts.get("start_date", opts.get("end_date"))
            end = opts.get("end_date", start)
            if start is None:
                raise ConfigError("opts needs start_date and/or end_date")
            days = date_range(start, end)
            the_scope = _check_scope(scope(self) if callable(scope) else scope)
            with ExitStack() as held:
                for day in days:
                    try:
                        held.enter_context(
                            date_lock(
                                the_scope, day, store=store, ttl=ttl, wait=wait, **lock_options
                            )
                        )
                    except LockBusy as busy:
                        if on_busy == "skip":
                            log.warning("skipping %s: %s", run.__qualname__, busy)
                            return False
                        raise
                return run(self, opts, *args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate
