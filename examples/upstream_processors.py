"""Processors shaped like the upstream pipeline's, with processor_guard at the write path.

The upstream base class hand-writes a lock document, a pre-write dedup, a MERGE with a
DELETE + INSERT fallback, retry decorators and a completion counter. Here:

* ``run`` is ``@guarded``: one fenced lease per game date (scope: the table, so every
  processor writing one table shares it), renewed while the run lasts; a busy date
  raises ``LockBusy``, which the service answers 503 so Pub/Sub redelivers.
* ``save_analytics`` hands the DataFrame to ``safe_merge`` with ``PRIMARY_KEY_FIELDS``
  as keys: dedup, validation, one MERGE fenced by the lease (a run that lost its lease
  gets ``StaleFence`` and writes nothing), conflicts retried; never a DELETE.
* completion is recorded under the lease with the upstream metadata
  (``entities_changed``, ``is_incremental``, ``correlation_id``).

Processors: ``PlayerGameSummaryProcessor`` (a 101-column DataFrame of numpy values),
``PlayerPropEnrichmentProcessor`` (a later pass updating the prop-line columns of stored
rows only, reporting the players it found no row for) and
``MlbPitcherGameSummaryProcessor`` (called with ``opts={'date': ...}``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import sys
import uuid
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))

from upstream_tables import PROP_COLUMNS, SOURCES

from processor_guard import CompletionTracker, MergeResult, guarded, safe_merge
from processor_guard.completion.tracker import TriggerPending
from processor_guard.dates import date_range, parse_game_date

log = logging.getLogger(__name__)

NAN = np.nan
UTC = dt.timezone.utc


class UpstreamAnalyticsProcessor:
    """Subclasses set the class attributes and ``extract_raw_data`` /
    ``calculate_analytics``; ``run(opts)`` does the rest."""

    PROCESSOR_NAME: ClassVar[str]  # the name completion is recorded under
    TABLE_NAME: ClassVar[str]
    PRIMARY_KEY_FIELDS: ClassVar[tuple[str, ...]]
    PARTITION_FIELD: ClassVar[str] = "game_date"
    #: Duplicates in a batch keep the row with the latest value of this column, and a
    #: stored row newer than the batch's is left alone (None: no such column).
    ORDER_BY: ClassVar[str | None] = "processed_at"
    UPDATE_ONLY: ClassVar[bool] = False

    def __init__(
        self, warehouse: Any, tracker: CompletionTracker, *, dataset: str, players: int = 40
    ) -> None:
        self.warehouse = warehouse  # a bigquery.Client, or a DuckDB connection / file path
        self.tracker = tracker
        self.dataset = dataset  # "project.nba_analytics" on BigQuery, "main" on DuckDB
        self.players = players
        self.last_result: MergeResult | None = None

    @property
    def table_name(self) -> str:
        return f"{self.dataset}.{self.TABLE_NAME}"

    # wait=0: a busy date goes back to Pub/Sub (503) instead of holding a request open.
    @guarded(lambda self: self.TABLE_NAME, ttl=60.0, wait=0)
    def run(self, opts: dict[str, Any]) -> bool:
        return self.process(opts)

    def game_dates(self, opts: dict[str, Any]) -> list[str]:
        """The dates a run covers (and ``guarded`` locks): ``start_date..end_date``."""
        return [d.isoformat() for d in date_range(opts["start_date"], opts["end_date"])]

    def process(self, opts: dict[str, Any]) -> bool:
        """extract -> calculate -> save -> record completion; called under the leases."""
        raw = self.extract_raw_data(opts)
        frame = self.calculate_analytics(raw, opts)
        result = self.save_analytics(frame)
        self.record_completion(opts, frame, result)
        return True

    def extract_raw_data(self, opts: dict[str, Any]) -> pd.DataFrame:
        raise NotImplementedError

    def calculate_analytics(self, raw: pd.DataFrame, opts: dict[str, Any]) -> pd.DataFrame:
        raise NotImplementedError

    def save_analytics(self, frame: pd.DataFrame) -> MergeResult:
        """One fenced MERGE keyed on ``PRIMARY_KEY_FIELDS`` (fence: the held lease's)."""
        result = safe_merge(
            self.warehouse,
            self.table_name,
            frame,
            keys=self.PRIMARY_KEY_FIELDS,
            partition_field=self.PARTITION_FIELD,
            order_by=self.ORDER_BY,
            only_newer=self.ORDER_BY is not None,
            update_only=self.UPDATE_ONLY,
        )
        log.info(
            "%s: %d inserted, %d updated, %d duplicates dropped",
            self.TABLE_NAME,
            result.inserted,
            result.updated,
            result.dedup.dropped_rows,
        )
        self.last_result = result
        return result

    def record_completion(
        self, opts: dict[str, Any], frame: pd.DataFrame, result: MergeResult
    ) -> None:
        """Record each date while its lease is held: completion never runs ahead of data."""
        run_id = str(opts.get("run_id") or uuid.uuid4().hex)
        not_found = {str(key["player_lookup"]) for key in result.missing_keys}
        metadata: dict[str, Any] = {
            "entities_changed": sorted(set(frame["player_lookup"].astype(str)) - not_found),
            "is_incremental": bool(opts.get("player_lookups")),
            "correlation_id": str(opts.get("correlation_id") or run_id),
        }
        if not_found:  # update_only: keys with no stored row, left unwritten
            metadata["entities_not_found"] = sorted(not_found)
        for day in self.game_dates(opts):
            state = self.tracker.record(
                day,
                self.PROCESSOR_NAME,
                execution_id=run_id,
                record_count=result.inserted + result.updated,
                metadata=metadata,
            )
            if state.waiting_for_publish:
                raise TriggerPending(state)  # the service answers 503: redelivered


# ------------------------------------------------------------------ raw data stand-in


def _rng(day: str, salt: str) -> np.random.Generator:
    seed = int.from_bytes(hashlib.sha256(f"{day}/{salt}".encode()).digest()[:8], "big")
    return np.random.default_rng(seed)


def boxscores(day: str, players: int) -> pd.DataFrame:
    """Stand-in for the query on the raw gamebook tables: the same rows for a date on
    every call, 20 players per game, every 7th player inactive."""
    rng = _rng(day, "boxscores")
    stamp = pd.Timestamp(day, tz="UTC") + pd.Timedelta(hours=23)
    games = [f"{day.replace('-', '')}_G{n:02d}" for n in range(players // 20 + 1)]
    return pd.DataFrame(
        {
            "player_lookup": [f"player{n:03d}" for n in range(players)],
            "game_id": [games[n // 20] for n in range(players)],
            "team_abbr": ["BKN" if n % 2 else "MIL" for n in range(players)],
            "is_active": [n % 7 != 6 for n in range(players)],
            "points": rng.integers(0, 40, players),
            "minutes": rng.integers(4, 40, players) + 0.5,
            "fg_attempts": rng.integers(1, 25, players),
            "three_pt_attempts": rng.integers(0, 12, players),
            "ft_attempts": rng.integers(0, 10, players),
            "assists": rng.integers(0, 12, players),
            "rebounds": rng.integers(0, 15, players),
            "source_updated": [stamp - pd.Timedelta(minutes=n) for n in range(players)],
        }
    )


# ------------------------------------------------------------------ the processors


class PlayerGameSummaryProcessor(UpstreamAnalyticsProcessor):
    """One row per player and game: 101 columns from the date's box scores."""

    PROCESSOR_NAME: ClassVar[str] = "player_game_summary"
    TABLE_NAME: ClassVar[str] = "player_game_summary"
    PRIMARY_KEY_FIELDS: ClassVar[tuple[str, ...]] = ("game_id", "player_lookup")

    def extract_raw_data(self, opts: dict[str, Any]) -> pd.DataFrame:
        frames = [boxscores(day, self.players) for day in self.game_dates(opts)]
        raw = pd.concat(frames, ignore_index=True)
        wanted = opts.get("player_lookups")  # an incremental run: only these players
        return raw[raw["player_lookup"].isin(wanted)] if wanted else raw

    def calculate_analytics(self, raw: pd.DataFrame, opts: dict[str, Any]) -> pd.DataFrame:
        processed_at = pd.Timestamp.now(tz="UTC")
        records = [self._record(row, processed_at) for row in raw.itertuples(index=False)]
        # The prop-line columns are left out, not NaN: the MERGE updates only the
        # columns a batch carries, so a re-run keeps what the enrichment pass wrote.
        return pd.DataFrame.from_records(records)

    def _record(self, box: Any, processed_at: pd.Timestamp) -> dict[str, Any]:
        day = box.game_id[:8]
        active = bool(box.is_active)
        points = np.int64(box.points)
        fga = np.int64(box.fg_attempts)
        fgm = np.int64(min(fga, points // 2))
        threes = np.int64(box.three_pt_attempts)
        fta = np.int64(box.ft_attempts)
        stat = np.int64 if active else (lambda _: NAN)  # NaN: did not play
        issues = [] if active else ["no_minutes", "dnp_reason_unknown"]
        row: dict[str, Any] = {
            "player_lookup": box.player_lookup,
            "universal_player_id": f"{box.player_lookup}_001",
            "player_full_name": box.player_lookup.replace("player", "Player "),
            "game_id": box.game_id,
            "game_date": pd.Timestamp(f"{day[:4]}-{day[4:6]}-{day[6:]}").date(),
            "team_abbr": box.team_abbr,
            "opponent_team_abbr": "MIL" if box.team_abbr == "BKN" else "BKN",
            "season_year": np.int64(2025),
            "points": stat(points),
            "assists": stat(box.assists),
            "offensive_rebounds": stat(box.rebounds // 3),
            "defensive_rebounds": stat(box.rebounds - box.rebounds // 3),
            "steals": stat(points % 3),
            "blocks": stat(points % 2),
            "turnovers": stat(box.assists % 4),
            "fg_attempts": stat(fga),
            "fg_makes": stat(fgm),
            "three_pt_attempts": stat(threes),
            "three_pt_makes": stat(threes // 3),
            "ft_attempts": stat(fta),
            "ft_makes": stat(fta - fta // 4),
            "plus_minus": stat(points - 15),
            "personal_fouls": stat(points % 6),
            "minutes_played": np.float64(box.minutes) if active else NAN,
            "paint_attempts": stat(fga // 2),
            "paint_makes": stat(fgm // 2),
            "mid_range_attempts": stat(fga // 4),
            "mid_range_makes": stat(fgm // 4),
            "paint_blocks": stat(0),
            "mid_range_blocks": stat(0),
            "three_pt_blocks": stat(0),
            "and1_count": stat(points % 2),
            "assisted_fg_makes": stat(fgm // 2),
            "unassisted_fg_makes": stat(fgm - fgm // 2),
            "usage_rate": np.float64(fga / 40) if active else NAN,
            "ts_pct": np.float64(points / (2 * (fga + 0.44 * fta))) if active else NAN,
            "efg_pct": np.float64((fgm + 0.5 * (threes // 3)) / fga) if active else NAN,
            "starter_flag": bool(box.points > 20),
            "win_flag": box.team_abbr == "MIL",
            "is_active": active,
            "player_status": "active" if active else "dnp_coaches_decision",
            "days_rest": np.int64(1 + points % 3),
            "back_to_back": bool(points % 3 == 0),
            "home_game": box.team_abbr == "MIL",
            "game_sequence": np.int64(50),
            "data_quality_tier": "high" if active else "medium",
            "primary_source_used": "nbac_gamebook",
            "processed_with_issues": bool(issues),
            "is_production_ready": active,
            "quality_issues": issues,
            "data_sources": ["nbac_gamebook", "bdl_boxscores"],
            "shot_zones": (
                {
                    "paint_rate": np.float64((fga // 2) / fga),
                    "mid_range_rate": np.float64((fga // 4) / fga),
                    "three_pt_rate": np.float64(threes / (fga + threes)),
                    "zone_source": "bigdataball_pbp",
                }
                if active
                else None
            ),
            "processed_at": processed_at,
        }
        for q in range(1, 5):
            row[f"q{q}_points"] = stat(points // 4 + (q == 4) * (points % 4))
            row[f"q{q}_rebounds"] = stat(box.rebounds // 4)
            row[f"q{q}_assists"] = stat(box.assists // 4)
            row[f"q{q}_minutes"] = np.float64(box.minutes / 4) if active else NAN
        for n, source in enumerate(SOURCES):
            found = n < 4  # the prop sources are joined by the enrichment pass
            row[f"source_{source}_last_updated"] = box.source_updated if found else pd.NaT
            row[f"source_{source}_rows_found"] = np.int64(1) if found else NAN
            row[f"source_{source}_completeness_pct"] = np.float64(100.0) if found else NAN
            row[f"source_{source}_hash"] = f"{source}:{box.player_lookup}" if found else None
        # The hash of the values, for change detection: not of when they were computed.
        stable = sorted((k, v) for k, v in row.items() if k != "processed_at")
        row["data_hash"] = hashlib.sha256(repr(stable).encode()).hexdigest()[:16]
        return row


def prop_lines(day: str, players: int) -> pd.DataFrame:
    """Stand-in for the odds scrapers' table: lines for every third player, and one for
    a player who has no box score (a late scratch)."""
    listed = [f"player{n:03d}" for n in range(0, players, 3)] + ["player_scratched"]
    rng = _rng(day, "props")
    closing = rng.integers(8, 30, len(listed)) + 0.5
    return pd.DataFrame(
        {
            "player_lookup": listed,
            "game_id": [f"{day.replace('-', '')}_G{(n * 3) // 20:02d}" for n in range(len(listed))],
            "points_line": closing,
            "opening_line": closing - 1.0,
        }
    )


class PlayerPropEnrichmentProcessor(UpstreamAnalyticsProcessor):
    """A later pass that fills the prop-line columns of rows already stored: it never
    creates a row, and reports the players that had no row to update."""

    PROCESSOR_NAME: ClassVar[str] = "player_prop_enrichment"
    TABLE_NAME: ClassVar[str] = "player_game_summary"  # shares that table's lease
    PRIMARY_KEY_FIELDS: ClassVar[tuple[str, ...]] = ("game_id", "player_lookup")
    ORDER_BY: ClassVar[str | None] = None  # it does not touch processed_at
    UPDATE_ONLY: ClassVar[bool] = True

    def extract_raw_data(self, opts: dict[str, Any]) -> pd.DataFrame:
        frames = [prop_lines(day, self.players) for day in self.game_dates(opts)]
        return pd.concat(frames, ignore_index=True)

    def calculate_analytics(self, raw: pd.DataFrame, opts: dict[str, Any]) -> pd.DataFrame:
        frame = raw[["game_id", "player_lookup", "points_line", "opening_line"]].copy()
        frame["game_date"] = pd.to_datetime(frame["game_id"].str[:8]).dt.date
        frame["line_movement"] = frame["points_line"] - frame["opening_line"]
        frame["margin"] = np.float64(NAN)  # filled after the game by the grading pass
        frame["over_under_result"] = None
        frame["points_line_source"] = "odds_api"
        frame["opening_line_source"] = "bettingpros"
        assert set(frame.columns) == {*PROP_COLUMNS, "game_id", "player_lookup", "game_date"}
        return frame

    def save_analytics(self, frame: pd.DataFrame) -> MergeResult:
        result = super().save_analytics(frame)
        if result.missing_keys:
            log.warning(
                "%s: no stored row to enrich for %s",
                self.PROCESSOR_NAME,
                [k["player_lookup"] for k in result.missing_keys],
            )
        return result


class MlbPitcherGameSummaryProcessor(UpstreamAnalyticsProcessor):
    """An MLB processor: called with ``opts={'date': 'YYYY-MM-DD'}``, one row per pitcher."""

    PROCESSOR_NAME: ClassVar[str] = "mlb_pitcher_game_summary"
    TABLE_NAME: ClassVar[str] = "mlb_pitcher_game_summary"
    PRIMARY_KEY_FIELDS: ClassVar[tuple[str, ...]] = ("game_date", "player_lookup")

    @guarded(lambda self: self.TABLE_NAME, dates="date", ttl=60.0, wait=0)
    def run(self, opts: dict[str, Any]) -> bool:
        return self.process(opts)

    def game_dates(self, opts: dict[str, Any]) -> list[str]:
        return [parse_game_date(opts["date"], argument="date").isoformat()]

    def extract_raw_data(self, opts: dict[str, Any]) -> pd.DataFrame:
        (day,) = self.game_dates(opts)
        rng = _rng(day, "pitchers")
        count = self.players // 2
        return pd.DataFrame(
            {
                "player_lookup": [f"pitcher{n:03d}" for n in range(count)],
                "game_date": pd.Timestamp(day).date(),
                "outs": rng.integers(3, 22, count),
                "strikeouts": rng.integers(0, 12, count),
                "walks": rng.integers(0, 5, count),
            }
        )

    def calculate_analytics(self, raw: pd.DataFrame, opts: dict[str, Any]) -> pd.DataFrame:
        innings = raw["outs"] // 3 + (raw["outs"] % 3) / 10  # baseball's 6.1 = 6 1/3
        frame = pd.DataFrame(
            {
                "player_lookup": raw["player_lookup"],
                "game_id": [f"{d:%Y%m%d}_NYY_BOS" for d in raw["game_date"]],
                "game_date": raw["game_date"],
                "team_abbr": "NYY",
                "opponent_team_abbr": "BOS",
                "season_year": np.int64(2026),
                "innings_pitched": innings.astype(np.float64),
                "strikeouts": raw["strikeouts"].astype(np.int64),
                "walks": raw["walks"].astype(np.int64),
                "hits_allowed": np.where(raw["outs"] > 9, raw["walks"] + 2, NAN),
                "earned_runs": raw["walks"] // 2,
                "pitch_count": raw["outs"] * 5,
                "k_per_9": (raw["strikeouts"] * 27 / raw["outs"]).astype(np.float64),
                "is_starter": raw["outs"] >= 15,
                "processed_at": pd.Timestamp.now(tz="UTC"),
            }
        )
        frame["quality_issues"] = [[] if o > 9 else ["short_outing"] for o in raw["outs"]]
        frame["data_sources"] = [["mlb_stats_api"]] * len(frame)
        return frame
