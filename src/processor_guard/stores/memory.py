"""In-process lease store: thread-safe, for unit tests of code that uses the library."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .base import AcquireResult, Holder, LeaseStore, ReleaseWaiter, RenewRequest, fence_seed

__all__ = ["MemoryStore"]


@dataclass
class _Record:
    fence: int
    owner: str | None = None
    expires_at: float = 0.0


class _ConditionWaiter(ReleaseWaiter):
    def __init__(self, store: MemoryStore) -> None:
        self._store = store
        self._seen = store._releases

    def wait(self, timeout: float) -> bool:
        with self._store._cond:
            woke = self._store._cond.wait_for(
                lambda: self._store._releases != self._seen, timeout=max(timeout, 0.0)
            )
            self._seen = self._store._releases
            return bool(woke)


class MemoryStore(LeaseStore):
    """Leases in a dict guarded by a lock; one process only, nothing survives it.

    ``clock`` is the store's notion of "server time" (seconds); inject one to test
    expiry without sleeping.
    """

    scheme = "memory"
    batch_renewal = True

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._records: dict[str, _Record] = {}
        self._cond = threading.Condition()
        self._releases = 0

    def _live(self, rec: _Record | None, now: float) -> bool:
        return rec is not None and rec.owner is not None and rec.expires_at > now

    def try_acquire(self, key: str, owner: str, ttl: float) -> AcquireResult:
        with self._cond:
            now = self._clock()
            rec = self._records.get(key)
            if rec is not None and self._live(rec, now):
                assert rec.owner is not None
                return AcquireResult(
                    False, holder=Holder(key, rec.owner, rec.fence, rec.expires_at - now)
                )
            fence = max(rec.fence + 1 if rec else 0, fence_seed(now))
            self._records[key] = _Record(fence, owner, now + ttl)
            return AcquireResult(True, fence=fence)

    def renew(self, key: str, owner: str, fence: int, ttl: float) -> bool:
        with self._cond:
            now = self._clock()
            rec = self._records.get(key)
            if rec is None or not self._live(rec, now) or (rec.owner, rec.fence) != (owner, fence):
                return False
            rec.expires_at = now + ttl
            return True

    def renew_many(self, leases: Sequence[RenewRequest]) -> list[bool | Exception]:
        with self._cond:  # re-entrant: renew takes it again
            return super().renew_many(leases)

    def release(self, key: str, owner: str, fence: int) -> bool:
        with self._cond:
            rec = self._records.get(key)
            if rec is None or (rec.owner, rec.fence) != (owner, fence):
                return False
            rec.owner = None
            rec.expires_at = 0.0
            self._releases += 1
            self._cond.notify_all()
            return True

    def holder(self, key: str) -> Holder | None:
        with self._cond:
            now = self._clock()
            rec = self._records.get(key)
            if rec is None or not self._live(rec, now):
                return None
            assert rec.owner is not None
            return Holder(key, rec.owner, rec.fence, rec.expires_at - now)

    def holders(self) -> list[Holder]:
        with self._cond:
            keys = sorted(self._records)
        found = (self.holder(k) for k in keys)
        return [h for h in found if h is not None]

    def break_lease(self, key: str) -> int:
        with self._cond:
            now = self._clock()
            rec = self._records.get(key)
            fence = max(rec.fence + 1 if rec else 0, fence_seed(now))
            self._records[key] = _Record(fence)
            self._releases += 1
            self._cond.notify_all()
            return fence

    def release_waiter(self, key: str) -> ReleaseWaiter:
        return _ConditionWaiter(self)

    def __repr__(self) -> str:
        return "<MemoryStore>"
