"""BigQuery through a ``google.cloud.bigquery.Client`` (real or the emulator)."""

from __future__ import annotations

import concurrent.futures
import contextlib
import datetime as dt
import io
import json
import logging
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from ..._backoff import retry_while
from ..._values import DEFAULT_DECIMAL, field_json, normalise_type
from ...errors import ConfigError
from .base import Warehouse, fence_partition_key, notify_statement_observers, plan_outcome
from .plan import Column, MergeOutcome, MergePlan
from .sql import (
    STALE_MARKER,
    Dialect,
    Step,
    bigquery_type,
    guard_table_ddl,
    json_rows_text,
    render_string_literal,
    typed_literal,
    write_steps,
)

__all__ = [
    "BIGQUERY_DIALECT",
    "QUERY_TEXT_LIMIT",
    "REQUEST_LIMIT",
    "STALE_MARKER",
    "BigQueryWarehouse",
    "classify_bigquery_error",
    "encoded_request_bytes",
]

log = logging.getLogger(__name__)

# BigQuery's limits (quotas page): a request is at most 10 MB, query text 1 MB and a
# script variable 1 MB. The margins leave room for what the client adds around them.
REQUEST_LIMIT = 9_500_000
QUERY_TEXT_LIMIT = 1_000_000
SCRIPT_VARIABLE_LIMIT = 1_000_000

