"""reconcile on the Firestore emulator against a DuckDB warehouse of the incident's date."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from fixtures.health import Recorder, build_duckdb
from processor_guard import CompletionTracker, ConfigError
from processor_guard.demo.data import EXPECTED_PROCESSORS
from processor_guard.tables import TableSpec

pytestmark = pytest.mark.firestore

DATE = "2026-02-03"
EXPECTED = list(EXPECTED_PROCESSORS)


def drifted_doc() -> dict[str, Any]:
    """The incident's document: 3 of 5 entries, a stale stored count, no trigger."""
    return {
        "player_game_summary": {"status": "success", "execution_id": "a"},
        "team_offense_game_summary": {"status": "success", "execution_id": "b"},
        "team_defense_game_summary": {"status": "success", "execution_id": "c"},
        "PlayerGameSummaryProcessor": {"status": "success", "execution_id": "d"},
        "_completed_count": 1,
        "_triggered": None,
        "_mode": "overnight",
    }


@pytest.fixture
def warehouse(tmp_path: Path) -> str:
    path = tmp_path / "warehouse.db"
    build_duckdb(path)
    return str(path)


def test_dry_run_reports_drift_and_changes_nothing(firestore_client: Any, warehouse: str) -> None:
    pub = Recorder()
    t = CompletionTracker(firestore_client, "phase3", EXPECTED, pub)
    ref = t.doc_ref(DATE)
    ref.set(drifted_doc())
    before = ref.get()

    report = t.reconcile(DATE, warehouse)
    assert report.dry_run and not report.ok
    text = "\n".join(report.problems)
    assert "upcoming_player_game_context: data present (348 rows) but not recorded" in text
    assert "stored _completed_count 1 != 3" in text
    assert "trigger due but never published" in text
    assert report.count_before == 3 and report.count_after == 5
    assert report.accuracy == pytest.approx(3 / 5)
    assert any("would publish the trigger" in c for c in report.changes)

    after = ref.get()
    assert after.update_time == before.update_time
    assert after.to_dict() == before.to_dict()
    assert pub.calls == []


def test_fix_repairs_count_and_really_publishes(firestore_client: Any, warehouse: str) -> None:
    pub = Recorder()
    t = CompletionTracker(firestore_client, "phase3", EXPECTED, pub)
    ref = t.doc_ref(DATE)
    ref.set(drifted_doc())

    report = t.reconcile(DATE, warehouse, dry_run=False)
    assert len(pub.calls) == 1
    assert pub.calls[0][1].dedup_id == "phase3/2026-02-03"
    assert report.triggered_after and report.message_id == "msg-1"
    assert report.count_after == 5
    assert any("published the trigger" in c for c in report.changes)
    assert any("set _completed_count 1 -> 5" in c for c in report.changes)
    doc = ref.get().to_dict()
    assert doc["_completed_count"] == 5
    assert doc["_triggered"] is True and doc["_trigger_message_id"] == "msg-1"
    assert doc["upcoming_team_game_context"]["source"] == "reconcile"
    assert doc["upcoming_team_game_context"]["record_count"] == 20
    assert doc["_mode"] == "overnight"  # fields it does not own are kept
    assert "PlayerGameSummaryProcessor" in doc  # unexpected entries kept, not counted

    again = t.reconcile(DATE, warehouse, dry_run=False)
    assert again.ok and again.changes == []
    assert len(pub.calls) == 1


def test_triggered_without_publish_is_published_for_real(
    firestore_client: Any, warehouse: str
) -> None:
    """The incident's hand repair set _triggered without publishing; reconcile publishes."""
    pub = Recorder()
    t = CompletionTracker(firestore_client, "phase3", EXPECTED, pub)
    ref = t.doc_ref(DATE)
    doc = drifted_doc()
    doc.update({"_completed_count": 5, "_triggered": True, "_trigger_reason": "manual_fix"})
    ref.set(doc)

    dry = t.reconcile(DATE, warehouse)
    assert any("no trigger message id" in p for p in dry.problems)
    assert pub.calls == []

    fixed = t.reconcile(DATE, warehouse, dry_run=False)
    assert len(pub.calls) == 1 and fixed.triggered_after
    assert ref.get().to_dict()["_trigger_message_id"] == "msg-1"


