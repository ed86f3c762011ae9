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
    script = Path(sys.executable).with_name("processor-guard")
    return [str(script)] if script.exists() else [sys.executable, "-m", "processor_guard.cli"]


def _demo(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    proc = subprocess.run(
        [*_cli(), "demo", "--dir", str(tmp_path), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "120"},
    )
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
    assert summary["guarded"]["refusals"] == 0


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
    assert proc.returncode != 0
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