#: BigQuery's spelling of the guard statements.
BIGQUERY_DIALECT = Dialect(
    literal=render_string_literal,
    partition_value_sql=typed_literal,
    now="CURRENT_TIMESTAMP()",
    string_type="STRING",
    int_type="INT64",
    column_type=bigquery_type,
)

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
# 400 resourcesExceeded: "Resources exceeded during query execution: Too many DML
# statements outstanding against table T, limit is 20": the table's queue is full.
_QUEUE_FULL = re.compile(r"too many DML statements outstanding", re.IGNORECASE)
_TOO_LARGE = re.compile(
    r"query is too large|request payload size exceeds|request too large|"
    r"maximum standard SQL query length|variable .*too large|exceeds the limit of 1 ?MB",
    re.IGNORECASE,
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
    if isinstance(exc, gexc.BadRequest) and _QUEUE_FULL.search(message):
        return "transient"
    if isinstance(exc, gexc.RetryError):
        return "transient"  # a client-side retry ran out of its own deadline
    if isinstance(exc, gexc.TooManyRequests) or reasons & _TRANSIENT_REASONS:
        return "transient"
    if isinstance(
        exc,
        (gexc.InternalServerError, gexc.BadGateway, gexc.ServiceUnavailable, gexc.GatewayTimeout),
    ):
        return "transient"
    if isinstance(exc, gexc.Forbidden) and reasons & {"rateLimitExceeded"}:
        return "transient"
    if isinstance(exc, (ConnectionError, TimeoutError)) or _is_transport_error(exc):
        return "transient"
    return "fatal"


def _is_transport_error(exc: BaseException) -> bool:
    """requests' and google-auth's connection and timeout errors (not builtin ones)."""
    names = {f"{t.__module__}.{t.__name__}" for t in type(exc).__mro__}
    return bool(
        names
        & {
            "requests.exceptions.ConnectionError",
            "requests.exceptions.Timeout",
            "google.auth.exceptions.TransportError",
            "urllib3.exceptions.HTTPError",
        }
    )


def is_too_large(exc: BaseException) -> bool:
    """A 400 saying the request or query text is over BigQuery's size limit."""
    from google.api_core import exceptions as gexc

    return isinstance(exc, gexc.BadRequest) and bool(_TOO_LARGE.search(str(exc)))


def encoded_request_bytes(query: str, job_config: Any = None) -> int:
    """Bytes of the jobs.insert body the client sends for ``query`` (JSON, ASCII-escaped)."""
    configuration = job_config.to_api_repr() if job_config is not None else {}
    configuration.setdefault("query", {})["query"] = query
    return len(json.dumps({"configuration": configuration}).encode("ascii"))


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


def _json_extract(doc: str, path: str, column: Column, depth: int = 0) -> str:
    """The SQL reading one value of ``column`` at JSONPath ``path`` of the JSON ``doc``.

    An ARRAY is rebuilt element by element in order; a STRUCT is ``[1, field, ...]``
    in the JSON (``json_rows_text``), so its leading 1 tells NULL from a struct of NULLs.
    """
    if column.repeated:
        element = f"pg_e{depth}"
        value = _json_extract_one(element, "$", column, depth + 1)
        return (
            f"ARRAY(SELECT {value} FROM UNNEST(JSON_QUERY_ARRAY({doc}, '{path}')) AS {element} "
            f"WITH OFFSET AS {element}_at ORDER BY {element}_at)"
        )
    return _json_extract_one(doc, path, column, depth)


def _json_extract_one(doc: str, path: str, column: Column, depth: int) -> str:
    if column.type == "STRUCT":
        fields = ", ".join(
            f"{_json_extract(doc, f'{path}[{i + 1}]', f, depth)} AS {f.name}"
            for i, f in enumerate(column.fields)
        )
        return f"IF(JSON_VALUE({doc}, '{path}[0]') IS NULL, NULL, STRUCT({fields}))"
    raw = f"JSON_VALUE({doc}, '{path}')"
    kind = column.type
    if kind == "STRING":
        return raw
    if kind == "BYTES":
        return f"FROM_BASE64({raw})"
    if kind == "JSON":
        return f"PARSE_JSON({raw})"
    if kind in DEFAULT_DECIMAL:
        # Spelled with the column's precision and scale: a bare NUMERIC cast keeps only
        # 3 fractional digits on the emulator.
        precision, scale = DEFAULT_DECIMAL[kind]
        if column.precision is not None:
            precision, scale = column.precision, column.scale or 0
        return f"CAST({raw} AS {kind}({precision}, {scale}))"
    return f"CAST({raw} AS {kind})"


def _ndjson(plan: MergePlan) -> bytes:
    """The batch as a newline-delimited JSON load file."""
    return "".join(
        json.dumps(
            {c.name: _load_value(row.get(c.name), c) for c in plan.columns},
            ensure_ascii=False,
            separators=(",", ":"),
        )
        + "\n"
        for row in plan.rows
    ).encode("utf-8")


def _load_value(value: object, column: Column) -> Any:
    """A value as a load file carries it: JSON columns as the JSON value itself, since
    a JSON string there would be stored as a string, unlike on the inline path."""
    if column.type == "JSON" and isinstance(value, str):
        return json.loads(value)
    if column.type == "STRUCT" and isinstance(value, (dict, list)):
        if column.repeated:
            return [_load_struct(v, column) for v in value]
        return _load_struct(value, column)
    return field_json(value, column)


def _load_struct(value: Any, column: Column) -> Any:
    return {
        f.name: _load_value(value.get(f.name), f)  # JSON fields inside too
        for f in column.fields
    }


def _load_ndjson(client: Any, table: str, fields: list[Any], ndjson: bytes, timeout: float) -> None:
    from google.cloud import bigquery

    load = client.load_table_from_file(
        io.BytesIO(ndjson),
        table,
        job_config=bigquery.LoadJobConfig(
            source_format=bigquery.SourceFormat.NEWLINE_DELIMITED_JSON,
            schema=fields,
            write_disposition=bigquery.WriteDisposition.WRITE_TRUNCATE,
        ),
        timeout=timeout,
    )
    load.result(retry=None, timeout=timeout)


class BigQueryWarehouse(Warehouse):
    """BigQuery through a ``google.cloud.bigquery.Client`` (real or the emulator).

    ``timeout``: seconds any one call may take when the caller gives no tighter
    bound (reads by ``health``/``reconcile``, schema look-ups). The client's own API
    retries and job re-submission are switched off: ``safe_merge``'s tenacity loop is
    the only retry layer, and each call is bounded by the time it has left.
    """

    engine = "bigquery"

    def __init__(self, client: Any, *, timeout: float = 60.0) -> None:
        super().__init__()
        if timeout <= 0:
            raise ConfigError(f"timeout must be > 0 seconds: {timeout!r}")
        self.client = client
        self.timeout = timeout
        self._guards: set[str] = set()

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

    # -- reading ----------------------------------------------------------------------
    def _run(
        self, sql: str, job_config: Any = None, *, timeout: float | None = None
    ) -> tuple[list[dict[str, Any]], Any]:
        """One query job, waited for at most ``timeout`` seconds (then cancelled)."""
        budget = self.timeout if timeout is None else max(timeout, 0.001)
        notify_statement_observers(self.engine, sql)
        started = time.monotonic()
        job = self.client.query(
            sql, job_config=job_config, retry=None, job_retry=None, timeout=budget
        )
        left = max(budget - (time.monotonic() - started), 0.001)
        try:
            result = job.result(retry=None, timeout=left, job_retry=None)
        except concurrent.futures.TimeoutError as exc:
            self._cancel(job)
            raise TimeoutError(
                f"BigQuery job {getattr(job, 'job_id', '?')} did not finish within "
                f"{budget:.1f}s; cancelled it"
            ) from exc
        return [dict(r.items()) for r in result], job

    def _cancel(self, job: Any) -> None:
        try:
            self.client.cancel_job(
                job.job_id, location=getattr(job, "location", None), retry=None, timeout=10.0
            )
        except Exception as exc:  # the job may have finished meanwhile
            log.warning("could not cancel BigQuery job %s: %r", getattr(job, "job_id", "?"), exc)

    def query(self, sql: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        from google.cloud import bigquery

        config = bigquery.QueryJobConfig(query_parameters=_query_parameters(params or {}))
        return self._run(sql, config)[0]

    def _fetch_schema(self, table: str) -> tuple[Column, ...] | None:
        from google.api_core.exceptions import NotFound

        try:
            bq_table = self.client.get_table(
                self.canonical(table), retry=None, timeout=self.timeout
            )
        except NotFound:
            return None
        return tuple(_column(f) for f in bq_table.schema)

    def classify(self, exc: BaseException) -> str:
        return classify_bigquery_error(exc)

    def add_columns(self, table: str, columns: Sequence[Column]) -> None:
        """Appends NULLABLE columns to the table's schema (an API call, as a load's
        ``ALLOW_FIELD_ADDITION`` does); columns it has by then are left alone.

        A concurrent schema change fails the update's etag check: read again and retry.
        """
        from google.api_core.exceptions import PreconditionFailed

        def add_missing() -> None:
            bq_table = self.client.get_table(
                self.canonical(table), retry=None, timeout=self.timeout
            )
            have = {f.name for f in bq_table.schema}
            new = [_schema_field(c) for c in columns if c.name not in have]
            if new:
                bq_table.schema = [*bq_table.schema, *new]
                self.client.update_table(bq_table, ["schema"], retry=None, timeout=self.timeout)

        retry_while(
            add_missing,
            retryable=lambda exc: isinstance(exc, PreconditionFailed),
            timeout=self.timeout,
            base=0.2,
            cap=2.0,
        )

    # -- writing ----------------------------------------------------------------------
    def ensure_guard(self, table: str, timeout: float | None = None) -> str:
        """The quoted guard table of ``table``, created with its row where it is missing.

        Its existence is looked up (an API call, not a job) once per adapter, so the
        DDL runs once per table, not once per process or save.
        """
        from google.api_core.exceptions import Conflict

        guard = self.guard_table(table)
        if guard not in self._guards:
            if self._fetch_schema(guard) is None:
                # Conflict: another writer created it at the same moment.
                with contextlib.suppress(Conflict):
                    self._run(
                        guard_table_ddl(
                            self.quote_table(guard), BIGQUERY_DIALECT, self.legacy_fences(table)
                        ),
                        timeout=timeout,
                    )
            self._guards.add(guard)
        return self.quote_table(guard)

    def script(self, plan: MergePlan, source_query: str, declare: str = "") -> str:
        """The whole save as one script (one job): see ``write_steps`` for why it is safe."""
        steps = write_steps(
            plan,
            [fence_partition_key(v) for v in plan.partition_values],
            target=self.quote_table(plan.table),
            guard=self.quote_table(self.guard_table(plan.table)),
            source=f"({source_query})",
            dialect=BIGQUERY_DIALECT,
        )
        key_types = {c.name: c.native_type or c.type for c in plan.columns if c.name in plan.keys}
        lines = ["DECLARE pg_counts STRUCT<matched INT64, newer INT64>;"]
        if plan.update_only:
            fields = ", ".join(f"{k} {key_types[k]}" for k in plan.keys)
            lines.append(f"DECLARE pg_missing ARRAY<STRUCT<{fields}>> DEFAULT [];")
        if declare:
            lines.append(declare)
        lines += [_script_statement(step) + ";" for step in steps]
        final = "SELECT pg_counts.matched AS matched, pg_counts.newer AS newer"
        if plan.update_only:
            keys = ", ".join(f"m.{k} AS {k}" for k in plan.keys)
            final = (
                f"SELECT {keys}, pg_counts.matched AS matched, pg_counts.newer AS newer "
                "FROM (SELECT 1) LEFT JOIN UNNEST(pg_missing) AS m ON TRUE"
            )
        lines.append(final + ";")
        return "\n".join(lines)

    def inline_script(self, plan: MergePlan) -> tuple[str, int]:
        """The script carrying the batch as a JSON string variable, and that JSON's size."""
        text = json_rows_text(plan.rows, plan.columns)
        source = (
            "SELECT "
            + ", ".join(
                f"{_json_extract('pg_x', f'$[{i}]', c)} AS {c.name}"
                for i, c in enumerate(plan.columns)
            )
            + " FROM UNNEST(JSON_QUERY_ARRAY(pg_rows)) AS pg_x"
        )
        declare = f"DECLARE pg_rows STRING DEFAULT {render_string_literal(text)};"
        return self.script(plan, source, declare), len(text.encode("utf-8"))

    def merge(self, plan: MergePlan, *, timeout: float | None = None) -> MergeOutcome:
        started = time.monotonic()

        def left() -> float | None:
            return None if timeout is None else timeout - (time.monotonic() - started)

        self.ensure_guard(plan.table, left())
        script, variable = self.inline_script(plan)
        request = encoded_request_bytes(script)
        fits = (
            variable <= min(SCRIPT_VARIABLE_LIMIT, plan.staging_threshold_bytes)
            and len(script.encode("utf-8")) <= QUERY_TEXT_LIMIT
            and request <= REQUEST_LIMIT
        )
        if not fits:
            return self._merge_staged(plan, left)
        try:
            return self._run_script(plan, script, request, "inline", 0, left())
        except Exception as exc:
            if not is_too_large(exc):
                raise
            log.warning("BigQuery refused the request as too large (%s); staging instead", exc)
            return self._merge_staged(plan, left)

    def _run_script(
        self,
        plan: MergePlan,
        script: str,
        size: int,
        path: str,
        jobs: int,
        timeout: float | None,
    ) -> MergeOutcome:
        try:
            rows, _ = self._run(script, timeout=timeout)
        except Exception as exc:
            if STALE_MARKER in str(exc):
                raise self.stale_fence(plan) from exc
            raise
        first = rows[0] if rows else {"matched": 0, "newer": 0}
        missing = [
            {k: r[k] for k in plan.keys}
            for r in rows
            if all(r.get(k) is not None for k in plan.keys)
        ]
        return plan_outcome(
            plan, int(first["matched"] or 0), int(first["newer"] or 0), missing,
            jobs=jobs + 1, bytes_sent=size, path=path, statements=[script],
        )  # fmt: skip

    def _merge_staged(self, plan: MergePlan, left: Any) -> MergeOutcome:
        from google.cloud import bigquery

        project, dataset, name = self._parts(plan.table)
        stage_name = f"{project}.{dataset}._pg_stage_{name}_{uuid.uuid4().hex[:12]}"
        fields = [_schema_field(c) for c in plan.columns]
        stage = bigquery.Table(stage_name, schema=fields)
        stage.expires = dt.datetime.now(dt.timezone.utc) + plan.staging_ttl
        ndjson = _ndjson(plan)
        self.client.create_table(stage, retry=None, timeout=_bounded(left(), self.timeout))
        try:
            _load_ndjson(self.client, stage_name, fields, ndjson, _bounded(left(), self.timeout))
            cols = ", ".join(plan.column_names)
            source = f"SELECT {cols} FROM {self.quote_table(stage_name)}"
            return self._run_script(
                plan, self.script(plan, source), len(ndjson), "staging", 1, left()
            )
        finally:
            # Dropping the staging table (never emptying it); the expiration covers a crash.
            try:
                self.client.delete_table(stage_name, not_found_ok=True, retry=None, timeout=30.0)
            except Exception as exc:  # pragma: no cover - expiration cleans up
                log.warning("could not drop staging table %s (expires anyway): %r", stage_name, exc)


def _bounded(left: float | None, default: float) -> float:
    return default if left is None else max(left, 0.001)


def _script_statement(step: Step) -> str:
    """A step as a script statement: counts and missing keys go into script variables."""
    if step.kind == "count":
        return f"SET pg_counts = ({step.sql.replace('SELECT', 'SELECT AS STRUCT', 1)})"
    if step.kind == "missing":
        return f"SET pg_missing = ARRAY({step.sql.replace('SELECT', 'SELECT AS STRUCT', 1)})"
    return step.sql


def _column(field: Any) -> Column:
    """A Column from a BigQuery SchemaField: NUMERIC's precision and scale, an ARRAY's
    element type, a RECORD's fields (nested too)."""
    kind = normalise_type(field.field_type)
    precision = getattr(field, "precision", None)
    scale = getattr(field, "scale", None)
    column = Column(
        field.name, kind, field.mode == "REQUIRED", "",
        None if precision is None or kind not in DEFAULT_DECIMAL else int(precision),
        None if scale is None or kind not in DEFAULT_DECIMAL else int(scale),
        repeated=field.mode == "REPEATED",
        fields=tuple(_column(f) for f in field.fields) if kind == "STRUCT" else (),
    )  # fmt: skip
    return Column(
        column.name, column.type, column.required, bigquery_type(column),
        column.precision, column.scale, column.repeated, column.fields,
    )  # fmt: skip


def _schema_field(column: Column) -> Any:
    """The SchemaField of a Column (mode and nested fields included), for a load."""
    from google.cloud import bigquery

    mode = "REPEATED" if column.repeated else "NULLABLE"
    kind = "RECORD" if column.type == "STRUCT" else column.type
    if column.fields:
        return bigquery.SchemaField(
            column.name, kind, mode=mode, fields=[_schema_field(f) for f in column.fields]
        )
    if column.precision is None:
        return bigquery.SchemaField(column.name, kind, mode=mode)
    return bigquery.SchemaField(
        column.name, kind, mode=mode, precision=column.precision, scale=column.scale or 0
    )
