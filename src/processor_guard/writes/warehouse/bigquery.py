"""BigQuery through a ``google.cloud.bigquery.Client`` (real or the emulator)."""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import re
import uuid
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from ..._values import normalise_type, to_json_value
from ...errors import ConfigError, StaleFence
from .base import FENCE_TABLE, Warehouse, fence_partition_key, notify_statement_observers
from .plan import Column, MergeOutcome, MergePlan
from .sql import (
    count_statement,
    json_rows_text,
    merge_statement,
    render_string_literal,
    typed_literal,
)

__all__ = ["STALE_MARKER", "BigQueryWarehouse", "classify_bigquery_error"]

log = logging.getLogger(__name__)

#: Marker in the SQL error raised by a fenced BigQuery script when the fence is stale.
STALE_MARKER = "processor_guard stale fence"

_TABLE_PART = re.compile(r"^[A-Za-z0-9_\-:.]+$")
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


def classify_bigquery_error(exc: BaseException) -> str:
    """'conflict', 'transient' or 'fatal', by exception type, error reason and message.

    Never by HTTP status alone: a 400 is a conflict only when its reason or message
    says a concurrent transaction aborted it.
    """
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
        (gexc.InternalServerError, gexc.BadGateway, gexc.ServiceUnavailable, gexc.GatewayTimeout),
    ):
        return "transient"
    if isinstance(exc, gexc.Forbidden) and reasons & {"rateLimitExceeded"}:
        return "transient"
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return "transient"
    return "fatal"


def _parameter_type(value: object) -> str:
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


def _query_parameters(params: Mapping[str, Any]) -> list[Any]:
    from google.cloud import bigquery

    out: list[Any] = []
    for name, value in params.items():
        if isinstance(value, (list, tuple, set, frozenset)):
            items = list(value)
            kind = _parameter_type(items[0]) if items else "STRING"
            out.append(bigquery.ArrayQueryParameter(name, kind, items))
        else:
            out.append(bigquery.ScalarQueryParameter(name, _parameter_type(value), value))
    return out


def _rows_parameter_source(plan: MergePlan) -> tuple[str, Any]:
    """The batch as one STRUCT-array parameter, and the query that reads it as rows."""
    from google.cloud import bigquery

    structs = [
        bigquery.StructQueryParameter(
            None,
            *(bigquery.ScalarQueryParameter(c.name, c.type, row.get(c.name)) for c in plan.columns),
        )
        for row in plan.rows
    ]
    param = bigquery.ArrayQueryParameter("pg_rows", "STRUCT", structs)
    # The emulator flattens SELECT * over a struct array to one column: name each.
    select = ", ".join(f"r.{c} AS {c}" for c in plan.column_names)
    return f"SELECT {select} FROM UNNEST(@pg_rows) AS r", param


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


def _ndjson(plan: MergePlan) -> bytes:
    """The batch as a newline-delimited JSON load file."""
    return "".join(
        json.dumps(
            {c.name: to_json_value(row.get(c.name), c.type) for c in plan.columns},
            ensure_ascii=False,
            separators=(",", ":"),
        )
        + "\n"
        for row in plan.rows
    ).encode("utf-8")


