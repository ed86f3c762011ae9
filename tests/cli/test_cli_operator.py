"""health, reconcile and locks as an operator runs them: read-only inspection, exit codes
that cannot be confused, artifacts, custom tables, date scans and audited breaks."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import duckdb
from click.testing import CliRunner

from fixtures.health import build_duckdb
from processor_guard import CompletionTracker
from processor_guard.cli import EXIT_COULD_NOT_RUN, EXIT_USAGE, main
from processor_guard.completion.docstore import SQLiteDocumentClient
from processor_guard.demo.data import EXPECTED_PROCESSORS
from processor_guard.stores import open_store

DATE = "2026-02-03"


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def complete_store(path: Path, published: list[str] | None = None) -> str:
    client = SQLiteDocumentClient(path)
    sent = published if published is not None else []

    def publish(day: str, state: object) -> str:
        sent.append(day)
        return f"m-{len(sent)}"

    tracker = CompletionTracker(client, "phase3", list(EXPECTED_PROCESSORS), publish)
    for i, name in enumerate(EXPECTED_PROCESSORS):
        tracker.record(DATE, name, execution_id=f"r{i}")
    client.close()
    return f"sqlite://{path}"


def test_health_changes_none_of_the_files_it_inspects(tmp_path: Path) -> None:
    build_duckdb(tmp_path / "w.db")
    completion = complete_store(tmp_path / "c.db")

    # SQLite's WAL readers may add -shm/-wal sidecars; the files themselves must not change.
    def files() -> dict[str, tuple[int, bytes]]:
        return {
            p.name: (p.stat().st_mtime_ns, p.read_bytes())
            for p in tmp_path.iterdir()
            if not p.name.endswith(("-shm", "-wal"))
        }

    before = files()
    code, out, _ = invoke(
        "health", "--date", DATE, "--warehouse", f"duckdb://{tmp_path / 'w.db'}",
        "--completion", completion,
    )  # fmt: skip
    assert code == 0, out
    assert files() == before
    unrelated = tmp_path / "app.db"
    with sqlite3.connect(unrelated) as db:
        db.execute("CREATE TABLE users (name TEXT)")
    code, _, err = invoke("health", "--date", DATE, "--completion", f"sqlite://{unrelated}")
    assert code == EXIT_USAGE and "not a completion store" in err
    with sqlite3.connect(unrelated) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("delete",)
        assert [r[0] for r in db.execute("SELECT name FROM sqlite_master")] == ["users"]


def test_unreadable_completion_file_is_one_line_could_not_run(tmp_path: Path) -> None:
    garbage = tmp_path / "c.db"
    garbage.write_bytes(b"this is not a database file at all" * 100)
    code, out, err = invoke("health", "--date", DATE, "--completion", f"sqlite://{garbage}")
    assert code == EXIT_COULD_NOT_RUN, out + err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    code, out, _ = invoke("health", "--date", DATE, "--completion", f"sqlite://{garbage}", "--json")
    error = json.loads(out)
    assert error["exit_code"] == EXIT_COULD_NOT_RUN and "database" in error["error"]


def test_health_thresholds_and_the_json_artifact(tmp_path: Path) -> None:
    build_duckdb(tmp_path / "w.db", duplicates={"player_game_summary": 2})
    artifact = tmp_path / "health.json"
    args = ["health", "--date", DATE, "--warehouse", f"duckdb://{tmp_path / 'w.db'}"]
    code, _, _ = invoke(*args, "--output", str(artifact))
    assert code == 2
    data = json.loads(artifact.read_text())
    assert data["schema_version"] == 2 and data["generated_at"]
    assert data["thresholds"]["max_duplicate_keys"] == 0
    code, out, _ = invoke(*args, "--max-duplicate-keys", "5", "--warn-after", "1",
                          "--error-after", "2", "--json")  # fmt: skip
    data = json.loads(out)
    assert code == 0 and data["thresholds"]["max_duplicate_keys"] == 5
    assert data["thresholds"]["completion_error_after_hours"] == 2


def test_custom_tables_work_with_completion(tmp_path: Path) -> None:
    """A table beyond the five built in, given as NAME=KEYS or in a tables file."""
    path = tmp_path / "w.db"
    with duckdb.connect(str(path)) as con:
        con.execute("CREATE TABLE box_scores (game_date DATE, game_id VARCHAR, team VARCHAR)")
        con.execute(
            "INSERT INTO box_scores VALUES ('2026-02-03', 'g1', 'BOS'), ('2026-02-03', 'g1', 'NYK')"
        )
    client = SQLiteDocumentClient(tmp_path / "c.db")
    tracker = CompletionTracker(client, "phase2", ["box_scores"], lambda d, s: "m-1")
    tracker.record(DATE, "box_scores", execution_id="r1", record_count=2)
    client.close()
    base = ["--date", DATE, "--warehouse", f"duckdb://{path}",
            "--completion", f"sqlite://{tmp_path / 'c.db'}", "--phase", "phase2",
            "--expected", "box_scores"]  # fmt: skip
    code, out, err = invoke("health", *base, "--table", "box_scores=game_date,game_id,team")
    assert code == 0, out + err
    specs = tmp_path / "tables.json"
    specs.write_text(json.dumps({"box_scores": {"keys": ["game_date", "game_id", "team"]}}))
    code, out, err = invoke("reconcile", *base, "--tables-file", str(specs), "--json")
    assert code == 0, out + err
    assert json.loads(out)["tables"][0]["recorded_rows"] == 2


def test_reconcile_refuses_a_different_expected_list_and_leaves_empty_dates_alone(
    tmp_path: Path,
) -> None:
    build_duckdb(tmp_path / "w.db")
    completion = complete_store(tmp_path / "c.db")
    base = ["reconcile", "--warehouse", f"duckdb://{tmp_path / 'w.db'}",
            "--completion", completion]  # fmt: skip
    four = ",".join(EXPECTED_PROCESSORS[:4])
    code, _, err = invoke(*base, "--date", DATE, "--expected", four, "--fix")
    assert code == EXIT_USAGE and "dropped ['upcoming_team_game_context']" in err
    code, out, _ = invoke(*base, "--date", "2026-02-10", "--fix")
    assert code == 0 and "no document and no rows for this date; nothing written" in out
    client = SQLiteDocumentClient(tmp_path / "c.db")
    assert not client.collection("phase3_completion").document("2026-02-10").get().exists


def test_reconcile_scans_a_range_and_retriggers_after_a_backfill(tmp_path: Path) -> None:
    build_duckdb(tmp_path / "w.db")
    published: list[str] = []
    completion = complete_store(tmp_path / "c.db", published)
    out_file = tmp_path / "triggers.jsonl"
    base = ["reconcile", "--warehouse", f"duckdb://{tmp_path / 'w.db'}",
            "--completion", completion]  # fmt: skip
    code, out, _ = invoke(*base, "--from", "2026-02-01", "--to", "2026-02-04", "--json")
    dates = json.loads(out)["dates"]
    assert code == 0 and [d["game_date"] for d in dates] == [f"2026-02-0{i}" for i in range(1, 5)]
    assert [d["empty"] for d in dates] == [True, True, False, True]
    code, _, err = invoke(*base, "--from", "2026-01-01", "--to", "2026-03-31")
    assert code == EXIT_USAGE and "at most 62" in err
    code, out, err = invoke(*base, "--date", DATE, "--retrigger", "backfilled 2 games",
                            "--publisher", f"file://{out_file}", "--json")  # fmt: skip
    assert code == 0, out + err
    assert json.loads(out)["retriggered"]["dedup_id"] == f"phase3/{DATE}#2"
    (line,) = out_file.read_text().splitlines()
    assert json.loads(line)["dedup_id"] == f"phase3/{DATE}#2"
    code, _, err = invoke(*base, "--date", "2026-02-10", "--retrigger", "x",
                          "--publisher", f"file://{out_file}")  # fmt: skip
    assert code == 0 and len(out_file.read_text().splitlines()) == 1  # empty date: nothing
    with duckdb.connect(str(tmp_path / "w.db")) as con:  # a backfill that went wrong
        con.execute("INSERT INTO player_game_summary SELECT * FROM player_game_summary LIMIT 3")
    code, out, _ = invoke(*base, "--date", DATE, "--retrigger", "again",
                          "--publisher", f"file://{out_file}", "--json")  # fmt: skip
    assert code == 1 and "not re-triggered while problems remain" in out
    assert len(out_file.read_text().splitlines()) == 1


def test_locks_break_validates_says_free_and_audits(tmp_path: Path) -> None:
    code, _, err = invoke("locks", "list", "--store", f"sqlite://{tmp_path / 'typo.db'}")
    assert code == EXIT_USAGE and "does not exist" in err
    assert not (tmp_path / "typo.db").exists()
    store = open_store("memory://audit")
    store.try_acquire("player_game_summary:2026-02-03", "host-a:1", 60)
    audit = tmp_path / "audit.jsonl"
    base = ["locks", "break", "--force", "--store", "memory://audit", "--audit-log", str(audit)]
    code, _, err = invoke(*base, "player_game_summary:2026-02-04")
    assert code == 1 and "is free: nothing broken" in err
    code, _, err = invoke(*base, "player_game_summary 2026-02-03")
    assert code == EXIT_USAGE and "SCOPE:YYYY-MM-DD" in err
    assert not audit.exists()
    code, out, _ = invoke(*base, "player_game_summary:2026-02-03", "--reason", "stuck")
    assert code == 0, out
    (record,) = [json.loads(line) for line in audit.read_text().splitlines()]
    assert record["key"] == "player_game_summary:2026-02-03" and record["reason"] == "stuck"
    assert record["was_owner"] == "host-a:1" and record["by"]
