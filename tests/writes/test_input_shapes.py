"""Rows as upstream builds them (pandas/numpy values, a DataFrame), keys as the
column's type compares them, and the empty-key policy, on DuckDB and the emulator."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import numpy as np
import pandas as pd
import pytest

from processor_guard import ConfigError, InvalidRows, safe_merge
from processor_guard._values import coerce, plain_value
from processor_guard.writes.warehouse import as_warehouse

DAY = dt.date(2026, 2, 3)
KEYS = ("game_date", "player_lookup")
UTC = dt.timezone.utc


def _stored(client: Any, table: str) -> dict[str, dict[str, Any]]:
    wh = as_warehouse(client)
    rows = wh.query(f"SELECT * FROM {wh.quote_table(table)}")
    return {r["player_lookup"]: r for r in rows}


def _frame() -> pd.DataFrame:
    """Three players as a processor's DataFrame: int64 with a missing value (float NaN),
    float NaN, a Timestamp column with NaT, numpy booleans."""
    return pd.DataFrame(
        {
            "game_date": [pd.Timestamp(DAY)] * 3,
            "player_lookup": ["a", "b", "c"],
            "points": pd.array([10, None, 3], dtype="Int64"),
            "assists": [1.0, float("nan"), 2.0],  # an int column with a gap: floats
            "usage_rate": np.array([0.25, np.nan, 0.5]),
            "minutes_played": [Decimal("31.5"), None, np.float64(12.25)],
            "starter_flag": np.array([True, False, True]),
            "processed_at": [
                pd.Timestamp("2026-02-03T23:00:00Z"),
                pd.NaT,
                pd.Timestamp("2026-02-03 22:00"),
            ],
        }
    )


def test_a_dataframe_is_written_with_nan_nat_and_na_as_null(pgs: tuple[Any, str]) -> None:
    client, table = pgs
    result = safe_merge(client, table, _frame(), keys=KEYS)
    assert (result.inserted, result.updated) == (3, 0)
    stored = _stored(client, table)
    assert (stored["a"]["points"], stored["a"]["assists"], stored["a"]["usage_rate"]) == (
        10, 1, 0.25
    )  # fmt: skip
    assert stored["a"]["minutes_played"] == Decimal("31.5")
    assert stored["a"]["starter_flag"] is True
    b = stored["b"]
    assert [b[c] for c in ("points", "assists", "usage_rate", "minutes_played")] == [None] * 4
    assert b["processed_at"] is None
    stamp = stored["c"]["processed_at"]
    assert (stamp.replace(tzinfo=None) if stamp.tzinfo else stamp) == dt.datetime(2026, 2, 3, 22)
    assert stored["c"]["minutes_played"] == Decimal("12.25")


def test_numpy_scalars_in_plain_dicts(pgs: tuple[Any, str]) -> None:
    client, table = pgs
    rows = [
        {"game_date": np.datetime64("2026-02-03"), "player_lookup": np.str_("np"),
         "points": np.int64(4), "assists": np.int32(2), "usage_rate": np.float32(0.5),
         "is_dnp": np.bool_(False), "season_year": np.uint16(2025),
         "processed_at": np.datetime64("2026-02-03T23:00:00.123456789")},
    ]  # fmt: skip
    assert safe_merge(client, table, rows, keys=KEYS).inserted == 1
    row = _stored(client, table)["np"]
    assert (row["game_date"], row["points"], row["assists"], row["season_year"]) == (
        DAY, 4, 2, 2025
    )  # fmt: skip
    assert (row["usage_rate"], row["is_dnp"]) == (0.5, False)
    assert row["processed_at"].replace(tzinfo=None) == dt.datetime(2026, 2, 3, 23, 0, 0, 123456)


def test_numpy_arrays_fill_array_columns() -> None:
    import duckdb

    conn = duckdb.connect()
    conn.execute(
        "CREATE TABLE t (game_date DATE, player_lookup VARCHAR, quality_issues VARCHAR[], "
        "shots BIGINT[], processed_at TIMESTAMP)"
    )
    frame = pd.DataFrame(
        {"game_date": [DAY, DAY], "player_lookup": ["a", "b"],
         "quality_issues": [np.array(["x", "y"], dtype=object), None],
         "shots": [np.array([1, 2, 3]), np.array([], dtype=np.int64)],
         "processed_at": [pd.Timestamp("2026-02-03T23:00Z")] * 2}
    )  # fmt: skip
    assert safe_merge(conn, "t", frame, keys=KEYS).inserted == 2
    stored = conn.execute("SELECT quality_issues, shots FROM t ORDER BY player_lookup").fetchall()
    assert stored == [(["x", "y"], [1, 2, 3]), ([], [])]


def test_plain_value_without_importing_pandas_rules() -> None:
    assert plain_value(np.int64(4)) == 4 and type(plain_value(np.int64(4))) is int
    assert plain_value(float("nan")) is None and plain_value(np.float64("nan")) is None
    assert plain_value(pd.NaT) is None and plain_value(pd.NA) is None
    assert plain_value(np.datetime64("NaT")) is None
    assert type(plain_value(np.str_("x"))) is str
    assert plain_value(np.array([1, 2])) == [1, 2]
    assert plain_value(float("inf")) == float("inf")
    assert coerce(np.float64(2.0), "INT64") == 2
    with pytest.raises(TypeError, match="timedelta64"):
        plain_value(np.timedelta64(1, "s"))


def test_string_keys_compare_as_strings_timestamp_keys_as_instants() -> None:
    """Two spellings of one instant are two STRING keys (as BigQuery compares them), and
    one TIMESTAMP key."""
    import duckdb

    conn = duckdb.connect()
    conn.execute("CREATE TABLE s (k VARCHAR, v BIGINT)")
    conn.execute("CREATE TABLE t (k TIMESTAMP, v BIGINT)")
    rows = [{"k": "2026-02-03T10:00:00Z", "v": 1}, {"k": "2026-02-03 10:00:00+00:00", "v": 2}]
    as_strings = safe_merge(conn, "s", rows, keys=("k",), partition_field=None, order_by=None)
    assert (as_strings.inserted, as_strings.dedup.dropped_rows) == (2, 0)
    as_instants = safe_merge(conn, "t", rows, keys=("k",), partition_field=None, order_by=None)
    assert (as_instants.inserted, as_instants.dedup.dropped_rows) == (1, 1)
    assert conn.execute("SELECT count(*) FROM s").fetchone() == (2,)
    assert conn.execute("SELECT k FROM t").fetchall() == [(dt.datetime(2026, 2, 3, 10),)]


@pytest.mark.parametrize("empty", [None, "", float("nan"), pd.NaT, "missing"])
def test_empty_keys_are_refused_or_skipped_with_a_report(pgs: tuple[Any, str], empty: Any) -> None:
    client, table = pgs
    rows: list[dict[str, Any]] = [
        {"game_date": DAY, "player_lookup": name, "points": 1} for name in ("a", "b", "c")
    ]
    if empty == "missing":
        del rows[1]["player_lookup"]
    else:
        rows[1]["player_lookup"] = empty
    with pytest.raises(InvalidRows, match="row 1 has an empty key value in column 'player_lookup'"):
        safe_merge(client, table, rows, keys=KEYS)
    assert as_warehouse(client).count_rows(table) == 0
    result = safe_merge(client, table, rows, keys=KEYS, empty_keys="skip")
    assert result.inserted == 2
    assert result.skipped_rows == [{"row": 1, "column": "player_lookup"}]
    assert sorted(_stored(client, table)) == ["a", "c"]


def test_policies_are_checked() -> None:
    with pytest.raises(ConfigError, match="empty_keys"):
        safe_merge("unused.duckdb", "t", [], keys=("k",), empty_keys="drop")
    with pytest.raises(ConfigError, match="new_columns"):
        safe_merge("unused.duckdb", "t", [], keys=("k",), new_columns="allow")
    with pytest.raises(ConfigError, match="not a dict"):
        safe_merge("unused.duckdb", "t", {"k": 1}, keys=("k",))
