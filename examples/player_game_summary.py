"""player_game_summary on the guarded base: one row per (game_date, player_lookup)."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path
from typing import Any, ClassVar

sys.path.insert(0, str(Path(__file__).parent))  # run on its own: find analytics_base

from analytics_base import AnalyticsProcessorBase

from processor_guard.demo import data as demo_data
from processor_guard.leases import parse_game_date


def scheduled_games(game_date: str) -> list[str]:
    """What a date needs: the schedule's game ids (here the demo's schedule)."""
    day = parse_game_date(game_date, argument="game_date")
    return [g.game_id for g in demo_data.games_for(day)]


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


def main(argv: list[str] | None = None) -> int:
    """Run one date: ``python examples/player_game_summary.py 2026-02-03 [games]``, with
    the same environment as ``push_endpoint.py``."""
    import logging
    import sys

    from push_endpoint import make_processor_from_env

    args = sys.argv[1:] if argv is None else argv
    if not 1 <= len(args) <= 2:
        print("usage: player_game_summary.py YYYY-MM-DD [games]", file=sys.stderr)
        return 64
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    opts: dict[str, Any] = {"start_date": args[0], "end_date": args[0]}
    if len(args) == 2:
        opts["games"] = int(args[1])
    ok = make_processor_from_env()().run(opts)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
