"""A realistic game date for the demo: 10 games, 348 player rows, the five analytics tables.

Everything is derived from a seed, so every process of the demo builds the same data
without passing rows around.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from ..writes.warehouse.plan import Column
from ..writes.warehouse.sql import duckdb_type

__all__ = [
    "COLUMNS",
    "DEMO_DATE",
    "EXPECTED_PROCESSORS",
    "FIRST_BATCH_GAMES",
    "Game",
    "create_table_sql",
    "games_for",
    "player_rows",
    "table_rows",
]

DEMO_DATE = dt.date(2026, 2, 3)
# The first gamebook batch of the incident carried 2 of the date's 10 games.
FIRST_BATCH_GAMES = 2

EXPECTED_PROCESSORS = (
    "player_game_summary",
    "team_offense_game_summary",
    "team_defense_game_summary",
    "upcoming_player_game_context",
    "upcoming_team_game_context",
)

# BigQuery column types per table; the DuckDB DDL is derived from them.
COLUMNS: dict[str, tuple[tuple[str, str], ...]] = {
    "player_game_summary": (
        ("player_lookup", "STRING"),
        ("universal_player_id", "STRING"),
        ("player_full_name", "STRING"),
        ("game_id", "STRING"),
        ("game_date", "DATE"),
        ("team_abbr", "STRING"),
        ("opponent_team_abbr", "STRING"),
        ("season_year", "INT64"),
        ("points", "INT64"),
        ("assists", "INT64"),
        ("minutes_played", "NUMERIC"),
        ("fg_attempts", "INT64"),
        ("fg_makes", "INT64"),
        ("usage_rate", "FLOAT64"),
        ("starter_flag", "BOOL"),
        ("is_dnp", "BOOL"),
        ("data_hash", "STRING"),
        ("processed_at", "TIMESTAMP"),
    ),
    "team_offense_game_summary": (
        ("game_id", "STRING"),
        ("game_date", "DATE"),
        ("team_abbr", "STRING"),
        ("opponent_team_abbr", "STRING"),
        ("season_year", "INT64"),
        ("home_game", "BOOL"),
        ("points_scored", "INT64"),
        ("fg_attempts", "INT64"),
        ("fg_makes", "INT64"),
        ("three_pt_attempts", "INT64"),
        ("three_pt_makes", "INT64"),
        ("assists", "INT64"),
        ("turnovers", "INT64"),
        ("possessions", "INT64"),
        ("offensive_rating", "FLOAT64"),
        ("data_hash", "STRING"),
        ("processed_at", "TIMESTAMP"),
    ),
    "team_defense_game_summary": (
        ("game_id", "STRING"),
        ("game_date", "DATE"),
        ("defending_team_abbr", "STRING"),
        ("opponent_team_abbr", "STRING"),
        ("season_year", "INT64"),
        ("points_allowed", "INT64"),
        ("opp_fg_attempts", "INT64"),
        ("opp_fg_makes", "INT64"),
        ("steals", "INT64"),
        ("blocks", "INT64"),
        ("defensive_rating", "FLOAT64"),
        ("data_hash", "STRING"),
        ("processed_at", "TIMESTAMP"),
    ),
    "upcoming_player_game_context": (
        ("player_lookup", "STRING"),
        ("universal_player_id", "STRING"),
        ("game_id", "STRING"),
        ("game_date", "DATE"),
        ("team_abbr", "STRING"),
        ("opponent_team_abbr", "STRING"),
        ("season_year", "INT64"),
        ("home_game", "BOOL"),
        ("days_rest", "INT64"),
        ("projected_minutes", "NUMERIC"),
        ("prop_points_line", "FLOAT64"),
        ("data_hash", "STRING"),
        ("processed_at", "TIMESTAMP"),
    ),
    "upcoming_team_game_context": (
        ("game_id", "STRING"),
        ("game_date", "DATE"),
        ("team_abbr", "STRING"),
        ("opponent_team_abbr", "STRING"),
        ("season_year", "INT64"),
        ("home_game", "BOOL"),
        ("days_rest", "INT64"),
        ("back_to_back", "BOOL"),
        ("spread", "FLOAT64"),
        ("game_total", "FLOAT64"),
        ("data_hash", "STRING"),
        ("processed_at", "TIMESTAMP"),
    ),
}


_TEAMS = [
    "ATL",
    "BOS",
    "BKN",
    "CHA",
    "CHI",
    "CLE",
    "DAL",
    "DEN",
    "DET",
    "GSW",
    "HOU",
    "IND",
    "LAC",
    "LAL",
    "MEM",
    "MIA",
    "MIL",
    "MIN",
    "NOP",
    "NYK",
    "OKC",
    "ORL",
    "PHI",
    "PHX",
    "POR",
    "SAC",
    "SAS",
    "TOR",
    "UTA",
    "WAS",
]

_FIRST = [
    "Aaron",
    "Alex",
    "Andre",
    "Anthony",
    "Bam",
    "Ben",
    "Bobby",
    "Brandon",
    "Cade",
    "Cam",
    "Chris",
    "Christian",
    "Coby",
    "Cole",
    "Collin",
    "Dalen",
    "Damian",
    "Daniel",
    "Darius",
    "David",
    "Dean",
    "De'Aaron",
    "Derrick",
    "Devin",
    "Dillon",
    "Donovan",
    "Draymond",
    "Dyson",
    "Evan",
    "Franz",
    "Fred",
    "Gary",
    "Gordon",
    "Grant",
    "Herbert",
    "Immanuel",
    "Isaiah",
    "Ivica",
    "Jabari",
    "Jaden",
    "Jake",
    "Jalen",
    "Jamal",
    "Jaren",
    "Jarrett",
    "Jayson",
    "Jerami",
    "Jimmy",
    "Jonas",
    "Jordan",
    "Josh",
    "Julius",
    "Karl",
    "Keegan",
    "Kelly",
    "Kevin",
    "Khris",
    "Kyle",
    "Lauri",
    "LaMelo",
    "Luka",
    "Malik",
    "Marcus",
    "Mark",
    "Max",
    "Mikal",
    "Miles",
    "Myles",
    "Naz",
    "Nikola",
    "Norman",
    "Obi",
    "OG",
    "Onyeka",
    "Paolo",
    "Pascal",
    "Patrick",
    "Paul",
    "Quentin",
    "RJ",
    "Rudy",
    "Scottie",
    "Shai",
    "Spencer",
    "Stephen",
    "Terry",
    "Tobias",
    "Trae",
    "Tre",
    "Tyler",
    "Tyrese",
    "Victor",
    "Walker",
    "Zach",
    "Zion",
]

_LAST = [
    "Adams",
    "Allen",
    "Anderson",
    "Bailey",
    "Ball",
    "Banchero",
    "Barnes",
    "Bane",
    "Bridges",
    "Brogdon",
    "Brooks",
    "Brown",
    "Brunson",
    "Butler",
    "Caruso",
    "Collins",
    "Cunningham",
    "Daniels",
    "Davis",
    "DeRozan",
    "Dort",
    "Duren",
    "Edwards",
    "Eason",
    "Fox",
    "Garland",
    "Gibson",
    "Gordon",
    "Grant",
    "Green",
    "Haliburton",
    "Harris",
    "Hart",
    "Hayes",
    "Herro",
    "Holiday",
    "Hunter",
    "Ingram",
    "Jackson",
    "James",
    "Johnson",
    "Jones",
    "Kennard",
    "Kuminga",
    "LaVine",
    "Lopez",
    "Lowry",
    "Markkanen",
    "Martin",
    "Maxey",
    "McBride",
    "Mitchell",
    "Mobley",
    "Morant",
    "Murray",
    "Nance",
    "Nembhard",
    "Okongwu",
    "Oubre",
    "Payton",
    "Porter",
    "Powell",
    "Quickley",
    "Randle",
    "Reaves",
    "Reid",
    "Robinson",
    "Sabonis",
    "Sengun",
    "Sharpe",
    "Simons",
    "Smart",
    "Smith",
    "Strus",
    "Suggs",
    "Thomas",
    "Thompson",
    "Turner",
    "Valanciunas",
    "Vassell",
    "Wagner",
    "Walker",
    "Washington",
    "White",
    "Wiggins",
    "Williams",
    "Wright",
    "Young",
]


@dataclass(frozen=True)
class Game:
    """One game of the date: ``20260203_AWAY_HOME`` id, NBA numeric id, teams, player rows."""

    game_id: str
    nba_game_id: str
    away: str
    home: str
    player_count: int


def games_for(game_date: dt.date = DEMO_DATE, *, seed: int = 20260203) -> list[Game]:
    """The date's 10 games; 8 carry 35 player rows and 2 carry 34 (348 in all)."""
    rng = random.Random(seed)
    teams = rng.sample(_TEAMS, 20)
    games = []
    for i in range(10):
        away, home = teams[2 * i], teams[2 * i + 1]
        games.append(
            Game(
                game_id=f"{game_date:%Y%m%d}_{away}_{home}",
                nba_game_id=f"00225{(700 + i):05d}",
                away=away,
                home=home,
                player_count=34 if i in (3, 7) else 35,
            )
        )
    return games


