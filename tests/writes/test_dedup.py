"""dedupe_rows: normalised keys, deterministic choice, report, and bad input."""

from __future__ import annotations

import copy
import datetime as dt
import json
import logging
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processor_guard import TABLES, ConfigError, DedupReport, InvalidRows, TableSpec, dedupe_rows

UTC = dt.timezone.utc
KEYS = ("game_date", "player_lookup")


def test_reexports_table_specs() -> None:
    assert isinstance(TABLES["player_game_summary"], TableSpec)
    assert TABLES["team_defense_game_summary"].keys == ("game_date", "defending_team_abbr")


def test_keeps_newest_and_reports() -> None:
    rows = [
        {
            "game_date": "2026-02-03",
            "player_lookup": "a",
            "points": 1,
            "processed_at": "2026-02-03T10:00:00Z",
        },
        {
            "game_date": "2026-02-03",
            "player_lookup": "b",
            "points": 5,
            "processed_at": "2026-02-03T10:00:00Z",
        },
        {
            "game_date": "2026-02-03",
            "player_lookup": "a",
            "points": 2,
            "processed_at": "2026-02-03T12:00:00Z",
        },
        {
            "game_date": "2026-02-03",
            "player_lookup": "b",
            "points": 5,
            "processed_at": "2026-02-03T09:00:00Z",
        },
    ]
    out, report = dedupe_rows(rows, KEYS)
    assert [(r["player_lookup"], r["points"]) for r in out] == [("a", 2), ("b", 5)]
    assert report == DedupReport(4, 2, 2, 2, 1, report.conflict_examples)
    assert len(report.conflict_examples) == 1
    first, _ = dedupe_rows(rows, KEYS, keep="first")
    assert [(r["player_lookup"], r["points"]) for r in first] == [("a", 1), ("b", 5)]


def test_date_and_iso_string_are_one_key() -> None:
    rows = [
        {
            "game_date": dt.date(2026, 2, 3),
            "player_lookup": "a",
            "processed_at": "2026-02-03T10:00:00",
        },
        {"game_date": "2026-02-03", "player_lookup": "a", "processed_at": "2026-02-03T11:00:00"},
    ]
    out, report = dedupe_rows(rows, KEYS)
    assert len(out) == 1 and report.duplicate_keys == 1
    assert out[0]["game_date"] == "2026-02-03"


def test_timestamps_compare_as_instants() -> None:
    later_local = "2026-02-03T12:30:00+02:00"  # 10:30 UTC
    rows = [
        {
            "game_date": "2026-02-03",
            "player_lookup": "a",
            "v": 1,
            "processed_at": dt.datetime(2026, 2, 3, 11, tzinfo=UTC),
        },
        {"game_date": "2026-02-03", "player_lookup": "a", "v": 2, "processed_at": later_local},
        {
            "game_date": "2026-02-03",
            "player_lookup": "a",
            "v": 3,
            "processed_at": "2026-02-03 10:45:00",
        },
    ]
    out, _ = dedupe_rows(rows, KEYS)
    assert out[0]["v"] == 1  # 11:00 UTC is the newest instant
    ts_key = [
        {"processed_at": "2026-02-03T10:00:00Z", "x": 1},  # text: a key of its own
        {
            "processed_at": dt.datetime(2026, 2, 3, 12, tzinfo=dt.timezone(dt.timedelta(hours=2))),
            "x": 2,
        },
        {"processed_at": dt.datetime(2026, 2, 3, 10), "x": 3},  # naive = UTC
    ]
    out, report = dedupe_rows(ts_key, ("processed_at",), order_by="x")
    assert [r["x"] for r in out] == [1, 3] and report.dropped_rows == 1


def test_ties_broken_by_content_whatever_the_order() -> None:
    base = {"game_date": "2026-02-03", "player_lookup": "a", "processed_at": "2026-02-03T10:00:00Z"}
    rows = [dict(base, points=p) for p in (3, 9, 1)]
    kept = {
        dedupe_rows(perm, KEYS)[0][0]["points"] for perm in (rows, rows[::-1], rows[1:] + rows[:1])
    }
    assert len(kept) == 1


