"""The processor-guard CLI through click's CliRunner and as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from fixtures.health import build_duckdb
from processor_guard import CompletionTracker
from processor_guard.cli import EXIT_COULD_NOT_RUN, EXIT_USAGE, main
from processor_guard.completion.docstore import SQLiteDocumentClient
from processor_guard.demo.data import EXPECTED_PROCESSORS
from processor_guard.stores import open_store
from processor_guard.stores.sqlite_store import SQLiteStore

DATE = "2026-02-03"
EXE = Path(sys.executable).with_name("processor-guard")


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The installed console script in a child process."""
    return subprocess.run(
        [str(EXE), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
        check=False,
    )


def one_line_error(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    assert lines[0].startswith("processor-guard: error: ")
    return lines[0]


def drifted(path: Path) -> str:
    """A local completion store holding the incident's drifted document."""
    client = SQLiteDocumentClient(path)
    client.collection("phase3_completion").document(DATE).set(
        {
            "player_game_summary": {"status": "success"},
            "team_offense_game_summary": {"status": "success"},
            "team_defense_game_summary": {"status": "success"},
            "_completed_count": 1,
            "_triggered": None,
        }
    )
    client.close()
    return f"sqlite://{path}"


@pytest.fixture
def wh(tmp_path: Path) -> str:
    build_duckdb(tmp_path / "w.db")
    return f"duckdb://{tmp_path / 'w.db'}"


# --------------------------------------------------------------------------- help


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["health"],
        ["reconcile"],
        ["locks"],
        ["locks", "list"],
        ["locks", "show"],
        ["locks", "break"],
        ["demo"],
    ],
)
def test_every_command_has_help(args: list[str]) -> None:
    result = CliRunner().invoke(main, [*args, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage: " in result.output and "--help" in result.output


def test_help_as_a_real_subprocess() -> None:
    proc = run("--help")
    assert proc.returncode == 0
    for command in ("health", "reconcile", "locks", "demo"):
        assert command in proc.stdout


# --------------------------------------------------------------------------- health


def test_health_critical_table_and_json(tmp_path: Path) -> None:
    build_duckdb(tmp_path / "w.db", duplicates={"player_game_summary": 72})
    args = [
        "health",
        "--date",
        DATE,
        "--warehouse",
        f"duckdb://{tmp_path / 'w.db'}",
        "--completion",
        drifted(tmp_path / "c.db"),
        "--scraper-expected",
        "2026-02-04T11:00:00Z",
        "--scraper-first-run",
        "2026-02-04T19:45:00Z",
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert "CRITICAL" in result.output and "duplicates:player_game_summary" in result.output

    result = CliRunner().invoke(main, [*args, "--json"])
    assert result.exit_code == 2
    data = json.loads(result.output)
    checks = {c["name"]: c for c in data["checks"]}
    assert checks["duplicates:player_game_summary"]["value"] == 72
    assert checks["completion_accuracy"]["value"] == 0.6
    assert checks["scraper_lateness"]["status"] == "warning"
    assert checks["scraper_lateness"]["value"] == 8.75
    assert data["exit_code"] == 2


def test_health_exit_codes_ok_and_warning(tmp_path: Path, wh: str) -> None:
    client = SQLiteDocumentClient(tmp_path / "c.db")
    tracker = CompletionTracker(client, "phase3", list(EXPECTED_PROCESSORS), lambda d, s: "m-1")
    for i, name in enumerate(EXPECTED_PROCESSORS):
        tracker.record(DATE, name, execution_id=f"r{i}")
    base = [
        "health",
        "--date",
        DATE,
        "--warehouse",
        wh,
        "--completion",
        f"sqlite://{tmp_path}/c.db",
    ]
    ok = CliRunner().invoke(main, [*base, "--json"])
    assert ok.exit_code == 0, ok.output
    statuses = {c["name"]: c["status"] for c in json.loads(ok.output)["checks"]}
    assert statuses["scraper_lateness"] == "skipped"
    assert statuses["trigger_delay"] == "ok"
    late = CliRunner().invoke(
        main,
        [
            *base,
            "--scraper-expected",
            "2026-02-04T11:00:00+00:00",
            "--scraper-first-run",
            "2026-02-04T16:00:00+00:00",
        ],
    )
    assert late.exit_code == 1, late.output


def test_health_as_subprocess_json(tmp_path: Path, wh: str) -> None:
    proc = run("health", "--date", DATE, "--warehouse", wh, "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["status"] == "ok"
    assert {c["status"] for c in data["checks"] if c["name"].startswith("duplicates:")} == {"ok"}


# --------------------------------------------------------------------------- reconcile


def test_reconcile_dry_run_then_fix_publishes_once(tmp_path: Path, wh: str) -> None:
    completion = drifted(tmp_path / "c.db")
    out = tmp_path / "triggers.jsonl"
    base = ["reconcile", "--date", DATE, "--warehouse", wh, "--completion", completion]
    before = SQLiteDocumentClient(tmp_path / "c.db").collection("phase3_completion")
    snapshot = before.document(DATE).get()

    dry = CliRunner().invoke(main, base)
    assert dry.exit_code == 1, dry.output
    assert "would publish the trigger" in dry.output
    after = before.document(DATE).get()
    assert after.update_time == snapshot.update_time and after.to_dict() == snapshot.to_dict()

    fixed = run(*base, "--fix", "--publisher", f"file://{out}")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert "published the trigger" in fixed.stdout
    lines = out.read_text().splitlines()
    assert len(lines) == 1
    message = json.loads(lines[0])
    assert message["dedup_id"] == "phase3/2026-02-03" and message["count"] == 5
    doc = before.document(DATE).get().to_dict()
    assert doc["_triggered"] is True and doc["_completed_count"] == 5

    again = run(*base, "--fix", "--publisher", f"file://{out}", "--json")
    assert again.returncode == 0
    assert json.loads(again.stdout)["ok"] is True
    assert len(out.read_text().splitlines()) == 1


def test_reconcile_fix_without_publisher_leaves_trigger_pending(tmp_path: Path, wh: str) -> None:
    completion = drifted(tmp_path / "c.db")
    result = CliRunner().invoke(
        main, ["reconcile", "--date", DATE, "--warehouse", wh, "--completion", completion, "--fix"]
    )
    assert result.exit_code == 1
    doc = SQLiteDocumentClient(tmp_path / "c.db").collection("phase3_completion")
    data = doc.document(DATE).get().to_dict()
    assert data["_trigger_pending"] is True and data["_triggered"] is False


@pytest.mark.firestore
def test_reconcile_on_firestore_emulator_subprocess(
    firestore_emulator: Any, firestore_client: Any, tmp_path: Path, wh: str
) -> None:
    ref = firestore_client.collection("phase3_completion").document(DATE)
    ref.set({"player_game_summary": {"status": "success"}, "_completed_count": 3})
    out = tmp_path / "t.jsonl"
    env = {"FIRESTORE_EMULATOR_HOST": firestore_emulator.host}
    completion = f"firestore://{firestore_emulator.project}"
    base = ["reconcile", "--date", DATE, "--warehouse", wh, "--completion", completion]
    dry = run(*base, "--json", env=env)
    assert dry.returncode == 1, dry.stderr
    report = json.loads(dry.stdout)
    assert report["count_before"] == 1 and report["count_after"] == 5
    assert ref.get().to_dict()["_completed_count"] == 3
    fixed = run(*base, "--fix", "--publisher", f"file://{out}", env=env)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    doc = ref.get().to_dict()
    assert doc["_completed_count"] == 5 and doc["_triggered"] is True
    assert doc["_trigger_message_id"] == f"file:{out}:1"
    health = run(
        "health", "--date", DATE, "--warehouse", wh, "--completion", completion, "--json", env=env
    )
    checks = {c["name"]: c for c in json.loads(health.stdout)["checks"]}
    assert checks["completion"]["status"] == checks["completion_accuracy"]["status"] == "ok"
    # The repair kept the (unknown) real completion time: the delay is not called on time.
    assert checks["trigger_delay"]["status"] == "unknown"
    assert health.returncode == 1, health.stdout + health.stderr


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("args", "needle", "code"),
    [
        (["health", "--date", "2026-02-30"], "--date must be a date", EXIT_USAGE),
        (["health", "--date", "yesterday"], "--date must be a date", EXIT_USAGE),
        (["health", "--date", DATE, "--table", "nope"], "unknown table 'nope'", EXIT_USAGE),
        (
            ["health", "--date", DATE, "--warehouse", "duckdb:///nope/x.db"],
            "does not exist",
            EXIT_USAGE,
        ),
        (["health", "--date", DATE, "--warehouse", "oracle://x"], "bad warehouse URL", EXIT_USAGE),
        (["health", "--date", DATE, "--scraper-expected", "6am"], "--scraper-expected", EXIT_USAGE),
        (["health", "--date", DATE], "nothing would be checked", EXIT_USAGE),
        (["health", "--dat", DATE], "No such option '--dat'", EXIT_USAGE),
        (["reconcile", "--date", DATE], "needs --warehouse", EXIT_USAGE),
        (
            ["locks", "list", "--store", "redis://127.0.0.1:1/0"],
            "unreachable",
            EXIT_COULD_NOT_RUN,
        ),
        (["locks", "list", "--store", "nosuch://x"], "bad store URL", EXIT_USAGE),
        (["locks", "list"], "no lease store", EXIT_USAGE),
        (["locks", "break", "k:2026-02-03", "--store", "memory://"], "without --force", EXIT_USAGE),
        (
            ["locks", "break", "k", "--force", "--store", "memory://"],
            "SCOPE:YYYY-MM-DD",
            EXIT_USAGE,
        ),
        (
            ["health", "--date", DATE, "--warehouse", "duckdb:///tmp"],
            "'/tmp' is a directory",
            EXIT_USAGE,
        ),
        (["health", "--date", DATE, "--bogus"], "No such option '--bogus'", EXIT_USAGE),
        (["health"], "Missing option '--date'", EXIT_USAGE),
        (["demo", "--dir", "/etc/passwd"], "'/etc/passwd' is a file", EXIT_USAGE),
        (["demo", "--on-busy", "maybe"], "--on-busy", EXIT_USAGE),
        (["nosuchcommand"], "No such command 'nosuchcommand'", EXIT_USAGE),
    ],
)
def test_errors_are_one_line_with_their_own_exit_code(
    args: list[str], needle: str, code: int
) -> None:
    env = {"PROCESSOR_GUARD_STORE": "", "PROCESSOR_GUARD_WAREHOUSE": ""}
    proc = run(*args, env=env)
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert needle in one_line_error(proc.stderr)
    assert proc.stdout == ""


def test_could_not_run_is_one_line_and_exit_3() -> None:
    proc = run("locks", "list", "--store", "redis://127.0.0.1:1/0")
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "unreachable" in one_line_error(proc.stderr)


@pytest.mark.parametrize("typed", ["/tmp/pg/completion.db", "pg/naive-completion.db"])
def test_a_bare_completion_path_is_named_as_typed(wh: str, typed: str) -> None:
    proc = run("health", "--date", DATE, "--warehouse", wh, "--completion", typed)
    assert proc.returncode == 4, proc.stdout + proc.stderr
    line = one_line_error(proc.stderr)
    assert repr(typed) in line and "sqlite://" in line
    assert "firestore:///" not in line


def test_a_directory_as_completion_file_says_directory(wh: str, tmp_path: Path) -> None:
    proc = run("health", "--date", DATE, "--warehouse", wh, "--completion", f"sqlite://{tmp_path}")
    assert proc.returncode == 4
    assert "is a directory" in one_line_error(proc.stderr)


def test_help_documents_every_exit_code() -> None:
    from processor_guard.cli import EXIT_CODES

    result = CliRunner().invoke(main, ["--help"], terminal_width=80)
    assert result.exit_code == 0
    for code in EXIT_CODES:
        assert f"\n    {code} " in result.output, result.output
    assert max(len(line) for line in result.output.splitlines()) <= 80


def test_unreachable_firestore_is_one_line(wh: str) -> None:
    proc = run(
        "health",
        "--date",
        DATE,
        "--completion",
        "firestore://nowhere",
        "--timeout",
        "1",
        env={"FIRESTORE_EMULATOR_HOST": "127.0.0.1:1"},
    )
    assert proc.returncode == EXIT_COULD_NOT_RUN
    assert "Firestore" in one_line_error(proc.stderr)


# --------------------------------------------------------------------------- locks


def test_locks_memory_store_in_process() -> None:
    store = open_store("memory://cli-test")
    got = store.try_acquire("player_game_summary:2026-02-03", "host-a:1", 60)
    assert got.acquired and got.fence is not None
    runner = CliRunner()
    listed = runner.invoke(main, ["locks", "list", "--store", "memory://cli-test", "--json"])
    assert listed.exit_code == 0
    assert json.loads(listed.output)[0]["owner"] == "host-a:1"
    shown = runner.invoke(
        main, ["locks", "show", "player_game_summary:2026-02-03", "--store", "memory://cli-test"]
    )
    assert "held by host-a:1" in shown.output
    refused = runner.invoke(
        main, ["locks", "break", "player_game_summary:2026-02-03", "--store", "memory://cli-test"]
    )
    assert refused.exit_code == EXIT_USAGE
    assert store.holder("player_game_summary:2026-02-03") is not None
    broke = runner.invoke(
        main,
        [
            "locks",
            "break",
            "player_game_summary:2026-02-03",
            "--force",
            "--store",
            "memory://cli-test",
            "--reason",
            "stuck after crash",
        ],
    )
    assert broke.exit_code == 0, broke.output
    assert "held by host-a:1" in broke.output
    assert store.holder("player_game_summary:2026-02-03") is None
    # The old holder can no longer renew, and the next fence is above the broken one.
    assert not store.renew("player_game_summary:2026-02-03", "host-a:1", got.fence, 60)
    nxt = store.try_acquire("player_game_summary:2026-02-03", "host-b:2", 60)
    assert nxt.fence is not None and nxt.fence > got.fence
    free = runner.invoke(main, ["locks", "show", "nothing:2026-02-03", "--store", "memory://x"])
    assert free.exit_code == 1
    assert "free" in free.output
    free_json = runner.invoke(
        main, ["locks", "show", "nothing:2026-02-03", "--store", "memory://x", "--json"]
    )
    assert free_json.exit_code == 1
    assert json.loads(free_json.output) == {"key": "nothing:2026-02-03", "held": False}


def test_break_logs_who_broke_what(caplog: pytest.LogCaptureFixture) -> None:
    store = open_store("memory://cli-log")
    store.try_acquire("k:2026-02-03", "host-a:1", 60)
    with caplog.at_level("WARNING", logger="processor_guard.cli"):
        result = CliRunner().invoke(
            main, ["locks", "break", "k:2026-02-03", "--force", "--store", "memory://cli-log"]
        )
    assert result.exit_code == 0
    (record,) = [r for r in caplog.records if r.name == "processor_guard.cli"]
    assert "k:2026-02-03" in record.getMessage() and "host-a:1" in record.getMessage()
    assert "broken by" in record.getMessage()


def test_locks_sqlite_store_subprocess(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'leases.db'}"
    store = SQLiteStore(str(tmp_path / "leases.db"))
    got = store.try_acquire("team_offense_game_summary:2026-02-03", "worker-1", 120)
    assert got.acquired and got.fence is not None
    listed = run("locks", "list", "--store", url)
    assert listed.returncode == 0 and "worker-1" in listed.stdout
    (held,) = json.loads(run("locks", "list", "--store", url, "--json").stdout)
    assert held["held"] is True and held["owner"] == "worker-1"
    assert held["remaining"] == round(held["remaining"], 3) and 0 < held["remaining"] <= 120
    broke = run("locks", "break", "team_offense_game_summary:2026-02-03", "--force", "--store", url)
    assert broke.returncode == 0, broke.stderr
    assert "broken by" in broke.stderr  # the log line
    assert not store.renew("team_offense_game_summary:2026-02-03", "worker-1", got.fence, 120)
    assert run("locks", "list", "--store", url).stdout.strip() == "no live leases"


@pytest.mark.redis
def test_locks_redis_store_subprocess(redis_url: str) -> None:
    store = open_store(redis_url)
    got = store.try_acquire("player_game_summary:2026-02-03", "worker-9", 120)
    assert got.acquired and got.fence is not None
    shown = run("locks", "show", "player_game_summary:2026-02-03", "--json", "--store", redis_url)
    assert shown.returncode == 0, shown.stderr
    held = json.loads(shown.stdout)
    assert held["fence"] == got.fence and held["held"] is True
    assert held["remaining"] == round(held["remaining"], 3) and 0 < held["remaining"] <= 120
    env = {"PROCESSOR_GUARD_STORE": redis_url}
    broke = run("locks", "break", "player_game_summary:2026-02-03", "--force", env=env)
    assert broke.returncode == 0, broke.stderr
    assert not store.renew("player_game_summary:2026-02-03", "worker-9", got.fence, 120)
    nxt = store.try_acquire("player_game_summary:2026-02-03", "worker-10", 120)
    assert nxt.fence is not None and nxt.fence > got.fence
    store.close()


@pytest.mark.bigquery
def test_health_on_bigquery_emulator_subprocess(bigquery_emulator: Any) -> None:
    from fixtures.health import bq_insert, rows_for
    from processor_guard.demo.data import create_table_sql

    client = bigquery_emulator.client()
    dataset = bigquery_emulator.new_dataset(client)
    for name in ("team_offense_game_summary", "team_defense_game_summary"):
        table = f"{dataset}.{name}"
        client.query(create_table_sql(name, engine="bigquery", qualified=table)).result()
        rows = rows_for(name)
        bq_insert(client, table, name, rows + rows[:2] if name.startswith("team_def") else rows)
    project, name = dataset.split(".")
    url = f"bigquery://{project}/{name}"
    env = {"BIGQUERY_EMULATOR_HOST": bigquery_emulator.endpoint}
    args = ["--table", "team_offense_game_summary", "--table", "team_defense_game_summary"]
    proc = run("health", "--date", DATE, "--warehouse", url, "--json", *args, env=env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    checks = {c["name"]: c for c in json.loads(proc.stdout)["checks"]}
    assert checks["duplicates:team_offense_game_summary"]["status"] == "ok"
    assert checks["duplicates:team_defense_game_summary"]["value"] == 2
    assert checks["duplicates:team_defense_game_summary"]["status"] == "critical"
