"""Reading and changing completion documents, one optimistic compare-and-set per change.

Why optimistic writes rather than Firestore transactions: a server-client transaction
that reads then writes one document takes a pessimistic lock, and two of them on the
same document wait for the lock timeout (about 2 s in the emulator) before one is
aborted; a burst of completion messages then takes minutes. Every write here instead
reads the document, computes the new fields, and writes them in a single request
guarded by the document's ``update_time`` (``create()`` when it does not exist yet).
Each attempt is atomic, nobody waits on a lock, and a concurrent change makes the
write fail its precondition, so the attempt is recomputed from a fresh read after a
jittered backoff.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .._docapi import delete_field, server_timestamp
from ..errors import StoreUnavailable

__all__ = [
    "DocumentCollection",
    "Mutation",
    "Plan",
    "as_datetime",
]


def _resolve_sentinels(value: Any, when: Any) -> Any:
    if value is server_timestamp():
        return when
    if isinstance(value, dict):
        return {k: _resolve_sentinels(v, when) for k, v in value.items()}
    return value


def as_datetime(value: Any) -> dt.datetime | None:
    """A stored timestamp field as a datetime; None when it holds anything else."""
    return value if isinstance(value, dt.datetime) else None


@dataclass
class Plan:
    """What one mutation decided: the fields to write (None: write nothing) and a result
    for its caller."""

    updates: dict[str, Any] | None
    result: Any = None


#: ``mutate(fields, exists, read_time)`` decides a change from the document as read.
Mutation = Callable[[dict[str, Any], bool, Any], Plan]


@dataclass(frozen=True)
class DocumentCollection:
    """One collection of completion documents, one document per game date."""

    client: Any
    name: str
    max_attempts: int
    rpc_timeout: float
    sleep: Callable[[float], None] = time.sleep

    def ref(self, day: str) -> Any:
        """The document reference of ``day`` (``YYYY-MM-DD``)."""
        return self.client.collection(self.name).document(day)

    def read(self, day: str) -> tuple[dict[str, Any], bool]:
        """The day's fields (empty when there is no document) and whether it exists."""
        from ..stores.firestore_cas import read_doc

        ref = self.ref(day)
        snap = read_doc(ref, key=ref.path, timeout=self.rpc_timeout)
        return (snap.to_dict() if snap.exists else {}), bool(snap.exists)

    def update(self, day: str, mutate: Mutation) -> tuple[Plan, dict[str, Any], Any]:
        """One atomic compare-and-set of the day's document (see the module docstring).

        ``mutate(data, exists, read_time)`` returns the fields to change (DELETE_FIELD
        removes one) or None; it may run once per attempt. Returns the last attempt's
        plan, the document as it is after this call (server timestamps replaced by the
        write's update time) and the read's server time.
        """
        from ..stores.firestore_cas import compare_and_set

        ref = self.ref(day)
        plans: list[Plan] = []
        deleted = delete_field()

        def decide(doc: dict[str, Any] | None, read_time: Any) -> dict[str, Any] | None:
            data = doc or {}
            plan = mutate(data, doc is not None, read_time)
            plans[:] = [plan]
            if plan.updates is None:
                return None
            new = dict(data)
            for k, v in plan.updates.items():
                if v is deleted:
                    new.pop(k, None)
                else:
                    new[k] = v
            return new

        outcome = compare_and_set(
            self.client,
            ref,
            decide,
            key=ref.path,
            max_attempts=self.max_attempts,
            base_delay=0.005,
            max_delay=0.25,
            sleep=self.sleep,
            timeout=self.rpc_timeout,
        )
        if outcome.gave_up:
            raise StoreUnavailable(
                f"completion document {ref.path}: lost the race {outcome.attempts} times in a "
                "row to concurrent writers",
                key=ref.path,
            )
        after = outcome.after or {}
        if outcome.written:
            after = _resolve_sentinels(after, outcome.update_time)
        return plans[-1], after, outcome.read_time
