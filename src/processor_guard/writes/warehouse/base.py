"""The interface every warehouse adapter implements, and the statement observers."""

from __future__ import annotations

import abc
import datetime as dt
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..._values import coerce
from ...errors import ConfigError, InvalidRows, StaleFence
from .plan import Column, MergeOutcome, MergePlan
from .sql import GUARD_SUFFIX, LEGACY_FENCE_TABLE, TABLE_GUARD_ROW, check_identifier

__all__ = [
    "GUARD_SUFFIX",
    "Warehouse",
    "add_statement_observer",
    "fence_partition_key",
    "notify_statement_observers",
    "plan_outcome",
]

_observers: list[Callable[[str, str], None]] = []


def add_statement_observer(observer: Callable[[str, str], None]) -> Callable[[], None]:
    """Call ``observer(engine, sql)`` for every statement the adapters send; returns a remover."""
    _observers.append(observer)
    return lambda: _observers.remove(observer) if observer in _observers else None


def notify_statement_observers(engine: str, sql: str) -> None:
    """Tell every observer about one statement an adapter is about to send."""
    for observer in list(_observers):
        observer(engine, sql)


def fence_partition_key(value: object) -> str:
    """How a partition value is stored in the guard table (ISO text for dates)."""
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    if value is None:
        raise InvalidRows("partition value is None")
    text = str(value)
    if text == TABLE_GUARD_ROW:
        raise InvalidRows(f"partition value {text!r} is reserved by the guard table")
    return text


def plan_outcome(
    plan: MergePlan,
    matched: int,
    newer: int,
    missing: list[dict[str, Any]],
    **details: Any,
) -> MergeOutcome:
    """What a save did, from the keys it found stored (``matched``) and updated (``newer``)."""
    inserted = 0 if plan.update_only else len(plan.rows) - matched
    return MergeOutcome(inserted, newer, matched - newer, missing_keys=missing, **details)


class Warehouse(abc.ABC):
    """What processor_guard needs from a warehouse engine."""

    engine: str = ""

    def __init__(self) -> None:
        self._schemas: dict[str, tuple[Column, ...]] = {}
        self._schema_lock = threading.Lock()

    # -- names ------------------------------------------------------------------------
    @abc.abstractmethod
    def quote_table(self, table: str) -> str:
        """The table name quoted for this engine's SQL."""

    @abc.abstractmethod
    def canonical(self, table: str) -> str:
        """The table's fully qualified name: how the fence table records it."""

    def guard_table(self, table: str) -> str:
        """``<table>__pg_guard``: the guard table of ``table``, next to it.

        One per target table, so saves into different tables never conflict.
        """
        return self.canonical(table) + GUARD_SUFFIX

    def legacy_fences(self, table: str) -> tuple[str, str] | None:
        """The quoted ``_processor_guard_fences`` table next to ``table`` (where versions
        before issue #11 kept fences) and ``table``'s name in it; None if there is none."""
        legacy = self.canonical(table).rsplit(".", 1)[0] + "." + LEGACY_FENCE_TABLE
        if self._fetch_schema(legacy) is None:
            return None
        return self.quote_table(legacy), self.canonical(table)

    # -- reading ----------------------------------------------------------------------
    @abc.abstractmethod
    def query(self, sql: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """Run one statement with ``@name`` parameters; rows as dicts."""

    @abc.abstractmethod
    def _fetch_schema(self, table: str) -> tuple[Column, ...] | None:
        """The table's columns, or None when it does not exist."""

    def schema(self, table: str, *, refresh: bool = False) -> tuple[Column, ...]:
        """The table's columns (fetched once per warehouse, cached); ConfigError if missing."""
        with self._schema_lock:
            if refresh or table not in self._schemas:
                columns = self._fetch_schema(table)
                if columns is None:
                    raise ConfigError(f"table {table!r} does not exist")
                self._schemas[table] = columns
            return self._schemas[table]

    def table_exists(self, table: str) -> bool:
        """Whether the table exists (not cached)."""
        return self._fetch_schema(table) is not None

    def _partition_filter(
        self, table: str, partition_field: str | None, value: object
    ) -> tuple[str, dict[str, Any]]:
        if partition_field is None:
            return "", {}
        check_identifier(partition_field)
        columns = {c.name: c for c in self.schema(table)}
        if partition_field not in columns:
            raise ConfigError(f"table {table!r} has no column {partition_field!r}")
        try:
            typed = coerce(value, columns[partition_field].type)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"partition value {value!r}: {exc}") from exc
        return f" WHERE {partition_field} = @pg_partition", {"pg_partition": typed}

    def count_rows(
        self, table: str, partition_field: str | None = None, value: object = None
    ) -> int:
        """Rows in the table, or in one partition value when ``partition_field`` is given."""
        where, params = self._partition_filter(table, partition_field, value)
        rows = self.query(f"SELECT COUNT(*) AS n FROM {self.quote_table(table)}{where}", params)
        return int(rows[0]["n"])

    def duplicate_keys(
        self,
        table: str,
        keys: Sequence[str],
        partition_field: str | None = None,
        value: object = None,
        *,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Keys held by more than one row: key columns plus ``row_count``, worst first."""
        if isinstance(keys, str) or not keys:
            raise ConfigError(f"keys must be a non-empty sequence of columns: {keys!r}")
        cols = ", ".join(check_identifier(k) for k in keys)
        where, params = self._partition_filter(table, partition_field, value)
        sql = (
            f"SELECT {cols}, COUNT(*) AS row_count FROM {self.quote_table(table)}{where} "
            f"GROUP BY {cols} HAVING COUNT(*) > 1 ORDER BY row_count DESC, {cols} "
            f"LIMIT {int(limit)}"
        )
        return self.query(sql, params)

    def read_fence(self, table: str, partition_value: object) -> int | None:
        """The highest fence claimed for a table's partition value, or None."""
        guard = self.guard_table(table)
        if self._fetch_schema(guard) is None:
            return None
        rows = self.query(
            f"SELECT MAX(fence) AS fence FROM {self.quote_table(guard)} WHERE partition_value = @p",
            {"p": fence_partition_key(partition_value)},
        )
        value = rows[0]["fence"] if rows else None
        return None if value is None else int(value)

    # -- writing ----------------------------------------------------------------------
    @abc.abstractmethod
    def merge(self, plan: MergePlan, *, timeout: float | None = None) -> MergeOutcome:
        """One save attempt of a validated plan (no retries here), within ``timeout`` seconds."""

    @abc.abstractmethod
    def add_columns(self, table: str, columns: Sequence[Column]) -> None:
        """Adds NULLABLE ``columns`` the table does not have yet (never changes one it has)."""

    @abc.abstractmethod
    def classify(self, exc: BaseException) -> str:
        """'conflict' (safe to retry), 'transient' (safe to retry) or 'fatal'."""

    def stale_fence(self, plan: MergePlan) -> StaleFence:
        """The StaleFence for a save refused by a newer fence, naming the newest one claimed."""
        current = None
        for value in plan.partition_values:
            stored = self.read_fence(plan.table, value)
            if stored is not None and (current is None or stored > current):
                current = stored
        return StaleFence(
            self.canonical(plan.table),
            int(plan.fence or 0),
            current,
            plan.partition_values[0] if len(plan.partition_values) == 1 else plan.partition_values,
        )

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release what the adapter opened itself (never a caller's client)."""
