"""A compact analytics processor base class with processor_guard at its integration points.

The lifecycle is the pipeline's own (validate -> lock -> extract -> transform -> save ->
record completion -> release); the guard adds four things:

1. ``@guarded`` on ``run`` holds one lease per game date of ``start_date..end_date``,
   renewed in the background; the lease store comes from ``PROCESSOR_GUARD_STORE``.
2. ``save`` dedups the batch and MERGEs it with ``safe_merge``, which takes the fence of
   the lease held by ``run``: a writer that lost its lease gets ``StaleFence`` instead
   of overwriting its successor. No DELETE is ever sent.
3. Completion is recorded while the lease is still held (``record`` checks it and stores
   its fence), with the games the run covered: a first batch of 2 of 10 games completes
   nothing, the run that covers the date does. A trigger left pending (publish failed,
   or claimed by another caller) raises ``TriggerPending``, so the message is
   redelivered instead of acked.
4. When another instance holds the date, ``LockBusy`` leaves ``run``, so the push
   endpoint answers non-2xx and Pub/Sub redelivers later (never "return True").
"""

from __future__ import annotations

import logging
import uuid
from typing import Any, ClassVar

from processor_guard import (
    TABLES,
    CompletionTracker,
    GuardError,
    MergeResult,
    dedupe_rows,
    guarded,
    safe_merge,
)
from processor_guard.completion.tracker import TriggerPending
from processor_guard.leases import date_range

log = logging.getLogger(__name__)


class AnalyticsProcessorBase:
    """Subclasses set ``table`` and implement ``extract`` and ``transform``."""

    table: ClassVar[str]

    def __init__(self, warehouse: Any, tracker: CompletionTracker, *, dataset: str) -> None:
        self.warehouse = warehouse  # a bigquery.Client, a DuckDB connection or file path
        self.tracker = tracker
        self.dataset = dataset  # "project.nba_analytics" on BigQuery, "main" on DuckDB
        self.spec = TABLES[self.table]

    def extract(self, opts: dict[str, Any]) -> list[dict[str, Any]]:
        raise NotImplementedError

    def transform(self, raw: list[dict[str, Any]], opts: dict[str, Any]) -> list[dict[str, Any]]:
        raise NotImplementedError

    def covered(self, rows: list[dict[str, Any]], day: str) -> list[str]:
        """What this run covered for ``day``: the games it wrote rows for."""
        return sorted({str(r["game_id"]) for r in rows if str(r["game_date"]) == day})

    # The scope is the table, not the class name: two processors writing one table
    # must share a lease. ttl=60 is safe for long runs: the lease is renewed every
    # ttl/3. wait=0: a busy date is redelivered by Pub/Sub, not waited on.
    @guarded(lambda self: self.table, ttl=60.0, wait=0)
    def run(self, opts: dict[str, Any]) -> bool:
        run_id = str(opts.get("run_id") or uuid.uuid4().hex)
        try:
            rows = self.transform(self.extract(opts), opts)
            written = self.save(rows)
        except GuardError:
            # LeaseLost / StaleFence (another instance owns the date now), MergeFailed,
            # InvalidRows: let them out so the push endpoint answers 500.
            raise
        except Exception:
            log.exception("%s failed for %s", self.table, opts.get("end_date"))
            return False
        # Still under the lease: completion can never run ahead of the data.
        for day, covered in self.days_covered(opts, rows):
            state = self.tracker.record(
                day, self.table, execution_id=run_id, record_count=written, covered=covered
            )
            if state.waiting_for_publish:
                raise TriggerPending(state)
        return True

    def days_covered(
        self, opts: dict[str, Any], rows: list[dict[str, Any]]
    ) -> list[tuple[str, list[str]]]:
        """Each date of the run with what the run covered on it, to record completion."""
        days = date_range(opts["start_date"], opts["end_date"])
        return [(d.isoformat(), self.covered(rows, d.isoformat())) for d in days]

    def save(self, rows: list[dict[str, Any]]) -> int:
        """Dedup, then one fenced MERGE that retries only real write conflicts; rows kept."""
        rows = self.deduped(rows)
        # fence=None: the fence of the lease run() holds
        self.merged(safe_merge(self.warehouse, self.target, rows, **self.merge_keys))
        return len(rows)

    @property
    def target(self) -> str:
        return f"{self.dataset}.{self.table}"

    @property
    def merge_keys(self) -> dict[str, Any]:
        return {"keys": self.spec.keys, "partition_field": self.spec.partition_field}

    def deduped(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        rows, report = dedupe_rows(rows, keys=self.spec.keys, order_by=self.spec.order_by)
        if report.dropped_rows:
            log.warning("%s: dropped %d duplicate rows", self.table, report.dropped_rows)
        return rows

    def merged(self, result: MergeResult) -> None:
        log.info("%s: %d inserted, %d updated", self.table, result.inserted, result.updated)
