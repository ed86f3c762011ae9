"""The runnable local variant of the README's example: run twice on one folder it
leaves one row per player, and it names the helper tables safe_merge creates."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "local_quickstart.py"


def test_two_runs_leave_one_row_per_player(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PROCESSOR_GUARD_STORE"}
    for _ in range(2):
        proc = subprocess.run(
            [sys.executable, str(EXAMPLE), str(tmp_path)],
            capture_output=True,
            text=True,
            env=env,
            timeout=180,
        )
        out = proc.stdout
        assert proc.returncode == 0, proc.stderr
        assert out.startswith("348 rows, 348 players; completion 1/1; triggered: True"), out
        assert "helper tables: player_game_summary__pg_guard" in out