def _names(count: int, rng: random.Random) -> list[tuple[str, str]]:
    """``count`` distinct (full name, lookup) pairs."""
    seen: set[str] = set()
    out: list[tuple[str, str]] = []
    while len(out) < count:
        full = f"{rng.choice(_FIRST)} {rng.choice(_LAST)}"
        lookup = "".join(ch for ch in full.lower() if ch.isalpha())
        if lookup not in seen:
            seen.add(lookup)
            out.append((full, lookup))
    return out


def _rosters(game_date: dt.date, seed: int) -> dict[str, list[tuple[str, str]]]:
    """Player names per game id, unique across the whole date."""
    games = games_for(game_date, seed=seed)
    pool = _names(sum(g.player_count for g in games), random.Random(f"{seed}:names"))
    out: dict[str, list[tuple[str, str]]] = {}
    start = 0
    for g in games:
        out[g.game_id] = pool[start : start + g.player_count]
        start += g.player_count
    return out


def _hash(row: dict[str, Any]) -> str:
    body = json.dumps(
        {k: v for k, v in row.items() if k not in ("data_hash", "processed_at")},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def _finish(row: dict[str, Any], processed_at: dt.datetime) -> dict[str, Any]:
    row["data_hash"] = _hash(row)
    row["processed_at"] = processed_at.astimezone(dt.timezone.utc).isoformat()
    return row


def player_rows(
    games: Sequence[Game],
    *,
    game_date: dt.date = DEMO_DATE,
    processed_at: dt.datetime | None = None,
    seed: int = 20260203,
) -> list[dict[str, Any]]:
    """player_game_summary rows for ``games``; a game's rows never depend on the others."""
    when = processed_at or dt.datetime.now(dt.timezone.utc)
    rows: list[dict[str, Any]] = []
    roster = _rosters(game_date, seed)
    for game in games:
        rng = random.Random(f"{seed}:{game.game_id}")
        names = roster[game.game_id]
        away_count = game.player_count // 2
        for n, (full, lookup) in enumerate(names):
            team, opp = (game.away, game.home) if n < away_count else (game.home, game.away)
            slot = n if n < away_count else n - away_count
            dnp = slot >= 13
            starter = slot < 5
            minutes = Decimal("0.0") if dnp else Decimal(rng.randint(60, 400)) / 10
            fga = 0 if dnp else rng.randint(1, 22)
            fgm = rng.randint(0, fga) if fga else 0
            rows.append(
                _finish(
                    {
                        "player_lookup": lookup,
                        "universal_player_id": f"{lookup}_001",
                        "player_full_name": full,
                        "game_id": game.game_id,
                        "game_date": game_date,
                        "team_abbr": team,
                        "opponent_team_abbr": opp,
                        "season_year": game_date.year - (1 if game_date.month < 10 else 0),
                        "points": 0 if dnp else 2 * fgm + rng.randint(0, 9),
                        "assists": 0 if dnp else rng.randint(0, 11),
                        "minutes_played": minutes,
                        "fg_attempts": fga,
                        "fg_makes": fgm,
                        # Usage is missing for a few low-minute players, as upstream.
                        "usage_rate": None
                        if dnp or minutes < 8
                        else round(rng.uniform(8.0, 36.0), 1),
                        "starter_flag": starter,
                        "is_dnp": dnp,
                    },
                    when,
                )
            )
    return rows


def table_rows(
    table: str,
    games: Sequence[Game],
    *,
    game_date: dt.date = DEMO_DATE,
    processed_at: dt.datetime | None = None,
    seed: int = 20260203,
) -> list[dict[str, Any]]:
    """Rows of any of the five analytics tables for ``games``."""
    # Long: one line per column of the pipeline's tables: data, not logic.
    when = processed_at or dt.datetime.now(dt.timezone.utc)
    season = game_date.year - (1 if game_date.month < 10 else 0)
    if table == "player_game_summary":
        return player_rows(games, game_date=game_date, processed_at=when, seed=seed)
    if table == "upcoming_player_game_context":
        out = []
        for p in player_rows(games, game_date=game_date, processed_at=when, seed=seed):
            rng = random.Random(f"{seed}:ctx:{p['player_lookup']}")
            home = p["team_abbr"] == p["game_id"].rsplit("_", 1)[1]
            out.append(
                _finish(
                    {
                        "player_lookup": p["player_lookup"],
                        "universal_player_id": p["universal_player_id"],
                        "game_id": p["game_id"],
                        "game_date": game_date,
                        "team_abbr": p["team_abbr"],
                        "opponent_team_abbr": p["opponent_team_abbr"],
                        "season_year": season,
                        "home_game": home,
                        "days_rest": rng.randint(0, 3),
                        "projected_minutes": Decimal(rng.randint(0, 380)) / 10,
                        "prop_points_line": None
                        if p["is_dnp"]
                        else rng.choice([4.5, 8.5, 12.5, 16.5, 20.5, 24.5]),
                    },
                    when,
                )
            )
        return out
    out = []
    for game in games:
        rng = random.Random(f"{seed}:{table}:{game.game_id}")
        for team, opp, home in ((game.away, game.home, False), (game.home, game.away, True)):
            if table == "team_offense_game_summary":
                fga = rng.randint(78, 96)
                fgm = rng.randint(34, 48)
                tpa = rng.randint(28, 45)
                tpm = rng.randint(9, 18)
                poss = rng.randint(94, 106)
                pts = 2 * fgm + tpm + rng.randint(10, 24)
                row: dict[str, Any] = {
                    "game_id": game.game_id,
                    "game_date": game_date,
                    "team_abbr": team,
                    "opponent_team_abbr": opp,
                    "season_year": season,
                    "home_game": home,
                    "points_scored": pts,
                    "fg_attempts": fga,
                    "fg_makes": fgm,
                    "three_pt_attempts": tpa,
                    "three_pt_makes": tpm,
                    "assists": rng.randint(18, 32),
                    "turnovers": rng.randint(8, 18),
                    "possessions": poss,
                    "offensive_rating": round(100 * pts / poss, 1),
                }
            elif table == "team_defense_game_summary":
                allowed = rng.randint(96, 128)
                row = {
                    "game_id": game.game_id,
                    "game_date": game_date,
                    "defending_team_abbr": team,
                    "opponent_team_abbr": opp,
                    "season_year": season,
                    "points_allowed": allowed,
                    "opp_fg_attempts": rng.randint(78, 96),
                    "opp_fg_makes": rng.randint(34, 48),
                    "steals": rng.randint(4, 12),
                    "blocks": rng.randint(2, 9),
                    "defensive_rating": round(allowed / rng.uniform(0.94, 1.06), 1),
                }
            elif table == "upcoming_team_game_context":
                spread = rng.choice([1.5, 2.5, 3.5, 4.5, 6.5, 8.5])
                row = {
                    "game_id": game.nba_game_id,
                    "game_date": game_date,
                    "team_abbr": team,
                    "opponent_team_abbr": opp,
                    "season_year": season,
                    "home_game": home,
                    "days_rest": rng.randint(0, 3),
                    "back_to_back": rng.random() < 0.2,
                    "spread": -spread if home else spread,
                    "game_total": rng.choice([218.5, 224.5, 229.5, 233.5, 238.5]),
                }
            else:
                raise ValueError(f"unknown analytics table {table!r}")
            out.append(_finish(row, when))
    return out


def create_table_sql(table: str, *, engine: str = "duckdb", qualified: str | None = None) -> str:
    """``CREATE TABLE IF NOT EXISTS`` for one analytics table on DuckDB or BigQuery."""
    if table not in COLUMNS:
        raise ValueError(f"unknown analytics table {table!r}")
    name = qualified or table
    if engine == "duckdb":
        cols = ", ".join(f"{c} {duckdb_type(Column(c, t))}" for c, t in COLUMNS[table])
        return f"CREATE TABLE IF NOT EXISTS {name} ({cols})"
    if engine == "bigquery":
        cols = ", ".join(f"{c} {t}" for c, t in COLUMNS[table])
        return f"CREATE TABLE IF NOT EXISTS `{name}` ({cols}) PARTITION BY game_date"
    raise ValueError(f"unknown engine {engine!r}")


def count_by_key(rows: Iterable[dict[str, Any]], keys: Sequence[str]) -> dict[tuple[Any, ...], int]:
    """How many rows carry each key value."""
    counts: dict[tuple[Any, ...], int] = {}
    for row in rows:
        k = tuple(row[c] for c in keys)
        counts[k] = counts.get(k, 0) + 1
    return counts
