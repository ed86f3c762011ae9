"""find_duplicates on DuckDB and the BigQuery emulator; lateness; the health checks."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import duckdb
import pytest

from fixtures.health import Recorder, bq_insert, build_duckdb, rows_for
from processor_guard import CompletionTracker, ConfigError, find_duplicates
from processor_guard.completion.health import (
    CRITICAL,
    OK,
    SKIPPED,
    UNKNOWN,
    WARNING,
    Thresholds,
    run_health,
)
from processor_guard.completion.lateness import hours_late, scraper_lateness
from processor_guard.demo.data import EXPECTED_PROCESSORS, create_table_sql
from processor_guard.tables import TABLES, TableSpec
from processor_guard.writes.inspect import count_rows, open_warehouse

DATE = dt.date(2026, 2, 3)
UTC = dt.timezone.utc


# --------------------------------------------------------------------------- DuckDB


def test_find_duplicates_duckdb_path_and_connection(tmp_path: Path) -> None:
    path = tmp_path / "w.db"
    counts = build_duckdb(path, duplicates={"player_game_summary": 72})
    assert counts["player_game_summary"] == 420
    dups = find_duplicates(str(path), TABLES["player_game_summary"], DATE)
    assert len(dups) == 72
    assert all(d.count == 2 for d in dups)
    first = rows_for("player_game_summary")[0]
    assert {"game_date": DATE, "player_lookup": first["player_lookup"]} in [d.key for d in dups]
    # The same through a caller's connection, and by table name.
    conn = duckdb.connect(str(path))
    try:
        assert len(find_duplicates(conn, "player_game_summary", "2026-02-03")) == 72
        assert find_duplicates(conn, "team_offense_game_summary", DATE) == []
        assert count_rows(conn, "team_offense_game_summary", DATE) == 20
    finally:
        conn.close()


def test_find_duplicates_respects_keys_and_date(tmp_path: Path) -> None:
    path = tmp_path / "w.db"
    build_duckdb(path, duplicates={"team_offense_game_summary": 3})
    assert find_duplicates(str(path), "team_offense_game_summary", DATE + dt.timedelta(1)) == []
    # Keyed by game_id instead, a team's row per game is unique too...
    by_game = TableSpec("team_offense_game_summary", ("game_date", "game_id", "team_abbr"))
    assert len(find_duplicates(str(path), by_game, DATE)) == 3
    # ...but keyed by game_date alone, every row of the date collides.
    by_date = TableSpec("team_offense_game_summary", ("game_date",))
    (only,) = find_duplicates(str(path), by_date, DATE)
    assert only.count == 23


def test_missing_table_has_no_rows_and_unknown_table_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    duckdb.connect(str(path)).close()
    assert find_duplicates(str(path), "player_game_summary", DATE) == []
    assert count_rows(str(path), "player_game_summary", DATE) == 0
    with pytest.raises(ConfigError, match="unknown table 'nope'"):
        find_duplicates(str(path), "nope", DATE)
    with pytest.raises(ConfigError):
        find_duplicates(str(path), "player_game_summary", "2026-02-30")


def test_open_warehouse_urls(tmp_path: Path) -> None:
    path = tmp_path / "w.db"
    build_duckdb(path, tables=["team_offense_game_summary"])
    src = open_warehouse(f"duckdb://{path}")
    assert count_rows(src, "team_offense_game_summary", DATE) == 20
    for bad in ("duckdb:///nope/missing.db", "mysql://x", "w.db", "bigquery://only-project"):
        with pytest.raises(ConfigError):
            open_warehouse(bad)


# --------------------------------------------------------------------------- BigQuery


@pytest.mark.bigquery
def test_find_duplicates_bigquery_emulator(bigquery_emulator: Any) -> None:
    client = bigquery_emulator.client()
    dataset = bigquery_emulator.new_dataset(client)
    table = f"{dataset}.team_offense_game_summary"
    create = create_table_sql("team_offense_game_summary", engine="bigquery", qualified=table)
    client.query(create).result()
    rows = rows_for("team_offense_game_summary")
    bq_insert(client, table, "team_offense_game_summary", [*rows, *rows[:4], rows[0]])
    spec = TABLES["team_offense_game_summary"]
    dups = find_duplicates(client, spec, DATE, dataset=dataset)
    assert len(dups) == 4
    assert dups[0].count == 3 and dups[0].key["team_abbr"] == rows[0]["team_abbr"]
    assert sorted(d.count for d in dups) == [2, 2, 2, 3]
    assert count_rows(client, spec, DATE, dataset=dataset) == 25
    assert find_duplicates(client, spec, DATE - dt.timedelta(1), dataset=dataset) == []
    # A table that does not exist has no duplicates (and no rows).
    assert find_duplicates(client, "player_game_summary", DATE, dataset=dataset) == []


# --------------------------------------------------------------------------- lateness


def test_hours_late() -> None:
    expected = dt.datetime(2026, 2, 4, 11, 0, tzinfo=UTC)  # 6 AM ET
    ran = dt.datetime(2026, 2, 4, 19, 45, tzinfo=UTC)  # 2:45 PM ET
    assert hours_late(expected, ran) == pytest.approx(8.75)
    assert hours_late(expected, expected - dt.timedelta(minutes=5)) == 0.0
    late = scraper_lateness(expected, ran)
    assert late.ran and late.alert and late.threshold_hours == 4.0
    on_time = scraper_lateness(expected, expected + dt.timedelta(hours=3, minutes=59))
    assert not on_time.alert
    pending = scraper_lateness(expected, None, now=expected + dt.timedelta(hours=5))
    assert not pending.ran and pending.alert and pending.hours_late == pytest.approx(5)
    naive = scraper_lateness(dt.datetime(2026, 2, 4, 11), dt.datetime(2026, 2, 4, 12))
    assert naive.hours_late == pytest.approx(1)
    with pytest.raises(ConfigError):
        scraper_lateness(expected, ran, threshold_hours=-1)
    with pytest.raises(ConfigError):
        hours_late("2026-02-04", ran)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- run_health


def _status(report: Any) -> dict[str, str]:
    return {c.name: c.status for c in report.checks}


def test_health_without_sources_is_unknown_not_ok() -> None:
    report = run_health(DATE)
    assert set(_status(report).values()) == {SKIPPED}
    assert report.status == UNKNOWN and report.exit_code == 1


def test_health_duplicates_and_lateness(tmp_path: Path) -> None:
    path = tmp_path / "w.db"
    build_duckdb(path, duplicates={"player_game_summary": 72})
    expected = dt.datetime(2026, 2, 4, 11, 0, tzinfo=UTC)
    report = run_health(
        DATE,
        warehouse=str(path),
        scraper_expected=expected,
        scraper_first_run=expected + dt.timedelta(hours=8, minutes=45),
    )
    status = _status(report)
    assert status["duplicates:player_game_summary"] == CRITICAL
    assert status["duplicates:team_offense_game_summary"] == OK
    assert status["scraper_lateness"] == WARNING
    assert status["completion_accuracy"] == SKIPPED
    assert report.exit_code == 2
    data = report.to_dict()
    assert data["status"] == "critical"
    assert json.loads(json.dumps(data)) == data

    late_only = run_health(
        DATE,
        warehouse=str(path),
        tables=[TABLES["team_offense_game_summary"]],
        scraper_expected=expected,
        scraper_first_run=None,
        now=expected + dt.timedelta(hours=5),
    )
    assert _status(late_only)["scraper_lateness"] == CRITICAL  # not run at all yet
    relaxed = run_health(
        DATE,
        warehouse=str(path),
        tables=[TABLES["team_offense_game_summary"]],
        scraper_expected=expected,
        scraper_first_run=expected + dt.timedelta(hours=8, minutes=45),
        thresholds=Thresholds(max_scraper_late_hours=10),
    )
    assert relaxed.exit_code == 0


@pytest.mark.firestore
def test_health_completion_and_trigger_delay(firestore_client: Any, tmp_path: Path) -> None:
    path = tmp_path / "w.db"
    build_duckdb(path)
    pub = Recorder()
    tracker = CompletionTracker(firestore_client, "phase3", list(EXPECTED_PROCESSORS), pub)
    for i, name in enumerate(EXPECTED_PROCESSORS[:3]):
        tracker.record(DATE, name, execution_id=f"r{i}")
    report = run_health(DATE, tracker=tracker, warehouse=str(path))
    status = _status(report)
    assert status["completion_accuracy"] == CRITICAL
    accuracy = next(c for c in report.checks if c.name == "completion_accuracy")
    assert accuracy.value == pytest.approx(0.6)
    assert status["trigger_delay"] == SKIPPED  # not due: the completion check says why
    assert status["completion"] == CRITICAL  # long past the date's deadline
    assert report.exit_code == 2

    for i, name in enumerate(EXPECTED_PROCESSORS[3:]):
        tracker.record(DATE, name, execution_id=f"s{i}")
    report = run_health(DATE, tracker=tracker, warehouse=str(path))
    assert _status(report)["completion_accuracy"] == OK
    assert _status(report)["trigger_delay"] == OK
    assert report.exit_code == 0

    # A trigger that could not be published: critical once past 30 minutes.
    other = CompletionTracker(
        firestore_client, "phase3", list(EXPECTED_PROCESSORS), None, collection="p3_nopub"
    )
    for i, name in enumerate(EXPECTED_PROCESSORS):
        other.record(DATE, name, execution_id=f"r{i}")
    soon = run_health(DATE, tracker=other, warehouse=str(path))
    assert _status(soon)["trigger_delay"] == WARNING
    later = run_health(
        DATE,
        tracker=other,
        warehouse=str(path),
        now=dt.datetime.now(UTC) + dt.timedelta(minutes=31),
    )
    assert _status(later)["trigger_delay"] == CRITICAL
    # Reading health wrote nothing and published nothing.
    assert other.state(DATE).trigger_pending and len(pub.calls) == 1


# --------------------------------------------------------------- deadline and artifacts

DATE_END = dt.datetime(2026, 2, 4, tzinfo=UTC)  # the end of DATE


def _docs(tmp_path: Path) -> Any:
    from processor_guard.completion.docstore import SQLiteDocumentClient

    return SQLiteDocumentClient(tmp_path / "completion.db")


def test_a_past_date_with_no_document_and_no_rows_is_critical(tmp_path: Path) -> None:
    path = tmp_path / "w.db"
    with duckdb.connect(str(path)) as con:
        for table in EXPECTED_PROCESSORS:
            con.execute(create_table_sql(table))
    tracker = CompletionTracker(_docs(tmp_path), "phase3", list(EXPECTED_PROCESSORS), Recorder())
    report = run_health(DATE, tracker=tracker, warehouse=str(path), now=DATE_END.replace(day=6))
    status = _status(report)
    assert status["completion"] == CRITICAL
    assert status["duplicates:player_game_summary"] == CRITICAL  # no rows, past deadline
    completion = next(c for c in report.checks if c.name == "completion")
    assert (
        "no completion document" in completion.detail and "player_game_summary" in completion.detail
    )
    assert report.exit_code == 2
    early = run_health(DATE, tracker=tracker, warehouse=str(path), now=DATE_END)
    assert _status(early)["completion"] == OK and early.exit_code == 0


def test_four_of_five_past_the_deadline_is_critical_and_names_the_missing(tmp_path: Path) -> None:
    path = tmp_path / "w.db"
    build_duckdb(path)
    tracker = CompletionTracker(_docs(tmp_path), "phase3", list(EXPECTED_PROCESSORS), Recorder())
    for i, name in enumerate(EXPECTED_PROCESSORS[:4]):
        tracker.record(DATE, name, execution_id=f"r{i}")
    limits = Thresholds(completion_warn_after_hours=1, completion_error_after_hours=2)
    three_hours = DATE_END + dt.timedelta(hours=3)
    report = run_health(DATE, tracker=tracker, thresholds=limits, now=three_hours)
    completion = next(c for c in report.checks if c.name == "completion")
    assert completion.status == CRITICAL and completion.value == "4/5"
    assert "missing: upcoming_team_game_context" in completion.detail
    warn = run_health(
        DATE, tracker=tracker, thresholds=limits, now=DATE_END + dt.timedelta(hours=1.5)
    )
    assert warn.exit_code == 1
    data = report.to_dict()
    assert data["schema_version"] == 2 and data["generated_at"] == three_hours.isoformat()
    assert data["thresholds"]["completion_error_after_hours"] == 2
    with pytest.raises(ConfigError, match="completion_error_after_hours"):
        Thresholds(completion_warn_after_hours=3, completion_error_after_hours=2)


def test_record_count_that_differs_from_the_table_is_critical(tmp_path: Path) -> None:
    path = tmp_path / "w.db"
    counts = build_duckdb(path)
    tracker = CompletionTracker(_docs(tmp_path), "phase3", list(EXPECTED_PROCESSORS), Recorder())
    for i, name in enumerate(EXPECTED_PROCESSORS):
        tracker.record(DATE, name, execution_id=f"r{i}", record_count=counts[name])
    assert (
        _status(run_health(DATE, tracker=tracker, warehouse=str(path)))["completion_accuracy"] == OK
    )
    tracker.record(DATE, "player_game_summary", execution_id="x", record_count=420)
    accuracy = next(
        c
        for c in run_health(DATE, tracker=tracker, warehouse=str(path)).checks
        if c.name == "completion_accuracy"
    )
    assert accuracy.status == CRITICAL and "420 recorded vs 348 rows" in accuracy.detail
