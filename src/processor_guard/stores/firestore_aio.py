"""Leases in Firestore on ``google.cloud.firestore.AsyncClient``: FirestoreStore's
documents and compare-and-set, awaited.

Every decision (what to write given the read document, which precondition guards it,
what a write with no answer means) lives in ``firestore_store.FirestoreLeaseSteps``;
this module only awaits its Firestore calls, so sync and async holders of a key
exclude each other. A cancelled acquire or release is noted like one whose write had
no answer: the owner's next identical call answers for it.

Google's async client has no snapshot listeners: waiters poll (a short jittered
sleep between acquisition attempts).
"""

from __future__ import annotations

from typing import TypeVar

from .aio import AsyncLeaseStore, AsyncReleaseWaiter
from .base import AcquireResult, Holder, check_key_bytes
from .firestore_cas import (
    Steps,
    read_retry,
    run_steps_async,
    unavailable_raised_as_store_error,
)
from .firestore_store import FirestoreCollection, FirestoreStore

__all__ = ["AsyncFirestoreStore"]

T = TypeVar("T")


class AsyncFirestoreStore(FirestoreCollection, AsyncLeaseStore):
    """Leases in a Firestore collection through a ``google.cloud.firestore.AsyncClient``;
    the arguments are FirestoreCollection's (waiters poll whatever ``listen`` says)."""

    scheme = "firestore"
    async_client = True

    async def _run(self, steps: Steps[T]) -> T:
        return await run_steps_async(steps, self.client, timeout=self.timeout)

    def check_key(self, key: str) -> None:
        check_key_bytes(key, FirestoreStore.max_key_bytes, self.scheme)

    async def try_acquire(
        self, key: str, owner: str, ttl: float, *, waiter: AsyncReleaseWaiter | None = None
    ) -> AcquireResult:
        return await self._run(self.steps.try_acquire(key, owner, ttl))

    async def renew(self, key: str, owner: str, fence: int, ttl: float) -> bool:
        return await self._run(self.steps.renew(key, owner, fence, ttl))

    async def release(self, key: str, owner: str, fence: int) -> bool:
        return await self._run(self.steps.release(key, owner, fence))

    async def holder(self, key: str) -> Holder | None:
        return await self._run(self.steps.holder(key))

    async def holders(self) -> list[Holder]:
        query = self.steps.live_query()
        retry = read_retry(self.timeout, asynchronous=True)
        with unavailable_raised_as_store_error(None, f"listing of {self.collection!r}"):
            snaps = [s async for s in query.stream(retry=retry, timeout=self.timeout)]
        return self.steps.holders_of(snaps)

    async def break_lease(self, key: str) -> int:
        return await self._run(self.steps.break_lease(key))

    async def aclose(self) -> None:
        if self.owns_client:
            self.client.close()
