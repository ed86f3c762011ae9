"""DuckDB through a caller's connection, or a database file opened per operation."""

from __future__ import annotations

import contextlib
import datetime as dt
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..._backoff import retry_while
from ..._values import normalise_type
from ...errors import ConfigError
from .base import Warehouse, fence_partition_key, notify_statement_observers, plan_outcome
from .plan import Column, MergeOutcome, MergePlan
from .sql import (
    STALE_MARKER,
    Dialect,
    add_column_statements,
    duckdb_type,
    guard_table_ddl,
    is_identifier,
    write_steps,
)

__all__ = ["DUCKDB_DIALECT", "DuckDBWarehouse"]

_turns: dict[object, threading.Lock] = {}
_turns_lock = threading.Lock()
_PARAMETER_OR_QUOTED = re.compile(r"('(?:[^']|'')*'|\"(?:[^\"]|\"\")*\")|@([A-Za-z_][A-Za-z0-9_]*)")
# Waiting for another process's lock on the database file: the first retry comes
# after up to 10 ms, later ones after at most 250 ms each.
_LOCK_WAIT_BASE = 0.01
_LOCK_WAIT_CAP = 0.25


def _is_lock_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "could not set lock" in text or "conflicting lock" in text


def _is_short_read(exc: BaseException) -> bool:
    """DuckDB read a block past the file's end: seen once in CI, with eight processes
    taking turns on one file. The attempt's transaction did not commit (it is rolled
    back like any failed attempt) and the next attempt opens the file afresh."""
    return "could not read enough bytes from file" in str(exc).lower()


def _to_duck_sql(sql: str) -> str:
    """``@name`` parameters to DuckDB's ``$name``, leaving quoted text alone."""
    return _PARAMETER_OR_QUOTED.sub(lambda m: m.group(1) or f"${m.group(2)}", sql)


def _duck_value(value: object) -> object:
    """A value as DuckDB binds it: aware datetimes as naive UTC (TIMESTAMP columns),
    inside ARRAYs and STRUCTs too."""
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        return value.astimezone(dt.timezone.utc).replace(tzinfo=None)
    if isinstance(value, list):
        return [_duck_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _duck_value(v) for k, v in value.items()}
    return value


_DECIMAL = re.compile(r"^DECIMAL\((\d+),\s*(\d+)\)$", re.IGNORECASE)
_STRUCT = re.compile(r"^STRUCT\((.*)\)$", re.IGNORECASE | re.DOTALL)


def _column(name: str, native: str, required: bool) -> Column:
    """A Column from DuckDB's spelling of its type: a DECIMAL's precision and scale, a
    list's element type, a STRUCT's fields (nested too)."""
    native = native.strip()
    if native.endswith("[]"):
        element = _column(name, native[:-2], False)
        if element.repeated:
            raise ConfigError(f"column {name!r}: a list of lists ({native}) has no BigQuery type")
        return Column(name, element.type, required, native, element.precision,
                      element.scale, repeated=True, fields=element.fields)  # fmt: skip
    found = _DECIMAL.match(native)
    if found:
        return Column(name, "NUMERIC", required, native, int(found[1]), int(found[2]))
    struct = _STRUCT.match(native)
    if struct:
        fields = tuple(_column(*_split_field(part), False) for part in _top_level(struct[1]))
        return Column(name, "STRUCT", required, native, fields=fields)
    return Column(name, normalise_type(native), required, native)


def _top_level(text: str) -> list[str]:
    """``text`` split at the commas outside parentheses and quotes."""
    parts, depth, quoted, start = [], 0, False, 0
    for i, ch in enumerate(text):
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch == "(":
            depth += 1
        elif not quoted and ch == ")":
            depth -= 1
        elif not quoted and depth == 0 and ch == ",":
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def _split_field(part: str) -> tuple[str, str]:
    """A STRUCT field's (name, type) from ``name TYPE`` or ``"name" TYPE``."""
    if part.startswith('"'):
        end = part.index('"', 1)
        return part[1:end], part[end + 1 :]
    name, _, kind = part.partition(" ")
    return name, kind


def _duck_literal(text: str) -> str:
    """A DuckDB string literal; text spelling ``delete`` is split so no statement holds it."""
    pieces = re.split(r"(?<=[dD])(?=[eE][lL][eE][tT][eE])", text)
    quoted = ["'" + piece.replace("'", "''") + "'" for piece in pieces]
    return quoted[0] if len(quoted) == 1 else "(" + " || ".join(quoted) + ")"


