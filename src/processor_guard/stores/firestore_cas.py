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

import datetime as dt
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .._backoff import full_jitter
from .._docapi import conflict_errors, delete_field, quote_field, service_errors
from ..errors import StoreUnavailable

__all__ = [
    "DEFAULT_TIMEOUT",
    "CasOutcome",
    "compare_and_set",
    "is_unavailable",
    "read_doc",
    "read_retry",
    "store_unavailable",
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


def read_retry(timeout: float) -> Any:
    """Retry policy for idempotent reads: transient errors, for at most ``timeout`` s
    (None without Google's client: the local document store has no transient errors)."""
    # Google's clients take their retry policy per call, and api_core's Retry already
    # sleeps full jitter (uniform up to min(maximum, initial * multiplier**n)), the
    # policy of processor_guard._backoff.
    try:
        from google.api_core import retry as gretry
    except ImportError:
        return None
    return gretry.Retry(
        predicate=_transient, initial=0.05, maximum=0.5, multiplier=2.0, timeout=timeout
    )


def is_unavailable(exc: BaseException) -> bool:
    """Errors that mean the store could not be reached or refused to answer."""
    return isinstance(exc, (*service_errors(), ConnectionError, OSError, TimeoutError))


def read_doc(doc_ref: Any, *, key: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> Any:
    """Read one document (retrying transient errors up to ``timeout``): its snapshot."""
    try:
        return doc_ref.get(retry=read_retry(timeout), timeout=timeout)
    except Exception as exc:
        if is_unavailable(exc):
            raise store_unavailable(exc, key, "read") from exc
        raise


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


def compare_and_set(
    client: Any,
    doc_ref: Any,
    decide: Callable[[Doc | None, dt.datetime], Doc | None],
    *,
    key: str | None = None,
    max_attempts: int = 50,
    base_delay: float = 0.005,
    max_delay: float = 0.25,
    deadline: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    rng: random.Random | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> CasOutcome:
    """Read the document, let ``decide(doc_or_None, read_time)`` return its new full
    state (or None to write nothing), and write it only if nobody wrote in between.

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
        snap = read_doc(doc_ref, key=key, timeout=timeout)
        before: Doc | None = snap.to_dict() if snap.exists else None
        read_time: dt.datetime = snap.read_time
        after = decide(_private_copy(before), read_time)
        if after is None or after == before:
            return CasOutcome(before, before, False, read_time, snap.update_time, attempt)
        try:
            if before is None:
                result = doc_ref.create(after, retry=None, timeout=timeout)
            else:
                option = client.write_option(last_update_time=snap.update_time)
                result = doc_ref.update(
                    update_payload(before, after), option=option, retry=None, timeout=timeout
                )
        except conflict_errors():
            out_of_time = give_up_at is not None and clock() >= give_up_at
            if attempt >= max_attempts or out_of_time:
                return CasOutcome(before, before, False, read_time, None, attempt, gave_up=True)
            if base_delay > 0:
                sleep(full_jitter(base_delay, max_delay, attempt - 1, rng))
            continue
        except Exception as exc:
            if is_unavailable(exc):
                raise store_unavailable(exc, key, "write") from exc
            raise
        return CasOutcome(before, after, True, read_time, result.update_time, attempt)
