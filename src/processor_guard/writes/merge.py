"""``safe_merge``: dedup, validate, then one fenced MERGE that retries only conflicts.

Never DELETE + INSERT: a write is a single MERGE keyed on the table's key, limited to
the partition values in the batch, updating only the columns the batch carries.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import re
import tempfile
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tenacity import (
    RetryCallState,
    RetryError,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
)

from .._backoff import jitter_wait
from .._values import SUPPORTED_TYPES, coerce, to_json_value
from ..errors import ConfigError, InvalidRows, MergeFailed
from ..leases import Lease, current_lease
from ..tables import TABLES
from .dedup import DedupReport, dedupe_rows
from .warehouse import Column, MergeOutcome, MergePlan, Warehouse, as_warehouse

__all__ = ["MergeResult", "asafe_merge", "safe_merge"]

log = logging.getLogger(__name__)

_ONE_SOURCE_ROW = re.compile(r"must match at most one source row", re.IGNORECASE)
_warehouses: weakref.WeakKeyDictionary[Any, Warehouse] = weakref.WeakKeyDictionary()
_path_warehouses: dict[str, Warehouse] = {}
_cache_lock = threading.Lock()


@dataclass
class MergeResult:
    """What ``safe_merge`` wrote.

    ``skipped``: keys already stored with a newer ``order_by`` value, left as they were.
    ``jobs``: warehouse jobs of the successful attempt (1 for a small batch).
    ``missing_keys``: with ``update_only``, the batch's keys that had no stored row
    (nothing was written for them).
    """

    table: str
    inserted: int
    updated: int
    attempts: int
    dedup: DedupReport
    skipped: int = 0
    fence: int | None = None
    jobs: int = 0
    bytes_sent: int = 0
    path: str = ""
    missing_keys: list[dict[str, Any]] = field(default_factory=list)


def _warehouse_for(client: Any) -> Warehouse:
    """One adapter per client, so the table schema is fetched once and cached."""
    if isinstance(client, Warehouse):
        return client
    with _cache_lock:
        if isinstance(client, (str, Path)):
            key = str(client)
            if key not in _path_warehouses:
                _path_warehouses[key] = as_warehouse(client)
            return _path_warehouses[key]
        try:
            found = _warehouses.get(client)
        except TypeError:
            return as_warehouse(client)
        if found is None:
            found = as_warehouse(client)
            with contextlib.suppress(TypeError):
                _warehouses[client] = found
        return found


def _table_keys(table: str) -> tuple[str, ...]:
    spec = TABLES.get(table.rsplit(".", 1)[-1])
    if spec is None:
        raise ConfigError(f"keys= is required for {table!r} (not one of {sorted(TABLES)})")
    return spec.keys


def _validate(
    wh: Warehouse,
    table: str,
    rows: Sequence[Mapping[str, Any]],
    index_of: Mapping[int, int],
    keys: tuple[str, ...],
    partition_field: str | None,
    update_only: bool = False,
) -> tuple[tuple[Column, ...], list[dict[str, Any]]]:
    """Rows converted to their column types; InvalidRows before anything is sent.

    ``update_only``: REQUIRED columns the batch does not carry are not needed (the
    stored rows keep theirs); those it carries must still hold a value.
    """
    # Long: every check a batch must pass before anything is sent, in the order
    # its errors are reported; split, the checks would pass the same five values around.
    schema = wh.schema(table)
    by_name = {c.name: c for c in schema}
    carried: set[str] = set()
    for row in rows:
        carried.update(row)
    if carried - by_name.keys():
        schema = wh.schema(table, refresh=True)  # the table may have gained columns
        by_name = {c.name: c for c in schema}
    for name in (*keys, *([partition_field] if partition_field else [])):
        if name not in by_name:
            raise ConfigError(f"table {table!r} has no column {name!r}")
    columns = tuple(c for c in schema if c.name in carried)
    required = [c.name for c in schema if c.required and (c.name in carried or not update_only)]
    out: list[dict[str, Any]] = []
    for row in rows:
        i = index_of.get(id(row), -1)
        for name in row:
            if name not in by_name:
                raise InvalidRows(
                    f"row {i}: column {name!r} is not in {table!r}", row_index=i, column=name
                )
        converted: dict[str, Any] = {}
        for col in columns:
            if col.name not in row:
                raise InvalidRows(
                    f"row {i} lacks column {col.name!r} that other rows carry "
                    "(it would be written as NULL)",
                    row_index=i,
                    column=col.name,
                )
            if col.type not in SUPPORTED_TYPES:
                raise InvalidRows(
                    f"column {col.name!r} of type {col.type} cannot be written by safe_merge",
                    row_index=i,
                    column=col.name,
                )
            try:
                converted[col.name] = coerce(
                    row[col.name], col.type, precision=col.precision, scale=col.scale
                )
            except (TypeError, ValueError, ArithmeticError) as exc:
                raise InvalidRows(
                    f"row {i}, column {col.name!r}: {row[col.name]!r} is not a valid "
                    f"{col.type}: {exc}",
                    row_index=i,
                    column=col.name,
                ) from exc
        for name in required:
            if converted.get(name) is None:
                raise InvalidRows(
                    f"row {i}: REQUIRED column {name!r} is missing or None",
                    row_index=i,
                    column=name,
                )
        if partition_field and converted.get(partition_field) is None:
            raise InvalidRows(
                f"row {i}: partition column {partition_field!r} is missing or None",
                row_index=i,
                column=partition_field,
            )
        out.append(converted)
    seen: dict[tuple[Any, ...], int] = {}
    for n, row in enumerate(out):
        key = tuple(row[k] for k in keys)
        if key in seen:
            i = index_of.get(id(rows[n]), -1)
            raise InvalidRows(
                f"row {i} repeats key {key!r}: a MERGE source must hold one row per key",
                row_index=i,
            )
        seen[key] = n
    return columns, out


def _lease_groups(
    partitions: Sequence[Any], innermost: Any, *, unfenced: bool
) -> list[tuple[Any, tuple[Any, ...]]]:
    """Partitions grouped by the lease each is written under: its date's own lease in
    this context, else the innermost one (None: no lease). ``unfenced`` (no explicit
    fence): a date whose lease this process holds in another context is refused."""
    groups: dict[int, tuple[Any, list[Any]]] = {}
    for value in partitions:
        is_date = isinstance(value, dt.date) and not isinstance(value, dt.datetime)
        own = current_lease(value, for_write=unfenced) if is_date else None
        lease = own or innermost
        groups.setdefault(id(lease), (lease, []))[1].append(value)
    return [(lease, tuple(values)) for lease, values in groups.values()]


def _combined(report: DedupReport, parts: Sequence[MergeResult]) -> MergeResult:
    """One result for a batch written as one MERGE per lease."""
    return MergeResult(
        table=parts[-1].table,
        inserted=sum(p.inserted for p in parts),
        updated=sum(p.updated for p in parts),
        attempts=sum(p.attempts for p in parts),
        dedup=report,
        skipped=sum(p.skipped for p in parts),
        fence=parts[-1].fence,
        jobs=sum(p.jobs for p in parts),
        bytes_sent=sum(p.bytes_sent for p in parts),
        path=parts[-1].path,
    )


def _default_replay_path(table: str) -> Path:
    base = Path(os.environ.get("PROCESSOR_GUARD_REPLAY_DIR") or tempfile.gettempdir())
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", table)
    return base / f"processor_guard-replay-{safe}-{stamp}-{uuid.uuid4().hex[:8]}.ndjson"


def _write_replay(path: Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[Column]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            record = {c.name: to_json_value(row.get(c.name), c.type) for c in columns}
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")


def _checked_arguments(
    table: object, keys: Sequence[str] | None, fence: object, max_attempts: int, deadline: float
) -> tuple[str, ...]:
    """The key columns, once the arguments are known to be usable (ConfigError if not)."""
    if not isinstance(table, str) or not table:
        raise ConfigError(f"table must be a non-empty string: {table!r}")
    key_cols = _table_keys(table) if keys is None else tuple(keys)
    if isinstance(keys, str) or not key_cols:
        raise ConfigError(f"keys must be a non-empty sequence of columns: {keys!r}")
    if max_attempts < 1 or deadline <= 0:
        raise ConfigError("max_attempts must be >= 1 and deadline > 0")
    if fence is not None and (isinstance(fence, bool) or not isinstance(fence, int)):
        raise ConfigError(f"fence must be an int: {fence!r}")
    return key_cols


def safe_merge(
    client: Any,
    table: str,
    rows: Iterable[Mapping[str, Any]],
    *,
    keys: Sequence[str] | None = None,
    partition_field: str | None = "game_date",
    fence: int | None = None,
    order_by: str | None = "processed_at",
    keep: str = "last",
    only_newer: bool = True,
    staging_threshold_bytes: int = 4_000_000,
    staging_ttl: dt.timedelta = dt.timedelta(hours=1),
    update_only: bool = False,
    max_attempts: int = 12,
    deadline: float = 120.0,
    backoff_initial: float = 0.5,
    backoff_max: float = 20.0,
    sleep: Callable[[float], None] | None = None,
    replay_path: str | os.PathLike[str] | None = None,
) -> MergeResult:
    """Dedup ``rows``, validate them, and MERGE them into ``table`` (never DELETE).

    ``client``: a BigQuery client, a DuckDB connection or path, or a Warehouse.
    ``fence=None`` takes the fence of ``current_lease()`` if any; with a fence the
    MERGE runs in a transaction that rejects a stale fence (``StaleFence``).
    ``only_newer``: keys already stored with a newer ``order_by`` value are not
    overwritten. ``update_only``: update stored keys only, in the columns the batch
    carries (REQUIRED columns it lacks are not needed); keys with no stored row are
    reported in ``missing_keys``, never inserted.

    Retries only conflicts and transient errors (full-jitter exponential backoff, at
    most ``max_attempts`` and ``deadline`` seconds). This is the only retry layer:
    each attempt, the wait for its job included, is bounded by the deadline's and the
    lease's remaining time (the job is cancelled when that runs out). Then
    ``MergeFailed`` with the batch written as NDJSON to ``replay_path``.
    """
    # Long: one save, top to bottom: arguments, dedup, validation, one MERGE per lease, the
    # plan, then the one retry layer (_merge_with_retries).
    key_cols = _checked_arguments(table, keys, fence, max_attempts, deadline)
    wh = _warehouse_for(client)
    source = rows if isinstance(rows, list) else list(rows)
    index_of = {id(r): i for i, r in enumerate(source)}
    deduped, report = dedupe_rows(source, key_cols, order_by=order_by, keep=keep, copy=False)
    lease = current_lease()
    if not deduped:
        if fence is None and lease is not None:
            fence = lease.fence
        return MergeResult(table, 0, 0, 0, report, fence=fence)
    columns, converted = _validate(
        wh, table, deduped, index_of, key_cols, partition_field, update_only
    )
    partitions: tuple[Any, ...] = ()
    if partition_field:
        partitions = tuple(sorted({r[partition_field] for r in converted}))
    groups = _lease_groups(partitions, lease, unfenced=fence is None)
    if len(groups) > 1:
        # Each date's rows must carry that date's fence and be checked against its
        # lease: one MERGE per lease (each call below finds one lease for its rows).
        def merge_part(values: tuple[Any, ...]) -> MergeResult:
            assert partition_field is not None
            part = [r for r in converted if r[partition_field] in values]
            return safe_merge(
                client, table, part, keys=key_cols, partition_field=partition_field,
                fence=fence, order_by=order_by, keep=keep, only_newer=only_newer,
                staging_threshold_bytes=staging_threshold_bytes, staging_ttl=staging_ttl,
                update_only=update_only, max_attempts=max_attempts, deadline=deadline,
                backoff_initial=backoff_initial, backoff_max=backoff_max, sleep=sleep,
                replay_path=replay_path,
            )  # fmt: skip

        return _combined(report, [merge_part(values) for _, values in groups])
    if groups:
        lease = groups[0][0]
    if fence is None and lease is not None:
        fence = lease.fence
    plan = MergePlan(
        table=table,
        keys=key_cols,
        partition_field=partition_field,
        columns=columns,
        rows=converted,
        partition_values=partitions,
        fence=fence,
        order_by=order_by if only_newer else None,
        staging_threshold_bytes=staging_threshold_bytes,
        staging_ttl=staging_ttl,
        update_only=update_only,
    )

    outcome, attempts = _merge_with_retries(
        wh, plan, lease, max_attempts=max_attempts, deadline=deadline,
        backoff_initial=backoff_initial, backoff_max=backoff_max, sleep=sleep,
        replay_path=replay_path,
    )  # fmt: skip

    log.info(
        "MERGE into %s: %d inserted, %d updated, %d skipped (fence %s, %d attempt(s), %s)",
        table,
        outcome.inserted,
        outcome.updated,
        outcome.skipped,
        fence,
        attempts,
        outcome.path,
    )
    return MergeResult(
        table=table,
        inserted=outcome.inserted,
        updated=outcome.updated,
        attempts=attempts,
        dedup=report,
        skipped=outcome.skipped,
        fence=fence,
        jobs=outcome.jobs,
        bytes_sent=outcome.bytes_sent,
        path=outcome.path,
        missing_keys=outcome.missing_keys,
    )


def _merge_with_retries(
    wh: Warehouse,
    plan: MergePlan,
    lease: Lease | None,
    *,
    max_attempts: int,
    deadline: float,
    backoff_initial: float,
    backoff_max: float,
    sleep: Callable[[float], None] | None,
    replay_path: str | os.PathLike[str] | None,
) -> tuple[MergeOutcome, int]:
    """The one retry layer: (outcome, attempts), or MergeFailed with a replay file."""
    table, converted, columns = plan.table, plan.rows, plan.columns
    attempts = 0
    started = time.monotonic()

    def attempt() -> MergeOutcome:
        nonlocal attempts
        attempts += 1
        if lease is not None:
            lease.check()  # raises LeaseLost: never write after losing the lease
        budget = deadline - (time.monotonic() - started)
        if lease is not None:
            # A write may not outlive the lease: stop where check() would refuse it.
            budget = min(budget, lease.remaining - lease.safety_margin)
        try:
            return wh.merge(plan, timeout=max(budget, 0.001))
        except Exception as exc:
            if _ONE_SOURCE_ROW.search(str(exc)):
                raise InvalidRows(
                    f"the warehouse saw two source rows for one key in {table!r}: {exc}"
                ) from exc
            raise

    def retryable(exc: BaseException) -> bool:
        kind = wh.classify(exc)
        return kind in ("conflict", "transient")

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning(
            "MERGE into %s attempt %d failed (%s), retrying: %s",
            table,
            state.attempt_number,
            type(exc).__name__,
            exc,
        )

    retrying = Retrying(
        stop=stop_after_attempt(max_attempts) | stop_after_delay(deadline),
        wait=jitter_wait(backoff_initial, backoff_max),
        retry=retry_if_exception(retryable),
        sleep=sleep or time.sleep,
        before_sleep=before_sleep,
        reraise=False,
    )
    try:
        return retrying(attempt), attempts
    except RetryError as exc:
        last = exc.last_attempt.exception()
        path = Path(replay_path) if replay_path is not None else _default_replay_path(table)
        try:
            _write_replay(path, converted, columns)
            written: str | None = str(path)
        except OSError as write_exc:
            log.error("could not write replay file %s: %r", path, write_exc)
            written = None
        raise MergeFailed(table, attempts, last, converted, written) from last


async def asafe_merge(*args: Any, **kwargs: Any) -> MergeResult:
    """:func:`safe_merge` for async code, same arguments: it runs on a worker thread
    (the warehouse clients are synchronous) while the event loop goes on. The thread
    carries this task's leases, so every attempt is checked against them and fenced
    exactly as in ``safe_merge``."""
    # to_thread runs in a copy of this task's context: current_lease() sees its leases.
    return await asyncio.to_thread(safe_merge, *args, **kwargs)
