"""The unguarded replay's orchestrator loses counter updates by construction: whatever
order the seven completion messages arrive in, the stored count ends at 3 of 5 with
every processor's entry written and no phase-4 trigger, as on 2026-02-03."""

from __future__ import annotations

import itertools
import random
from pathlib import Path
from typing import Any

from processor_guard.completion.docstore import SQLiteDocumentClient
from processor_guard.completion.tracker import CompletionTracker
from processor_guard.demo.data import DEMO_DATE, EXPECTED_PROCESSORS
from processor_guard.demo.runner import (
    COMPLETION_MESSAGES,
    Events,
    NaiveCompletion,
    NaiveOrchestrator,
)

MESSAGES: list[dict[str, Any]] = [
    {"event": "completion-message", "table": "player_game_summary", "rows": 70},
    {"event": "completion-message", "table": "player_game_summary", "rows": 348},
    *({"event": "completion-message", "table": t, "rows": 20} for t in EXPECTED_PROCESSORS[1:]),
    {"event": "completion-message", "table": EXPECTED_PROCESSORS[1], "rows": 20, "duplicate": True},
]


def _replay(tmp_path: Path, order: list[dict[str, Any]], name: str) -> tuple[Any, list[str]]:
    published: list[str] = []
    path = tmp_path / f"{name}.db"
    completion = NaiveCompletion(path, publish=lambda day: published.append(day) or "m")
    completion.initialise(DEMO_DATE.isoformat())
    orchestrator = NaiveOrchestrator(completion, Events(tmp_path / f"{name}.jsonl"))
    arrived: list[dict[str, Any]] = [{"event": "go"}]
    for message in order:  # one at a time, as the processes publish them
        arrived.append(message)
        orchestrator.feed(arrived)
    orchestrator.drain()
    completion.close()
    tracker = CompletionTracker(SQLiteDocumentClient(path), "phase3", EXPECTED_PROCESSORS)
    return tracker.state(DEMO_DATE), published


def test_seven_messages_in_any_order_leave_3_of_5_and_no_trigger(tmp_path: Path) -> None:
    assert len(MESSAGES) == COMPLETION_MESSAGES
    orders = list(itertools.permutations(range(len(MESSAGES))))
    for n, order in enumerate(random.Random(15).sample(orders, 6)):
        state, published = _replay(tmp_path, [MESSAGES[i] for i in order], f"run{n}")
        assert state.stored_count == 3, order
        assert state.count == 5, order  # every processor's entry is there
        assert not state.triggered and published == [], order


def test_the_timeline_marks_every_lost_update(tmp_path: Path) -> None:
    _replay(tmp_path, MESSAGES, "timeline")
    events = Events(tmp_path / "timeline.jsonl").all()
    writes = [ev for ev in events if ev["event"] == "completion"]
    assert [ev["count"] for ev in writes] == [1, 1, 2, 2, 2, 3, 3]
    assert sum(ev["lost"] for ev in writes) == COMPLETION_MESSAGES - 3


def test_timeline_lines_are_not_highlighted() -> None:
    """Only the demo's own markup is coloured: no highlighter on numbers or paths."""
    import io

    from processor_guard.demo.runner import _describe, demo_console

    out = io.StringIO()
    console = demo_console(file=out, force_terminal=True, width=80, color_system="truecolor")
    line = _describe({"event": "running", "table": "player_game_summary", "rows": 70, "games": 2})
    console.print(f"  {0.0:6.2f}s  demo       {line} /tmp/x.duckdb")
    assert "\x1b" not in out.getvalue()


def test_a_second_instance_that_never_ran_is_not_reported_as_running() -> None:
    from processor_guard.demo.runner import RunResult, _second_instance

    started = [{"who": "instance-2", "event": "ready"}]
    failed = [*started, {"who": "instance-2", "event": "error", "error": "StoreUnavailable: x"}]
    merged = [*started, {"who": "instance-2", "event": "merged"}]
    for mode in ("unguarded", "guarded"):
        assert _second_instance(mode, started, RunResult(mode)) == "did not run"
        assert _second_instance(mode, failed, RunResult(mode)) == "failed: StoreUnavailable: x"
    assert _second_instance("unguarded", merged, RunResult("unguarded")) == "ran alongside"
    waited = RunResult("guarded", second_instance_waited=1.5)
    assert _second_instance("guarded", merged, waited) == "waited 1.50s"


def test_a_replay_that_is_not_clean_says_why() -> None:
    from processor_guard.demo.runner import RunResult

    result = RunResult(
        "guarded",
        player_rows=348,
        unique_keys=348,
        completion_count=5,
        triggers=1,
        errors=["instance-2: StoreUnavailable: redis down"],
        exit_codes={"instance-1": 0, "instance-2": 1, "others": 0},
    )
    assert result.problems() == ["instance-2: StoreUnavailable: redis down"]
    assert result.clean is False
    assert (
        RunResult("guarded", player_rows=348, unique_keys=348, completion_count=5, triggers=1).clean
        is True
    )
