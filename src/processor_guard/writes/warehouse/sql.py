"""SQL text both engines share: identifiers, literals, and the MERGE of a plan.

The MERGE, its pre-count and the newer-row guard are built here once; an engine
passes in what differs (the quoted target, its source form, how a partition value is
written). No text built here ever contains the word DELETE.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..._values import field_json, normalise_type, to_json_value
from ...errors import ConfigError
from .plan import Column, MergePlan

__all__ = [
    "GUARD_SUFFIX",
    "TABLE_GUARD_ROW",
    "Dialect",
    "PartitionValueSql",
    "Step",
    "add_column_statements",
    "bigquery_type",
    "check_identifier",
    "count_statement",
    "duckdb_type",
    "is_identifier",
    "json_rows_text",
    "merge_statement",
    "render_string_literal",
    "typed_literal",
    "write_steps",
]

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DELETE_WORD = re.compile(r"(?<=[dD])(?=[eE][lL][eE][tT][eE])")
_JSON_TOKEN = re.compile(r"\\u[0-9a-fA-F]{4}|\\.|[dD](?=[eE][lL][eE][tT][eE])")

#: How an engine writes one partition value, given the partition column's type: a
#: typed literal on BigQuery, a ``?`` placeholder on DuckDB.
PartitionValueSql = Callable[[object, str], str]


def is_identifier(name: str) -> bool:
    """Whether ``name`` is a plain SQL identifier (safe to put in a statement unquoted)."""
    return bool(_IDENTIFIER.match(name))


def check_identifier(name: str, what: str = "column") -> str:
    """``name`` if it is a plain identifier; ConfigError otherwise."""
    if not is_identifier(name):
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


def typed_literal(value: object, type_name: str) -> str:
    """A typed SQL literal for a partition value (DATE '...', an integer, a string)."""
    kind = normalise_type(type_name)
    if kind == "INT64":
        return str(int(value))  # type: ignore[call-overload]
    if kind in ("DATE", "DATETIME", "TIMESTAMP"):
        return f"{kind} {render_string_literal(str(to_json_value(value, kind)))}"
    if kind == "STRING":
        return render_string_literal(str(value))
    raise ConfigError(f"partition column type {type_name} is not supported")


def _hide_delete_json(text: str) -> str:
    """JSON text with every ``d`` that starts ``delete`` written as a ``\\u`` escape."""
    return _JSON_TOKEN.sub(
        lambda m: m.group() if m.group().startswith("\\") else f"\\u{ord(m.group()):04x}", text
    )


def json_rows_text(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column]) -> str:
    """Rows as a JSON array of arrays in column order; values in their JSON form, a
    STRUCT as ``[1, field, ...]`` (see ``field_json``)."""
    payload = [
        [
            to_json_value(row.get(c.name), c.type)
            if c.is_scalar
            else field_json(row.get(c.name), c, struct_as_list=True)
            for c in columns
        ]
        for row in rows
    ]
    return _hide_delete_json(json.dumps(payload, ensure_ascii=False, separators=(",", ":")))


def bigquery_type(column: Column) -> str:
    """The column's type in BigQuery SQL: ``ARRAY<STRUCT<a INT64, b ARRAY<STRING>>>``."""
    if column.type == "STRUCT":
        inner = "STRUCT<" + ", ".join(f"{f.name} {bigquery_type(f)}" for f in column.fields) + ">"
    elif column.precision is not None:
        inner = f"{column.type}({column.precision}, {column.scale or 0})"
    else:
        inner = column.type
    return f"ARRAY<{inner}>" if column.repeated else inner


_DUCKDB_SCALARS = {
    "STRING": "VARCHAR",
    "INT64": "BIGINT",
    "FLOAT64": "DOUBLE",
    "BOOL": "BOOLEAN",
    "BYTES": "BLOB",
    "DATETIME": "TIMESTAMP",
    # BigQuery's TIMESTAMP is an instant; DuckDB's plain TIMESTAMP is a wall-clock type.
    "TIMESTAMP": "TIMESTAMPTZ",
    "NUMERIC": "DECIMAL(38, 9)",
}


def duckdb_type(column: Column) -> str:
    """The column's type in DuckDB SQL: ``STRUCT(a BIGINT, b VARCHAR[])[]``."""
    if column.native_type:
        return column.native_type
    if column.type == "STRUCT":
        inner = "STRUCT(" + ", ".join(f"{f.name} {duckdb_type(f)}" for f in column.fields) + ")"
    elif column.precision is not None:
        inner = f"DECIMAL({column.precision}, {column.scale or 0})"
    else:
        inner = _DUCKDB_SCALARS.get(column.type, column.type)
    return f"{inner}[]" if column.repeated else inner


