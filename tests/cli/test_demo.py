"""`processor-guard demo` as a real subprocess: it must exit 0 with a clean guarded run,
and its unguarded run must show the incident (duplicates, DELETEs). The assertions read
the summary.json the demo writes into --dir, never the screen."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from processor_guard.demo.data import games_for

ALL_ROWS = sum(g.player_count for g in games_for())
pytestmark = pytest.mark.slow


def _cli() -> list[str]:
    return [sys.executable, "-m", "processor_guard"]


def _run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*_cli(), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "80", **env},
    )


def _demo(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    proc = _run("demo", "--dir", str(tmp_path), *args)
    summary_file = tmp_path / "summary.json"
    assert summary_file.exists(), proc.stdout + proc.stderr
    return proc, json.loads(summary_file.read_text())


def _assert_incident_and_fix(summary: dict[str, Any]) -> None:
    bad, good = summary["unguarded"], summary["guarded"]
    # The old pattern: both MERGEs conflict, both fall back to DELETE + INSERT, and the
    # first instance's batch ends up in the table twice.
    assert bad["merge_conflicts"] >= 2
    assert bad["delete_statements"] >= 2
    assert bad["duplicates"] > 0
    assert bad["player_rows"] > ALL_ROWS
    assert bad["second_instance"] == "ran alongside"
    # ... and the orchestrator's lost updates: every processor finished, the stored
    # counter says 3 of 5, and phase 4 is never triggered; health agrees.
    assert bad["completion_count"] == 3
    assert bad["completion_entries"] == 5
    assert bad["triggers"] == 0
    assert (bad["health"], bad["health_exit_code"]) == ("critical", 2)
    assert bad["clean"] is False
    # The guard: one row per player, no DELETE sent, one hand-off, 5/5, one trigger.
    assert good["player_rows"] == ALL_ROWS
    assert good["unique_keys"] == ALL_ROWS
    assert good["duplicates"] == 0
    assert good["delete_statements"] == 0
    assert good["statements_sent"] > 0
    assert good["lease_handoffs"] >= 1
    assert good["fences"] == sorted(good["fences"]) and len(set(good["fences"])) >= 2
    assert good["completion_count"] == 5
    assert good["triggers"] == 1
    assert (good["health"], good["health_exit_code"]) == ("ok", 0)
    assert all(t["duplicates"] == 0 and t["rows"] > 0 for t in good["other_tables"].values())
    assert good["exit_codes"] == {"instance-1": 0, "instance-2": 0, "others": 0}
    assert good["clean"] is True
    assert summary["clean"] is True


def test_demo_default_backends(tmp_path: Path) -> None:
    proc, summary = _demo(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _assert_incident_and_fix(summary)
    assert summary["store"].startswith("sqlite:///")
    # The second instance waited for the lease rather than running alongside.
    assert summary["guarded"]["second_instance_waited"] > 0
    assert summary["guarded"]["second_instance"].startswith("waited ")
    assert summary["guarded"]["refusals"] == 0
    # At 80 columns only lines holding a path (never cut short) are wider.
    assert proc.stdout.count(str(tmp_path)) >= 3
    assert max(len(line) for line in proc.stdout.splitlines() if str(tmp_path) not in line) <= 80


def test_demo_temporary_folder_kept_and_its_commands_work_as_pasted(tmp_path: Path) -> None:
    """--keep says where the files are, and the printed health commands run from a
    shell without the virtualenv on PATH; their verdicts match the demo's table."""
    proc = _run("demo", "--keep", TMPDIR=str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (kept,) = tmp_path.glob("processor-guard-demo-*")
    assert f"Files kept in {kept}" in proc.stdout
    summary = json.loads((kept / "summary.json").read_text())
    commands = [line.strip() for line in proc.stdout.splitlines() if " health --date " in line]
    assert len(commands) == 2
    for command, mode in zip(commands, ("unguarded", "guarded"), strict=True):
        pasted = subprocess.run(
            ["/bin/sh", "-c", command],
            capture_output=True,
            text=True,
            timeout=120,
            env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        )
        assert pasted.returncode == summary[mode]["health_exit_code"], pasted.stderr


def test_demo_removes_its_temporary_folder(tmp_path: Path) -> None:
    proc = _run("demo", TMPDIR=str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert list(tmp_path.iterdir()) == []
    assert "temporary files removed" in proc.stdout


def test_demo_checks_the_store_before_running_anything(tmp_path: Path) -> None:
    proc = _run("demo", "--store", "redis://:s3cret@127.0.0.1:1/0", TMPDIR=str(tmp_path))
    assert proc.returncode == 3, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("processor-guard: error: ")
    assert "cannot be reached, so nothing was run" in lines[0]
    assert "s3cret" not in proc.stdout + proc.stderr
    assert "unguarded" not in proc.stdout  # no replay started
    assert list(tmp_path.iterdir()) == []


@pytest.mark.redis
def test_demo_on_redis_with_refusal_and_redelivery(tmp_path: Path, redis_url: str) -> None:
    proc, summary = _demo(tmp_path, "--store", redis_url, "--on-busy", "refuse")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _assert_incident_and_fix(summary)
    assert summary["store"] == redis_url
    assert summary["guarded"]["refusals"] >= 1


@pytest.mark.parametrize("url", ["mongodb://nope", "memory://"])
def test_demo_rejects_a_bad_store_url_in_one_line(tmp_path: Path, url: str) -> None:
    proc = subprocess.run(
        [*_cli(), "demo", "--dir", str(tmp_path), "--store", url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 4, proc.stderr
    assert "Traceback" not in proc.stderr
    assert url in proc.stderr
    assert not (tmp_path / "summary.json").exists()


@pytest.mark.bigquery
def test_demo_on_the_bigquery_emulator(tmp_path: Path, bigquery_emulator: Any) -> None:
    url = (
        f"bigquery://{bigquery_emulator.project}/demo_replay?endpoint={bigquery_emulator.endpoint}"
    )
    proc, summary = _demo(tmp_path, "--warehouse", url)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _assert_incident_and_fix(summary)
    assert summary["warehouse"] == url


@pytest.mark.firestore
def test_demo_on_the_firestore_emulator(tmp_path: Path, firestore_emulator: Any) -> None:
    """Leases and the completion document on Firestore (FIRESTORE_EMULATOR_HOST is
    inherited by the demo and its processes)."""
    firestore_emulator.start()
    firestore_emulator.reset()
    proc, summary = _demo(tmp_path, "--store", f"firestore://{firestore_emulator.project}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _assert_incident_and_fix(summary)
    assert summary["completion"] == f"firestore://{firestore_emulator.project}"
