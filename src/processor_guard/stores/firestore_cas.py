"""Compare-and-set on one Firestore document, without read-write transactions.

Firestore's server clients take pessimistic locks inside read-write transactions; two
transactions that read then write one document make the loser wait for a lock timeout
(about 2 s on the emulator) before retrying. Here a writer instead reads the document
(the snapshot carries the server's ``read_time`` and the document's ``update_time``),
computes the new state, and writes it with ``create()`` when the document was absent or
with an ``update_time`` precondition when it existed. A failed precondition means
another writer got in first: re-read and decide again. Contention resolves in a few
milliseconds per round, and nothing is written from a stale read.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import random
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

from .._backoff import full_jitter
from .._docapi import conflict_errors, delete_field, quote_field, service_errors
from ..errors import StoreUnavailable

__all__ = [
    "CONFLICT",
    "DEFAULT_TIMEOUT",
    "CasOutcome",
    "Create",
    "Pause",
    "Read",
    "Steps",
    "Update",
    "cas_steps",
    "compare_and_set",
    "is_unavailable",
    "read_doc",
    "read_retry",
    "run_steps",
    "run_steps_async",
    "store_unavailable",
    "unavailable_raised_as_store_error",
    "update_payload",
]

Doc = dict[str, Any]

#: Seconds one Firestore call may take (reads included their retries) before the store
#: counts as unreachable; keeps an unreachable server from blocking for minutes.
DEFAULT_TIMEOUT = 5.0


def store_unavailable(exc: BaseException, key: str | None, action: str) -> StoreUnavailable:
    """The StoreUnavailable to raise for a failed Firestore call (``raise ... from exc``)."""
    where = f" for {key!r}" if key is not None else ""
    return StoreUnavailable(
        f"Firestore {action}{where} failed: {type(exc).__name__}: {exc}", key=key
    )


def _transient(exc: BaseException) -> bool:
    from google.api_core import exceptions as gexc

    return isinstance(
        exc,
        (
            gexc.ServiceUnavailable,
            gexc.InternalServerError,
            gexc.Unknown,
            gexc.DeadlineExceeded,
            gexc.Aborted,
            gexc.ResourceExhausted,
        ),
    )


def read_retry(timeout: float, *, asynchronous: bool = False) -> Any:
    """Retry policy for idempotent reads: transient errors, for at most ``timeout`` s
    (None without Google's client: the local document store has no transient errors).
    ``asynchronous`` gives the policy for ``AsyncClient`` calls."""
    # Google's clients take their retry policy per call, and api_core's Retry already
    # sleeps full jitter (uniform up to min(maximum, initial * multiplier**n)), the
    # policy of processor_guard._backoff.
    try:
        from google.api_core import retry as gretry
    except ImportError:
        return None
    policy = gretry.AsyncRetry if asynchronous else gretry.Retry
    return policy(predicate=_transient, initial=0.05, maximum=0.5, multiplier=2.0, timeout=timeout)


def is_unavailable(exc: BaseException) -> bool:
    """Errors that mean the store could not be reached or refused to answer."""
    return isinstance(exc, (*service_errors(), ConnectionError, OSError, TimeoutError))


@contextlib.contextmanager
def unavailable_raised_as_store_error(key: str | None, action: str) -> Iterator[None]:
    """Turn errors of the block that mean an unreachable store into StoreUnavailable."""
    try:
        yield
    except Exception as exc:
        if is_unavailable(exc):
            raise store_unavailable(exc, key, action) from exc
        raise


# ----------------------------------------------------------------------------- steps
# The compare-and-set (and the lease store built on it) is written once, as generators
# that yield the Firestore calls they need and receive the answers: ``run_steps`` makes
# them on a ``Client``, ``run_steps_async`` awaits them on an ``AsyncClient``.


@dataclass(frozen=True)
class Read:
    """Read one document: answered with its snapshot."""

    ref: Any
    key: str | None


@dataclass(frozen=True)
class Create:
    """Create one document: answered with the write result, or CONFLICT if it exists."""

    ref: Any
    key: str | None
    doc: Doc


@dataclass(frozen=True)
class Update:
    """Update a document if its update time is still ``last_update_time``: answered
    with the write result, or CONFLICT when another writer changed (or deleted) it."""

    ref: Any
    key: str | None
    payload: Doc
    last_update_time: dt.datetime
    action: str = "write"


@dataclass(frozen=True)
class Pause:
    """Sleep ``seconds`` before the next call: answered with None."""

    seconds: float


Call = Read | Create | Update | Pause
T = TypeVar("T")
#: A Firestore conversation: yields calls, receives their answers, returns a T.
Steps = Generator[Call, Any, T]
#: The answer to a write that another writer beat.
CONFLICT: Any = object()


class _Run(Generic[T]):
    """One run of steps: the call it waits on (None when done) and then its result."""

    def __init__(self, steps: Steps[T]) -> None:
        self._steps = steps
        self.result: T | None = None
        self.call: Call | None = self._advance(lambda: next(steps))

    def _advance(self, step: Callable[[], Call]) -> Call | None:
        try:
            return step()
        except StopIteration as done:
            self.result = done.value
            return None

    def answer(self, reply: Any) -> None:
        self.call = self._advance(lambda: self._steps.send(reply))

    def settle(self, answer: Callable[[Call], Any]) -> None:
        """Answer the waiting call with ``answer(call)`` or, if that raises, the error."""
        assert self.call is not None
        try:
            reply = answer(self.call)
        except BaseException as exc:
            self.fail(exc)
        else:
            self.answer(reply)

    def fail(self, exc: BaseException) -> None:
        """Raise ``exc`` inside the steps (out of here when they do not handle it)."""
        self.call = self._advance(lambda: self._steps.throw(exc))


def _request(call: Read | Create | Update, client: Any, timeout: float, aio: bool) -> Any:
    """Make ``call`` on the client: its answer (a coroutine on an AsyncClient)."""
    if isinstance(call, Read):
        return call.ref.get(retry=read_retry(timeout, asynchronous=aio), timeout=timeout)
    if isinstance(call, Create):
        return call.ref.create(call.doc, retry=None, timeout=timeout)
    option = client.write_option(last_update_time=call.last_update_time)
    return call.ref.update(call.payload, option=option, retry=None, timeout=timeout)


def _failure_answer(call: Read | Create | Update, exc: Exception) -> Any:
    """What a failed call answers: CONFLICT for a lost write race, else it raises
    (StoreUnavailable when the store could not be reached)."""
    if not isinstance(call, Read) and isinstance(exc, conflict_errors()):
        return CONFLICT
    if is_unavailable(exc):
        action = "read" if isinstance(call, Read) else getattr(call, "action", "write")
        raise store_unavailable(exc, call.key, action) from exc
    raise exc


def run_steps(
    steps: Steps[T],
    client: Any,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run ``steps`` on a synchronous ``Client`` (or the local document client)."""

    def answer(call: Call) -> Any:
        if isinstance(call, Pause):
            return sleep(call.seconds)
        try:
            return _request(call, client, timeout, aio=False)
        except Exception as exc:
            return _failure_answer(call, exc)

    run = _Run(steps)
    while run.call is not None:
        run.settle(answer)
    return cast(T, run.result)


async def run_steps_async(steps: Steps[T], client: Any, *, timeout: float = DEFAULT_TIMEOUT) -> T:
    """Run ``steps`` on a ``google.cloud.firestore.AsyncClient``, never blocking the loop.
    A cancellation is raised inside the steps, so they can note a write left unanswered."""

    async def answer(call: Call) -> Any:
        if isinstance(call, Pause):
            return await asyncio.sleep(call.seconds)
        try:
            return await _request(call, client, timeout, aio=True)
        except Exception as exc:
            return _failure_answer(call, exc)

    run = _Run(steps)
    while run.call is not None:
        try:
            reply = await answer(run.call)
        except BaseException as exc:
            run.fail(exc)
        else:
            run.answer(reply)
    return cast(T, run.result)


def read_doc(doc_ref: Any, *, key: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> Any:
    """Read one document (retrying transient errors up to ``timeout``): its snapshot."""
    return run_steps(_read(doc_ref, key), None, timeout=timeout)


def _read(doc_ref: Any, key: str | None) -> Steps[Any]:
    return (yield Read(doc_ref, key))


@dataclass(frozen=True)
class CasOutcome:
    """What one compare-and-set did.

    ``before`` is the document as read on the last attempt (None when absent), ``after``
    what it holds now as far as this call knows (``before`` when nothing was written).
    ``read_time`` is that read's server time; ``update_time`` the write's (or the read
    document's) update time. ``gave_up`` is True when every attempt lost a race.
    """

    before: Doc | None
    after: Doc | None
    written: bool
    read_time: dt.datetime
    update_time: dt.datetime | None
    attempts: int
    gave_up: bool = False


def _private_copy(value: Any) -> Any:
    """A copy ``decide`` may change freely: maps and arrays are copied, every other
    Firestore value (str, bytes, numbers, timestamps, references) is immutable and
    shared (deepcopy rebuilds every timestamp: a measurable share of a lease cycle)."""
    if isinstance(value, dict):
        return {k: _private_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_private_copy(v) for v in value]
    return value


def _changed(old: Any, new: Any) -> bool:
    # Firestore tells 1, 1.0 and True apart; Python's == does not.
    return type(old) is not type(new) or bool(old != new)


def update_payload(before: Doc, after: Doc) -> Doc:
    """The ``update()`` argument turning ``before`` into ``after``: the top-level fields
    that changed, and the removed ones deleted (the write's update-time precondition
    guarantees the rest still equals ``before``; fewer fields encode and send faster)."""
    # Quote every top-level name so dots or odd characters are not read as paths.
    payload: Doc = {
        quote_field(name): value
        for name, value in after.items()
        if name not in before or _changed(before[name], value)
    }
    for name in before:
        if name not in after:
            payload[quote_field(name)] = delete_field()
    return payload


def cas_steps(
    doc_ref: Any,
    decide: Callable[[Doc | None, dt.datetime], Doc | None],
    *,
    key: str | None = None,
    max_attempts: int = 50,
    base_delay: float = 0.005,
    max_delay: float = 0.25,
    deadline: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    rng: random.Random | None = None,
) -> Steps[CasOutcome]:
    """Read the document, let ``decide(doc_or_None, read_time)`` return its new full
    state (or None to write nothing), and write it only if nobody wrote in between:
    the steps, for either client (``compare_and_set`` runs them on a sync one).

    ``decide`` gets a private copy and may run several times (once per attempt); it
    must not have side effects it cannot repeat. ``read_time`` is the server's time of
    the read: judge expiry against it, never against this machine's clock. Lost races
    are retried after a jittered backoff (``base_delay`` = 0 re-reads at once) until
    ``max_attempts`` or ``deadline`` seconds (``clock``) run out; then ``gave_up``.
    Writes are never retried blindly: a write whose outcome is unknown raises
    StoreUnavailable, as does any read or write that cannot reach the store.
    """
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be >= 1, got {max_attempts!r}")
    give_up_at = None if deadline is None else clock() + deadline
    attempt = 0
    while True:
        attempt += 1
        snap = yield Read(doc_ref, key)
        before: Doc | None = snap.to_dict() if snap.exists else None
        read_time: dt.datetime = snap.read_time
        after = decide(_private_copy(before), read_time)
        if after is None or after == before:
            return CasOutcome(before, before, False, read_time, snap.update_time, attempt)
        if before is None:
            result = yield Create(doc_ref, key, after)
        else:
            payload = update_payload(before, after)
            result = yield Update(doc_ref, key, payload, snap.update_time)
        if result is CONFLICT:
            out_of_time = give_up_at is not None and clock() >= give_up_at
            if attempt >= max_attempts or out_of_time:
                return CasOutcome(before, before, False, read_time, None, attempt, gave_up=True)
            if base_delay > 0:
                yield Pause(full_jitter(base_delay, max_delay, attempt - 1, rng))
            continue
        return CasOutcome(before, after, True, read_time, result.update_time, attempt)


def compare_and_set(
    client: Any,
    doc_ref: Any,
    decide: Callable[[Doc | None, dt.datetime], Doc | None],
    *,
    sleep: Callable[[float], None] = time.sleep,
    timeout: float = DEFAULT_TIMEOUT,
    **options: Any,
) -> CasOutcome:
    """Run :func:`cas_steps` (``options`` are its keyword arguments) on a synchronous
    client, sleeping with ``sleep`` between lost races."""
    steps = cas_steps(doc_ref, decide, **options)
    return run_steps(steps, client, timeout=timeout, sleep=sleep)