def add_column_statements(target: str, columns: Sequence[Column], dialect: Dialect) -> list[str]:
    """``ALTER TABLE ... ADD COLUMN IF NOT EXISTS`` for each new NULLABLE column."""
    return [
        f"ALTER TABLE {target} ADD COLUMN IF NOT EXISTS {check_identifier(c.name)} "
        f"{dialect.column_type(c)}"
        for c in columns
    ]


def _newer_row_guard(plan: MergePlan) -> list[str]:
    """The condition for a source row to replace a stored one: at least as new by ``order_by``."""
    order_by = plan.order_by
    if order_by is None or order_by not in plan.column_names:
        return []
    return [f"(T.{order_by} IS NULL OR S.{order_by} >= T.{order_by})"]


def _match_condition(plan: MergePlan, partition_value_sql: PartitionValueSql) -> str:
    """Target row T matches source row S: same keys, within the batch's partition values."""
    conditions = [f"T.{key} = S.{key}" for key in plan.keys]
    if plan.partition_field is not None and plan.partition_values:
        kind = next(c.type for c in plan.columns if c.name == plan.partition_field)
        values = ", ".join(partition_value_sql(v, kind) for v in plan.partition_values)
        conditions.append(f"T.{plan.partition_field} IN ({values})")
    return " AND ".join(conditions)


def merge_statement(
    plan: MergePlan, *, target: str, source: str, partition_value_sql: PartitionValueSql
) -> str:
    """The MERGE of ``plan`` from ``source`` (a table or a parenthesised query) into ``target``.

    A stored key is updated, in the columns the batch carries only and by a row at
    least as new; a new key is inserted (unless ``plan.update_only``).
    """
    lines = [
        f"MERGE INTO {target} AS T",
        f"USING {source} AS S",
        f"ON {_match_condition(plan, partition_value_sql)}",
    ]
    if plan.update_columns:
        when_matched = " AND ".join(["WHEN MATCHED", *_newer_row_guard(plan)])
        sets = ", ".join(f"{c} = S.{c}" for c in plan.update_columns)
        lines.append(f"{when_matched} THEN UPDATE SET {sets}")
    if not plan.update_only:
        columns = plan.column_names
        lines.append(
            f"WHEN NOT MATCHED THEN INSERT ({', '.join(columns)}) "
            f"VALUES ({', '.join('S.' + c for c in columns)})"
        )
    return "\n".join(lines)


def count_statement(
    plan: MergePlan,
    *,
    target: str,
    source: str,
    partition_value_sql: PartitionValueSql,
    select: str = "SELECT",
) -> str:
    """One row: ``matched`` (batch keys already stored) and ``newer`` (those the MERGE updates).

    For engines whose MERGE does not report what it did: run just before the MERGE.
    """
    guard = _newer_row_guard(plan)
    newer = f"CASE WHEN {' AND '.join(guard)} THEN 1 ELSE 0 END" if guard else "1"
    return (
        f"{select} COUNT(*) AS matched, COALESCE(SUM({newer}), 0) AS newer "
        f"FROM {target} AS T JOIN {source} AS S ON {_match_condition(plan, partition_value_sql)}"
    )


def missing_keys_statement(
    plan: MergePlan, *, target: str, source: str, partition_value_sql: PartitionValueSql
) -> str:
    """The batch's keys with no stored row: what an update-only MERGE cannot update."""
    keys = ", ".join(f"S.{k} AS {k}" for k in plan.keys)
    return (
        f"SELECT {keys} FROM {source} AS S WHERE NOT EXISTS "
        f"(SELECT 1 FROM {target} AS T WHERE {_match_condition(plan, partition_value_sql)})"
    )


#: The guard table of ``<table>`` is ``<table>__pg_guard``, next to it.
GUARD_SUFFIX = "__pg_guard"
#: ``partition_value`` of the guard row every save UPDATEs (partition rows hold fences).
TABLE_GUARD_ROW = "*"
#: The dataset-wide fence table of versions before issue #11 (table_name,
#: partition_value, fence, updated_at); its fences seed a table's new guard table.
LEGACY_FENCE_TABLE = "_processor_guard_fences"
#: Marker in the SQL error a fenced save raises when a newer fence is recorded.
STALE_MARKER = "processor_guard stale fence"


@dataclass(frozen=True)
class Dialect:
    """What differs between the engines' SQL for the guard statements."""

    literal: Callable[[str], str]
    partition_value_sql: PartitionValueSql
    now: str
    string_type: str
    int_type: str
    #: A column's type as this engine spells it.
    column_type: Callable[[Column], str]


@dataclass(frozen=True)
class Step:
    """One statement of a save, in order; ``kind`` tells an engine how to send it.

    Kinds: ``claim`` (outside the transaction), ``begin``, ``check``, ``guard``,
    ``missing``, ``count``, ``merge``, ``commit``. ``args`` are ``?`` placeholder values.
    """

    kind: str
    sql: str
    args: tuple[object, ...] = ()


