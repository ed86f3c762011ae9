"""Faults the emulator cannot produce, injected client-side around a real emulator client.

The injected exceptions are the real google.api_core types with BigQuery's texts.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

import pytest
from google.api_core import exceptions as gexc

from fixtures.pgs_rows import date_rows, game_rows
from processor_guard import InvalidRows, MergeFailed, safe_merge
from processor_guard.writes.warehouse import as_warehouse

pytestmark = pytest.mark.bigquery

DAY = dt.date(2026, 2, 3)
KEYS = ("game_date", "player_lookup")


def concurrent_update(table: str) -> gexc.BadRequest:
    message = f"Could not serialize access to table {table} due to concurrent update"
    return gexc.BadRequest(message, errors=[{"reason": "invalidQuery", "message": message}])


class FaultyClient:
    """Wraps a real client: the first ``fail`` MERGE-bearing queries raise ``error``."""

    def __init__(self, client: Any, error: BaseException | None, fail: int) -> None:
        self._client = client
        self.error = error
        self.fail = fail
        self.merge_calls = 0
        self.project = client.project

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def query(self, sql: str, *args: Any, **kwargs: Any) -> Any:
        if re.search(r"^\s*MERGE|\bMERGE `", sql, re.MULTILINE) and "COUNT(*)" not in sql[:40]:
            self.merge_calls += 1
            if self.error is not None and self.merge_calls <= self.fail:
                raise self.error
        return self._client.query(sql, *args, **kwargs)


@pytest.fixture
def table_and_client(bigquery_emulator: Any) -> tuple[str, Any]:
    client = bigquery_emulator.client()
    return bigquery_emulator.create_player_game_summary(client), client


def _faulty(client: Any, error: BaseException | None, fail: int) -> Any:
    from processor_guard.writes.warehouse import BigQueryWarehouse

    faulty = FaultyClient(client, error, fail)
    return BigQueryWarehouse(faulty), faulty


@pytest.mark.parametrize("fence", [None, 3])
def test_concurrent_update_is_retried_then_succeeds(
    table_and_client: tuple[str, Any], fence: int | None
) -> None:
    table, client = table_and_client
    wh, faulty = _faulty(client, concurrent_update(table), fail=2)
    assert faulty.fail == 2
    sleeps: list[float] = []
    result = safe_merge(wh, table, date_rows(DAY), keys=KEYS, fence=fence, sleep=sleeps.append)
    assert result.attempts == 3
    assert len(sleeps) == 2
    assert all(0 <= s <= 20 for s in sleeps)
    assert (result.inserted, result.updated) == (348, 0)
    assert as_warehouse(client).count_rows(table) == 348
    assert as_warehouse(client).duplicate_keys(table, KEYS) == []


@pytest.mark.parametrize(
    "error",
    [
        gexc.InternalServerError("backend error", errors=[{"reason": "backendError"}]),
        gexc.TooManyRequests("rate limit", errors=[{"reason": "rateLimitExceeded"}]),
        gexc.ServiceUnavailable("try again"),
        gexc.BadRequest(
            "Transaction is aborted due to concurrent update against table x",
            errors=[{"reason": "invalidQuery"}],
        ),
    ],
)
def test_transient_errors_are_retried(table_and_client: tuple[str, Any], error: Any) -> None:
    table, client = table_and_client
    wh, _ = _faulty(client, error, fail=1)
    result = safe_merge(wh, table, game_rows(DAY, 0), keys=KEYS, sleep=lambda s: None)
    assert (result.attempts, result.inserted) == (2, 35)


@pytest.mark.parametrize(
    "error",
    [
        gexc.BadRequest(
            'Syntax error: Unexpected identifier "MERG" at [1:1]',
            errors=[{"reason": "invalidQuery"}],
        ),
        gexc.BadRequest(
            "400 Query column 3 has type STRING which cannot be inserted into column points",
            errors=[{"reason": "invalid"}],
        ),
        gexc.Forbidden("Access Denied: Table x", errors=[{"reason": "accessDenied"}]),
        gexc.NotFound("Not found: Table x", errors=[{"reason": "notFound"}]),
    ],
)
def test_non_retryable_errors_raise_at_once(table_and_client: tuple[str, Any], error: Any) -> None:
    table, client = table_and_client
    wh, faulty = _faulty(client, error, fail=99)
    sleeps: list[float] = []
    with pytest.raises(type(error)):
        safe_merge(wh, table, game_rows(DAY, 0), keys=KEYS, sleep=sleeps.append)
    assert faulty.merge_calls == 1
    assert sleeps == []
    assert as_warehouse(client).count_rows(table) == 0


def test_exhaustion_raises_merge_failed_with_replay_file(
    table_and_client: tuple[str, Any], tmp_path: Path
) -> None:
    table, client = table_and_client
    wh, faulty = _faulty(client, concurrent_update(table), fail=99)
    replay = tmp_path / "replay" / "batch.ndjson"
    rows = date_rows(DAY)
    with pytest.raises(MergeFailed) as info:
        safe_merge(
            wh, table, [*rows, rows[0]], keys=KEYS, max_attempts=4, sleep=lambda s: None,
            replay_path=replay,
        )  # fmt: skip
    failed = info.value
    assert failed.attempts == 4 == faulty.merge_calls
    assert isinstance(failed.last_error, gexc.BadRequest)
    assert len(failed.rows) == 348
    assert failed.replay_path == str(replay)
    lines = replay.read_text().splitlines()
    assert len(lines) == 348
    first = json.loads(lines[0])
    assert first["player_lookup"] == rows[0]["player_lookup"]
    assert first["game_date"] == "2026-02-03"
    assert as_warehouse(client).count_rows(table) == 0


def test_deadline_bounds_the_retries(table_and_client: tuple[str, Any], tmp_path: Path) -> None:
    table, client = table_and_client
    wh, faulty = _faulty(client, concurrent_update(table), fail=99)
    with pytest.raises(MergeFailed) as info:
        safe_merge(
            wh, table, game_rows(DAY, 0), keys=KEYS, max_attempts=1000, deadline=0.3,
            backoff_initial=0.05, backoff_max=0.1, replay_path=tmp_path / "r.ndjson",
        )  # fmt: skip
    assert 1 <= info.value.attempts == faulty.merge_calls < 1000


def test_two_source_rows_for_one_key_is_invalid_rows(table_and_client: tuple[str, Any]) -> None:
    table, client = table_and_client
    message = "UPDATE/MERGE must match at most one source row for each target row"
    error = gexc.BadRequest(message, errors=[{"reason": "invalidQuery", "message": message}])
    wh, faulty = _faulty(client, error, fail=99)
    with pytest.raises(InvalidRows, match="two source rows"):
        safe_merge(wh, table, game_rows(DAY, 0), keys=KEYS, sleep=lambda s: None)
    assert faulty.merge_calls == 1


def test_real_emulator_syntax_error_is_fatal(bigquery_emulator: Any) -> None:
    wh = as_warehouse(bigquery_emulator.client())
    with pytest.raises(gexc.BadRequest) as info:
        wh.query("SELEC 1")
    assert wh.classify(info.value) == "fatal"


def test_lost_lease_stops_the_write(table_and_client: tuple[str, Any]) -> None:
    from processor_guard import LeaseLost, date_lock
    from processor_guard.stores.memory import MemoryStore

    table, client = table_and_client
    now = [0.0]
    store = MemoryStore(clock=lambda: now[0])
    with (
        pytest.raises(LeaseLost),
        date_lock("pgs", DAY, store=store, ttl=10, clock=lambda: now[0]),
    ):
        now[0] = 50.0  # the lease ran out before the save
        safe_merge(client, table, game_rows(DAY, 0), keys=KEYS)
    assert as_warehouse(client).count_rows(table) == 0


class RecordingClient(FaultyClient):
    """Records the query jobs the adapter submits, with the arguments it passes."""

    def __init__(self, client: Any) -> None:
        super().__init__(client, None, 0)
        self.queries: list[tuple[str, dict[str, Any]]] = []

    def query(self, sql: str, *args: Any, **kwargs: Any) -> Any:
        self.queries.append((sql, kwargs))
        return super().query(sql, *args, **kwargs)


def test_a_save_is_one_job_and_the_client_does_not_retry(
    table_and_client: tuple[str, Any],
) -> None:
    from processor_guard.writes.warehouse import BigQueryWarehouse

    table, client = table_and_client
    wrapped = RecordingClient(client)
    wh = BigQueryWarehouse(wrapped)
    safe_merge(wh, table, game_rows(DAY, 0), keys=KEYS)  # creates the guard table once
    assert [q.split()[0] for q, _ in wrapped.queries] == ["CREATE", "DECLARE"]
    wrapped.queries.clear()
    result = safe_merge(wh, table, [*game_rows(DAY, 0, points_offset=1,
                        processed_at=dt.datetime(2026, 2, 5)), *game_rows(DAY, 1)],
                        keys=KEYS, fence=3)  # fmt: skip
    assert (result.inserted, result.updated, result.jobs, result.path) == (35, 35, 1, "inline")
    ((script, kwargs),) = wrapped.queries
    assert script.startswith("DECLARE") and "BEGIN TRANSACTION;" in script
    # tenacity in safe_merge is the only retry layer; the call is bounded by the deadline.
    assert kwargs["retry"] is None and kwargs["job_retry"] is None
    assert 0 < kwargs["timeout"] <= 120
    assert as_warehouse(client).count_rows(table) == 70


def test_replay_goes_to_a_chosen_directory_named_in_merge_failed(
    table_and_client: tuple[str, Any], tmp_path: Path
) -> None:
    table, client = table_and_client
    faulty = FaultyClient(client, concurrent_update(table), fail=99)
    with pytest.raises(MergeFailed) as info:  # the wrapped client itself (issue 14, item 10)
        safe_merge(faulty, table, game_rows(DAY, 0), keys=KEYS, max_attempts=2,
                   sleep=lambda s: None, replay_to=tmp_path / "replays")  # fmt: skip
    saved = Path(str(info.value.replay_path))
    assert saved.parent == tmp_path / "replays" and saved.name.endswith(".ndjson")
    assert len(saved.read_text().splitlines()) == 35
    assert str(saved) in str(info.value)


def test_replay_goes_to_a_callable_that_uploads(table_and_client: tuple[str, Any]) -> None:
    table, client = table_and_client
    uploaded: dict[str, bytes] = {}

    def upload(name: str, payload: bytes) -> str:
        uploaded[name] = payload
        return f"gs://replays/{name}"

    faulty = FaultyClient(client, concurrent_update(table), fail=99)
    with pytest.raises(MergeFailed) as info:
        safe_merge(faulty, table, game_rows(DAY, 0), keys=KEYS, max_attempts=2,
                   sleep=lambda s: None, replay_to=upload)  # fmt: skip
    ((name, payload),) = uploaded.items()
    assert info.value.replay_path == f"gs://replays/{name}"
    assert f"batch saved to gs://replays/{name}" in str(info.value)
    assert [json.loads(line)["game_date"] for line in payload.splitlines()] == ["2026-02-03"] * 35


def test_a_failed_upload_is_reported_beside_the_merge_error(
    table_and_client: tuple[str, Any],
) -> None:
    table, client = table_and_client

    def upload(name: str, payload: bytes) -> str:
        raise PermissionError("bucket refused the upload")

    faulty = FaultyClient(client, concurrent_update(table), fail=99)
    with pytest.raises(MergeFailed) as info:
        safe_merge(faulty, table, game_rows(DAY, 0), keys=KEYS, max_attempts=2,
                   sleep=lambda s: None, replay_to=upload)  # fmt: skip
    assert info.value.replay_path is None
    assert info.value.replay_error == "PermissionError: bucket refused the upload"
    assert "could not be saved (PermissionError" in str(info.value)
    assert isinstance(info.value.last_error, gexc.BadRequest)


def test_as_warehouse_takes_anything_with_the_client_methods() -> None:
    from unittest import mock

    from google.cloud import bigquery

    from processor_guard import ConfigError
    from processor_guard.writes.warehouse import BigQueryWarehouse

    assert isinstance(as_warehouse(mock.create_autospec(bigquery.Client)), BigQueryWarehouse)
    with pytest.raises(ConfigError, match="an object with its methods: query, get_table"):
        as_warehouse(object())


def test_duckdb_short_read_is_retried_other_io_errors_are_not(tmp_path: Path) -> None:
    """A short read of a file another process just rewrote (seen in CI with eight writer
    processes on one file) is retried like a lock conflict; other I/O errors stay fatal.
    The errors are built here: a real file cannot be made to give one on demand."""
    import duckdb

    wh = as_warehouse(str(tmp_path / "warehouse.duckdb"))
    short = duckdb.IOException(
        'IO Error: Could not read enough bytes from file "w.duckdb": attempted to read '
        "262144 bytes from location 3420160"
    )
    assert wh.classify(short) == "conflict"
    assert wh.classify(duckdb.IOException("IO Error: No space left on device")) == "fatal"
