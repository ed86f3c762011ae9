"""Leases per (scope, game date): acquisition, renewal, loss detection and release."""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import functools
import heapq
import inspect
import itertools
import logging
import math
import os
import queue
import random
import re
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, ParamSpec, TypeVar

from ._backoff import full_jitter
from .dates import date_range, parse_game_date
from .errors import ConfigError, GuardError, LeaseLost, LockBusy
from .stores import AsyncLeaseStore, Holder, LeaseStore, open_store

__all__ = [
    "STORE_ENV",
    "DateLock",
    "Lease",
    "LeaseHooks",
    "bind_leases",
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

#: The environment variable with the lease store's URL, used when no store is passed.
STORE_ENV = "PROCESSOR_GUARD_STORE"
# fullmatch, not "$": "$" also matches before a trailing newline.
_SCOPE_RE = re.compile(r"[A-Za-z0-9_.-]+")
MAX_SCOPE_LENGTH = 200
MAX_OWNER_LENGTH = 500
# A lease longer than this is a unit mistake (ms for s); it also keeps every store's
# expiry arithmetic (Redis PX in ms, Firestore timestamps) in range.
MAX_TTL = 1e9
# A waiter retries a busy key after a full-jitter pause growing from 20 ms up to 1 s,
# sooner when the holder's lease runs out or a release notice wakes it.
WAIT_BASE = 0.02
WAIT_CAP = 1.0

# Guards every lease's loss and release flags: each holds it for a few assignments, so
# one lock for all is never contended for long, and a lease needs no lock of its own.
_state_lock = threading.Lock()

_current: contextvars.ContextVar[tuple[Lease, ...]] = contextvars.ContextVar(
    "processor_guard_leases", default=()
)


# --------------------------------------------------------------------------- inputs


def _check_scope(scope: object) -> str:
    if not isinstance(scope, str) or not _SCOPE_RE.fullmatch(scope):
        raise ConfigError(f"scope must match [A-Za-z0-9_.-]+, got {scope!r}")
    if len(scope) > MAX_SCOPE_LENGTH:
        raise ConfigError(f"scope must be at most {MAX_SCOPE_LENGTH} characters, got {len(scope)}")
    return scope


def _check_owner(owner: object) -> str:
    if not isinstance(owner, str) or not owner:
        raise ConfigError(f"owner must be a non-empty string, got {owner!r}")
    if not owner.isprintable():
        raise ConfigError(f"owner must be printable (no newline or control character): {owner!r}")
    if len(owner) > MAX_OWNER_LENGTH:
        raise ConfigError(f"owner must be at most {MAX_OWNER_LENGTH} characters, got {len(owner)}")
    return owner


def _check_seconds(name: str, value: object, *, positive: bool) -> float:
    ok = (
        not isinstance(value, bool)
        and isinstance(value, (int, float))
        and (value > 0 if positive else value >= 0)
        and value < math.inf
    )
    if not ok:
        bound = "> 0" if positive else ">= 0"
        raise ConfigError(f"{name} must be a number of seconds {bound}, got {value!r}")
    return float(value)  # type: ignore[arg-type]


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
    cached = _owner_cache
    # Cloud Run sets K_REVISION before the process starts: read once per process (an
    # environment lookup per date_lock is a measurable share of an uncontended cycle).
    if cached is not None and cached[0] == _pid:
        return cached[2]
    revision = os.environ.get("K_REVISION")
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
    """A held lease: its fence, owner, deadline and loss state.

    ``lost`` is True once the lease is known lost (``wait_lost`` blocks until then);
    ``active`` is True while this process holds it: not released, not lost, not
    inherited by a forked child. Leases taken together by one ``guarded`` call form a
    group: ``check()`` on any of them fails when any of them is lost.
    """

    def __init__(
        self,
        *,
        store: LeaseStore | AsyncLeaseStore,
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
        self.lost_reason = ""
        self.safety_margin = safety_margin
        self.group: tuple[Lease, ...] = (self,)
        # Its with block has ended (the entering context may still list it, when the
        # block was left from another thread or context).
        self.finished = False
        self._is_lost = False
        # Made only for wait_lost (a threading.Event per lease is a measurable share of
        # an uncontended cycle); set under _state_lock with _is_lost.
        self._lost_event: threading.Event | None = None
        self._clock = clock
        self._deadline = started + ttl
        self._on_lost = on_lost
        self._hooks = hooks
        self._pid = _pid
        self._released = False
        self._last_renew_error: BaseException | None = None

    def __repr__(self) -> str:
        state = "lost" if self.lost else "released" if self._released else "held"
        return f"<Lease {self.key} owner={self.owner!r} fence={self.fence} {state}>"

    @property
    def lost(self) -> bool:
        """True once the lease is known to be lost (taken, expired, unrenewable)."""
        return self._is_lost

    def wait_lost(self, timeout: float | None = None) -> bool:
        """Block until the lease is lost or ``timeout`` passes; True when lost."""
        with _state_lock:
            if self._is_lost:
                return True
            if self._lost_event is None:
                self._lost_event = threading.Event()
            lost = self._lost_event
        return lost.wait(timeout)

    @property
    def remaining(self) -> float:
        """Seconds until the lease's own deadline (monotonic clock), never negative."""
        return max(0.0, self._deadline - self._clock())

    @property
    def active(self) -> bool:
        """True while held by this process: not released, not lost."""
        return not self._released and not self._is_lost and self._pid == _pid

    def check(self) -> None:
        """Raise LeaseLost when this lease or one of its group is lost, or when less
        than the safety margin remains."""
        self._check_own()
        for other in self.group:
            if other is not self:
                other._check_own()

    def _check_own(self) -> None:
        if self._pid != _pid:
            raise LeaseLost(self.key, self.owner, self.fence, "lease belongs to the parent process")
        if self._released and not self.lost:
            # After the with block the fence must not be used to write any more.
            raise LeaseLost(self.key, self.owner, self.fence, "the lease was released")
        if not self.lost and self._clock() >= self._deadline and not self._released:
            self._mark_lost(self._expiry_reason())
        if self.lost:
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
        store = self.store
        assert isinstance(store, LeaseStore)  # an async lease is renewed by leases_async
        try:
            ok = store.renew(self.key, self.owner, self.fence, self.ttl)
        except Exception as exc:
            return self._renew_failed(exc)
        return self._renewed(ok, started)

    def _renew_failed(self, exc: BaseException) -> float | None:
        """A renewal that raised: lost at the deadline, else retried soon."""
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

    def _renewed(self, ok: bool, started: float) -> float | None:
        """A renewal sent at ``started`` answered: when to renew next, None when done."""
        if not ok:
            self._mark_lost("the store no longer holds this lease (expired or taken over)")
            return None
        with _state_lock:
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

    def _mark_lost(self, reason: str, *, at_release: bool = False) -> None:
        with _state_lock:
            if self._is_lost or (self._released and not at_release):
                return
            self.lost_reason = reason
            self._is_lost = True
            if self._lost_event is not None:
                self._lost_event.set()
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

    def _finish(self) -> str | None:
        """Release at the end of the block; the loss reason when it was no longer held."""
        must_release, reason = self._finish_start()
        if not must_release:
            return reason
        store = self.store
        assert isinstance(store, LeaseStore)  # an async lease is released by leases_async
        try:
            freed = store.release(self.key, self.owner, self.fence)
        except Exception as exc:
            self._release_failed(exc)
            return None
        return self._release_answered(freed)

    def _finish_start(self) -> tuple[bool, str | None]:
        """The block ended: (True, None) when the store must be told, else (False, the
        loss reason or None)."""
        self.finished = True
        _forget_held(self)
        if self._pid != _pid:
            # A forked child never releases its parent's lease, nor takes its lock
            # (another thread may have held it at the fork); it never held it itself.
            return False, "lease belongs to the parent process (this is a forked child)"
        with _state_lock:
            if self._released:
                return False, self.lost_reason or None
            self._released = True
            lost = self._is_lost
        if not lost and self._clock() >= self._deadline:
            self._mark_lost(self._expiry_reason(), at_release=True)
            lost = True
        if lost:
            # The store no longer holds it for us, or could not be reached until the
            # deadline: a release would be a no-op or wait out a timeout.
            return False, self.lost_reason
        return True, None

    def _release_failed(self, exc: Exception) -> None:
        """The release raised: the outcome is unknown, not a loss (the lease was ours at
        the last renewal and expires by itself)."""
        log.warning(
            "release of %s (fence %s) failed; it expires by itself within %.1fs: %r",
            self.key,
            self.fence,
            self.ttl,
            exc,
        )

    def _release_answered(self, freed: bool) -> str | None:
        """The release answered: the loss reason when the store no longer held it."""
        if not freed:
            self._mark_lost(
                "the store no longer held this lease at release (expired, broken or taken over)",
                at_release=True,
            )
            return self.lost_reason
        self._emit("released")
        return None


class LeaseUpkeep:
    """What the code that renews and releases a lease tells it and asks it: the keeper
    thread here, the renewal task and the async exit in ``leases_async``. Internal to
    the library (not API): ``upkeep(lease)`` gives it."""

    __slots__ = ("_lease",)

    def __init__(self, lease: Lease) -> None:
        self._lease = lease

    def now(self) -> float:
        """The lease's clock (its deadline is on this clock)."""
        return self._lease._clock()

    def expire_if_due(self) -> None:
        """Mark the lease lost when its deadline has passed."""
        self._lease._expire_if_due()

    def renew_failed(self, exc: Exception) -> float | None:
        """A renewal raised: when to retry (monotonic), None once the deadline passed."""
        return self._lease._renew_failed(exc)

    def renewed(self, ok: bool, started: float) -> float | None:
        """A renewal sent at ``started`` answered: when to renew next, None when done."""
        return self._lease._renewed(ok, started)

    def finish_start(self) -> tuple[bool, str | None]:
        """The block ended: (True, None) when the store must be told, else (False, the
        loss reason or None)."""
        return self._lease._finish_start()

    def release_failed(self, exc: Exception) -> None:
        """The release raised: logged; the lease expires by itself."""
        self._lease._release_failed(exc)

    def release_answered(self, freed: bool) -> str | None:
        """The release answered: the loss reason when the store no longer held it."""
        return self._lease._release_answered(freed)


def upkeep(lease: Lease) -> LeaseUpkeep:
    """The renewal and release bookkeeping of ``lease`` (internal, see LeaseUpkeep)."""
    return LeaseUpkeep(lease)


# Every active lease of this process, by key: finds a lease held in another thread or
# context (current_lease(..., for_write=True)) and what a dying keeper must mark lost.
_held: dict[str, list[Lease]] = {}
_held_lock = threading.Lock()


def _note_held(lease: Lease) -> None:
    with _held_lock:
        _held.setdefault(lease.key, []).append(lease)


def _forget_held(lease: Lease) -> None:
    with _held_lock:
        found = _held.get(lease.key)
        if found is not None and lease in found:
            found.remove(lease)
            if not found:
                del _held[lease.key]


def _held_now() -> list[Lease]:
    with _held_lock:
        return [lease for found in _held.values() for lease in found if lease.active]


# --------------------------------------------------------------------------- keeper


class _Task(NamedTuple):
    # A tuple so heap comparisons run in C; seq is unique, so kind/lease never compare.
    when: float
    seq: int
    kind: str
    lease: weakref.ref[Lease]


_COMPACT_MIN = 1024
# A renewal worker with nothing to do for this long ends; a busy one is never waited for.
WORKER_IDLE = 10.0


class _Workers:
    """Runs each renewal at once on an idle worker thread, or a new one when none is
    idle: a slow store answer delays only its own lease, however many are held."""

    def __init__(self) -> None:
        self._tasks: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0  # idle workers no queued task has been promised to

    def submit(self, task: Callable[[], None]) -> None:
        with self._lock:
            spawn = self._idle == 0
            if not spawn:
                self._idle -= 1
        self._tasks.put(task)
        if spawn:
            threading.Thread(target=self._work, name="processor_guard-renew", daemon=True).start()

    def _work(self) -> None:
        while True:
            try:
                task = self._tasks.get(timeout=WORKER_IDLE)
            except queue.Empty:
                with self._lock:
                    if self._idle > 0:  # else a task is on its way to this worker
                        self._idle -= 1
                        return
                continue
            task()
            with self._lock:
                self._idle += 1


class _Keeper:
    """One scheduler thread per process renews every lease at ttl/3 and expires the
    ones whose deadline passes; renewals run on worker threads (one per renewal in
    flight), so a hung store call delays neither other leases nor the deadline checks.
    If the scheduler itself dies, every lease it kept is marked lost."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._cond = threading.Condition(threading.Lock())
        self._heap: list[_Task] = []
        self._compact_at = _COMPACT_MIN
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._workers = _Workers()
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
        try:
            while True:
                self._run_next()
        except BaseException as exc:
            self._died(exc)
            raise

    def _died(self, exc: BaseException) -> None:
        """Nothing renews the leases any more: each is lost now, not at its deadline."""
        with self._cond:
            leases = {id(lease): lease for t in self._heap if (lease := t.lease()) is not None}
            self._heap = []
            self._thread = None
        for lease in leases.values():
            # One failing on_lost callback must not keep the next lease from being marked.
            with contextlib.suppress(BaseException):
                lease._mark_lost(f"the renewal keeper thread died: {exc!r}")

    def _run_next(self) -> None:
        with self._cond:
            while True:
                now = self._clock()
                if self._heap and self._heap[0].when <= now:
                    task = heapq.heappop(self._heap)
                    break
                timeout = self._heap[0].when - now if self._heap else None
                self._cond.wait(timeout)
            lease = task.lease()
            batch = self._batch_with(lease, now) if task.kind == "renew" else []
        if batch:
            self._workers.submit(functools.partial(self._renew_batch, batch))
            return
        if lease is None or not lease.active:
            return
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
                self._workers.submit(functools.partial(self._renew, lease))
        except Exception:
            log.exception("keeper failed on %s", lease.key)

    def _expire(self, lease: Lease) -> None:
        try:
            lease._expire_if_due()
        except Exception:
            log.exception("expiring %s failed", lease.key)
        if lease.active:  # renewed just in time: keep watching the new deadline
            self._schedule(self._at(lease, lease._deadline), "expire", lease)

    def _batch_with(self, first: Lease | None, now: float) -> list[Lease]:
        """``first`` and the leases of its store due for renewal within a sixth of their
        ttl, taken off the heap for one ``renew_many`` (caller holds the lock); empty
        when its store renews one by one. Renewing a sixth of a ttl early is harmless."""
        if first is None or not first.active:
            return []
        if not isinstance(first.store, LeaseStore) or not first.store.batch_renewal:
            return []
        if id(first) in self._inflight:
            return []
        batch, keep = [first], []
        horizon = now + first.ttl / 6
        while self._heap and self._heap[0].when <= horizon:
            task = heapq.heappop(self._heap)
            other = task.lease()
            joins = (
                task.kind == "renew"
                and other is not None
                and other.active
                and other.store is first.store
                and id(other) not in self._inflight
                and task.when - now <= other.ttl / 6
                and other not in batch
            )
            if joins:
                assert other is not None
                batch.append(other)
            else:
                keep.append(task)
        for task in keep:
            heapq.heappush(self._heap, task)
        for lease in batch:
            self._inflight.add(id(lease))
        return batch

    def _renew_batch(self, batch: list[Lease]) -> None:
        """Renew a batch of one store's leases in one round trip; each lease takes its
        own answer, so one lost or failed lease never fails the others."""
        started = [lease._clock() for lease in batch]
        store = batch[0].store
        assert isinstance(store, LeaseStore)  # _batch_with takes only sync stores' leases
        try:
            answers = store.renew_many(
                [(lease.key, lease.owner, lease.fence, lease.ttl) for lease in batch]
            )
            if len(answers) != len(batch):
                raise RuntimeError(f"renew_many gave {len(answers)} answers for {len(batch)}")
        except Exception as exc:
            answers = [exc] * len(batch)
        for lease, answer, at in zip(batch, answers, started, strict=True):
            self._settle(lease, functools.partial(_follow_answer, lease, answer, at))

    def _renew(self, lease: Lease) -> None:
        self._settle(lease, lease._renew_once)

    def _settle(self, lease: Lease, renewal: Callable[[], float | None]) -> None:
        """Run ``renewal`` (its answer: when to renew next, or None) and schedule that."""
        try:
            follow = renewal()
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


def _follow_answer(lease: Lease, answer: bool | Exception, started: float) -> float | None:
    """A batched renewal's answer for ``lease``: when to renew next, None when done."""
    if not lease.active:
        return None
    if isinstance(answer, Exception):
        return lease._renew_failed(answer)
    return lease._renewed(bool(answer), started)


def _after_fork_in_child() -> None:
    global _keeper, _pid, _state_lock
    _pid = os.getpid()
    _keeper = _Keeper()
    _state_lock = threading.Lock()  # another thread may have held it at the fork


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


# --------------------------------------------------------------------------- API


@dataclass
class _LockRequest:
    """A date_lock call's checked arguments; what both the sync and the async block use."""

    key: str
    scope: str
    day: dt.date
    ttl: float
    wait: float
    owner: str
    margin: float
    store: Any  # as passed: a store, a URL or None (resolved by the entering side)
    on_lost: Callable[[Lease], None] | None
    hooks: list[LeaseHooks]
    clock: Callable[[], float]

    def refuse_nested(self, store: LeaseStore | AsyncLeaseStore) -> None:
        """LockBusy when this context already holds the key on ``store``."""
        _refuse_nested(self.key, store)

    def new_lease(self, store: LeaseStore | AsyncLeaseStore, fence: int, started: float) -> Lease:
        """The lease just acquired with ``fence`` by an attempt sent at ``started``."""
        lease = Lease(
            store=store,
            key=self.key,
            scope=self.scope,
            game_date=self.day,
            owner=self.owner,
            fence=fence,
            ttl=self.ttl,
            started=started,
            clock=self.clock,
            safety_margin=self.margin,
            on_lost=self.on_lost,
            hooks=self.hooks,
        )
        _note_held(lease)
        return lease

    def next_pause(self, holder: Holder | None, give_up: float, attempt: int) -> float:
        """After a busy attempt: LockBusy once the wait budget (until ``give_up``) is
        spent, else how long to wait for a release notice before the next attempt."""
        left = give_up - self.clock()
        if left <= 0:
            raise LockBusy(
                self.key, holder.owner if holder else None, holder.remaining if holder else None
            )
        pause = full_jitter(WAIT_BASE, WAIT_CAP, attempt)
        if holder is not None and holder.remaining is not None:
            pause = min(pause, holder.remaining + random.uniform(0, 0.01))
        return min(left, max(pause, 0.001))

    @staticmethod
    def announce(lease: Lease) -> None:
        """Run the acquired hooks (after the lease is being renewed)."""
        lease._emit("acquired")
        log.debug("acquired %s as %s with fence %s", lease.key, lease.owner, lease.fence)

    @staticmethod
    def enter(lease: Lease) -> contextvars.Token[tuple[Lease, ...]]:
        """Make ``lease`` this context's innermost one."""
        return _current.set((*_current.get(), lease))

    @staticmethod
    def leave(token: contextvars.Token[tuple[Lease, ...]], lease: Lease) -> None:
        """Undo ``enter``, also when the block is left from another thread or context
        (the token belongs to the entering one): the release must still run."""
        try:
            _current.reset(token)
        except ValueError:
            _current.set(tuple(held for held in _current.get() if held is not lease))


def _lock_request(
    scope: str,
    game_date: dt.date | str,
    *,
    store: LeaseStore | AsyncLeaseStore | str | None,
    ttl: float,
    wait: float,
    owner: str | None,
    on_lost: Callable[[Lease], None] | None,
    hooks: LeaseHooks | None,
    safety_margin: float | None,
    clock: Callable[[], float],
) -> _LockRequest:
    day = parse_game_date(game_date)
    key = f"{_check_scope(scope)}:{day.isoformat()}"
    the_ttl = _check_seconds("ttl", ttl, positive=True)
    if the_ttl >= MAX_TTL:
        raise ConfigError(f"ttl must be under {MAX_TTL:.0e} seconds, got {ttl!r}")
    the_wait = _check_seconds("wait", wait, positive=False)
    who = default_owner() if owner is None else _check_owner(owner)
    if safety_margin is None:
        margin = the_ttl / 10
    else:
        margin = _check_seconds("safety_margin", safety_margin, positive=False)
        if margin >= the_ttl:
            raise ConfigError(f"safety_margin must be in [0, ttl), got {safety_margin!r}")
    all_hooks = [*_global_hooks, *([hooks] if hooks else [])]
    return _LockRequest(
        key, scope, day, the_ttl, the_wait, who, margin, store, on_lost, all_hooks, clock
    )


class DateLock:
    """What :func:`date_lock` returns: enter it once, with ``with`` or ``async with``.

    Both hold the same lease with the same guarantees; ``async with`` takes and renews
    it on the running event loop (see :mod:`processor_guard.leases_async`).
    """

    def __init__(self, request: Callable[[], _LockRequest]) -> None:
        self._request = request
        self._sync: contextlib.AbstractContextManager[Lease] | None = None
        self._async: Any = None

    def __enter__(self) -> Lease:
        self._sync = _hold(self._request())
        return self._sync.__enter__()

    def __exit__(self, *exc_info: Any) -> bool | None:
        assert self._sync is not None, "date_lock: __exit__ without __enter__"
        return self._sync.__exit__(*exc_info)

    async def __aenter__(self) -> Lease:
        from .leases_async import AsyncHold

        request = self._request()
        self._async = AsyncHold(request)
        lease: Lease = await self._async.enter()
        return lease

    async def __aexit__(self, *exc_info: Any) -> None:
        assert self._async is not None, "date_lock: __aexit__ without __aenter__"
        await self._async.exit(exc_info[1])


def date_lock(
    scope: str,
    game_date: dt.date | str,
    *,
    store: LeaseStore | AsyncLeaseStore | str | None = None,
    ttl: float = 60.0,
    wait: float = 0.0,
    owner: str | None = None,
    on_lost: Callable[[Lease], None] | None = None,
    hooks: LeaseHooks | None = None,
    safety_margin: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> DateLock:
    """Hold the lease for (scope, game_date) for the ``with`` (or ``async with``) block,
    renewing it.

    Leaving the block raises LeaseLost (unless the body raised) when the lease was lost
    at any point, including when the release finds the store no longer holds it.
    """
    return DateLock(
        functools.partial(
            _lock_request,
            scope,
            game_date,
            store=store,
            ttl=ttl,
            wait=wait,
            owner=owner,
            on_lost=on_lost,
            hooks=hooks,
            safety_margin=safety_margin,
            clock=clock,
        )
    )


@contextmanager
def _hold(request: _LockRequest) -> Iterator[Lease]:
    the_store = _resolve_store(request.store)
    the_store.check_key(request.key)
    _refuse_nested(request.key, the_store)
    lease = _acquire(the_store, request)
    token = request.enter(lease)
    body_ok = False
    try:
        yield lease
        body_ok = True
    finally:
        request.leave(token, lease)
        lost_reason = lease._finish()
        if lost_reason is not None and body_ok:
            raise LeaseLost(lease.key, lease.owner, lease.fence, lost_reason)


def _refuse_nested(key: str, store: LeaseStore | AsyncLeaseStore) -> None:
    """A key this context already holds would wait for itself: say so at once."""
    for held in held_leases():
        if held.key == key and held.store is store and held.active:
            raise LockBusy(
                key,
                held.owner,
                held.remaining,
                reason=f"already held by this process in this context (fence {held.fence}); "
                "a nested date_lock on the same key would wait for itself",
            )


def _acquire(store: LeaseStore, request: _LockRequest) -> Lease:
    key, owner, ttl, clock = request.key, request.owner, request.ttl, request.clock
    give_up = clock() + request.wait
    attempt = 0
    waiter = None
    try:
        while True:
            started = clock()
            result = store.try_acquire(key, owner, ttl)
            if result.acquired:
                assert result.fence is not None
                lease = request.new_lease(store, result.fence, started)
                _keeper.add(lease)
                request.announce(lease)
                return lease
            pause = request.next_pause(result.holder, give_up, attempt)
            if waiter is None:
                # Subscribe before the next attempt so a release in between is not missed.
                waiter = store.release_waiter(key)
                continue
            waiter.wait(pause)
            attempt += 1
    finally:
        if waiter is not None:
            waiter.close()


def held_leases() -> tuple[Lease, ...]:
    """The leases whose blocks this context is in, outermost first (``guarded`` holds
    one per date)."""
    return tuple(lease for lease in _current.get() if not lease.finished)


def current_lease(game_date: object = None, *, for_write: bool = False) -> Lease | None:
    """The lease this context holds: the innermost one, or with ``game_date`` the one
    for that date (None when this context holds none for it).

    ``for_write=True`` (what ``safe_merge`` passes) raises ConfigError when this context
    holds no lease for ``game_date`` but another thread or context of this process
    does: a write there would go out unchecked and unfenced. Carry the leases into
    worker threads with :func:`bind_leases`.
    """
    stack = held_leases()
    if game_date is None:
        return stack[-1] if stack else None
    day = parse_game_date(game_date)
    for lease in reversed(stack):
        if lease.game_date == day:
            return lease
    if for_write:
        elsewhere = [lease.key for lease in _held_now() if lease.game_date == day]
        if elsewhere:
            raise ConfigError(
                f"game_date {day} is locked by this process ({', '.join(sorted(elsewhere))}) "
                "but not in this thread or context: run the code with "
                "processor_guard.leases.bind_leases(fn) so it carries the lease"
            )
    return None


P = ParamSpec("P")
R = TypeVar("R")


def bind_leases(fn: Callable[P, R]) -> Callable[P, R]:
    """``fn`` bound to the leases of the calling context, to run in another thread.

    Inside a ``with date_lock`` or a ``@guarded`` run::

        pool.submit(bind_leases(save_partition), rows)

    ``current_lease()`` and ``safe_merge`` in the worker then see (and check, and
    fence with) the caller's leases. Bind when submitting, not earlier: the leases are
    the ones held at the time of the call to ``bind_leases``.
    """
    held = held_leases()

    @functools.wraps(fn)
    def bound(*args: P.args, **kwargs: P.kwargs) -> R:
        token = _current.set(held)
        try:
            return fn(*args, **kwargs)
        finally:
            _current.reset(token)

    return bound


F = TypeVar("F", bound=Callable[..., Any])


#: Where ``guarded`` finds a run's dates: None (opts' start_date..end_date), the name of
#: a key of opts (a date, an ISO string or a list of them) or ``opts -> date(s)``.
DatesFrom = str | Callable[[Any], object] | None
# A plain function's dates are found in its first argument; a method's in its second.
_METHOD_FIRST = ("self", "cls")


def _opts_dates(opts: object) -> list[dt.date]:
    if not isinstance(opts, dict):
        raise ConfigError(f"opts must be a dict, got {type(opts).__name__}")
    # A key present with None is what JSON null gives: the same as leaving it out.
    start = opts.get("start_date")
    end = opts.get("end_date")
    if start is None:
        start = end
    if end is None:
        end = start
    if start is None:
        raise ConfigError("opts needs start_date and/or end_date")
    return date_range(start, end)


def _dates_of(value: object, source: str) -> list[dt.date]:
    """One date or an iterable of dates as a sorted list without repeats."""
    if value is None:
        raise ConfigError(f"{source} gave no date (None)")
    if isinstance(value, (str, dt.date)):
        return [parse_game_date(value, argument=source)]
    if isinstance(value, (bytes, dict)) or not hasattr(value, "__iter__"):
        raise ConfigError(f"{source} must be a date, 'YYYY-MM-DD' or a list of them, got {value!r}")
    days = {parse_game_date(v, argument=f"{source} item") for v in value}
    if not days:
        raise ConfigError(f"{source} gave an empty list of dates")
    return sorted(days)


def _run_dates(dates: DatesFrom, opts: object) -> list[dt.date]:
    """The dates a guarded run locks, ascending (so two runs never wait on each other)."""
    if dates is None:
        return _opts_dates(opts)
    if isinstance(dates, str):
        if not isinstance(opts, Mapping):
            raise ConfigError(f"opts must be a dict with {dates!r}, got {type(opts).__name__}")
        if dates not in opts:
            raise ConfigError(f"opts has no {dates!r} (the key guarded(dates=...) names)")
        return _dates_of(opts[dates], f"opts[{dates!r}]")
    return _dates_of(dates(opts), "dates(opts)")


def _is_method(run: Callable[..., Any]) -> bool:
    """True when ``run``'s first parameter is ``self`` (or ``cls``): opts is the second."""
    try:
        params = list(inspect.signature(run).parameters.values())
    except (TypeError, ValueError):
        return True
    positional = [
        p
        for p in params
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    if not positional:
        raise ConfigError(
            f"guarded needs a function taking opts (or self, opts): {run.__qualname__!r} "
            "takes no positional argument"
        )
    return positional[0].name in _METHOD_FIRST


def _reusable(
    scope: str, day: dt.date, store: LeaseStore | str | None, owner: str | None
) -> Lease | None:
    """The lease this context already holds for (scope, day) on the same store, as the
    same owner: a guarded override calling a guarded ``super().run()`` runs under it
    instead of waiting on itself."""
    key = f"{scope}:{day.isoformat()}"
    who = owner if owner is not None else default_owner()
    for held in held_leases():
        same = held.key == key and held.active and held.owner == who
        if same and isinstance(held.store, LeaseStore) and _same_store(held.store, store):
            return held
    return None


def _same_store(held: LeaseStore, store: LeaseStore | str | None) -> bool:
    if isinstance(store, LeaseStore):
        return held is store
    url = store if store is not None else os.environ.get(STORE_ENV)
    with _env_lock:
        return url is not None and _env_stores.get(url) is held


def _under_leases(
    scope: str,
    days: list[dt.date],
    budget: float,
    options: dict[str, Any],
    call: Callable[[], Any],
    on_busy: Callable[[LockBusy], Any] | None,
) -> Any:
    """``call()`` holding (scope, day) for every day, ``budget`` seconds to get them all;
    a day this context already holds on the same store is not locked again. A busy day
    raises LockBusy, or returns ``on_busy(busy)`` (a LockBusy of the body is raised)."""
    give_up = time.monotonic() + budget
    with ExitStack() as held:
        leases: list[Lease] = []
        for day in days:
            reused = _reusable(scope, day, options["store"], options.get("owner"))
            if reused is None:
                wait = max(0.0, give_up - time.monotonic())
                try:
                    reused = held.enter_context(date_lock(scope, day, wait=wait, **options))
                except LockBusy as busy:
                    if on_busy is None:
                        raise
                    return on_busy(busy)
            leases.append(reused)
        group = tuple(leases)
        for lease in leases:
            if lease.group == (lease,):
                lease.group = group
        return call()


def _guard_async(
    run: Callable[..., Any],
    scope: str | Callable[[Any], str],
    dates: DatesFrom,
    method: bool,
    budget: float,
    on_busy: Literal["raise", "skip"],
    lock_options: dict[str, Any],
) -> Callable[..., Any]:
    """guarded's wrapper of an ``async def`` (built in leases_async)."""
    from .leases_async import guard_coroutine

    def scope_and_dates(scope_arg: Any, opts: Any) -> tuple[str, list[dt.date]]:
        days = _run_dates(dates, opts)
        return _check_scope(scope(scope_arg) if callable(scope) else scope), days

    return guard_coroutine(
        run,
        scope_and_dates,
        method=method,
        budget=budget,
        on_busy=on_busy,
        lock_options=lock_options,
    )


def guarded(
    scope: str | Callable[[Any], str],
    *,
    dates: DatesFrom = None,
    store: LeaseStore | str | None = None,
    ttl: float = 60.0,
    wait: float = 0.0,
    on_busy: Literal["raise", "skip"] = "raise",
    **lock_options: Any,
) -> Callable[[F], F]:
    """Decorate ``run(self, opts)`` or ``process(opts)``: lock every date of the run first.

    ``async def`` gets the same, with ``async with`` (see leases_async).

    The dates: by default opts' ``start_date..end_date``; ``dates="date"`` reads that
    key of opts (a date, an ISO string or a list of them); ``dates=callable`` gets opts
    and returns the same. A function whose first parameter is ``self`` (or ``cls``) is
    a method, and a callable ``scope`` gets ``self``; otherwise opts is the first
    argument and a callable ``scope`` gets opts. Dates are locked in ascending order.

    ``wait`` is one budget for all the dates. Busy: ``on_busy="raise"`` raises
    LockBusy (push endpoints answer non-2xx so Pub/Sub redelivers); ``"skip"`` logs a
    WARNING and returns False. Never True for work not done: a date lost during the run
    stops its writes and raises LeaseLost when the run returns. A date this context
    already holds under the same scope and store (a guarded override calling a guarded
    ``super().run()``) is run under the held lease, not locked again.
    """
    if on_busy not in ("raise", "skip"):
        raise ConfigError(f"on_busy must be 'raise' or 'skip', got {on_busy!r}")
    if not callable(scope):
        _check_scope(scope)
    if dates is not None and not callable(dates) and not (isinstance(dates, str) and dates):
        raise ConfigError(f"dates must be None, a key of opts or a callable, got {dates!r}")
    budget = _check_seconds("wait", wait, positive=False)

    def decorate(run: F) -> F:
        if inspect.isasyncgenfunction(run):
            # The wrapper would release the leases before the generator runs.
            raise ConfigError(
                f"guarded cannot wrap the async generator {run.__qualname__!r}: "
                "its body would run after the leases were released"
            )
        method = _is_method(run)
        if inspect.iscoroutinefunction(run):
            options = {"store": store, "ttl": ttl, **lock_options}
            return _guard_async(  # type: ignore[return-value]
                run, scope, dates, method, budget, on_busy, options
            )

        def locked(scope_arg: Any, opts: Any, call: Callable[[], Any]) -> Any:
            days = _run_dates(dates, opts)
            the_scope = _check_scope(scope(scope_arg) if callable(scope) else scope)
            options = {"store": store, "ttl": ttl, **lock_options}
            return _under_leases(the_scope, days, budget, options, call, skip)

        def skip_busy(busy: LockBusy) -> bool:
            log.warning("skipping %s: %s", run.__qualname__, busy)
            return False

        skip = skip_busy if on_busy == "skip" else None

        if method:

            @functools.wraps(run)
            def wrapper(self: Any, opts: Any, *args: Any, **kwargs: Any) -> Any:
                return locked(self, opts, lambda: run(self, opts, *args, **kwargs))

        else:

            @functools.wraps(run)
            def wrapper(opts: Any, *args: Any, **kwargs: Any) -> Any:
                return locked(opts, opts, lambda: run(opts, *args, **kwargs))

        return wrapper  # type: ignore[return-value]

    return decorate
