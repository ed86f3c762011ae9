"""The upstream-shaped example's tables, for both engines, in one place.

``player_game_summary`` has the upstream table's shape: 101 columns (identifiers,
box-score and shot-zone stats, prop-line columns filled by a later enrichment pass,
quarter splits, per-source tracking columns, ``quality_issues`` and ``data_sources`` as
ARRAY<STRING>, one STRUCT) of every scalar type the pipeline uses. ``mlb_pitcher_game_summary``
is the MLB processor's smaller table. Each column is declared once, as BigQuery sees it;
the DuckDB DDL is derived from the same list.
"""

from __future__ import annotations

from typing import Any, NamedTuple


class Col(NamedTuple):
    """One column: BigQuery type (``RECORD`` for a STRUCT), mode, STRUCT fields."""

    name: str
    type: str
    mode: str = "NULLABLE"
    fields: tuple[Col, ...] = ()


def _many(names: str, kind: str) -> list[Col]:
    return [Col(name, kind) for name in names.split()]


SOURCES = (
    "nbac_gamebook",
    "bdl_boxscores",
    "bigdataball_pbp",
    "nbac_pbp",
    "odds_api_props",
    "bettingpros_props",
)

#: The columns the prop-line enrichment pass updates (the summary pass never sends them).
PROP_COLUMNS = (
    "points_line",
    "opening_line",
    "line_movement",
    "margin",
    "over_under_result",
    "points_line_source",
    "opening_line_source",
)

PLAYER_GAME_SUMMARY: list[Col] = [
    Col("player_lookup", "STRING", "REQUIRED"),
    Col("universal_player_id", "STRING"),
    Col("player_full_name", "STRING"),
    Col("game_id", "STRING", "REQUIRED"),
    Col("game_date", "DATE", "REQUIRED"),
    Col("team_abbr", "STRING", "REQUIRED"),
    Col("opponent_team_abbr", "STRING", "REQUIRED"),
    Col("season_year", "INT64", "REQUIRED"),
    *_many(
        "points assists offensive_rebounds defensive_rebounds steals blocks turnovers "
        "fg_attempts fg_makes three_pt_attempts three_pt_makes ft_attempts ft_makes "
        "plus_minus personal_fouls",
        "INT64",
    ),
    Col("minutes_played", "NUMERIC"),
    *_many(
        "paint_attempts paint_makes mid_range_attempts mid_range_makes paint_blocks "
        "mid_range_blocks three_pt_blocks and1_count assisted_fg_makes unassisted_fg_makes",
        "INT64",
    ),
    *_many("usage_rate ts_pct efg_pct", "FLOAT64"),
    Col("starter_flag", "BOOL", "REQUIRED"),
    Col("win_flag", "BOOL", "REQUIRED"),
    Col("is_active", "BOOL", "REQUIRED"),
    Col("player_status", "STRING"),
    *_many("points_line opening_line line_movement margin", "NUMERIC"),
    *_many("over_under_result points_line_source opening_line_source", "STRING"),
    *[
        Col(f"q{q}_{stat}", "FLOAT64" if stat == "minutes" else "INT64")
        for q in range(1, 5)
        for stat in ("points", "rebounds", "assists", "minutes")
    ],
    Col("days_rest", "INT64"),
    Col("back_to_back", "BOOL"),
    Col("home_game", "BOOL"),
    Col("game_sequence", "INT64"),
    *[
        col
        for source in SOURCES
        for col in (
            Col(f"source_{source}_last_updated", "TIMESTAMP"),
            Col(f"source_{source}_rows_found", "INT64"),
            Col(f"source_{source}_completeness_pct", "FLOAT64"),
            Col(f"source_{source}_hash", "STRING"),
        )
    ],
    Col("data_quality_tier", "STRING"),
    Col("primary_source_used", "STRING"),
    Col("processed_with_issues", "BOOL"),
    Col("is_production_ready", "BOOL"),
    Col("quality_issues", "STRING", "REPEATED"),
    Col("data_sources", "STRING", "REPEATED"),
    Col(
        "shot_zones",
        "RECORD",
        fields=(
            Col("paint_rate", "FLOAT64"),
            Col("mid_range_rate", "FLOAT64"),
            Col("three_pt_rate", "FLOAT64"),
            Col("zone_source", "STRING"),
        ),
    ),
    Col("data_hash", "STRING"),
    Col("processed_at", "TIMESTAMP"),
]

