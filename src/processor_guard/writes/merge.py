"""``safe_merge``: dedup, validate, then one fenced MERGE that retries only conflicts.

Never DELETE + INSERT: a write is a single MERGE keyed on the table's key, limited to
the partition values in the batch, updating only the columns the batch carries.

Rows are converted to their columns' types before dedup, so key values compare as the
warehouse compares them: STRING keys as strings, TIMESTAMP keys as instants.

``new_columns``: columns the rows carry that the table lacks are refused
(``"refuse"``, InvalidRows), added as NULLABLE columns of the type their values have
(``"add"``), or left out (``"drop"``); reported in ``MergeResult.added_columns`` /
``dropped_columns`` and logged. ``empty_keys``: a row whose key value is missing,
None (NaN, NaT) or empty is refused (``"refuse"``, InvalidRows naming it) or left out
(``"skip"``, reported in ``MergeResult.skipped_rows`` and logged).
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
from typing import Any, TypeAlias

from tenacity import (
    RetryCallState,
    RetryError,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
)

from .._backoff import jitter_wait
from .._values import SUPPORTED_TYPES, coerce, coerce_field, field_json, infer_type, plain_value
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
    ``added_columns`` / ``dropped_columns``: columns the rows carried that the table
    lacked, added to it (``new_columns="add"``) or left out (``"drop"``).
    ``skipped_rows``: with ``empty_keys="skip"``, the rows left out for a missing, None
    or empty key value: ``{"row": input index, "column": key column}``.
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
    added_columns: list[str] = field(default_factory=list)
    dropped_columns: list[str] = field(default_factory=list)
    skipped_rows: list[dict[str, Any]] = field(default_factory=list)


#: Where a failed batch's replay file goes: a directory, or a callable given the file
#: name and its NDJSON bytes that stores them and returns where (e.g. a ``gs://`` URI).
ReplayDestination: TypeAlias = "str | os.PathLike[str] | Callable[[str, bytes], str]"

_NEW_COLUMN_POLICIES = ("refuse", "add", "drop")
_EMPTY_KEY_POLICIES = ("refuse", "skip")


def _input_rows(rows: Any) -> list[Any]:
    """The rows as a list: a pandas DataFrame gives its records (pandas is not imported)."""
    if isinstance(rows, list):
        return rows
    if type(rows).__module__.startswith("pandas") and hasattr(rows, "to_dict"):
        return list(rows.to_dict(orient="records"))
    if isinstance(rows, (str, bytes, Mapping)):
        raise ConfigError(f"rows must be an iterable of mappings, not a {type(rows).__name__}")
    return list(rows)


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


@dataclass
class _Validated:
    """Rows converted to their column types, and what validation changed on the way."""

    columns: tuple[Column, ...]
    rows: list[dict[str, Any]]
    added_columns: list[str] = field(default_factory=list)
    dropped_columns: list[str] = field(default_factory=list)
    skipped_rows: list[dict[str, Any]] = field(default_factory=list)


def _new_columns(
    wh: Warehouse,
    table: str,
    rows: Sequence[Mapping[str, Any]],
    unknown: set[str],
    policy: str,
) -> tuple[list[str], list[str]]:
    """(added, dropped) for columns the rows carry and the table lacks, by ``policy``."""
    if policy == "refuse":
        for i, row in enumerate(rows):
            for name in row:
                if name in unknown:
                    raise InvalidRows(
                        f"row {i}: column {name!r} is not in {table!r} (new_columns='add' "
                        "adds it, 'drop' leaves it out)",
                        row_index=i,
                        column=name,
                    )
    names = sorted(unknown)
    if policy == "drop":
        log.warning("safe_merge into %s: leaving out columns it lacks: %s", table, names)
        return [], names
    new: list[Column] = []
    for name in names:
        try:
            kind, repeated = infer_type([row.get(name) for row in rows])
        except (TypeError, ValueError) as exc:
            raise InvalidRows(
                f"new column {name!r} cannot be added to {table!r}: {exc}", column=name
            ) from exc
        new.append(Column(name, kind, repeated=repeated))
    wh.add_columns(table, new)
    log.warning("safe_merge into %s: added NULLABLE columns %s", table, names)
    return names, []


def _empty_key(row: Mapping[str, Any], keys: tuple[str, ...]) -> str | None:
    """The first key column whose value is missing, None (NaN, NaT) or empty."""
    for k in keys:
        value = row.get(k)
        if value is None or value == "" or plain_value(value) is None:
            return k
    return None


def _validate(
    wh: Warehouse,
    table: str,
    rows: Sequence[Mapping[str, Any]],
    keys: tuple[str, ...],
    partition_field: str | None,
    update_only: bool = False,
    new_columns: str = "refuse",
    empty_keys: str = "refuse",
) -> _Validated:
    """Rows converted to their column types; InvalidRows before anything is sent.

    ``update_only``: REQUIRED columns the batch does not carry are not needed (the
    stored rows keep theirs); those it carries must still hold a value.
    """
    # Long: every check a batch must pass before anything is sent, in the order
    # its errors are reported; split, the checks would pass the same five values around.
    schema = wh.schema(table)
    carried: set[str] = set()
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise InvalidRows(f"row {i} is a {type(row).__name__}, not a mapping", row_index=i)
        carried.update(row)
    if carried - {c.name for c in schema}:
        schema = wh.schema(table, refresh=True)  # the table may have gained columns
    unknown = carried - {c.name for c in schema}
    result = _Validated((), [])
    if unknown:
        result.added_columns, result.dropped_columns = _new_columns(
            wh, table, rows, unknown, new_columns
        )
        carried -= set(result.dropped_columns)
        if result.added_columns:
            schema = wh.schema(table, refresh=True)
    by_name = {c.name: c for c in schema}
    for name in (*keys, *([partition_field] if partition_field else [])):
        if name not in by_name:
            raise ConfigError(f"table {table!r} has no column {name!r}")
        if not by_name[name].is_scalar:
            raise ConfigError(f"column {name!r} is an ARRAY or STRUCT: it cannot be a key")
    columns = tuple(c for c in schema if c.name in carried)
    for col in columns:
        if col.type not in SUPPORTED_TYPES:
            raise InvalidRows(
                f"column {col.name!r} of type {col.type} cannot be written by safe_merge",
                column=col.name,
            )
    plan = [(c.name, c, c.is_scalar) for c in columns]
    required = [c.name for c in schema if c.required and (c.name in carried or not update_only)]
    for i, row in enumerate(rows):
        empty = _empty_key(row, keys)
        if empty is not None:
            if empty_keys == "skip":
                result.skipped_rows.append({"row": i, "column": empty})
                continue
            raise InvalidRows(
                f"row {i} has an empty key value in column {empty!r}: {row.get(empty)!r} "
                "(empty_keys='skip' leaves such rows out)",
                row_index=i,
                column=empty,
            )
        converted: dict[str, Any] = {}
        for name, col, scalar in plan:
            if name not in row:
                raise InvalidRows(
                    f"row {i} lacks column {name!r} that other rows carry "
                    "(it would be written as NULL)",
                    row_index=i,
                    column=name,
                )
            value = row[name]
            try:
                converted[name] = (
                    coerce(value, col.type, precision=col.precision, scale=col.scale)
                    if scalar
                    else coerce_field(value, col)
                )
            except (TypeError, ValueError, ArithmeticError) as exc:
                raise InvalidRows(
                    f"row {i}, column {name!r}: {value!r} is not a valid "
                    f"{col.native_type or col.type}: {exc}",
                    row_index=i,
                    column=name,
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
        result.rows.append(converted)
    if result.skipped_rows:
        log.warning(
            "safe_merge into %s: left out %d row(s) with an empty key value, first: %s",
            table, len(result.skipped_rows), result.skipped_rows[:3],
        )  # fmt: skip
    result.columns = columns
    return result


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


def _combined(
    report: DedupReport, parts: Sequence[MergeResult], changes: Mapping[str, Any]
) -> MergeResult:
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
        missing_keys=[k for p in parts for k in p.missing_keys],
        **changes,
    )


def _replay_name(table: str) -> str:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", table)
    return f"processor_guard-replay-{safe}-{stamp}-{uuid.uuid4().hex[:8]}.ndjson"


def _replay_bytes(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column]) -> bytes:
    return "".join(
        json.dumps({c.name: field_json(row.get(c.name), c) for c in columns}, ensure_ascii=False)
        + "\n"
        for row in rows
    ).encode("utf-8")


def _save_replay(
    table: str,
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[Column],
    replay_path: str | os.PathLike[str] | None,
    replay_to: ReplayDestination | None,
) -> tuple[str | None, str | None]:
    """(where the failed batch went, why it could not be saved): one of them is None.

    ``replay_path``: that file. ``replay_to``: a directory, or a callable that stores
    ``(file name, NDJSON bytes)`` and returns where. Neither: ``PROCESSOR_GUARD_REPLAY_DIR``,
    else the temporary directory (lost with the instance on Cloud Run).
    """
    name = _replay_name(table)
    try:
        payload = _replay_bytes(rows, columns)
        if replay_path is not None:
            path = Path(replay_path)
        elif callable(replay_to):
            return str(replay_to(name, payload)), None
        else:
            env_dir = os.environ.get("PROCESSOR_GUARD_REPLAY_DIR") or tempfile.gettempdir()
            path = Path(replay_to if replay_to is not None else env_dir) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(payload)
        return str(path), None
    except Exception as exc:  # the MERGE's failure is the one to report, with this beside it
        log.error("could not save the replay file of %s: %r", table, exc)
        return None, f"{type(exc).__name__}: {exc}"


def _checked_arguments(
    table: object,
    keys: Sequence[str] | None,
    fence: object,
    max_attempts: int,
    deadline: float,
    new_columns: str = "refuse",
    empty_keys: str = "refuse",
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
    if new_columns not in _NEW_COLUMN_POLICIES:
        raise ConfigError(f"new_columns must be one of {_NEW_COLUMN_POLICIES}: {new_columns!r}")
    if empty_keys not in _EMPTY_KEY_POLICIES:
        raise ConfigError(f"empty_keys must be one of {_EMPTY_KEY_POLICIES}: {empty_keys!r}")
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
    replay_to: ReplayDestination | None = None,
    new_columns: str = "refuse",
    empty_keys: str = "refuse",
) -> MergeResult:
    """Dedup ``rows``, validate them, and MERGE them into ``table`` (never DELETE).

    ``rows``: mappings (values may be numpy/pandas ones: ``NaN``/``NaT`` are NULL), or
    a pandas DataFrame. ARRAY columns take lists (None: empty), STRUCT columns dicts.
    ``client``: a BigQuery client (or anything with its methods), a DuckDB connection
    or path, or a Warehouse.
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
    ``MergeFailed`` with the batch written as NDJSON to ``replay_path`` (a file), or to
    ``replay_to`` (a directory, or a callable given the file name and bytes that stores
    them and returns where); ``MergeFailed.replay_path`` names where it went.

    ``new_columns`` and ``empty_keys``: see the module's docstring.
    """
    # Long: one save, top to bottom: arguments, validation, dedup, one MERGE per lease, the
    # plan, then the one retry layer (_merge_with_retries).
    key_cols = _checked_arguments(
        table, keys, fence, max_attempts, deadline, new_columns, empty_keys
    )
    wh = _warehouse_for(client)
    source = _input_rows(rows)
    lease = current_lease()
    if not source:
        if fence is None and lease is not None:
            fence = lease.fence
        return MergeResult(table, 0, 0, 0, dedupe_rows([], key_cols)[1], fence=fence)
    # Validated first, so that dedup compares typed values as the warehouse does.
    valid = _validate(
        wh, table, source, key_cols, partition_field, update_only, new_columns, empty_keys
    )
    columns = valid.columns
    converted, report = dedupe_rows(valid.rows, key_cols, order_by=order_by, keep=keep, copy=False)
    changes: dict[str, Any] = {
        "added_columns": valid.added_columns,
        "dropped_columns": valid.dropped_columns,
        "skipped_rows": valid.skipped_rows,
    }
    if not converted:
        if fence is None and lease is not None:
            fence = lease.fence
        return MergeResult(table, 0, 0, 0, report, fence=fence, **changes)
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
                replay_path=replay_path, replay_to=replay_to,
            )  # fmt: skip

        return _combined(report, [merge_part(values) for _, values in groups], changes)
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
        replay_path=replay_path, replay_to=replay_to,
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
        **changes,
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
    replay_to: ReplayDestination | None = None,
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
        written, why = _save_replay(table, converted, columns, replay_path, replay_to)
        raise MergeFailed(table, attempts, last, converted, written, replay_error=why) from last


async def asafe_merge(*args: Any, **kwargs: Any) -> MergeResult:
    """:func:`safe_merge` for async code, same arguments: it runs on a worker thread
    (the warehouse clients are synchronous) while the event loop goes on. The thread
    carries this task's leases, so every attempt is checked against them and fenced
    exactly as in ``safe_merge``."""
    # to_thread runs in a copy of this task's context: current_lease() sees its leases.
    return await asyncio.to_thread(safe_merge, *args, **kwargs)
