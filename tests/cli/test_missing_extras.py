"""A feature whose extra is not installed fails with one line naming the extra to
install, from the library (MissingDependency, still an ImportError) and from the CLI
(exit 3, could not run), never a ModuleNotFoundError traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fixtures.without import run_without

CLI = "from processor_guard.cli import main\nmain(prog_name='processor-guard')\n"

OPEN_STORE = """
import json, sys
from processor_guard import MissingDependency, open_store
try:
    open_store(sys.argv[1])
except ImportError as exc:
    print(json.dumps({"type": type(exc).__name__, "guard": isinstance(exc, MissingDependency),
                      "message": str(exc), "extra": exc.extra}))
"""


@pytest.mark.parametrize(
    ("blocked", "url", "extra"),
    [
        ("redis", "redis://127.0.0.1:6379/0", "redis"),
        ("redis", "rediss://127.0.0.1:6380/0", "redis"),
        ("google", "firestore://my-project", "firestore"),
    ],
)
def test_open_store_names_the_extra(blocked: str, url: str, extra: str) -> None:
    proc = run_without([blocked], OPEN_STORE, url)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out == {
        "type": "MissingDependency",
        "guard": True,
        "message": out["message"],
        "extra": extra,
    }
    assert f"pip install 'processor-guard[{extra}]'" in out["message"]


@pytest.mark.parametrize(
    ("blocked", "args", "extra"),
    [
        ("redis", ["locks", "list", "--store", "redis://127.0.0.1:6379/0"], "redis"),
        ("google", ["locks", "show", "k:2026-02-03", "--store", "firestore://p"], "firestore"),
        ("duckdb", ["health", "--date", "2026-02-03", "--warehouse", "duckdb://{file}"], "duckdb"),
        ("google", ["health", "--date", "2026-02-03", "--warehouse", "bigquery://p/d"], "bigquery"),
        ("google", ["health", "--date", "2026-02-03", "--completion", "my-project"], "firestore"),
        ("duckdb", ["demo", "--dir", "{dir}"], "duckdb"),
    ],
)
def test_the_cli_prints_one_line_and_exits_3(
    tmp_path: Path, blocked: str, args: list[str], extra: str
) -> None:
    (tmp_path / "w.duckdb").write_bytes(b"")
    argv = [a.format(file=tmp_path / "w.duckdb", dir=tmp_path / "demo") for a in args]
    proc = run_without([blocked], CLI, *argv)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("processor-guard: error: ")
    assert f"pip install 'processor-guard[{extra}]'" in lines[0]
    assert not (tmp_path / "demo" / "summary.json").exists()