def _load_ndjson(client: Any, table: str, fields: list[Any], ndjson: bytes) -> None:
    from google.cloud import bigquery

    load = client.load_table_from_file(
        io.BytesIO(ndjson),
        table,
        job_config=bigquery.LoadJobConfig(
            source_format=bigquery.SourceFormat.NEWLINE_DELIMITED_JSON,
            schema=fields,
            write_disposition=bigquery.WriteDisposition.WRITE_TRUNCATE,
        ),
    )
    load.result()


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

    def canonical(self, table: str) -> str:
        """``project.dataset.table``."""
        return ".".join(self._parts(table))

    def quote_table(self, table: str) -> str:
        project, dataset, name = self._parts(table)
        return f"`{project}`.`{dataset}`.`{name}`"

    def fence_table(self, table: str) -> str:
        project, dataset, _ = self._parts(table)
        return f"{project}.{dataset}.{FENCE_TABLE}"

    # -- reading ----------------------------------------------------------------------
    def _run(self, sql: str, job_config: Any = None) -> tuple[list[dict[str, Any]], Any]:
        notify_statement_observers(self.engine, sql)
        job = self.client.query(sql, job_config=job_config)
        rows = [dict(r.items()) for r in job.result()]
        return rows, job

    def query(self, sql: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        from google.cloud import bigquery

        config = bigquery.QueryJobConfig(query_parameters=_query_parameters(params or {}))
        return self._run(sql, config)[0]

    def _fetch_schema(self, table: str) -> tuple[Column, ...] | None:
        from google.api_core.exceptions import NotFound

        try:
            bq_table = self.client.get_table(self.canonical(table))
        except NotFound:
            return None
        return tuple(
            Column(f.name, normalise_type(f.field_type), f.mode == "REQUIRED", f.field_type)
            if f.mode != "REPEATED" and f.field_type not in ("RECORD", "STRUCT")
            else Column(f.name, f"{f.mode} {f.field_type}", f.mode == "REQUIRED", f.field_type)
            for f in bq_table.schema
        )

    def classify(self, exc: BaseException) -> str:
        return classify_bigquery_error(exc)

    # -- SQL --------------------------------------------------------------------------
    def merge_sql(self, plan: MergePlan, source_query: str) -> str:
        """The MERGE of ``plan`` from the rows ``source_query`` selects."""
        return merge_statement(
            plan,
            target=self.quote_table(plan.table),
            source=f"({source_query})",
            partition_value_sql=typed_literal,
        )

    def _count_sql(self, plan: MergePlan, source_query: str, select: str = "SELECT") -> str:
        return count_statement(
            plan,
            target=self.quote_table(plan.table),
            source=f"({source_query})",
            partition_value_sql=typed_literal,
            select=select,
        )

    def _fence_statements(self, plan: MergePlan) -> list[str]:
        """Fail the script when a partition holds a newer fence; else record this one."""
        if plan.fence is None:
            return []
        fence_q = self.quote_table(self.fence_table(plan.table))
        tname = render_string_literal(self.canonical(plan.table))
        parts = (
            ", ".join(render_string_literal(fence_partition_key(v)) for v in plan.partition_values)
            or "''"
        )
        fence = int(plan.fence)
        message = render_string_literal(f"{STALE_MARKER} {fence} for {self.canonical(plan.table)}")
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

    def merge_script(self, plan: MergePlan, source_query: str, declare: str = "") -> str:
        """One transaction: the fence check (if fenced), the counts, the MERGE; then the counts."""
        counts = self._count_sql(plan, source_query, select="SELECT AS STRUCT")
        lines = [
            "DECLARE pg_counts STRUCT<matched INT64, newer INT64>;",
            *([declare] if declare else []),
            "BEGIN TRANSACTION;",
            *self._fence_statements(plan),
            f"SET pg_counts = ({counts});",
            self.merge_sql(plan, source_query) + ";",
            "COMMIT TRANSACTION;",
            "SELECT pg_counts.matched AS matched, pg_counts.newer AS newer;",
        ]
        return "\n".join(lines)

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

    def merge(self, plan: MergePlan) -> MergeOutcome:
        text = json_rows_text(plan.rows, plan.columns)
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

        source, param = _rows_parameter_source(plan)
        config = bigquery.QueryJobConfig(query_parameters=[param])
        outcome = MergeOutcome(0, 0, jobs=0, bytes_sent=size, path="param")
        pre: dict[str, Any] | None = None
        if self.count_mode == "precount":
            sql = self._count_sql(plan, source)
            outcome.statements.append(sql)
            pre = self._run(sql, config)[0][0]
            outcome.jobs += 1
        sql = self.merge_sql(plan, source)
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
        return self._run_script(plan, self.merge_script(plan, source, declare), size, "inline", 0)

    def _run_script(
        self, plan: MergePlan, script: str, size: int, path: str, jobs: int
    ) -> MergeOutcome:
        try:
            rows, _ = self._run(script)
        except Exception as exc:
            if STALE_MARKER in str(exc):
                raise self._stale_fence(plan) from exc
            raise
        matched = int(rows[0]["matched"] or 0)
        updated = int(rows[0]["newer"] or 0)
        inserted = len(plan.rows) - matched
        return MergeOutcome(
            inserted, updated, len(plan.rows) - inserted - updated,
            jobs=jobs + 1, bytes_sent=size, path=path, statements=[script],
        )  # fmt: skip

    def _stale_fence(self, plan: MergePlan) -> StaleFence:
        """The StaleFence for a script that found a newer fence, with the newest one stored."""
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

    def _merge_staged(self, plan: MergePlan) -> MergeOutcome:
        from google.cloud import bigquery

        project, dataset, name = self._parts(plan.table)
        stage_name = f"{project}.{dataset}._pg_stage_{name}_{uuid.uuid4().hex[:12]}"
        fields = [bigquery.SchemaField(c.name, c.native_type or c.type) for c in plan.columns]
        stage = bigquery.Table(stage_name, schema=fields)
        stage.expires = dt.datetime.now(dt.timezone.utc) + plan.staging_ttl
        ndjson = _ndjson(plan)
        if plan.fence is not None:
            self._ensure_fence_table(plan.table)
        self.client.create_table(stage)
        try:
            _load_ndjson(self.client, stage_name, fields, ndjson)
            cols = ", ".join(plan.column_names)
            source = f"SELECT {cols} FROM {self.quote_table(stage_name)}"
            return self._run_script(
                plan, self.merge_script(plan, source), len(ndjson), "staging", 1
            )
        finally:
            # Dropping the staging table (never emptying it); the expiration covers a crash.
            try:
                self.client.delete_table(stage_name, not_found_ok=True)
            except Exception as exc:  # pragma: no cover - expiration cleans up
                log.warning("could not drop staging table %s (expires anyway): %r", stage_name, exc)
