"""The API reference documents every public name with an example, and the examples
run (those needing a server or cloud credentials are only compiled)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

import processor_guard

API = Path(__file__).resolve().parents[2] / "docs" / "api.md"
NEEDS_A_SERVER = ("redis://", "firestore", "RedisStore", "FirestoreStore")


def _sections() -> dict[str, str]:
    """name -> the text between its ``::: path.name`` line and the next one or heading."""
    text = API.read_text()
    parts = re.split(r"^::: ([\w.]+)\n", text, flags=re.M)
    return {
        path.rsplit(".", 1)[1]: re.split(r"^## ", body, flags=re.M)[0]
        for path, body in zip(parts[1::2], parts[2::2], strict=True)
    }


def _example(body: str) -> str:
    match = re.search(r"```python\n(.*?)```", body, re.S)
    assert match, body
    return match.group(1)


def test_every_public_name_has_a_reference_entry_with_an_example() -> None:
    sections = _sections()
    assert set(sections) == set(processor_guard.__all__)
    for name, body in sections.items():
        compile(_example(body), f"{API}:{name}", "exec")


def test_the_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("duckdb")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PROCESSOR_GUARD_STORE", raising=False)
    for name, body in _sections().items():
        code = _example(body)
        if any(marker in code for marker in NEEDS_A_SERVER):
            continue
        code = code.replace("/tmp/", f"{tmp_path}{os.sep}")
        exec(compile(code, f"{API}:{name}", "exec"), {"__name__": f"docs_{name}"})