#: DuckDB's spelling of the guard statements; partition values are bound as ``?``.
DUCKDB_DIALECT = Dialect(
    literal=_duck_literal,
    partition_value_sql=lambda value, type_name: "?",
    now="now()::TIMESTAMP",
    string_type="VARCHAR",
    int_type="BIGINT",
    column_type=duckdb_type,
)


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
        self._guards: set[str] = set()

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
        return tuple(_column(str(n), str(t), str(nullable) == "NO") for n, t, nullable in rows)

    def classify(self, exc: BaseException) -> str:
        import duckdb

        if isinstance(exc, duckdb.TransactionException):
            return "conflict"
        if isinstance(exc, duckdb.Error) and _is_lock_error(exc):
            return "conflict"
        if isinstance(exc, duckdb.IOException) and _is_short_read(exc):
            return "conflict"
        if isinstance(exc, duckdb.Error) and "conflict" in str(exc).lower():
            return "conflict"
        return "fatal"

    # -- writing ----------------------------------------------------------------------
    def add_columns(self, table: str, columns: Sequence[Column]) -> None:
        """``ALTER TABLE ... ADD COLUMN IF NOT EXISTS`` for each column, in one transaction."""
        statements = add_column_statements(self.quote_table(table), columns, DUCKDB_DIALECT)
        with self.write_turn(), self._cursor() as cur:
            log = _StatementLog(cur)
            log.run("BEGIN TRANSACTION")
            try:
                for sql in statements:
                    log.run(sql)
                log.run("COMMIT")
            except BaseException:
                with contextlib.suppress(Exception):
                    log.run("ROLLBACK", keep=False)
                raise

    def merge(self, plan: MergePlan, *, timeout: float | None = None) -> MergeOutcome:
        with self.write_turn(), self._cursor(wait=False) as cur:
            return self._merge_with(_StatementLog(cur), plan)

    def write_turn(self) -> Any:
        """This process's saves into one DuckDB database take turns.

        DuckDB 2.0.1 hangs when several threads' write transactions conflict (UPDATE,
        ROLLBACK and catalog reads wait on each other), so threads of one process do
        not overlap their saves; other processes are kept out by the file lock.
        """
        key: object = self.path if self.path is not None else id(self.conn)
        with _turns_lock:
            turn = _turns.setdefault(key, threading.Lock())
        return turn

    def ensure_guard(self, log: _StatementLog, table: str) -> str:
        """The quoted guard table of ``table``, created (with its row) if it does not exist.

        Looked up once per adapter; the DDL runs only where the table is missing.
        """
        guard = self.guard_table(table)
        if guard not in self._guards:
            if self._fetch_schema(guard) is None:
                ddl = guard_table_ddl(
                    self.quote_table(guard), DUCKDB_DIALECT, self.legacy_fences(table)
                )
                log.run(ddl)
            self._guards.add(guard)
        return self.quote_table(guard)

    def _merge_with(self, log: _StatementLog, plan: MergePlan) -> MergeOutcome:
        guard = self.ensure_guard(log, plan.table)
        source, source_args = _values_source(plan)
        steps = write_steps(
            plan,
            [fence_partition_key(v) for v in plan.partition_values],
            target=self.quote_table(plan.table),
            guard=guard,
            source=source,
            dialect=DUCKDB_DIALECT,
        )
        in_transaction = False
        matched = newer = 0
        missing: list[dict[str, Any]] = []
        try:
            for step in steps:
                in_transaction = in_transaction or step.kind == "begin"
                # The source comes before the partition values in every statement using it.
                uses_source = step.kind in ("missing", "count", "merge")
                args = [*(source_args if uses_source else ()), *map(_duck_value, step.args)]
                result = log.run(step.sql, args or None)
                if step.kind == "count":
                    matched, newer = (int(v) for v in result.fetchone())
                elif step.kind == "missing":
                    missing = [dict(zip(plan.keys, r, strict=True)) for r in result.fetchall()]
        except BaseException as exc:
            if in_transaction:
                with contextlib.suppress(Exception):  # already ended by the failure
                    log.run("ROLLBACK", keep=False)
            if STALE_MARKER in str(exc):
                raise self.stale_fence(plan) from exc
            raise
        return plan_outcome(plan, matched, newer, missing, jobs=1, path="duckdb",
                            statements=log.statements)  # fmt: skip


def _values_source(plan: MergePlan) -> tuple[str, list[Any]]:
    """The batch as one typed list-of-structs parameter, and that parameter.

    Inline rather than a temporary table: DuckDB 2.0 can hang when threads create and
    fill temporary tables while other transactions conflict.
    """
    fields = ", ".join(f"{c.name} {duckdb_type(c)}" for c in plan.columns)
    names = ", ".join(plan.column_names)
    # One level of UNNEST on the row struct: a recursive one would unnest ARRAY and
    # STRUCT columns too.
    rows_sql = f"(SELECT UNNEST(?::STRUCT({fields})[]) AS pg_r)"
    sql = f"(SELECT {names} FROM (SELECT UNNEST(pg_r) FROM {rows_sql}))"
    rows = [{c.name: _duck_value(row.get(c.name)) for c in plan.columns} for row in plan.rows]
    return sql, [rows]
