"""How the BigQuery adapter reads BigQuery's errors, bounds its calls and sizes requests.

Each error is built the way google-cloud-bigquery builds it from a response: the
HTTP status picks the exception type, ``errors[].reason`` and the message come from
the payload (shapes from public reports of these errors).
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
from typing import Any

import pytest
from google.api_core import exceptions as gexc

from processor_guard.writes.warehouse import BigQueryWarehouse, Column, MergePlan
from processor_guard.writes.warehouse.bigquery import (
    QUERY_TEXT_LIMIT,
    classify_bigquery_error,
    encoded_request_bytes,
    is_too_large,
)


def payload_error(status: int, reason: str, message: str) -> gexc.GoogleAPICallError:
    return gexc.from_http_status(
        status, message, errors=[{"reason": reason, "location": "q", "message": message}]
    )


@pytest.mark.parametrize(
    ("status", "reason", "message", "kind"),
    [
        (400, "invalidQuery",
         "Could not serialize access to table proj:ds.pgs due to concurrent update", "conflict"),
        (400, "invalidQuery",
         "Transaction is aborted due to concurrent update against table proj.ds.pgs.", "conflict"),
        (400, "resourcesExceeded",
         "Resources exceeded during query execution: Too many DML statements outstanding "
         "against table proj:ds.pgs, limit is 20", "transient"),
        (403, "rateLimitExceeded",
         "Exceeded rate limits: too many table update operations for this table.", "transient"),
        (403, "jobRateLimitExceeded", "Exceeded rate limits: too many concurrent queries",
         "transient"),
        (500, "backendError", "Backend error. Job aborted.", "transient"),
        (503, "backendError", "Service unavailable", "transient"),
        (400, "invalidQuery", 'Syntax error: Unexpected identifier "MERG" at [1:1]', "fatal"),
        (400, "invalidQuery", "Query error: processor_guard stale fence 4 at [9:1]", "fatal"),
        (400, "resourcesExceeded", "Resources exceeded during query execution: memory", "fatal"),
        (403, "quotaExceeded", "Quota exceeded: Your project exceeded quota for free query "
         "bytes scanned.", "fatal"),
        (403, "accessDenied", "Access Denied: Table proj:ds.pgs", "fatal"),
        (409, "duplicate", "Already Exists: Table proj:ds.pgs__pg_guard", "fatal"),
    ],
)  # fmt: skip
def test_classified_by_reason_and_message(
    status: int, reason: str, message: str, kind: str
) -> None:
    error = payload_error(status, reason, message)
    assert classify_bigquery_error(error) == kind


def test_client_side_failures_are_transient() -> None:
    import requests

    assert classify_bigquery_error(gexc.RetryError("Deadline of 600.0s exceeded", None)) == (
        "transient"
    )
    assert classify_bigquery_error(requests.exceptions.ConnectionError("refused")) == "transient"
    assert classify_bigquery_error(TimeoutError("job did not finish")) == "transient"
    assert classify_bigquery_error(ValueError("400")) == "fatal"


def test_too_large_is_recognised_for_the_staging_fall_back() -> None:
    error = payload_error(
        400, "invalid", "The query is too large. The maximum standard SQL query length is "
        "1024.00K characters, including comments and white space characters.",
    )  # fmt: skip
    assert is_too_large(error)
    assert not is_too_large(payload_error(400, "invalidQuery", "Syntax error"))


class _SlowJob:
    job_id = "job_slow"
    location = "US"

    def result(self, **kwargs: Any) -> Any:
        self.kwargs = kwargs
        raise concurrent.futures.TimeoutError()


class _SlowClient:
    """A job that never finishes in time: what no emulator can be made to do on cue."""

    project = "p"

    def __init__(self) -> None:
        self.job = _SlowJob()
        self.cancelled: list[str] = []

    def query(self, sql: str, **kwargs: Any) -> _SlowJob:
        self.query_kwargs = kwargs
        return self.job

    def cancel_job(self, job_id: str, **kwargs: Any) -> None:
        self.cancelled.append(job_id)


def test_a_job_outliving_its_time_is_cancelled_and_said_so() -> None:
    client = _SlowClient()
    wh = BigQueryWarehouse(client, timeout=5.0)
    with pytest.raises(TimeoutError, match=r"job_slow did not finish within 2\.0s; cancelled it"):
        wh._run("SELECT 1", timeout=2.0)
    assert client.cancelled == ["job_slow"]
    assert client.query_kwargs["retry"] is None and client.query_kwargs["job_retry"] is None
    assert client.job.kwargs["job_retry"] is None and client.job.kwargs["retry"] is None
    assert 0 < client.job.kwargs["timeout"] <= 2.0


def test_request_size_is_measured_on_what_the_client_sends() -> None:
    text = "SELECT '" + "é" * 1000 + "'"
    # JSON escapes each non-ASCII character as \\uXXXX: 6 bytes, not its 2 UTF-8 bytes.
    assert encoded_request_bytes(text) > 6000 > len(text.encode("utf-8"))


class _NoClient:
    project = "p"


def _wide_plan(rows: int) -> MergePlan:
    columns = (Column("game_date", "DATE", True), Column("player_lookup", "STRING", True),
               *(Column(f"metric_{i:02d}", "FLOAT64") for i in range(77)))  # fmt: skip
    day = dt.date(2026, 2, 3)
    data = [
        {"game_date": day, "player_lookup": f"player{n:05d}",
         **{f"metric_{i:02d}": n * 0.001 + i for i in range(77)}}
        for n in range(rows)
    ]  # fmt: skip
    return MergePlan("p.ds.pgs", ("game_date", "player_lookup"), "game_date", columns, data, (day,))


def test_inline_script_of_a_typical_date_fits_and_a_3000_row_one_does_not() -> None:
    wh = BigQueryWarehouse(_NoClient())
    small, _ = wh.inline_script(_wide_plan(348))
    assert len(small.encode()) < QUERY_TEXT_LIMIT
    big, _ = wh.inline_script(_wide_plan(3000))
    assert len(big.encode()) > QUERY_TEXT_LIMIT  # merge() sends this one through staging
