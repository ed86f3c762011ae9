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

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("TableSpec.name must be non-empty")
        if isinstance(self.keys, str) or not self.keys or not all(self.keys):
            raise ConfigError(f"TableSpec.keys must be a non-empty tuple of columns: {self.keys!r}")
        object.__setattr__(self, "keys", tuple(self.keys))


TABLES: dict[str, TableSpec] = {
    spec.name: spec
    for spec in (
        TableSpec("player_game_summary", ("game_date", "player_lookup")),
        TableSpec("team_offense_game_summary", ("game_date", "team_abbr")),
        TableSpec("team_defense_game_summary", ("game_date", "defending_team_abbr")),
        TableSpec("upcoming_player_game_context", ("game_date", "player_lookup")),
        TableSpec("upcoming_team_game_context", ("game_date", "team_abbr")),
    )
}


def resolve_table(table: TableSpec | str) -> TableSpec:
    """``table`` itself, or the spec of one of the pipeline's tables by name."""
    if isinstance(table, TableSpec):
        return table
    if isinstance(table, str) and table in TABLES:
        return TABLES[table]
    raise ConfigError(f"unknown table {table!r} (known: {', '.join(sorted(TABLES))})")
