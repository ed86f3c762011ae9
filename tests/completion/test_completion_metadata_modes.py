"""Caller metadata with each entry, a trigger rule chosen per date by mode, and the
reason a date triggered (issue 14, item 7); on the SQLite document client and the real
Firestore emulator."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fixtures.health import Recorder
from processor_guard import CompletionTracker, ConfigError
from processor_guard.completion.docstore import SQLiteDocumentClient
from processor_guard.completion.tracker import MAX_METADATA_BYTES, TriggerRule

EXPECTED = [
    "player_game_summary",
    "team_offense_game_summary",
    "team_defense_game_summary",
    "upcoming_player_game_context",
    "upcoming_team_game_context",
]
CRITICAL = ["player_game_summary", "upcoming_player_game_context"]
DATE = "2026-02-03"
MODES = {"overnight": "all", "same_day": CRITICAL}


@pytest.fixture(params=["sqlite", pytest.param("firestore", marks=pytest.mark.firestore)])
def client(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "sqlite":
        return SQLiteDocumentClient(tmp_path / "completion.db")
    return request.getfixturevalue("firestore_client")


def tracker(client: Any, publish: Any = None, **kwargs: Any) -> CompletionTracker:
    return CompletionTracker(client, "phase3", EXPECTED, publish, modes=MODES, **kwargs)


def stored(client: Any, day: str = DATE) -> dict[str, Any]:
    data = client.collection("phase3_completion").document(day).get().to_dict()
    assert isinstance(data, dict)
    return data


def test_metadata_is_stored_with_the_entry_and_replaced_by_the_next_execution(
    client: Any,
) -> None:
    t = tracker(client)
    meta = {
        "entities_changed": ["lebronjames", "stephencurry"],
        "is_incremental": True,
        "correlation_id": "abc-123",
        "counts": {"players": 2, "ratio": 0.5},
    }
    state = t.record(DATE, "player_game_summary", execution_id="e1", metadata=meta)
    entry = stored(client)["player_game_summary"]
    assert {k: entry[k] for k in meta} == meta
    assert entry["metadata_keys"] == sorted(meta)
    assert state.entries["player_game_summary"]["correlation_id"] == "abc-123"

    t.record(DATE, "player_game_summary", execution_id="e2", metadata={"correlation_id": "x"})
    entry = stored(client)["player_game_summary"]
    assert entry["correlation_id"] == "x" and entry["execution_id"] == "e2"
    assert "entities_changed" not in entry and "is_incremental" not in entry
    assert entry["executions"] == ["e1", "e2"]


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"status": "fake"}, "reserved"),
        ({"fence": 1}, "reserved"),
        ({"_triggered": True}, "names must match"),
        ({"bad name": 1}, "names must match"),
        ({1: "x"}, "names must match"),
        ({"when": object()}, r"metadata\['when'\] must be JSON"),
        ({"ratio": float("nan")}, "finite"),
        ({"nested": {1: "x"}}, "keys must be strings"),
        ({"blob": "x" * (MAX_METADATA_BYTES + 1)}, "bytes as JSON"),
        ({"deep": [[[[[[[[[[1]]]]]]]]]]}, "nested deeper"),
        (["entities_changed"], "must be a dict"),
    ],
)
def test_bad_metadata_is_a_config_error_and_writes_nothing(
    client: Any, metadata: Any, message: str
) -> None:
    t = tracker(client)
    with pytest.raises(ConfigError, match=message):
        t.record(DATE, "player_game_summary", execution_id="e1", metadata=metadata)
    assert not t.state(DATE).exists


def test_same_day_mode_triggers_on_the_critical_ones_and_says_why(client: Any) -> None:
    pub = Recorder()
    t = tracker(client, pub)
    t.record(DATE, "player_game_summary", execution_id="a", mode="same_day")
    assert pub.calls == []
    state = t.record(DATE, "upcoming_player_game_context", execution_id="b", mode="same_day")
    assert state.triggered and len(pub.calls) == 1
    assert state.mode == "same_day"
    assert state.trigger_reason is not None
    assert state.trigger_reason.startswith("critical complete (2/2")
    assert state.trigger_reason.endswith("mode same_day")
    assert state.to_dict()["trigger_reason"] == state.trigger_reason
    assert stored(client)["_mode"] == "same_day"
    # The rest of the night's runs are recorded; nothing triggers twice.
    for i, name in enumerate(EXPECTED):
        t.record(DATE, name, execution_id=f"late-{i}", mode="overnight")
    assert len(pub.calls) == 1


def test_overnight_mode_waits_for_all_five(client: Any) -> None:
    pub = Recorder()
    t = tracker(client, pub)
    for name in EXPECTED[:-1]:
        state = t.record(DATE, name, execution_id=f"run-{name}", mode="overnight")
    assert not state.should_trigger and pub.calls == []
    assert state.trigger_reason is None
    state = t.record(DATE, EXPECTED[-1], execution_id="last", mode="overnight")
    assert state.triggered and len(pub.calls) == 1
    assert state.trigger_reason == "all expected complete (5/5), mode overnight"


def test_the_mode_is_chosen_per_date(client: Any) -> None:
    pub = Recorder()
    t = tracker(client, pub)
    tonight, last_night = "2026-02-03", "2026-02-02"
    for day, mode in ((tonight, "same_day"), (last_night, "overnight")):
        for name in CRITICAL:
            t.record(day, name, execution_id=f"{day}-{name}", mode=mode)
    assert [day for day, _ in pub.calls] == [tonight]
    assert t.state(last_night).mode == "overnight" and not t.state(last_night).should_trigger


def test_without_a_mode_the_default_rule_and_its_reason(client: Any) -> None:
    pub = Recorder()
    t = CompletionTracker(client, "phase3", EXPECTED, pub, critical=CRITICAL, fraction=0.5)
    for name in [*CRITICAL, "team_offense_game_summary"]:
        state = t.record(DATE, name, execution_id=name)
    assert not state.should_trigger, "half of the 3 others, rounded up, is 2"
    state = t.record(DATE, "team_defense_game_summary", execution_id="d")
    assert state.triggered and state.mode is None
    assert state.trigger_reason == (
        "critical complete (2/2: player_game_summary, upcoming_player_game_context) "
        "and 2 of 3 others (needs 2)"
    )


def test_unknown_modes_and_bad_mode_rules_are_refused(client: Any) -> None:
    t = tracker(client)
    with pytest.raises(ConfigError, match="mode must be one of"):
        t.record(DATE, "player_game_summary", execution_id="e", mode="weekly")
    assert not t.state(DATE).exists
    for modes, message in (
        ({"same_day": ["not_a_processor"]}, "not in expected"),
        ({"same_day": []}, "non-empty list"),
        ({"same_day": "critical"}, "non-empty list"),
        ({"bad mode": "all"}, "mode names"),
        ({"x": TriggerRule(("player_game_summary",), fraction=2.0)}, "fraction"),
    ):
        with pytest.raises(ConfigError, match=message):
            CompletionTracker(client, "phase3", EXPECTED, modes=modes)