def test_identical_duplicates_are_not_conflicts() -> None:
    row = {
        "game_date": "2026-02-03",
        "player_lookup": "a",
        "points": 1,
        "processed_at": "2026-02-03T10:00:00Z",
    }
    again = dict(row, processed_at="2026-02-03T11:00:00Z")  # redelivery, same values
    _, report = dedupe_rows([row, again, dict(row)], KEYS)
    assert (report.duplicate_keys, report.conflicting_keys) == (1, 0)


def test_conflicts_logged_at_warning(caplog: pytest.LogCaptureFixture) -> None:
    rows = [{"game_date": "2026-02-03", "player_lookup": "a", "points": p} for p in range(5)]
    with caplog.at_level(logging.WARNING, logger="processor_guard.writes.dedup"):
        _, report = dedupe_rows(rows, KEYS, order_by=None)
    assert report.conflicting_keys == 1
    assert any(
        "different values" in r.message and r.levelno == logging.WARNING for r in caplog.records
    )


def test_conflict_examples_list_a_key_s_rows_in_input_order() -> None:
    rows = [
        {"game_date": dt.date(2026, 2, 3), "player_lookup": "a", "points": p, "processed_at": t}
        for p, t in (
            (1, "2026-02-03T01:00:00Z"),
            (2, "2026-02-03T03:00:00Z"),
            (3, "2026-02-03T02:00:00Z"),
        )
    ]
    rows.insert(1, {"game_date": dt.date(2026, 2, 3), "player_lookup": "b", "points": 0})
    out, report = dedupe_rows(rows, KEYS)
    assert [r["points"] for r in out] == [2, 0]
    (example,) = report.conflict_examples
    assert example["key"] == {"game_date": dt.date(2026, 2, 3), "player_lookup": "a"}
    assert example["rows"] == 3 and example["differs"] == {"points": [1, 2, 3]}


def test_never_mutates_input_and_returns_new_dicts() -> None:
    rows = [
        {"game_date": dt.date(2026, 2, 3), "player_lookup": "a", "processed_at": None, "l": [1]}
    ]
    snapshot = copy.deepcopy(rows)
    out, _ = dedupe_rows(rows, KEYS)
    assert rows == snapshot
    assert out[0] == rows[0] and out[0] is not rows[0]
    out[0]["player_lookup"] = "changed"
    assert rows == snapshot


def test_accepts_any_iterable_and_empty() -> None:
    out, report = dedupe_rows(iter([]), KEYS)
    assert out == [] and report == DedupReport(0, 0, 0, 0, 0)
    gen = ({"game_date": "2026-02-03", "player_lookup": p} for p in "abca")
    out, report = dedupe_rows(gen, KEYS, order_by=None)
    assert [r["player_lookup"] for r in out] == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("bad", "index", "column"),
    [
        ({"player_lookup": "x"}, 2, "game_date"),
        ({"game_date": "2026-02-03", "player_lookup": None}, 2, "player_lookup"),
        ({"game_date": "", "player_lookup": "x"}, 2, "game_date"),
        ({"game_date": "2026-02-03", "player_lookup": ["x"]}, 2, "player_lookup"),
    ],
)
def test_bad_keys_name_row_and_column(bad: dict[str, Any], index: int, column: str) -> None:
    good = [{"game_date": "2026-02-03", "player_lookup": p} for p in "ab"]
    with pytest.raises(InvalidRows) as info:
        dedupe_rows([*good, bad, *good], KEYS)
    assert isinstance(info.value, ValueError)
    assert (info.value.row_index, info.value.column) == (index, column)
    assert f"row {index}" in str(info.value) and column in str(info.value)


def test_non_mapping_row_and_bad_arguments() -> None:
    with pytest.raises(InvalidRows, match="row 1"):
        dedupe_rows([{"game_date": "d", "player_lookup": "p"}, ("d", "p")], KEYS)  # type: ignore[list-item]
    with pytest.raises(ConfigError):
        dedupe_rows([], "game_date")
    with pytest.raises(ConfigError):
        dedupe_rows([], ())
    with pytest.raises(ConfigError):
        dedupe_rows([], KEYS, keep="newest")


# -- properties ----------------------------------------------------------------------

_day = st.sampled_from([dt.date(2026, 2, 3), dt.date(2026, 2, 4)])
_stamp = st.sampled_from([dt.datetime(2026, 2, 3, h, tzinfo=UTC) for h in (9, 10, 11)] + [None])


