"""The single error hierarchy of processor_guard, rooted in :class:`GuardError`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = [
    "ConfigError",
    "GuardError",
    "InvalidRows",
    "LeaseLost",
    "LockBusy",
    "MergeFailed",
    "MissingDependency",
    "StaleFence",
    "StoreUnavailable",
]


class GuardError(Exception):
    """Base class of every error raised by processor_guard."""


class ConfigError(GuardError, ValueError):
    """A bad argument, URL or environment setting."""


class MissingDependency(GuardError, ImportError):
    """A feature needs a package from an extra that is not installed.

    The message names the extra to install, e.g. ``pip install 'processor-guard[redis]'``.
    """

    def __init__(self, feature: str, package: str, extra: str) -> None:
        self.feature = feature
        self.package = package
        self.extra = extra
        super().__init__(
            f"{feature} needs the {package!r} package, which is not installed: "
            f"pip install 'processor-guard[{extra}]'",
            name=package,
        )


class StoreUnavailable(GuardError):
    """The lease store could not be reached; never read as "held" or "free"."""

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class LockBusy(GuardError):
    """Another owner holds the lease and the wait ran out."""

    def __init__(
        self, key: str, holder: str | None, remaining: float | None, *, reason: str = ""
    ) -> None:
        self.key = key
        self.holder = holder
        self.remaining = remaining
        left = "unknown" if remaining is None else f"{remaining:.1f}s"
        detail = f": {reason}" if reason else ""
        super().__init__(f"lock {key!r} is held by {holder!r} ({left} left){detail}")


class LeaseLost(GuardError):
    """The lease expired, was taken over or could not be renewed in time."""

    def __init__(self, key: str, owner: str, fence: int, reason: str = "") -> None:
        self.key = key
        self.owner = owner
        self.fence = fence
        self.reason = reason
        detail = f": {reason}" if reason else ""
        super().__init__(f"lease {key!r} (owner {owner!r}, fence {fence}) lost{detail}")


class InvalidRows(GuardError, ValueError):
    """Rows that cannot be written; names the row index and column where known."""

    def __init__(
        self, message: str, *, row_index: int | None = None, column: str | None = None
    ) -> None:
        self.row_index = row_index
        self.column = column
        super().__init__(message)


class StaleFence(GuardError):
    """A write carried a fence older than one already recorded for the partition."""

    def __init__(
        self, table: str, fence: int, current: int | None = None, partition: object = None
    ) -> None:
        self.table = table
        self.fence = fence
        self.current = current
        self.partition = partition
        newer = "a newer one" if current is None else str(current)
        super().__init__(
            f"fence {fence} is stale for {table!r} (partition {partition!r}): "
            f"{newer} was already recorded"
        )


class MergeFailed(GuardError):
    """A MERGE kept failing on retryable errors until attempts or deadline ran out."""

    def __init__(
        self,
        table: str,
        attempts: int,
        last_error: BaseException | None,
        rows: Sequence[dict[str, Any]],
        replay_path: str | None = None,
        *,
        replay_error: str | None = None,
    ) -> None:
        self.table = table
        self.attempts = attempts
        self.last_error = last_error
        self.rows = list(rows)
        #: Where the batch was saved as NDJSON (a path, or what a ``replay_to`` callable
        #: returned); None when saving it failed (``replay_error`` says why).
        self.replay_path = replay_path
        self.replay_error = replay_error
        where = f"; batch saved to {replay_path}" if replay_path else ""
        if replay_error:
            where = f"; the batch could not be saved ({replay_error})"
        super().__init__(
            f"MERGE into {table!r} failed after {attempts} attempt(s): {last_error}{where}"
        )
