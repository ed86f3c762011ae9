"""What a user installs: the public names, the published metadata, and a fresh
virtualenv with only the package and its DuckDB extra running the demo."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import venv
from pathlib import Path

import pytest

import processor_guard

ROOT = Path(__file__).resolve().parents[2]


def _pyproject() -> dict[str, object]:
    tomllib = pytest.importorskip("tomllib")
    data: dict[str, object] = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return data


def test_dir_lists_only_the_public_api() -> None:
    names = dir(processor_guard)
    assert set(names) == {*processor_guard.__all__, "__version__"}
    for helper in ("Any", "TYPE_CHECKING", "annotations", "importlib"):
        assert helper not in names
    for name in processor_guard.__all__:
        assert getattr(processor_guard, name) is not None


def test_published_extras_hold_no_dev_tools_and_duckdb_is_optional() -> None:
    project = _pyproject()["project"]
    assert isinstance(project, dict)
    extras = project["optional-dependencies"]
    assert set(extras) == {"redis", "firestore", "bigquery", "duckdb", "pubsub", "all"}
    published = " ".join([*project["dependencies"], *(r for rs in extras.values() for r in rs)])
    for tool in ("pytest", "mypy", "ruff", "mkdocs", "hypothesis", "pandas", "matplotlib"):
        assert tool not in published
    assert not any(r.startswith("duckdb") for r in project["dependencies"])
    assert any(r.startswith("duckdb") for r in extras["duckdb"])


def test_project_urls_name_source_docs_changelog_and_issues() -> None:
    project = _pyproject()["project"]
    assert isinstance(project, dict)
    urls = project["urls"]
    for label in ("Source", "Documentation", "Changelog", "Issues"):
        assert re.match(r"https://\S+$", urls[label]), label


@pytest.mark.slow
def test_a_fresh_venv_with_only_the_duckdb_extra_runs_the_demo(tmp_path: Path) -> None:
    """No redis, no google-cloud-*: the demo still runs end to end and is clean."""
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    install = subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            f"{ROOT}[duckdb]",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stderr
    listed = subprocess.run(
        [str(python), "-m", "pip", "list", "--format=json"], capture_output=True, text=True
    )
    installed = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert "duckdb" in installed
    assert not {n for n in installed if n.startswith(("google-cloud", "redis"))}
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    demo = subprocess.run(
        [str(env_dir / "bin" / "processor-guard"), "demo", "--dir", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=tmp_path,
    )
    assert demo.returncode == 0, demo.stdout + demo.stderr
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert summary["clean"] is True
    assert summary["unguarded"]["completion_count"] == 3
    assert summary["unguarded"]["triggers"] == 0
    assert sys.executable not in demo.stdout  # the fresh venv's own console script is named
    assert str(env_dir / "bin" / "processor-guard") in demo.stdout
