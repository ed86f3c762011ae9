"""docs/testing.md: a suite that replaces ``google.cloud`` in ``sys.modules`` with a mock
still imports processor_guard and uses the memory and SQLite stores and the local
completion store (run in a child process, so the mock never reaches this session)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, sys
from unittest import mock

for name in ("google", "google.cloud", "google.cloud.firestore", "google.cloud.bigquery"):
    sys.modules[name] = mock.MagicMock(name=name)

from processor_guard import CompletionTracker, date_lock
from processor_guard.completion.docstore import SQLiteDocumentClient

folder = sys.argv[1]
fences = []
for url in ("memory://mocked-suite", f"sqlite:///{folder}/leases.db"):
    with date_lock("player_game_summary", "2026-02-03", store=url, ttl=5) as lease:
        fences.append(lease.fence)
published = []
tracker = CompletionTracker(
    SQLiteDocumentClient(f"{folder}/completion.db"), "phase3", ["player_game_summary"],
    lambda day, state: published.append(day) or f"m-{day}",
)
state = tracker.record("2026-02-03", "player_game_summary", execution_id="run-1")
print(json.dumps({"fences": fences, "triggered": state.triggered, "published": published}))
"""


def test_a_suite_with_google_cloud_mocked_still_uses_local_stores(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(out["fences"]) == 2 and all(isinstance(f, int) and f > 0 for f in out["fences"])
    assert out["triggered"] is True and out["published"] == ["2026-02-03"]