MLB_PITCHER_GAME_SUMMARY: list[Col] = [
    Col("player_lookup", "STRING", "REQUIRED"),
    Col("game_id", "STRING", "REQUIRED"),
    Col("game_date", "DATE", "REQUIRED"),
    Col("team_abbr", "STRING"),
    Col("opponent_team_abbr", "STRING"),
    Col("season_year", "INT64"),
    Col("innings_pitched", "NUMERIC"),
    *_many("strikeouts walks hits_allowed earned_runs pitch_count", "INT64"),
    Col("k_per_9", "FLOAT64"),
    Col("is_starter", "BOOL"),
    Col("quality_issues", "STRING", "REPEATED"),
    Col("data_sources", "STRING", "REPEATED"),
    Col("processed_at", "TIMESTAMP"),
]

TABLES: dict[str, list[Col]] = {
    "player_game_summary": PLAYER_GAME_SUMMARY,
    "mlb_pitcher_game_summary": MLB_PITCHER_GAME_SUMMARY,
}

_DUCKDB_TYPES = {
    "STRING": "VARCHAR",
    "DATE": "DATE",
    "INT64": "BIGINT",
    "NUMERIC": "DECIMAL(38, 9)",
    "FLOAT64": "DOUBLE",
    "BOOL": "BOOLEAN",
    "TIMESTAMP": "TIMESTAMPTZ",
}


def _duckdb_type(col: Col) -> str:
    if col.type == "RECORD":
        inner = ", ".join(f"{f.name} {_duckdb_type(f)}" for f in col.fields)
        kind = f"STRUCT({inner})"
    else:
        kind = _DUCKDB_TYPES[col.type]
    return f"{kind}[]" if col.mode == "REPEATED" else kind


def duckdb_ddl(table: str, *, dataset: str = "main") -> str:
    """``CREATE TABLE IF NOT EXISTS`` for ``table`` on DuckDB."""
    cols = ", ".join(
        f"{c.name} {_duckdb_type(c)}{' NOT NULL' if c.mode == 'REQUIRED' else ''}"
        for c in TABLES[table]
    )
    return f"CREATE TABLE IF NOT EXISTS {dataset}.{table} ({cols})"


def bigquery_schema(table: str) -> list[Any]:
    """``table``'s columns as ``google.cloud.bigquery.SchemaField`` objects."""
    from google.cloud import bigquery

    def field(col: Col) -> Any:
        nested = [field(f) for f in col.fields]
        return bigquery.SchemaField(col.name, col.type, mode=col.mode, fields=nested)

    return [field(c) for c in TABLES[table]]


def create_tables(warehouse: Any, dataset: str) -> None:
    """Create every table of the example: ``warehouse`` is a DuckDB connection or file
    path (``dataset`` a schema, e.g. ``"main"``) or a BigQuery client (``dataset``
    ``"project.dataset"``, which must exist); BigQuery tables are partitioned by date."""
    if hasattr(warehouse, "create_table"):
        from google.cloud import bigquery

        for name in TABLES:
            table = bigquery.Table(f"{dataset}.{name}", schema=bigquery_schema(name))
            table.time_partitioning = bigquery.TimePartitioning(field="game_date")
            warehouse.create_table(table, exists_ok=True)
        return
    import duckdb

    con = duckdb.connect(warehouse) if isinstance(warehouse, str) else warehouse
    try:
        for name in TABLES:
            con.execute(duckdb_ddl(name, dataset=dataset))
    finally:
        if con is not warehouse:
            con.close()
