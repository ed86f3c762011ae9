"""Warehouse adapters: one small interface that BigQuery and DuckDB both implement.

``as_warehouse(obj)`` picks the adapter: a ``google.cloud.bigquery.Client`` gives
:class:`BigQueryWarehouse`; a ``duckdb`` connection, a database path (``str`` or
``Path``) or ``"duckdb:///path"`` gives :class:`DuckDBWarehouse`; a
:class:`Warehouse` is returned as is.

Queries take named parameters written ``@name`` on both engines. Nothing here ever
sends a ``DELETE``: writes are MERGEs, staging tables are dropped, not emptied.
"""

from __future__ import annotations

import abc
import contextlib
import datetime as dt
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from ..._values import SUPPORTED_TYPES, coerce, normalise_type, to_json_value
from ...errors import ConfigError, InvalidRows, StaleFence

__all__ = [
    "FENCE_TABLE",
    "BigQueryWarehouse",
    "Column",
    "DuckDBWarehouse",
    "MergeOutcome",
    "MergePlan",
    "Warehouse",
    "add_statement_observer",
    "as_warehouse",
    "render_string_literal",
]

log = logging.getLogger(__name__)

#: Name of the fence table kept next to each fenced target table (same dataset/schema).
FENCE_TABLE = "_processor_guard_fences"
#: DuckDB only: one row per table, bumped by every MERGE so concurrent MERGEs into one
#: table conflict (and one retries), as they do on BigQuery.
WRITES_TABLE = "_processor_guard_writes"
#: Marker in the SQL error raised by a fenced BigQuery script when the fence is stale.
STALE_MARKER = "processor_guard stale fence"

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TABLE_PART = re.compile(r"^[A-Za-z0-9_\-:.]+$")


_observers: list[Callable[[str, str], None]] = []


def add_statement_observer(observer: Callable[[str, str], None]) -> Callable[[], None]:
    """Call ``observer(engine, sql)`` for every statement the adapters send; returns a remover."""
    _observers.append(observer)
    return lambda: _observers.remove(observer) if observer in _observers else None


def _observe(engine: str, sql: str) -> None:
    for observer in list(_observers):
        observer(engine, sql)


@dataclass(frozen=True)
class Column:
    """A table column: name, BigQuery type name (normalised) and whether it is REQUIRED."""

    name: str
    type: str
    required: bool = False
    native_type: str = ""


@dataclass
class MergePlan:
    """One validated, deduplicated batch ready to MERGE (built by ``safe_merge``)."""

    table: str
    keys: tuple[str, ...]
    partition_field: str | None
    columns: tuple[Column, ...]
    rows: list[dict[str, Any]]
    partition_values: tuple[Any, ...]
    fence: int | None = None
    order_by: str | None = None
    staging_threshold_bytes: int = 4_000_000
    staging_ttl: dt.timedelta = dt.timedelta(hours=1)

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @property
    def update_columns(self) -> tuple[str, ...]:
        """Columns the batch carries that are not keys: the only ones UPDATE touches."""
        return tuple(c.name for c in self.columns if c.name not in self.keys)


@dataclass
class MergeOutcome:
    """What one MERGE attempt did."""

    inserted: int
    updated: int
    skipped: int = 0
    jobs: int = 0
    bytes_sent: int = 0
    path: str = ""
    statements: list[str] = field(default_factory=list)


def _check_ident(name: str, what: str = "column") -> str:
    if not _IDENT.match(name):
        raise ConfigError(f"{what} name {name!r} is not a plain identifier")
    return name


def _escape_literal(text: str) -> str:
    out = ["'"]
    for ch in text:
        code = ord(ch)
        if ch == "\\":
            out.append("\\\\")
        elif ch == "'":
            out.append("\\'")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif code < 0x20 or code == 0x7F or 0xD800 <= code <= 0xDFFF:
            raise ValueError(f"character U+{code:04X} cannot go into a SQL literal")
        else:
            out.append(ch)
    out.append("'")
    return "".join(out)


_DELETE_WORD = re.compile(r"(?<=[dD])(?=[eE][lL][eE][tT][eE])")


def render_string_literal(text: str) -> str:
    """A single-quoted BigQuery string literal that reads back as ``text``.

    Only the escapes ``\\\\ \\' \\n \\r \\t`` are used (the emulator knows no
    others); other control characters are refused. Text spelling ``delete`` in any
    case is split into concatenated literals, so no statement ever contains the word.
    """
    pieces = _DELETE_WORD.split(text)
    if len(pieces) == 1:
        return _escape_literal(text)
    return "(" + " || ".join(_escape_literal(p) for p in pieces) + ")"


