"""The interface every lease store implements, and the fence-seeding rule they share."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import ClassVar

from ..errors import ConfigError

__all__ = [
    "AcquireResult",
    "Holder",
    "LeaseStore",
    "PollingWaiter",
    "ReleaseWaiter",
    "RenewRequest",
    "check_key_bytes",
    "fence_seed",
]


def fence_seed(server_time_seconds: float) -> int:
    """Lowest fence a store may hand out when it has no record of a key: server time in µs.

    A store that lost its records (Redis restarted without data, a Firestore TTL
    clean-up) restarts its counter here. No store hands out more than one fence per
    microsecond, so a seed taken later is above every fence handed out before.
    """
    return int(server_time_seconds * 1_000_000)


def check_key_bytes(key: str, max_bytes: int, store_name: str) -> None:
    """ConfigError when ``key`` is longer (UTF-8 bytes) than a store can hold."""
    size = len(key.encode())
    if size > max_bytes:
        raise ConfigError(
            f"scope is too long for the {store_name} store: "
            f"lease key {key[:40]!r}... is {size} bytes, at most {max_bytes}"
        )


@dataclass(frozen=True)
class Holder:
    """Who holds a key, with which fence, and how long the store gives them (seconds)."""

    key: str
    owner: str
    fence: int
    remaining: float | None


@dataclass(frozen=True)
class AcquireResult:
    """Outcome of one acquisition attempt: a fence when acquired, the holder when busy."""

    acquired: bool
    fence: int | None = None
    holder: Holder | None = None


class ReleaseWaiter(ABC):
    """Waits for a release notice on one key; used between acquisition attempts."""

    def __enter__(self) -> ReleaseWaiter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @abstractmethod
    def wait(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds; True when woken by a release notice."""

    def close(self) -> None:  # noqa: B027 - optional hook; most waiters hold nothing
        """Stop listening for release notices."""


class PollingWaiter(ReleaseWaiter):
    """A waiter for stores without release notices: it simply sleeps the timeout."""

    def __init__(self, sleep: Callable[[float], None] = time.sleep) -> None:
        self._sleep = sleep

    def wait(self, timeout: float) -> bool:
        if timeout > 0:
            self._sleep(timeout)
        return False


#: One lease to renew: ``(key, owner, fence, ttl)``.
RenewRequest = tuple[str, str, int, float]


class LeaseStore(ABC):
    """A place that hands out leases with fences; one record per key.

    A lease is identified by ``(owner, fence)``: renew and release act only when both
    match what the store holds, so a stale holder can never touch its successor.
    Every method raises :class:`~processor_guard.errors.StoreUnavailable` when the
    store cannot be reached; none of them reads "unreachable" as "held" or "free".
    """

    scheme: ClassVar[str] = ""
    #: True when ``renew_many`` renews a batch in one round trip; the renewal keeper
    #: then renews a process's leases on this store that are due together in one call.
    batch_renewal: bool = False
    #: The longest key (UTF-8 bytes) the store can hold; keys are ``scope:YYYY-MM-DD``.
    max_key_bytes: ClassVar[int] = 1024

    def check_key(self, key: str) -> None:
        """ConfigError when ``key`` is longer than this store can hold (nothing written)."""
        check_key_bytes(key, self.max_key_bytes, self.scheme or type(self).__name__)

    @abstractmethod
    def try_acquire(self, key: str, owner: str, ttl: float) -> AcquireResult:
        """Take ``key`` for ``ttl`` seconds if free or expired; the new fence is strictly
        greater than every fence handed out for ``key`` before."""

    @abstractmethod
    def renew(self, key: str, owner: str, fence: int, ttl: float) -> bool:
        """Extend the lease to ``ttl`` seconds from now; False when it is no longer ours."""

    def renew_many(self, leases: Sequence[RenewRequest]) -> list[bool | Exception]:
        """Renew several leases; one answer per lease, in order: True when renewed, False
        when no longer ours, or the exception renewing that one raised. One lease's
        failure is never another's; this default renews them one by one. Raises
        StoreUnavailable only when the store cannot be reached for any of them."""
        answers: list[bool | Exception] = []
        for key, owner, fence, ttl in leases:
            try:
                answers.append(self.renew(key, owner, fence, ttl))
            except Exception as exc:
                answers.append(exc)
        return answers

    @abstractmethod
    def release(self, key: str, owner: str, fence: int) -> bool:
        """Free the lease if it is still ours; idempotent; True when this call freed it."""

    @abstractmethod
    def holder(self, key: str) -> Holder | None:
        """The live holder of ``key``, or None when free or expired."""

    @abstractmethod
    def holders(self) -> list[Holder]:
        """Every live holder in this store."""

    @abstractmethod
    def break_lease(self, key: str) -> int:
        """Free ``key`` whoever holds it and raise its fence; returns the raised fence.

        The old holder's writes carry a lower fence from then on and are refused.
        """

    def release_waiter(self, key: str) -> ReleaseWaiter:
        """A waiter woken when ``key`` is released (stores without notices poll)."""
        return PollingWaiter()

    def close(self) -> None:  # noqa: B027 - optional hook, most stores hold nothing
        """Release client resources owned by this store."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"
