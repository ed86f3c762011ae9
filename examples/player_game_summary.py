"""player_game_summary on the guarded base: one row per (game_date, player_lookup)."""

from __future__ import annotations

import datetime as dt
from typing import Any, ClassVar

from analytics_base import AnalyticsProcessorBase

from processor_guard.demo import data as demo_data
from processor_guard.leases import parse_game_date


class PlayerGameSummaryProcessor(AnalyticsProcessorBase):
    """Builds one summary row per player and game from the gamebook of a date."""

    table: ClassVar[str] = "player_game_summary"

    def extract(self, opts: dict[str, Any]) -> list[dict[str, Any]]:
        # Stand-in for the query on the raw gamebook tables: the demo's seeded date.
        day = parse_game_date(opts["end_date"], argument="end_date")
        games = demo_data.games_for(day)[: int(opts.get("games", 10))]
        return demo_data.player_rows(games, game_date=day)

    def transform(self, raw: list[dict[str, Any]], opts: dict[str, Any]) -> list[dict[str, Any]]:
        now = dt.datetime.now(dt.timezone.utc).isoformat()
        rows = []
        for r in raw:
            row = dict(r, processed_at=now)
            # Usage rate is meaningless for a player who did not play.
            if row["is_dnp"]:
                row["usage_rate"] = None
            rows.append(row)
        return rows