@st.composite
def _row(draw: Any) -> dict[str, Any]:
    day = draw(_day)
    stamp = draw(_stamp)
    return {
        "game_date": day if draw(st.booleans()) else day.isoformat(),
        "player_lookup": draw(st.sampled_from(["lebronjames", "stephencurry", "a"])),
        "points": draw(st.integers(0, 3)),
        "processed_at": stamp if stamp is None or draw(st.booleans()) else stamp.isoformat(),
    }


_rows = st.lists(_row(), max_size=30)


def _canon(rows: list[dict[str, Any]]) -> list[str]:
    def norm(v: Any) -> Any:
        if isinstance(v, dt.datetime):
            return v.isoformat()
        if isinstance(v, dt.date):
            return v.isoformat()
        if isinstance(v, str) and "T" in v:
            return dt.datetime.fromisoformat(v).isoformat()
        return v

    return sorted(json.dumps({k: norm(v) for k, v in r.items()}, sort_keys=True) for r in rows)


def _key(row: dict[str, Any]) -> tuple[str, str]:
    day = row["game_date"]
    return (day if isinstance(day, str) else day.isoformat(), row["player_lookup"])


@given(_rows, st.sampled_from(["last", "first"]))
@settings(max_examples=200, deadline=None)
def test_property_idempotent(rows: list[dict[str, Any]], keep: str) -> None:
    once, _ = dedupe_rows(rows, KEYS, keep=keep)
    twice, report = dedupe_rows(once, KEYS, keep=keep)
    assert twice == once
    assert report.dropped_rows == 0 and report.duplicate_keys == 0


@given(_rows, st.randoms(use_true_random=False), st.sampled_from(["last", "first"]))
@settings(max_examples=200, deadline=None)
def test_property_input_order_irrelevant(
    rows: list[dict[str, Any]], rnd: random.Random, keep: str
) -> None:
    shuffled = rows[:]
    rnd.shuffle(shuffled)
    assert _canon(dedupe_rows(rows, KEYS, keep=keep)[0]) == _canon(
        dedupe_rows(shuffled, KEYS, keep=keep)[0]
    )


@given(_rows)
@settings(max_examples=200, deadline=None)
def test_property_one_row_per_key_and_newest(rows: list[dict[str, Any]]) -> None:
    snapshot = copy.deepcopy(rows)
    out, report = dedupe_rows(rows, KEYS)
    keys = {_key(r) for r in rows}
    assert len(out) == len(keys) <= len(rows)
    assert {_key(r) for r in out} == keys
    assert report.output_rows + report.dropped_rows == report.input_rows == len(rows)
    assert rows == snapshot

    def instant(v: Any) -> dt.datetime:
        if v is None:
            return dt.datetime.min.replace(tzinfo=UTC)
        return v if isinstance(v, dt.datetime) else dt.datetime.fromisoformat(v)

    for kept in out:
        group = [r for r in rows if _key(r) == _key(kept)]
        assert instant(kept["processed_at"]) == max(instant(r["processed_at"]) for r in group)


# -- key forms on both grouping paths -------------------------------------------------
# Two keys with text in the second column take a screened single pass; other shapes
# take the general path. These tests pin both to the same semantics.


def test_timestamp_strings_are_compared_as_text_datetimes_as_instants() -> None:
    """Issue 11: BigQuery compares STRING keys as text, so without a schema two spellings
    of one instant are two keys; datetime objects are one key per instant (safe_merge
    converts TIMESTAMP text to datetimes first: tests/writes/test_input_shapes.py)."""
    spellings = [
        "2026-02-03T10:00:00Z",
        "2026-02-03 10:00:00+00:00",
        "2026-02-03T12:00:00+02:00",
        dt.datetime(2026, 2, 3, 10, tzinfo=UTC),
        dt.datetime(2026, 2, 3, 12, tzinfo=dt.timezone(dt.timedelta(hours=2))),
        dt.datetime(2026, 2, 3, 10),  # naive = UTC
    ]
    rows = [{"game_id": "g1", "start": s, "v": i} for i, s in enumerate(spellings)]
    rows.append({"game_id": "g1", "start": "2026-02-03T10:00:00Z", "v": 9})
    for keys in (("game_id", "start"), ("start", "game_id")):
        out, report = dedupe_rows(rows, keys, order_by="v")
        assert sorted(r["v"] for r in out) == [1, 2, 5, 9], keys
        assert report.duplicate_keys == 2 and report.dropped_rows == 3