def test_failed_publish_during_reconcile_stays_pending(
    firestore_client: Any, warehouse: str
) -> None:
    pub = Recorder(fail_next=1)
    t = CompletionTracker(firestore_client, "phase3", EXPECTED, pub)
    t.doc_ref(DATE).set(drifted_doc())
    report = t.reconcile(DATE, warehouse, dry_run=False)
    assert not report.triggered_after and report.publish_error
    assert any("trigger still pending" in p for p in report.problems)
    doc = t.doc_ref(DATE).get().to_dict()
    assert doc["_trigger_pending"] is True and doc["_triggered"] is False
    # The next reconcile (or record) publishes it.
    report = t.reconcile(DATE, warehouse, dry_run=False)
    assert report.triggered_after and len(pub.calls) == 1


def test_duplicates_are_not_healthy_and_block_marking_from_data(
    firestore_client: Any, tmp_path: Path
) -> None:
    path = tmp_path / "dups.db"
    build_duckdb(path, duplicates={"upcoming_player_game_context": 72})
    pub = Recorder()
    t = CompletionTracker(firestore_client, "phase3", EXPECTED, pub)
    t.doc_ref(DATE).set(drifted_doc())
    report = t.reconcile(DATE, str(path), dry_run=False)
    check = next(c for c in report.tables if c.table == "upcoming_player_game_context")
    assert check.rows == 420 and check.duplicate_keys == 72 and check.duplicate_rows == 72
    assert not check.healthy
    assert any("72 duplicate key(s)" in p for p in report.problems)
    # Only upcoming_team_game_context was recorded from data; no trigger without it.
    assert report.count_after == 4 and not report.triggered_after
    assert pub.calls == []


def test_data_missing_for_a_recorded_processor_is_reported(
    firestore_client: Any, tmp_path: Path
) -> None:
    path = tmp_path / "partial.db"
    build_duckdb(path, tables=EXPECTED[1:])
    t = CompletionTracker(firestore_client, "phase3", EXPECTED, Recorder())
    t.doc_ref(DATE).set(drifted_doc())
    report = t.reconcile(DATE, str(path))
    assert any(
        "player_game_summary: recorded complete but the table has no rows" in p
        for p in report.problems
    )


def test_reconcile_without_document_creates_it_from_data(
    firestore_client: Any, warehouse: str
) -> None:
    pub = Recorder()
    t = CompletionTracker(firestore_client, "phase3", EXPECTED, pub)
    dry = t.reconcile(DATE, warehouse)
    assert not t.doc_ref(DATE).get().exists and dry.count_after == 5
    fixed = t.reconcile(DATE, warehouse, dry_run=False)
    assert fixed.triggered_after and len(pub.calls) == 1


def test_reconcile_needs_a_table_spec_for_each_expected_processor(
    firestore_client: Any, warehouse: str
) -> None:
    t = CompletionTracker(firestore_client, "phase3", [*EXPECTED, "mystery"], Recorder())
    with pytest.raises(ConfigError, match="mystery"):
        t.reconcile(DATE, warehouse)
    specs = {name: TableSpec(name, ("game_date", "player_lookup")) for name in EXPECTED[:1]}
    t2 = CompletionTracker(firestore_client, "phase3", EXPECTED[:1], Recorder())
    assert t2.reconcile(DATE, warehouse, tables=copy.copy(specs)).count_after == 1


def test_triggered_by_hand_while_incomplete_is_cleared_not_published(
    firestore_client: Any, tmp_path: Path
) -> None:
    path = tmp_path / "partial.db"
    build_duckdb(path, tables=EXPECTED[:3])
    pub = Recorder()
    t = CompletionTracker(firestore_client, "phase3", EXPECTED, pub)
    doc = drifted_doc()
    doc.update({"_triggered": True})
    t.doc_ref(DATE).set(doc)
    report = t.reconcile(DATE, str(path), dry_run=False)
    assert any("rule is not met" in p for p in report.problems)
    assert pub.calls == [] and not report.triggered_after
    data = t.doc_ref(DATE).get().to_dict()
    assert data["_triggered"] is False and data["_trigger_pending"] is False
    # The normal flow publishes once the last two processors report.
    t.record(DATE, EXPECTED[3], execution_id="x")
    state = t.record(DATE, EXPECTED[4], execution_id="y")
    assert state.triggered and len(pub.calls) == 1