_JSON_TOKEN = re.compile(r"\\u[0-9a-fA-F]{4}|\\.|[dD](?=[eE][lL][eE][tT][eE])")


def _hide_delete_json(text: str) -> str:
    """JSON text with every ``d`` that starts ``delete`` written as a ``\\u`` escape."""
    return _JSON_TOKEN.sub(
        lambda m: m.group() if m.group().startswith("\\") else f"\\u{ord(m.group()):04x}", text
    )


def _json_text(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column]) -> str:
    """Rows as a JSON array of arrays in column order; values in their JSON form."""
    payload = [[to_json_value(row.get(c.name), c.type) for c in columns] for row in rows]
    return _hide_delete_json(json.dumps(payload, ensure_ascii=False, separators=(",", ":")))


class Warehouse(abc.ABC):
    """What processor_guard needs from a warehouse engine."""

    engine: str = ""

    def __init__(self) -> None:
        self._schemas: dict[str, tuple[Column, ...]] = {}
        self._schema_lock = threading.Lock()

    # -- reading ----------------------------------------------------------------------
    @abc.abstractmethod
    def query(self, sql: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """Run one statement with ``@name`` parameters; rows as dicts."""

    @abc.abstractmethod
    def _fetch_schema(self, table: str) -> tuple[Column, ...] | None:
        """The table's columns, or None when it does not exist."""

    @abc.abstractmethod
    def quote_table(self, table: str) -> str:
        """The table name quoted for this engine's SQL."""

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
        _check_ident(partition_field)
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
        cols = ", ".join(_check_ident(k) for k in keys)
        where, params = self._partition_filter(table, partition_field, value)
        sql = (
            f"SELECT {cols}, COUNT(*) AS row_count FROM {self.quote_table(table)}{where} "
            f"GROUP BY {cols} HAVING COUNT(*) > 1 ORDER BY row_count DESC, {cols} "
            f"LIMIT {int(limit)}"
        )
        return self.query(sql, params)

    @abc.abstractmethod
    def read_fence(self, table: str, partition_value: object) -> int | None:
        """The fence recorded for a table's partition value, or None."""

    # -- writing ----------------------------------------------------------------------
    @abc.abstractmethod
    def merge(self, plan: MergePlan) -> MergeOutcome:
        """One MERGE attempt of a validated plan (no retries here)."""

    @abc.abstractmethod
    def classify(self, exc: BaseException) -> str:
        """'conflict' (safe to retry), 'transient' (safe to retry) or 'fatal'."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release what the adapter opened itself (never a caller's client)."""


# ======================================================================================
# BigQuery
# ======================================================================================

_CONFLICT_PATTERNS = re.compile(
    r"could not serialize access|concurrent update|transaction is aborted|"
    r"aborted due to concurrent|transaction was aborted|concurrent transaction|"
    r"resources exceeded during.*concurrent",
    re.IGNORECASE,
)
_CONFLICT_REASONS = frozenset({"aborted"})
_TRANSIENT_REASONS = frozenset(
    {"backendError", "internalError", "rateLimitExceeded", "jobRateLimitExceeded"}
)
_BQ_PARAM_TYPES = {
    "STRING": "STRING",
    "INT64": "INT64",
    "FLOAT64": "FLOAT64",
    "NUMERIC": "NUMERIC",
    "BIGNUMERIC": "BIGNUMERIC",
    "BOOL": "BOOL",
    "DATE": "DATE",
    "DATETIME": "DATETIME",
    "TIMESTAMP": "TIMESTAMP",
    "TIME": "TIME",
    "BYTES": "BYTES",
    "JSON": "JSON",
}


def _bq_param_type(value: object) -> str:
    if isinstance(value, bool):
        return "BOOL"
    if isinstance(value, int):
        return "INT64"
    if isinstance(value, float):
        return "FLOAT64"
    if isinstance(value, Decimal):
        return "NUMERIC"
    if isinstance(value, dt.datetime):
        return "TIMESTAMP" if value.tzinfo is not None else "DATETIME"
    if isinstance(value, dt.date):
        return "DATE"
    if isinstance(value, bytes):
        return "BYTES"
    return "STRING"


def _bq_params(params: Mapping[str, Any]) -> list[Any]:
    from google.cloud import bigquery

    out: list[Any] = []
    for name, value in params.items():
        if isinstance(value, (list, tuple, set, frozenset)):
            items = list(value)
            kind = _bq_param_type(items[0]) if items else "STRING"
            out.append(bigquery.ArrayQueryParameter(name, kind, items))
        else:
            out.append(bigquery.ScalarQueryParameter(name, _bq_param_type(value), value))
    return out


def _sql_typed_literal(value: object, type_name: str) -> str:
    """A typed SQL literal for a partition value (DATE '...', an integer, a string)."""
    kind = normalise_type(type_name)
    if kind == "INT64":
        return str(int(value))  # type: ignore[call-overload]
    if kind in ("DATE", "DATETIME", "TIMESTAMP"):
        return f"{kind} {render_string_literal(str(to_json_value(value, kind)))}"
    if kind == "STRING":
        return render_string_literal(str(value))
    raise ConfigError(f"partition column type {type_name} is not supported")


def _json_extract(index: int, column: Column, source: str = "pg_x") -> str:
    raw = f"JSON_VALUE({source}, '$[{index}]')"
    kind = column.type
    if kind == "STRING":
        return raw
    if kind == "BYTES":
        return f"FROM_BASE64({raw})"
    if kind == "JSON":
        return f"PARSE_JSON({raw})"
    return f"CAST({raw} AS {kind})"


class BigQueryWarehouse(Warehouse):
    """BigQuery through a ``google.cloud.bigquery.Client`` (real or the emulator).

    ``count_mode``: "dml_stats" reads inserted/updated from the MERGE job's dmlStats
    (real BigQuery); "precount" counts matching keys before an unscripted MERGE (the
    emulator reports no dmlStats); "auto" (default) picks "precount" when the client
    does not point at ``*.googleapis.com``. Scripted MERGEs count inside the script.
    """

    engine = "bigquery"

    def __init__(self, client: Any, *, count_mode: str = "auto") -> None:
        super().__init__()
        self.client = client
        if count_mode not in ("auto", "dml_stats", "precount"):
            raise ConfigError(f"count_mode must be auto, dml_stats or precount: {count_mode!r}")
        if count_mode == "auto":
            base = str(getattr(getattr(client, "_connection", None), "API_BASE_URL", ""))
            count_mode = "dml_stats" if "googleapis.com" in base or not base else "precount"
        self.count_mode = count_mode
        self._fence_tables: set[str] = set()

    # -- names ------------------------------------------------------------------------
    def _parts(self, table: str) -> tuple[str, str, str]:
        parts = table.split(".")
        if len(parts) == 2:
            parts = [str(self.client.project), *parts]
        elif len(parts) > 3:  # domain-scoped project ids contain dots
            parts = [".".join(parts[:-2]), parts[-2], parts[-1]]
        if len(parts) != 3 or not all(parts) or not all(_TABLE_PART.match(p) for p in parts):
            raise ConfigError(f"BigQuery table must be 'project.dataset.table': {table!r}")
        return parts[0], parts[1], parts[2]

    def full_name(self, table: str) -> str:
        """``project.dataset.table``."""
        return ".".join(self._parts(table))

    def quote_table(self, table: str) -> str:
        project, dataset, name = self._parts(table)
        return f"`{project}`.`{dataset}`.`{name}`"

    def fence_table(self, table: str) -> str:
        """The fence table in the target's dataset."""
        project, dataset, _ = self._parts(table)
        return f"{project}.{dataset}.{FENCE_TABLE}"

    # -- reading ----------------------------------------------------------------------
    def _job_config(self, params: Mapping[str, Any] | None) -> Any:
        from google.cloud import bigquery

        return bigquery.QueryJobConfig(query_parameters=_bq_params(params or {}))

    def _run(self, sql: str, job_config: Any = None) -> tuple[list[dict[str, Any]], Any]:
        _observe(self.engine, sql)
        job = self.client.query(sql, job_config=job_config)
        rows = [dict(r.items()) for r in job.result()]
        return rows, job

    def query(self, sql: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        return self._run(sql, self._job_config(params))[0]

    def _fetch_schema(self, table: str) -> tuple[Column, ...] | None:
        from google.api_core.exceptions import NotFound

        try:
            bq_table = self.client.get_table(self.full_name(table))
        except NotFound:
            return None
        return tuple(
            Column(f.name, normalise_type(f.field_type), f.mode == "REQUIRED", f.field_type)
            if f.mode != "REPEATED" and f.field_type not in ("RECORD", "STRUCT")
            else Column(f.name, f"{f.mode} {f.field_type}", f.mode == "REQUIRED", f.field_type)
            for f in bq_table.schema
        )

    def read_fence(self, table: str, partition_value: object) -> int | None:
        if self._fetch_schema(self.fence_table(table)) is None:
            return None
        rows = self.query(
            f"SELECT MAX(fence) AS fence FROM {self.quote_table(self.fence_table(table))} "
            "WHERE table_name = @t AND partition_value = @p",
            {"t": self.full_name(table), "p": _partition_key(partition_value)},
        )
        value = rows[0]["fence"] if rows else None
        return None if value is None else int(value)

    # -- errors -----------------------------------------------------------------------
    def classify(self, exc: BaseException) -> str:
        from google.api_core import exceptions as gexc

        reasons = {
            str(e.get("reason", ""))
            for e in (getattr(exc, "errors", None) or [])
            if isinstance(e, dict)
        }
        message = str(getattr(exc, "message", "") or exc)
        if STALE_MARKER in message:
            return "fatal"
        if isinstance(exc, (gexc.Conflict, gexc.Aborted)) and "Already Exists" not in message:
            return "conflict"
        if isinstance(exc, gexc.BadRequest) and (
            reasons & _CONFLICT_REASONS or _CONFLICT_PATTERNS.search(message)
        ):
            return "conflict"
        if isinstance(exc, gexc.TooManyRequests) or reasons & _TRANSIENT_REASONS:
            return "transient"
        if isinstance(
            exc,
            (
                gexc.InternalServerError,
                gexc.BadGateway,
                gexc.ServiceUnavailable,
                gexc.GatewayTimeout,
            ),
        ):
            return "transient"
        if isinstance(exc, gexc.Forbidden) and reasons & {"rateLimitExceeded"}:
            return "transient"
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return "transient"
        return "fatal"

    # -- writing ----------------------------------------------------------------------
    def _ensure_fence_table(self, table: str) -> None:
        name = self.fence_table(table)
        if name in self._fence_tables:
            return
        self._run(
            f"CREATE TABLE IF NOT EXISTS {self.quote_table(name)} ("
            "table_name STRING NOT NULL, partition_value STRING NOT NULL, "
            "fence INT64 NOT NULL, updated_at TIMESTAMP)"
        )
        self._fence_tables.add(name)

    def _merge_sql(self, plan: MergePlan, source: str) -> str:
        keys = plan.keys
        on = " AND ".join(f"T.{k} = S.{k}" for k in keys)
        if plan.partition_field is not None and plan.partition_values:
            on += f" AND T.{plan.partition_field} IN ({self._partition_list(plan)})"
        cols = plan.column_names
        sql = f"MERGE {self.quote_table(plan.table)} AS T\nUSING ({source}) AS S\nON {on}\n"
        if plan.update_columns:
            sets = ", ".join(f"{c} = S.{c}" for c in plan.update_columns)
            sql += f"WHEN MATCHED{self._guard(plan)} THEN UPDATE SET {sets}\n"
        sql += (
            f"WHEN NOT MATCHED THEN INSERT ({', '.join(cols)}) "
            f"VALUES ({', '.join('S.' + c for c in cols)})"
        )
        return sql

    @staticmethod
    def _guard(plan: MergePlan) -> str:
        ob = plan.order_by
        if ob is None or ob not in plan.column_names:
            return ""
        return f" AND (T.{ob} IS NULL OR S.{ob} >= T.{ob})"

    def _partition_list(self, plan: MergePlan) -> str:
        assert plan.partition_field is not None
        kind = next(c.type for c in plan.columns if c.name == plan.partition_field)
        return ", ".join(_sql_typed_literal(v, kind) for v in plan.partition_values)

    def _count_sql(self, plan: MergePlan, source: str) -> str:
        on = " AND ".join(f"T.{k} = S.{k}" for k in plan.keys)
        where = ""
        if plan.partition_field is not None and plan.partition_values:
            where = f" WHERE T.{plan.partition_field} IN ({self._partition_list(plan)})"
        guard = self._guard(plan)
        newer = f"CASE WHEN {guard[5:]} THEN 1 ELSE 0 END" if guard else "1"
        return (
            f"SELECT COUNT(*) AS matched, COALESCE(SUM({newer}), 0) AS newer "
            f"FROM {self.quote_table(plan.table)} AS T JOIN ({source}) AS S ON {on}{where}"
        )

    def _param_source(self, plan: MergePlan) -> tuple[str, Any]:
        from google.cloud import bigquery

        structs = [
            bigquery.StructQueryParameter(
                None,
                *(
                    bigquery.ScalarQueryParameter(
                        c.name, _BQ_PARAM_TYPES[c.type], _bq_param_value(row.get(c.name), c.type)
                    )
                    for c in plan.columns
                ),
            )
            for row in plan.rows
        ]
        param = bigquery.ArrayQueryParameter("pg_rows", "STRUCT", structs)
        # The emulator flattens SELECT * over a struct array to one column: name each.
        select = ", ".join(f"r.{c} AS {c}" for c in plan.column_names)
        return f"SELECT {select} FROM UNNEST(@pg_rows) AS r", param

    def _fenced_statements(self, plan: MergePlan) -> list[str]:
        if plan.fence is None:
            return []
        fence_q = self.quote_table(self.fence_table(plan.table))
        tname = render_string_literal(self.full_name(plan.table))
        parts = (
            ", ".join(render_string_literal(_partition_key(v)) for v in plan.partition_values)
            or "''"
        )
        fence = int(plan.fence)
        message = render_string_literal(f"{STALE_MARKER} {fence} for {self.full_name(plan.table)}")
        return [
            f"SELECT IF(EXISTS(SELECT 1 FROM {fence_q} WHERE table_name = {tname} "
            f"AND partition_value IN ({parts}) AND fence > {fence}), ERROR({message}), 0);",
            f"MERGE {fence_q} AS F USING (SELECT {tname} AS table_name, p AS partition_value "
            f"FROM UNNEST([{parts}]) AS p) AS S "
            "ON F.table_name = S.table_name AND F.partition_value = S.partition_value "
            f"WHEN MATCHED THEN UPDATE SET fence = {fence}, updated_at = CURRENT_TIMESTAMP() "
            "WHEN NOT MATCHED THEN INSERT (table_name, partition_value, fence, updated_at) "
            f"VALUES (S.table_name, S.partition_value, {fence}, CURRENT_TIMESTAMP());",
        ]

    def _script(self, plan: MergePlan, source: str, declare: str = "") -> str:
        counts = self._count_sql(plan, source).replace("SELECT ", "SELECT AS STRUCT ", 1)
        lines = [
            "DECLARE pg_counts STRUCT<matched INT64, newer INT64>;",
            *([declare] if declare else []),
            "BEGIN TRANSACTION;",
            *self._fenced_statements(plan),
            f"SET pg_counts = ({counts});",
            self._merge_sql(plan, source) + ";",
            "COMMIT TRANSACTION;",
            "SELECT pg_counts.matched AS matched, pg_counts.newer AS newer;",
        ]
        return "\n".join(lines)

    def merge(self, plan: MergePlan) -> MergeOutcome:
        text = _json_text(plan.rows, plan.columns)
        size = len(text.encode("utf-8"))
        # BigQuery caps query text at 1 MB: a larger inline script goes through staging.
        inline_limit = min(plan.staging_threshold_bytes, 900_000)
        if size > plan.staging_threshold_bytes or (plan.fence is not None and size > inline_limit):
            return self._merge_staged(plan)
        if plan.fence is None:
            return self._merge_param(plan, size)
        return self._merge_inline(plan, text, size)

    def _merge_param(self, plan: MergePlan, size: int) -> MergeOutcome:
        from google.cloud import bigquery

        source, param = self._param_source(plan)
        config = bigquery.QueryJobConfig(query_parameters=[param])
        outcome = MergeOutcome(0, 0, jobs=0, bytes_sent=size, path="param")
        pre: dict[str, Any] | None = None
        if self.count_mode == "precount":
            sql = self._count_sql(plan, source)
            outcome.statements.append(sql)
            pre = self._run(sql, config)[0][0]
            outcome.jobs += 1
        sql = self._merge_sql(plan, source)
        outcome.statements.append(sql)
        _, job = self._run(sql, config)
        outcome.jobs += 1
        stats = getattr(job, "dml_stats", None)
        if stats is not None and pre is None:
            outcome.inserted = int(stats.inserted_row_count or 0)
            outcome.updated = int(stats.updated_row_count or 0)
        elif pre is not None:
            outcome.inserted = len(plan.rows) - int(pre["matched"])
            outcome.updated = int(pre["newer"])
        else:
            # The MERGE is committed: never fail now. Count it as inserts, and count
            # matches beforehand from the next save on.
            log.warning("MERGE job reported no dmlStats; counting matches before next saves")
            self.count_mode = "precount"
            outcome.inserted = int(getattr(job, "num_dml_affected_rows", 0) or 0)
        outcome.skipped = len(plan.rows) - outcome.inserted - outcome.updated
        return outcome

    def _merge_inline(self, plan: MergePlan, text: str, size: int) -> MergeOutcome:
        self._ensure_fence_table(plan.table)
        source = (
            "SELECT "
            + ", ".join(f"{_json_extract(i, c)} AS {c.name}" for i, c in enumerate(plan.columns))
            + " FROM UNNEST(JSON_QUERY_ARRAY(pg_rows)) AS pg_x"
        )
        declare = f"DECLARE pg_rows STRING DEFAULT {render_string_literal(text)};"
        return self._run_script(plan, self._script(plan, source, declare), size, "inline", 0)

    def _run_script(
        self, plan: MergePlan, script: str, size: int, path: str, jobs: int
    ) -> MergeOutcome:
        try:
            rows, _ = self._run(script)
        except Exception as exc:
            if STALE_MARKER in str(exc):
                current = None
                for value in plan.partition_values:
                    stored = self.read_fence(plan.table, value)
                    if stored is not None and (current is None or stored > current):
                        current = stored
                raise StaleFence(
                    self.full_name(plan.table),
                    int(plan.fence or 0),
                    current,
                    plan.partition_values[0]
                    if len(plan.partition_values) == 1
                    else plan.partition_values,
                ) from exc
            raise
        matched = int(rows[0]["matched"] or 0)
        updated = int(rows[0]["newer"] or 0)
        inserted = len(plan.rows) - matched
        return MergeOutcome(
            inserted, updated, len(plan.rows) - inserted - updated,
            jobs=jobs + 1, bytes_sent=size, path=path, statements=[script],
        )  # fmt: skip

    def _merge_staged(self, plan: MergePlan) -> MergeOutcome:
        import io

        from google.cloud import bigquery

        project, dataset, name = self._parts(plan.table)
        stage_name = f"{project}.{dataset}._pg_stage_{name}_{uuid.uuid4().hex[:12]}"
        fields = [bigquery.SchemaField(c.name, c.native_type or c.type) for c in plan.columns]
        stage = bigquery.Table(stage_name, schema=fields)
        stage.expires = dt.datetime.now(dt.timezone.utc) + plan.staging_ttl
        ndjson = "".join(
            json.dumps(
                {c.name: to_json_value(row.get(c.name), c.type) for c in plan.columns},
                ensure_ascii=False,
                separators=(",", ":"),
            )
            + "\n"
            for row in plan.rows
        ).encode("utf-8")
        if plan.fence is not None:
            self._ensure_fence_table(plan.table)
        self.client.create_table(stage)
        try:
            load = self.client.load_table_from_file(
                io.BytesIO(ndjson),
                stage_name,
                job_config=bigquery.LoadJobConfig(
                    source_format=bigquery.SourceFormat.NEWLINE_DELIMITED_JSON,
                    schema=fields,
                    write_disposition=bigquery.WriteDisposition.WRITE_TRUNCATE,
                ),
            )
            load.result()
            cols = ", ".join(plan.column_names)
            source = f"SELECT {cols} FROM {self.quote_table(stage_name)}"
            return self._run_script(plan, self._script(plan, source), len(ndjson), "staging", 1)
        finally:
            # Dropping the staging table (never emptying it); the expiration covers a crash.
            try:
                self.client.delete_table(stage_name, not_found_ok=True)
            except Exception as exc:  # pragma: no cover - expiration cleans up
                log.warning("could not drop staging table %s (expires anyway): %r", stage_name, exc)


def _bq_param_value(value: object, kind: str) -> Any:
    return value


def _partition_key(value: object) -> str:
    """How a partition value is stored in the fence table (ISO text for dates)."""
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    if value is None:
        raise InvalidRows("partition value is None")
    return str(value)


# ======================================================================================
# DuckDB
# ======================================================================================


def _duck_is_lock_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "could not set lock" in text or "conflicting lock" in text


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
        self._fence_tables: set[Any] = set()

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
        assert self.path is not None
        deadline = time.monotonic() + (self.lock_timeout if wait else 0.0)
        delay = 0.01
        while True:
            try:
                conn = duckdb.connect(self.path)
                break
            except duckdb.Error as exc:
                if not _duck_is_lock_error(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(delay)  # waiting for another process's file lock
                delay = min(delay * 2, 0.25)
        try:
            yield conn
        finally:
            conn.close()

    # -- names ------------------------------------------------------------------------
    def _parts(self, table: str) -> list[str]:
        parts = table.split(".")
        if not 1 <= len(parts) <= 3 or not all(_IDENT.match(p) for p in parts):
            raise ConfigError(f"DuckDB table must be '[catalog.][schema.]table': {table!r}")
        return parts

    def quote_table(self, table: str) -> str:
        return ".".join(f'"{p}"' for p in self._parts(table))

    def canonical(self, table: str) -> str:
        """``schema.table`` (``main`` by default), or ``catalog.schema.table``."""
        parts = self._parts(table)
        return ".".join(parts if len(parts) > 1 else ["main", *parts])

    def fence_table(self, table: str) -> str:
        """The fence table in the target's schema."""
        return ".".join([*self._parts(table)[:-1], FENCE_TABLE])

    # -- reading ----------------------------------------------------------------------
    @staticmethod
    def _to_duck_sql(sql: str) -> str:
        """``@name`` parameters to DuckDB's ``$name``, leaving quoted text alone."""
        pattern = r"('(?:[^']|'')*'|\"(?:[^\"]|\"\")*\")|@([A-Za-z_][A-Za-z0-9_]*)"
        return re.sub(pattern, lambda m: m.group(1) or f"${m.group(2)}", sql)

    @staticmethod
    def _duck_value(value: object) -> object:
        if isinstance(value, dt.datetime) and value.tzinfo is not None:
            return value.astimezone(dt.timezone.utc).replace(tzinfo=None)
        return value

    def query(self, sql: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        values = {k: self._duck_value(v) for k, v in (params or {}).items()}
        _observe(self.engine, sql)
        with self._cursor() as cur:
            rel = cur.execute(self._to_duck_sql(sql), values) if values else cur.execute(sql)
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
        _observe(self.engine, sql)
        with self._cursor() as cur:
            rows = cur.execute(sql, args).fetchall()
        if not rows:
            return None
        return tuple(
            Column(str(n), normalise_type(str(t)), str(nullable) == "NO", str(t))
            for n, t, nullable in rows
        )

    def read_fence(self, table: str, partition_value: object) -> int | None:
        fence_name = self.fence_table(table)
        if self._fetch_schema(fence_name) is None:
            return None
        rows = self.query(
            f"SELECT MAX(fence) AS fence FROM {self.quote_table(fence_name)} "
            "WHERE table_name = @t AND partition_value = @p",
            {"t": self.canonical(table), "p": _partition_key(partition_value)},
        )
        value = rows[0]["fence"] if rows else None
        return None if value is None else int(value)

    # -- errors -----------------------------------------------------------------------
    def classify(self, exc: BaseException) -> str:
        import duckdb

        if isinstance(exc, duckdb.TransactionException):
            return "conflict"
        if isinstance(exc, duckdb.Error) and _duck_is_lock_error(exc):
            return "conflict"
        if isinstance(exc, duckdb.Error) and "conflict" in str(exc).lower():
            return "conflict"
        return "fatal"

    # -- writing ----------------------------------------------------------------------
    def merge(self, plan: MergePlan) -> MergeOutcome:
        with self._cursor(wait=False) as cur:
            return self._merge_with(cur, plan)

    def _merge_with(self, cur: Any, plan: MergePlan) -> MergeOutcome:
        import duckdb

        target = self.quote_table(plan.table)
        statements: list[str] = []

        def run(sql: str, args: Sequence[Any] | None = None) -> Any:
            _observe(self.engine, sql)
            statements.append(sql)
            return cur.execute(sql, args) if args is not None else cur.execute(sql)

        fence_q = self.quote_table(self.fence_table(plan.table))
        writes_q = self.quote_table(".".join([*self._parts(plan.table)[:-1], WRITES_TABLE]))
        name = self.canonical(plan.table)
        if plan.fence is not None and fence_q not in self._fence_tables:
            run(
                f"CREATE TABLE IF NOT EXISTS {fence_q} (table_name VARCHAR NOT NULL, "
                "partition_value VARCHAR NOT NULL, fence BIGINT NOT NULL, updated_at TIMESTAMP, "
                "PRIMARY KEY (table_name, partition_value))"
            )
            self._fence_tables.add(fence_q)
        if (writes_q, name) not in self._fence_tables:
            run(
                f"CREATE TABLE IF NOT EXISTS {writes_q} (table_name VARCHAR PRIMARY KEY, "
                "merges BIGINT NOT NULL, updated_at TIMESTAMP)"
            )
            # ConstraintException: a concurrent writer inserted the row first; it exists.
            with contextlib.suppress(duckdb.ConstraintException):
                run(f"INSERT INTO {writes_q} VALUES (?, 0, NULL) ON CONFLICT DO NOTHING", [name])
            self._fence_tables.add((writes_q, name))
        src = f"pg_src_{uuid.uuid4().hex[:12]}"
        cols = plan.column_names
        run(
            f"CREATE TEMP TABLE {src} ("
            + ", ".join(f"{c.name} {c.native_type or c.type}" for c in plan.columns)
            + ")"
        )
        try:
            run("BEGIN TRANSACTION")
            try:
                # Claims the table's write row first: a concurrent MERGE conflicts here.
                run(
                    f"UPDATE {writes_q} SET merges = merges + 1, updated_at = now()::TIMESTAMP "
                    "WHERE table_name = ?",
                    [name],
                )
                if plan.fence is not None:
                    parts = [_partition_key(v) for v in plan.partition_values]
                    marks = ", ".join("?" for _ in parts) or "NULL"
                    stored = run(
                        f"SELECT MAX(fence) FROM {fence_q} WHERE table_name = ? "
                        f"AND partition_value IN ({marks})",
                        [self.canonical(plan.table), *parts],
                    ).fetchone()[0]
                    if stored is not None and int(stored) > plan.fence:
                        raise StaleFence(
                            self.canonical(plan.table), plan.fence, int(stored),
                            parts[0] if len(parts) == 1 else tuple(parts),
                        )  # fmt: skip
                    for part in parts:
                        run(
                            f"INSERT INTO {fence_q} VALUES (?, ?, ?, now()::TIMESTAMP) "
                            "ON CONFLICT (table_name, partition_value) DO UPDATE SET "
                            "fence = excluded.fence, updated_at = excluded.updated_at",
                            [self.canonical(plan.table), part, plan.fence],
                        )
                self._load_rows(cur, src, plan, statements)
                on = " AND ".join(f"T.{k} = S.{k}" for k in plan.keys)
                part_filter = ""
                part_args: list[Any] = []
                if plan.partition_field is not None and plan.partition_values:
                    marks = ", ".join("?" for _ in plan.partition_values)
                    part_filter = f" AND T.{plan.partition_field} IN ({marks})"
                    part_args = [self._duck_value(v) for v in plan.partition_values]
                guard = BigQueryWarehouse._guard(plan)
                newer = f"CASE WHEN {guard[5:]} THEN 1 ELSE 0 END" if guard else "1"
                matched, n_newer = run(
                    f"SELECT COUNT(*), COALESCE(SUM({newer}), 0) FROM {target} AS T "
                    f"JOIN {src} AS S ON {on}{part_filter}",
                    part_args,
                ).fetchone()
                sql = f"MERGE INTO {target} AS T USING {src} AS S ON {on}{part_filter}\n"
                if plan.update_columns:
                    sets = ", ".join(f"{c} = S.{c}" for c in plan.update_columns)
                    sql += f"WHEN MATCHED{guard} THEN UPDATE SET {sets}\n"
                sql += (
                    f"WHEN NOT MATCHED THEN INSERT ({', '.join(cols)}) "
                    f"VALUES ({', '.join('S.' + c for c in cols)})"
                )
                run(sql, part_args)
                run("COMMIT")
            except BaseException:
                _observe(self.engine, "ROLLBACK")
                cur.execute("ROLLBACK")
                raise
        finally:
            _observe(self.engine, f"DROP TABLE IF EXISTS {src}")
            cur.execute(f"DROP TABLE IF EXISTS {src}")
        inserted = len(plan.rows) - int(matched)
        updated = int(n_newer)
        return MergeOutcome(
            inserted, updated, len(plan.rows) - inserted - updated,
            jobs=1, path="duckdb", statements=statements,
        )  # fmt: skip

    def _load_rows(self, cur: Any, src: str, plan: MergePlan, statements: list[str]) -> None:
        names = plan.column_names
        width = len(names)
        chunk = max(1, 2000 // max(width, 1))
        row_marks = "(" + ", ".join("?" for _ in names) + ")"
        for start in range(0, len(plan.rows), chunk):
            part = plan.rows[start : start + chunk]
            args = [self._duck_value(row.get(n)) for row in part for n in names]
            sql = f"INSERT INTO {src} VALUES " + ", ".join(row_marks for _ in part)
            if start == 0:
                statements.append(sql)
            _observe(self.engine, sql)
            cur.execute(sql, args)


# ======================================================================================


def as_warehouse(obj: Any, **options: Any) -> Warehouse:
    """The adapter for a BigQuery client, a DuckDB connection or path, or a Warehouse."""
    if isinstance(obj, Warehouse):
        return obj
    if isinstance(obj, (str, Path)):
        return DuckDBWarehouse(obj, **options)
    module = type(obj).__module__
    if module.startswith("google.cloud.bigquery"):
        return BigQueryWarehouse(obj, **options)
    if module.startswith(("duckdb", "_duckdb")):
        return DuckDBWarehouse(obj, **options)
    raise ConfigError(
        f"cannot write to a {type(obj).__name__}: pass a google.cloud.bigquery.Client, "
        "a duckdb connection, a DuckDB file path or a Warehouse"
    )


def supported(column: Column) -> bool:
    """Whether the library can validate and write this column type."""
    return column.type in SUPPORTED_TYPES
