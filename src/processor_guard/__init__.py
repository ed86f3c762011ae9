"""processor_guard: keep data-pipeline processors from corrupting their output when
they run twice at once.

Names are loaded on first use, so ``import processor_guard`` stays cheap and the
Redis, Firestore and BigQuery clients are imported only by the code that needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .completion.reconcile import ReconcileReport
    from .completion.state import CompletionState
    from .completion.tracker import CompletionTracker
    from .errors import (
        ConfigError,
        GuardError,
        InvalidRows,
        LeaseLost,
        LockBusy,
        MergeFailed,
        MissingDependency,
        StaleFence,
        StoreUnavailable,
    )
    from .leases import (
        Lease,
        LeaseHooks,
        bind_leases,
        current_lease,
        date_lock,
        guarded,
        register_hooks,
    )
    from .outcomes import Outcomes
    from .stores import (
        FirestoreStore,
        LeaseStore,
        MemoryStore,
        RedisStore,
        SQLiteStore,
        open_store,
    )
    from .stores.aio import open_async_store
    from .writes.dedup import TABLES, DedupReport, TableSpec, dedupe_rows
    from .writes.inspect import find_duplicates
    from .writes.merge import MergeResult, asafe_merge, safe_merge

__version__ = "0.1.0"

_EXPORTS = {
    # leases
    "date_lock": "leases",
    "DateLock": "leases",
    "guarded": "leases",
    "current_lease": "leases",
    "bind_leases": "leases",
    "register_hooks": "leases",
    "Lease": "leases",
    "LeaseHooks": "leases",
    # stores
    "open_store": "stores",
    "open_async_store": "stores.aio",
    "LeaseStore": "stores",
    "MemoryStore": "stores",
    "SQLiteStore": "stores",
    "RedisStore": "stores",
    "FirestoreStore": "stores",
    # errors
    "GuardError": "errors",
    "ConfigError": "errors",
    "LockBusy": "errors",
    "LeaseLost": "errors",
    "StoreUnavailable": "errors",
    "InvalidRows": "errors",
    "StaleFence": "errors",
    "MergeFailed": "errors",
    "MissingDependency": "errors",
    # dedup
    "dedupe_rows": "writes.dedup",
    "DedupReport": "writes.dedup",
    "TableSpec": "tables",
    "TABLES": "tables",
    # merge
    "safe_merge": "writes.merge",
    "asafe_merge": "writes.merge",
    "MergeResult": "writes.merge",
    # services running several processors per message
    "Outcomes": "outcomes",
    # completion and health
    "CompletionTracker": "completion.tracker",
    "CompletionState": "completion.state",
    "ReconcileReport": "completion.reconcile",
    "find_duplicates": "writes.inspect",
}

__all__ = [
    "TABLES",
    "CompletionState",
    "CompletionTracker",
    "ConfigError",
    "DateLock",
    "DedupReport",
    "FirestoreStore",
    "GuardError",
    "InvalidRows",
    "Lease",
    "LeaseHooks",
    "LeaseLost",
    "LeaseStore",
    "LockBusy",
    "MemoryStore",
    "MergeFailed",
    "MergeResult",
    "MissingDependency",
    "Outcomes",
    "ReconcileReport",
    "RedisStore",
    "SQLiteStore",
    "StaleFence",
    "StoreUnavailable",
    "TableSpec",
    "asafe_merge",
    "bind_leases",
    "current_lease",
    "date_lock",
    "dedupe_rows",
    "find_duplicates",
    "guarded",
    "open_async_store",
    "open_store",
    "register_hooks",
    "safe_merge",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'processor_guard' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    # Only the public API: not the helpers this module imports for its lazy loading.
    return sorted([*__all__, "__version__"])
