"""DuckDB through a caller's connection, or a database file opened per operation."""

from __future__ import annotations

import contextlib
import datetime as dt
import re
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..._backoff import retry_while
from ..._values import normalise_type
from ...errors import ConfigError, StaleFence
from .base import FENCE_TABLE, Warehouse, fence_partition_key, notify_statement_observers
from .plan import Column, MergeOutcome, MergePlan
from .sql import count_statement, is_identifier, merge_statement

__all__ = ["WRITES_TABLE", "DuckDBWarehouse"]

#: One row per table, bumped by every MERGE so concurrent MERGEs into one table
#: conflict (and one retries), as they do on BigQuery.
WRITES_TABLE = "_processor_guard_writes"

_PARAMETER_OR_QUOTED = re.compile(r"('(?:[^']|'')*'|\"(?:[^\"]|\"\")*\")|@([A-Za-z_][A-Za-z0-9_]*)")
# Waiting for another process's lock on the database file: the first retry comes
# after up to 10 ms, later ones after at most 250 ms each.
_LOCK_WAIT_BASE = 0.01
_LOCK_WAIT_CAP = 0.25


def _is_lock_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "could not set lock" in text or "conflicting lock" in text


def _to_duck_sql(sql: str) -> str:
    """``@name`` parameters to DuckDB's ``$name``, leaving quoted text alone."""
    return _PARAMETER_OR_QUOTED.sub(lambda m: m.group(1) or f"${m.group(2)}", sql)


def _duck_value(value: object) -> object:
    """A value as DuckDB binds it: aware datetimes as naive UTC (TIMESTAMP columns)."""
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        return value.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return value


class _Placeholders:
    """Writes each partition value as a ``?`` placeholder and keeps it, in order, to bind."""

    def __init__(self) -> None:
        self.values: list[object] = []

    def __call__(self, value: object, type_name: str) -> str:
        self.values.append(_duck_value(value))
        return "?"


class _StatementLog:
    """Runs statements on one cursor, telling the observers and keeping what it sent."""

    def __init__(self, cursor: Any) -> None:
        self.cursor = cursor
        self.statements: list[str] = []

    def run(self, sql: str, args: Sequence[Any] | None = None, *, keep: bool = True) -> Any:
        notify_statement_observers(DuckDBWarehouse.engine, sql)
        if keep:
            self.statements.append(sql)
        return self.cursor.execute(sql, args) if args is not None else self.cursor.execute(sql)