def test_dates_and_iso_strings_mixed_later_in_either_column() -> None:
    rows = [
        {
            "game_date": dt.date(2026, 2, 3),
            "player_lookup": "a",
            "processed_at": "2026-02-03T01:00:00",
        },
        {
            "game_date": dt.date(2026, 2, 3),
            "player_lookup": "b",
            "processed_at": "2026-02-03T01:00:00",
        },
        {"game_date": "2026-02-03", "player_lookup": "a", "processed_at": "2026-02-03T02:00:00"},
    ]
    out, report = dedupe_rows(rows, KEYS)
    assert [r["player_lookup"] for r in out] == ["a", "b"] and report.duplicate_keys == 1
    assert out[0]["game_date"] == "2026-02-03"
    swapped = [
        {"k": "x", "day": "2026-02-03", "n": 1},
        {"k": "x", "day": "zzz", "n": 2},
        {"k": "x", "day": dt.date(2026, 2, 3), "n": 3},
    ]
    out, report = dedupe_rows(swapped, ("k", "day"), order_by="n")
    assert sorted(r["n"] for r in out) == [2, 3] and report.duplicate_keys == 1


def test_falsy_but_valid_key_values_are_accepted() -> None:
    rows = [
        {"game_date": "2026-02-03", "player_lookup": "a"},
        {"game_date": 0, "player_lookup": "0"},
        {"game_date": False, "player_lookup": "~"},
    ]
    out, report = dedupe_rows(rows, KEYS, order_by=None)
    assert len(out) == 3 and report.dropped_rows == 0


@pytest.mark.parametrize(
    ("bad", "column"),
    [
        ({"game_date": None, "player_lookup": "x"}, "game_date"),
        ({"game_date": "2026-02-03", "player_lookup": ""}, "player_lookup"),
        ({"game_date": "2026-02-03"}, "player_lookup"),
        ({"game_date": "2026-02-03", "player_lookup": {"x": 1}}, "player_lookup"),
    ],
)
def test_bad_key_late_in_a_large_batch(bad: dict[str, Any], column: str) -> None:
    rows: list[dict[str, Any]] = [
        {"game_date": dt.date(2026, 2, 3), "player_lookup": f"p{i}"} for i in range(2000)
    ]
    rows.insert(1500, bad)
    with pytest.raises(InvalidRows) as info:
        dedupe_rows(rows, KEYS)
    assert (info.value.row_index, info.value.column) == (1500, column)


_key_values = st.sampled_from(
    [
        dt.date(2026, 2, 3),
        "2026-02-03",
        dt.date(2026, 2, 4),
        "2026-02-03T10:00:00Z",
        "2026-02-03 12:00:00+02:00",
        dt.datetime(2026, 2, 3, 10, tzinfo=UTC),
        dt.datetime(2026, 2, 3, 10),
        "lebronjames",
        "Zed",
        "0",
        0,
        7,
    ]
)


@st.composite
def _mixed_row(draw: Any) -> dict[str, Any]:
    return {
        "a": draw(_key_values),
        "b": draw(_key_values),
        "c": "const",
        "v": draw(st.integers(0, 2)),
        "processed_at": draw(_stamp),
    }


def _norm_key(value: Any) -> Any:
    """The issue's key equality, written independently of the library."""
    if isinstance(value, dt.datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=UTC)
        return aware.astimezone(UTC)
    if isinstance(value, dt.date):
        return value.isoformat()
    return value  # strings as text (issue 11), whatever they spell


@given(st.lists(_mixed_row(), max_size=25), st.sampled_from(["last", "first"]))
@settings(max_examples=300, deadline=None)
def test_property_grouping_paths_agree(rows: list[dict[str, Any]], keep: str) -> None:
    runs = [
        dedupe_rows(rows, keys, keep=keep, copy=False)
        for keys in (("a", "b"), ("b", "a"), ("c", "a", "b"))
    ]
    kept = [[id(r) for r in out] for out, _ in runs]
    assert kept[0] == kept[1] == kept[2]
    counts = {
        (rep.output_rows, rep.dropped_rows, rep.duplicate_keys, rep.conflicting_keys)
        for _, rep in runs
    }
    assert len(counts) == 1
    assert len(runs[0][0]) == len({(_norm_key(r["a"]), _norm_key(r["b"])) for r in rows})


