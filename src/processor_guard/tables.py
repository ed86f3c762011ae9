"""Table specifications: the key each analytics table holds one row per."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError

__all__ = ["TABLES", "TableSpec", "resolve_table"]


@dataclass(frozen=True)
class TableSpec:
    """A table's name, unique key columns, partition column and dedup ordering column."""

    name: str
    keys: tuple[str, ...]
    partition_field: str = "game_date"
    order_by: str = "processed_at"
    #: Where the key comes from upstream (najicham/nba-stats-scraper), and how it differs.
    source: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("TableSpec.name must be non-empty")
        if isinstance(self.keys, str) or not self.keys or not all(self.keys):
            raise ConfigError(f"TableSpec.keys must be a non-empty tuple of columns: {self.keys!r}")
        object.__setattr__(self, "keys", tuple(self.keys))


_UPSTREAM = "najicham/nba-stats-scraper data_processors/analytics/"

# Checked against upstream's PRIMARY_KEY_FIELDS (what its MERGE joins on). Where upstream
# keys on game_id, the key here is game_date: upstream found game_id spelled two ways
# (AWAY_HOME / HOME_AWAY) for one game, which made its MERGE insert duplicates, and
# moved team_offense_game_summary to game_date for that reason; a team or player plays
# at most one game per date, and game_date is the partition the MERGE is limited to.
TABLES: dict[str, TableSpec] = {
    spec.name: spec
    for spec in (
        TableSpec(
            "player_game_summary", ("game_date", "player_lookup"),
            source=_UPSTREAM + "player_game_summary/player_game_summary_processor.py: "
            "PRIMARY_KEY_FIELDS = ['game_id', 'player_lookup'] (game_id -> game_date, above)",
        ),
        TableSpec(
            "team_offense_game_summary", ("game_date", "team_abbr"),
            source=_UPSTREAM + "team_offense_game_summary/team_offense_game_summary_processor.py: "
            "PRIMARY_KEY_FIELDS = ['game_date', 'team_abbr'] (moved from game_id upstream)",
        ),
        TableSpec(
            "team_defense_game_summary", ("game_date", "defending_team_abbr"),
            source=_UPSTREAM + "team_defense_game_summary/team_defense_game_summary_processor.py: "
            "PRIMARY_KEY_FIELDS = ['game_id', 'defending_team_abbr'] (game_id -> game_date)",
        ),
        TableSpec(
            "upcoming_player_game_context", ("game_date", "player_lookup"),
            source=_UPSTREAM + "upcoming_player_game_context/"
            "upcoming_player_game_context_processor.py: "
            "PRIMARY_KEY_FIELDS = ['game_date', 'player_lookup']",
        ),
        TableSpec(
            "upcoming_team_game_context", ("game_date", "team_abbr"),
            source=_UPSTREAM + "upcoming_team_game_context/upcoming_team_game_context_processor.py:"
            " PRIMARY_KEY_FIELDS = ['game_date', 'team_abbr'] per upstream's MERGE fix notes "
            "(docs/09-handoff/2026-01-05-MERGE-UPDATE-BUG-FIX-COMPLETE.md); a save on "
            "(team_abbr, game_id) is the game_id form above: pass keys= to match it",
        ),
    )
}  # fmt: skip


def resolve_table(table: TableSpec | str) -> TableSpec:
    """``table`` itself, or the spec of one of the pipeline's tables by name."""
    if isinstance(table, TableSpec):
        return table
    if isinstance(table, str) and table in TABLES:
        return TABLES[table]
    raise ConfigError(f"unknown table {table!r} (known: {', '.join(sorted(TABLES))})")