class DuckDBWarehouse(Warehouse):
    """DuckDB through a caller's connection, or a database file opened per operation.

    Built from a path, every operation opens the file, does its work and closes it,
    so separate OS processes can take turns on one file. A busy file (another process
    holds DuckDB's lock) is a retryable conflict for ``safe_merge``; reads wait up to
    ``lock_timeout`` seconds for it.
    """

    engine = "duckdb"

    def __init__(
        self,
        conn_or_path: Any,
        *,
        lock_timeout: float = 30.0,
    ) -> None:
        super().__init__()
        self.lock_timeout = lock_timeout
        self.path: str | None = None
        self.conn: Any = None
        if isinstance(conn_or_path, (str, Path)):
            path = str(conn_or_path)
            if path.startswith("duckdb://"):
                path = path[len("duckdb://") :]
            if not path:
                raise ConfigError("DuckDB path is empty")
            self.path = path
        else:
            self.conn = conn_or_path
        self._fence_tables: set[str] = set()
        self._write_rows: set[tuple[str, str]] = set()

    @contextmanager
    def _cursor(self, *, wait: bool = True) -> Iterator[Any]:
        import duckdb

        if self.conn is not None:
            cur = self.conn.cursor()
            try:
                yield cur
            finally:
                cur.close()
            return
        path = self.path
        assert path is not None
        conn = retry_while(
            lambda: duckdb.connect(path),
            retryable=lambda exc: isinstance(exc, duckdb.Error) and _is_lock_error(exc),
            timeout=self.lock_timeout if wait else 0.0,
            base=_LOCK_WAIT_BASE,
            cap=_LOCK_WAIT_CAP,
        )
        try:
            yield conn
        finally:
            conn.close()

    # -- names ------------------------------------------------------------------------
    def _parts(self, table: str) -> list[str]:
        parts = table.split(".")
        if not 1 <= len(parts) <= 3 or not all(is_identifier(p) for p in parts):
            raise ConfigError(f"DuckDB table must be '[catalog.][schema.]table': {table!r}")
        return parts

    def quote_table(self, table: str) -> str:
        return ".".join(f'"{p}"' for p in self._parts(table))

    def canonical(self, table: str) -> str:
        """``schema.table`` (``main`` by default), or ``catalog.schema.table``."""
        parts = self._parts(table)
        return ".".join(parts if len(parts) > 1 else ["main", *parts])

    def fence_table(self, table: str) -> str:
        return ".".join([*self._parts(table)[:-1], FENCE_TABLE])

    def _writes_table(self, table: str) -> str:
        return ".".join([*self._parts(table)[:-1], WRITES_TABLE])

    # -- reading ----------------------------------------------------------------------
    def query(self, sql: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        values = {k: _duck_value(v) for k, v in (params or {}).items()}
        notify_statement_observers(self.engine, sql)
        with self._cursor() as cur:
            rel = cur.execute(_to_duck_sql(sql), values) if values else cur.execute(sql)
            if rel.description is None:
                return []
            names = [d[0] for d in rel.description]
            return [dict(zip(names, row, strict=True)) for row in rel.fetchall()]

    def _fetch_schema(self, table: str) -> tuple[Column, ...] | None:
        parts = self._parts(table)
        name = parts[-1]
        schema = parts[-2] if len(parts) >= 2 else "main"
        sql = (
            "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
            "WHERE table_schema = ? AND table_name = ?"
        )
        args: list[Any] = [schema, name]
        if len(parts) == 3:
            sql += " AND table_catalog = ?"
            args.append(parts[0])
        else:
            sql += " AND table_catalog = current_database()"
        sql += " ORDER BY ordinal_position"
        notify_statement_observers(self.engine, sql)
        with self._cursor() as cur:
            rows = cur.execute(sql, args).fetchall()
        if not rows:
            return None
        return tuple(
            Column(str(n), normalise_type(str(t)), str(nullable) == "NO", str(t))
            for n, t, nullable in rows
        )

    def classify(self, exc: BaseException) -> str:
        import duckdb

        if isinstance(exc, duckdb.TransactionException):
            return "conflict"
        if isinstance(exc, duckdb.Error) and _is_lock_error(exc):
            return "conflict"
        if isinstance(exc, duckdb.Error) and "conflict" in str(exc).lower():
            return "conflict"
        return "fatal"

    # -- writing ----------------------------------------------------------------------
    def merge(self, plan: MergePlan) -> MergeOutcome:
        with self._cursor(wait=False) as cur:
            return self._merge_with(_StatementLog(cur), plan)

    def _merge_with(self, log: _StatementLog, plan: MergePlan) -> MergeOutcome:
        self._ensure_bookkeeping(log, plan)
        src = f"pg_src_{uuid.uuid4().hex[:12]}"
        log.run(
            f"CREATE TEMP TABLE {src} ("
            + ", ".join(f"{c.name} {c.native_type or c.type}" for c in plan.columns)
            + ")"
        )
        try:
            log.run("BEGIN TRANSACTION")
            try:
                self._claim_and_fence(log, plan)
                _load_rows(log, src, plan)
                target = self.quote_table(plan.table)
                count_args = _Placeholders()
                count_sql = count_statement(
                    plan, target=target, source=src, partition_value_sql=count_args
                )
                matched, newer = log.run(count_sql, count_args.values).fetchone()
                merge_args = _Placeholders()
                merge_sql = merge_statement(
                    plan, target=target, source=src, partition_value_sql=merge_args
                )
                log.run(merge_sql, merge_args.values)
                log.run("COMMIT")
            except BaseException:
                log.run("ROLLBACK", keep=False)
                raise
        finally:
            log.run(f"DROP TABLE IF EXISTS {src}", keep=False)
        inserted = len(plan.rows) - int(matched)
        updated = int(newer)
        return MergeOutcome(
            inserted, updated, len(plan.rows) - inserted - updated,
            jobs=1, path="duckdb", statements=log.statements,
        )  # fmt: skip

    def _ensure_bookkeeping(self, log: _StatementLog, plan: MergePlan) -> None:
        """The fence table (when fenced) and the table's row in the writes table exist."""
        import duckdb

        fence_q = self.quote_table(self.fence_table(plan.table))
        if plan.fence is not None and fence_q not in self._fence_tables:
            log.run(
                f"CREATE TABLE IF NOT EXISTS {fence_q} (table_name VARCHAR NOT NULL, "
                "partition_value VARCHAR NOT NULL, fence BIGINT NOT NULL, updated_at TIMESTAMP, "
                "PRIMARY KEY (table_name, partition_value))"
            )
            self._fence_tables.add(fence_q)
        write_row = (self.quote_table(self._writes_table(plan.table)), self.canonical(plan.table))
        if write_row not in self._write_rows:
            writes_q, name = write_row
            log.run(
                f"CREATE TABLE IF NOT EXISTS {writes_q} (table_name VARCHAR PRIMARY KEY, "
                "merges BIGINT NOT NULL, updated_at TIMESTAMP)"
            )
            # ConstraintException: a concurrent writer inserted the row first; it exists.
            with contextlib.suppress(duckdb.ConstraintException):
                log.run(
                    f"INSERT INTO {writes_q} VALUES (?, 0, NULL) ON CONFLICT DO NOTHING", [name]
                )
            self._write_rows.add(write_row)

    def _claim_and_fence(self, log: _StatementLog, plan: MergePlan) -> None:
        """Inside the transaction: claim the table's write row, then check and record the fence.

        Claiming first makes a concurrent MERGE into the same table conflict here.
        """
        name = self.canonical(plan.table)
        log.run(
            f"UPDATE {self.quote_table(self._writes_table(plan.table))} "
            "SET merges = merges + 1, updated_at = now()::TIMESTAMP WHERE table_name = ?",
            [name],
        )
        if plan.fence is None:
            return
        fence_q = self.quote_table(self.fence_table(plan.table))
        parts = [fence_partition_key(v) for v in plan.partition_values]
        marks = ", ".join("?" for _ in parts) or "NULL"
        stored = log.run(
            f"SELECT MAX(fence) FROM {fence_q} WHERE table_name = ? "
            f"AND partition_value IN ({marks})",
            [name, *parts],
        ).fetchone()[0]
        if stored is not None and int(stored) > plan.fence:
            raise StaleFence(
                name, plan.fence, int(stored), parts[0] if len(parts) == 1 else tuple(parts)
            )
        for part in parts:
            log.run(
                f"INSERT INTO {fence_q} VALUES (?, ?, ?, now()::TIMESTAMP) "
                "ON CONFLICT (table_name, partition_value) DO UPDATE SET "
                "fence = excluded.fence, updated_at = excluded.updated_at",
                [name, part, plan.fence],
            )


def _load_rows(log: _StatementLog, src: str, plan: MergePlan) -> None:
    """The batch into the temporary source table, in chunks of about 2,000 values."""
    names = plan.column_names
    chunk = max(1, 2000 // max(len(names), 1))
    row_marks = "(" + ", ".join("?" for _ in names) + ")"
    for start in range(0, len(plan.rows), chunk):
        part = plan.rows[start : start + chunk]
        args = [_duck_value(row.get(n)) for row in part for n in names]
        sql = f"INSERT INTO {src} VALUES " + ", ".join(row_marks for _ in part)
        # Keeps only the first chunk's statement: the others differ only in length.
        log.run(sql, args, keep=start == 0)