# -- rows in runs of one date (one dict per date) and interleaved rows (one dict) ------
# The screened pass picks its layout from the first rows; both layouts, and the
# general path, must give the same rows in the same order with the same report.

_run_keys = st.sampled_from(
    [dt.date(2026, 2, 3), dt.date(2026, 2, 4), "2026-02-03", dt.datetime(2026, 2, 3, 0)]
)
_run_names = st.sampled_from(["lebronjames", "a", "Zed", "0x", "2026-02-03T10:00:00Z", ""])


@st.composite
def _run_rows(draw: Any) -> list[dict[str, Any]]:
    """Rows in runs: each run one first-key value (a fresh but equal object per row)."""
    rows: list[dict[str, Any]] = []
    for _ in range(draw(st.integers(0, 5))):
        day = draw(_run_keys)
        for _ in range(draw(st.integers(1, 6))):
            value = copy.copy(day) if not isinstance(day, str) else "".join(day)
            rows.append(
                {
                    "game_date": value if draw(st.booleans()) else day,
                    "player_lookup": draw(_run_names),
                    "points": draw(st.integers(0, 2)),
                    "processed_at": draw(_stamp),
                }
            )
    return rows


def _outcome(rows: list[dict[str, Any]], keys: tuple[str, ...], keep: str) -> Any:
    """The input positions of the kept rows and the report's counts, or the error."""
    try:
        out, report = dedupe_rows(rows, keys, keep=keep, copy=False)
    except InvalidRows as exc:
        return ("invalid", exc.row_index, exc.column)
    position = {id(r): i for i, r in enumerate(rows)}
    counts = (report.output_rows, report.duplicate_keys, report.conflicting_keys)
    return [position[id(r)] for r in out], counts


@given(_run_rows(), st.sampled_from(["last", "first"]))
@settings(max_examples=300, deadline=None)
def test_property_runs_and_interleaved_layouts_agree(rows: list[dict[str, Any]], keep: str) -> None:
    from unittest import mock

    from processor_guard.writes import dedup

    with mock.patch.object(dedup, "_in_runs", return_value=True):
        by_date = _outcome(rows, KEYS, keep)
    with mock.patch.object(dedup, "_in_runs", return_value=False):
        one_dict = _outcome(rows, KEYS, keep)
    # Three key columns take the general path; a constant first column keeps the keys.
    general = _outcome([{"k": "c", **r} for r in rows], ("k", *KEYS), keep)
    assert by_date == one_dict
    assert by_date[:2] == general[:2]


def test_output_keeps_first_appearance_order_on_both_layouts() -> None:
    days = [dt.date(2026, 2, d) for d in (3, 4, 5)]
    interleaved = [
        {"game_date": days[i % 3], "player_lookup": f"p{i % 7}", "processed_at": i}
        for i in range(60)
    ]
    in_runs = sorted(interleaved, key=lambda r: r["game_date"])
    for batch in (interleaved, in_runs):
        first_seen: dict[tuple[dt.date, str], int] = {}
        for r in batch:
            key = (r["game_date"], r["player_lookup"])
            first_seen[key] = max(first_seen.get(key, -1), r["processed_at"])
        out, report = dedupe_rows(batch, KEYS)
        assert [(r["game_date"], r["player_lookup"], r["processed_at"]) for r in out] == [
            (*key, newest) for key, newest in first_seen.items()
        ]
        assert report.output_rows == 21


class _Ambiguous:
    """A key value that is hashable but refuses comparison (as a NumPy array does)."""

    def __eq__(self, other: object) -> bool:
        raise ValueError("the truth value is ambiguous")

    def __ne__(self, other: object) -> bool:
        raise ValueError("the truth value is ambiguous")

    def __hash__(self) -> int:
        return 1


def test_key_value_that_refuses_comparison_takes_the_general_path() -> None:
    odd = _Ambiguous()
    rows = [{"game_date": dt.date(2026, 2, 3), "player_lookup": f"p{i}"} for i in range(40)]
    rows.append({"game_date": odd, "player_lookup": "p1"})
    out, report = dedupe_rows(rows, KEYS, order_by=None)
    assert len(out) == 41 and report.duplicate_keys == 0
    assert out[-1]["game_date"] is odd