def guard_table_ddl(
    guard: str, dialect: Dialect, legacy_fences: tuple[str, str] | None = None
) -> str:
    """Creates the guard table together with its table row, atomically (CREATE ... AS SELECT).

    Created with the row, so no writer ever sees the table without the row it UPDATEs.
    ``legacy_fences``: the quoted ``_processor_guard_fences`` table of versions before
    issue #11 and the target's canonical name in it; that table's fences seed the
    partition rows in the same statement, so a partition's first save after upgrading
    is still refused when an older fence is claimed than one recorded before.
    """
    table_row = dialect.literal(TABLE_GUARD_ROW)
    text, integer = dialect.string_type, dialect.int_type
    sql = (
        f"CREATE TABLE IF NOT EXISTS {guard} AS SELECT "
        f"CAST({table_row} AS {text}) AS partition_value, "
        f"CAST(NULL AS {integer}) AS fence, CAST(0 AS {integer}) AS writes, "
        f"{dialect.now} AS updated_at"
    )
    if legacy_fences is not None:
        fences, table_name = legacy_fences
        sql += (
            f" UNION ALL SELECT CAST(partition_value AS {text}), CAST(MAX(fence) AS {integer}), "
            f"CAST(0 AS {integer}), {dialect.now} FROM {fences} "
            f"WHERE table_name = {dialect.literal(table_name)} AND partition_value <> {table_row} "
            "GROUP BY partition_value"
        )
    return sql


class _Collect:
    """A PartitionValueSql that also keeps the values an engine binds as ``?``."""

    def __init__(self, inner: PartitionValueSql) -> None:
        self.inner = inner
        self.values: list[object] = []

    def __call__(self, value: object, type_name: str) -> str:
        text = self.inner(value, type_name)
        if text == "?":
            self.values.append(value)
        return text


def write_steps(
    plan: MergePlan,
    partition_keys: Sequence[str],
    *,
    target: str,
    guard: str,
    source: str,
    dialect: Dialect,
) -> list[Step]:
    """Every statement of one save, for every engine (BigQuery, DuckDB, the rules model).

    Why it is correct under BigQuery's rules: the transaction always UPDATEs the
    guard table's table row, so two saves into one table always conflict (a MERGE
    that only inserts never does), and the one cancelled retries from a fresh
    snapshot. A fence is claimed before the transaction, only ever raised, and the
    claim touches the table row too: a transaction that started before a newer
    claim is cancelled when it writes, and its retry sees the claim and is refused.
    """
    lit = dialect.literal
    parts = [lit(p) for p in partition_keys]
    steps: list[Step] = []
    fence = None if plan.fence is None else int(plan.fence)
    if fence is not None and parts:
        # The claim also touches the table row, so it conflicts with any transaction
        # writing the table: a claim and a save can never both miss each other.
        table_row = lit(TABLE_GUARD_ROW)
        rows = " UNION ALL ".join(f"SELECT {p} AS partition_value" for p in [table_row, *parts])
        steps.append(
            Step(
                "claim",
                f"MERGE INTO {guard} AS G USING ({rows}) AS S "
                "ON G.partition_value = S.partition_value "
                f"WHEN MATCHED AND (G.partition_value = {table_row} OR G.fence < {fence}) "
                f"THEN UPDATE SET fence = CASE WHEN G.partition_value = {table_row} "
                f"THEN G.fence ELSE {fence} END, updated_at = {dialect.now} "
                "WHEN NOT MATCHED THEN INSERT (partition_value, fence, writes, updated_at) "
                f"VALUES (S.partition_value, {fence}, 0, {dialect.now})",
            )
        )
    steps.append(Step("begin", "BEGIN TRANSACTION"))
    if fence is not None and parts:
        message = lit(f"{STALE_MARKER} {fence}")
        steps.append(
            Step(
                "check",
                f"SELECT CASE WHEN EXISTS(SELECT 1 FROM {guard} WHERE partition_value IN "
                f"({', '.join(parts)}) AND fence > {fence}) THEN ERROR({message}) ELSE 0 END",
            )
        )
    steps.append(
        Step(
            "guard",
            f"UPDATE {guard} SET writes = writes + 1, updated_at = {dialect.now} "
            f"WHERE partition_value = {lit(TABLE_GUARD_ROW)}",
        )
    )
    for kind, build in (
        ("missing", missing_keys_statement if plan.update_only else None),
        ("count", count_statement),
        ("merge", merge_statement),
    ):
        if build is None:
            continue
        values = _Collect(dialect.partition_value_sql)
        sql = build(plan, target=target, source=source, partition_value_sql=values)
        steps.append(Step(kind, sql, tuple(values.values)))
    steps.append(Step("commit", "COMMIT TRANSACTION"))
    return steps
