"""The upstream-shaped examples (issue 14): a 101-column player_game_summary built as a
pandas DataFrame of numpy values, its prop-line enrichment pass, an MLB processor run
with ``opts={'date'}``, and a service running them per message; on DuckDB and the
BigQuery emulator, a run, a re-run, a concurrent run and a stale run leave exact rows."""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import math
import sys
import threading
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from processor_guard import CompletionTracker, LockBusy, StaleFence, date_lock, open_store
from processor_guard.completion.docstore import SQLiteDocumentClient

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
sys.path.insert(0, str(EXAMPLES))

from analytics_service import make_app  # noqa: E402
from upstream_processors import (  # noqa: E402
    MlbPitcherGameSummaryProcessor,
    PlayerGameSummaryProcessor,
    PlayerPropEnrichmentProcessor,
    UpstreamAnalyticsProcessor,
)
from upstream_service import NBA_PROCESSORS, make_processors_from_env  # noqa: E402
from upstream_tables import PROP_COLUMNS, create_tables  # noqa: E402

DAY = "2026-02-03"
OPTS = {"start_date": DAY, "end_date": DAY}
PLAYERS = 40
PGS_KEYS = ("game_id", "player_lookup")


def plain(value: Any) -> Any:
    """A stored or DataFrame value as comparable Python: NULL/NaN/NaT -> None, numbers
    -> float rounded to 9 places (NUMERIC's scale), instants -> UTC ISO, dates -> ISO."""
    if value is None or value is pd.NaT:
        return None
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if hasattr(value, "tolist"):  # a numpy array or scalar
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float, Decimal)):
        number = float(value)
        return None if math.isnan(number) else round(number, 9)
    if isinstance(value, dt.datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
        return moment.astimezone(dt.timezone.utc).isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


class Warehouse:
    """The example's tables on one engine, read back as plain sorted rows."""

    def __init__(self, engine: str, client: Any, dataset: str, tracker: CompletionTracker):
        self.engine, self.client, self.dataset, self.tracker = engine, client, dataset, tracker
        create_tables(client, dataset)

    def processor(self, cls: type[UpstreamAnalyticsProcessor]) -> Any:
        return cls(self.client, self.tracker, dataset=self.dataset, players=PLAYERS)

    def rows(self, table: str = "player_game_summary") -> list[dict[str, Any]]:
        if self.engine == "bigquery":
            result = self.client.query(f"SELECT * FROM `{self.dataset}.{table}`").result()
            raw = [dict(row.items()) for row in result]
        else:
            import duckdb

            with duckdb.connect(self.client) as con:
                cursor = con.execute(f"SELECT * FROM {self.dataset}.{table}")
                names = [d[0] for d in cursor.description]
                raw = [dict(zip(names, values, strict=True)) for values in cursor.fetchall()]
        rows = [{k: plain(v) for k, v in row.items()} for row in raw]
        return sorted(rows, key=lambda r: (r["game_id"], r["player_lookup"]))


def expected_rows(cls: type[UpstreamAnalyticsProcessor], opts: dict[str, Any]) -> Any:
    """The rows a run computes (prop columns and processed_at aside), as stored."""
    processor = cls(None, None, dataset="-", players=PLAYERS)  # type: ignore[arg-type]
    frame = processor.calculate_analytics(processor.extract_raw_data(opts), opts)
    rows = [{k: plain(v) for k, v in r.items()} for r in frame.to_dict("records")]
    return sorted(rows, key=lambda r: (r["game_id"], r["player_lookup"]))


def without(rows: list[dict[str, Any]], *columns: str) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in columns} for r in rows]


def summary_columns(stored: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Stored rows without the columns a summary run does not compare."""
    return without(stored, "processed_at", *PROP_COLUMNS)


PGS_EXPECTED = without(expected_rows(PlayerGameSummaryProcessor, OPTS), "processed_at")


@pytest.fixture(params=["duckdb", pytest.param("bigquery", marks=pytest.mark.bigquery)])
def warehouse(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Warehouse]:
    monkeypatch.setenv("PROCESSOR_GUARD_STORE", f"sqlite:///{tmp_path}/leases.db")
    docs = SQLiteDocumentClient(tmp_path / "completion.db")
    tracker = CompletionTracker(docs, "phase3", list(NBA_PROCESSORS), lambda d, s: "m")
    if request.param == "bigquery":
        emulator = request.getfixturevalue("bigquery_emulator")
        client = emulator.client()
        yield Warehouse("bigquery", client, emulator.new_dataset(client), tracker)
    else:
        yield Warehouse("duckdb", str(tmp_path / "warehouse.duckdb"), "main", tracker)
    docs.close()


def test_a_run_and_a_rerun_leave_exact_rows(warehouse: Warehouse) -> None:
    assert warehouse.processor(PlayerGameSummaryProcessor).run({**OPTS, "run_id": "r1"})
    first = warehouse.rows()
    assert len(first) == PLAYERS and len(first[0]) == 101
    assert summary_columns(first) == PGS_EXPECTED
    inactive = [r for r in first if not r["is_active"]]
    assert inactive and all(
        r["quality_issues"] == ["no_minutes", "dnp_reason_unknown"]
        and r["points"] is None
        and r["shot_zones"] is None
        for r in inactive
    )
    assert all(r["data_sources"] == ["nbac_gamebook", "bdl_boxscores"] for r in first)
    entry = warehouse.tracker.state(DAY).entries["player_game_summary"]
    assert entry["entities_changed"] == [f"player{n:03d}" for n in range(PLAYERS)]
    assert entry["is_incremental"] is False and entry["correlation_id"] == "r1"

    # A redelivery: the same exact rows, one per key, written again (newer processed_at).
    assert warehouse.processor(PlayerGameSummaryProcessor).run({**OPTS, "run_id": "r2"})
    second = warehouse.rows()
    assert summary_columns(second) == PGS_EXPECTED
    assert all(b["processed_at"] > a["processed_at"] for a, b in zip(first, second, strict=True))


def test_two_concurrent_runs_of_one_date_leave_exact_rows(warehouse: Warehouse) -> None:
    """The first run holds the date while the second starts: the second gets LockBusy
    (the service answers 503 and Pub/Sub redelivers it later)."""
    inside, finish = threading.Event(), threading.Event()

    class Slow(PlayerGameSummaryProcessor):
        def extract_raw_data(self, opts: dict[str, Any]) -> pd.DataFrame:
            inside.set()
            assert finish.wait(60)
            return super().extract_raw_data(opts)

    errors: list[BaseException] = []

    def first() -> None:
        try:
            warehouse.processor(Slow).run(OPTS)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=first)
    thread.start()
    try:
        assert inside.wait(60)
        with pytest.raises(LockBusy):
            warehouse.processor(PlayerGameSummaryProcessor).run(OPTS)
    finally:
        finish.set()
        thread.join()
    assert errors == []
    assert summary_columns(warehouse.rows()) == PGS_EXPECTED


def test_a_stale_run_is_refused_and_leaves_none_of_its_values(
    warehouse: Warehouse, tmp_path: Path
) -> None:
    """Run 1 loses its lease while computing; run 2 takes the date and saves; run 1's
    save carries the older fence: StaleFence, and only run 2's rows are stored."""
    store = open_store(f"sqlite:///{tmp_path}/leases.db")

    class LosesItsLease(PlayerGameSummaryProcessor):
        def calculate_analytics(self, raw: pd.DataFrame, opts: dict[str, Any]) -> Any:
            frame = super().calculate_analytics(raw, opts)
            store.break_lease(f"player_game_summary:{DAY}")  # as if the lease expired
            newer = threading.Thread(  # another instance, its own context
                target=warehouse.processor(PlayerGameSummaryProcessor).run, args=(OPTS,)
            )
            newer.start()
            newer.join()
            frame["points"] = -1
            frame["quality_issues"] = [["stale"]] * len(frame)
            return frame

    with pytest.raises(StaleFence):
        warehouse.processor(LosesItsLease).run(OPTS)
    stored = warehouse.rows()
    assert summary_columns(stored) == PGS_EXPECTED
    assert not any(r["points"] == -1 or r["quality_issues"] == ["stale"] for r in stored)


def test_the_enrichment_pass_updates_only_its_columns_of_stored_rows(
    warehouse: Warehouse,
) -> None:
    assert warehouse.processor(PlayerGameSummaryProcessor).run(OPTS)
    before = warehouse.rows()
    enrichment = warehouse.processor(PlayerPropEnrichmentProcessor)
    assert enrichment.run(OPTS)
    result = enrichment.last_result
    assert result.updated == 14 and result.inserted == 0
    assert [k["player_lookup"] for k in result.missing_keys] == ["player_scratched"]
    after = warehouse.rows()
    assert without(after, *PROP_COLUMNS) == without(before, *PROP_COLUMNS)  # processed_at too
    lines = {r["player_lookup"]: r for r in after if r["points_line"] is not None}
    assert sorted(lines) == [f"player{n:03d}" for n in range(0, PLAYERS, 3)]
    for row in lines.values():
        assert row["line_movement"] == 1.0 and row["points_line_source"] == "odds_api"
        assert row["margin"] is None and row["over_under_result"] is None
    entry = warehouse.tracker.state(DAY).entries["player_prop_enrichment"]
    assert entry["entities_not_found"] == ["player_scratched"]
    assert "player_scratched" not in entry["entities_changed"]

    # The summary's re-run does not carry the prop columns: the lines stay.
    assert warehouse.processor(PlayerGameSummaryProcessor).run(OPTS)
    assert without(warehouse.rows(), "processed_at") == without(after, "processed_at")


def duckdb_warehouse(tmp_path: Path) -> Warehouse:
    docs = SQLiteDocumentClient(tmp_path / "completion.db")
    tracker = CompletionTracker(docs, "mlb_phase3", ["mlb_pitcher_game_summary"], lambda d, s: "m")
    return Warehouse("duckdb", str(tmp_path / "warehouse.duckdb"), "main", tracker)


def test_the_date_opts_processor_locks_that_date(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = f"sqlite:///{tmp_path}/leases.db"
    monkeypatch.setenv("PROCESSOR_GUARD_STORE", store)
    wh = duckdb_warehouse(tmp_path)
    with date_lock("mlb_pitcher_game_summary", DAY, store=store, ttl=30, owner="other"):
        with pytest.raises(LockBusy) as busy:
            wh.processor(MlbPitcherGameSummaryProcessor).run({"date": DAY})
        assert busy.value.holder == "other"
        assert wh.processor(MlbPitcherGameSummaryProcessor).run({"date": "2026-02-04"})
    assert {r["game_date"] for r in wh.rows("mlb_pitcher_game_summary")} == {"2026-02-04"}
    assert wh.processor(MlbPitcherGameSummaryProcessor).run({"date": DAY})
    entry = wh.tracker.state(DAY).entries["mlb_pitcher_game_summary"]
    assert entry["lease_key"] == f"mlb_pitcher_game_summary:{DAY}"
    stored = wh.rows("mlb_pitcher_game_summary")
    expected = expected_rows(MlbPitcherGameSummaryProcessor, {"date": DAY})
    assert without([r for r in stored if r["game_date"] == DAY], "processed_at") == without(
        expected, "processed_at"
    )
    assert any(r["quality_issues"] == ["short_outing"] for r in stored)


# ------------------------------------------------------------------ the service


def push(app: Any, payload: dict[str, Any], message_id: str) -> tuple[str, dict[str, str], Any]:
    data = base64.b64encode(json.dumps(payload).encode()).decode()
    body = json.dumps({"message": {"data": data, "messageId": message_id}}).encode()
    answer: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        answer.update(status=status, headers=dict(headers))

    environ = {
        "REQUEST_METHOD": "POST",
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": io.BytesIO(body),
    }
    chunks = b"".join(app(environ, start_response))
    return answer["status"], answer["headers"], json.loads(chunks)


def test_the_service_answers_503_while_one_processor_is_busy_then_200(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The service as ``main`` configures it from the environment: a DuckDB file, SQLite
    leases and completion, triggers appended to a file."""
    store = f"sqlite:///{tmp_path}/leases.db"
    monkeypatch.setenv("PROCESSOR_GUARD_STORE", store)
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    app = make_app(make_processors_from_env())
    wh = Warehouse("duckdb", str(tmp_path / "warehouse.duckdb"), "main", None)  # type: ignore[arg-type]

    def triggers() -> list[str]:
        path = tmp_path / "triggers.jsonl"
        lines = path.read_text().splitlines() if path.exists() else []
        return [json.loads(line)["dedup_id"] for line in lines]

    with date_lock("mlb_pitcher_game_summary", DAY, store=store, ttl=30, owner="other"):
        status, headers, body = push(app, {"game_date": DAY}, "m1")
    assert status.startswith("503"), body
    assert int(headers["Retry-After"]) >= 1
    kinds = {o["processor"]: o["outcome"] for o in body["outcomes"]}
    assert kinds == {
        "player_game_summary": "done",
        "player_prop_enrichment": "done",
        "mlb_pitcher_game_summary": "busy",
    }
    assert wh.rows("mlb_pitcher_game_summary") == []
    assert triggers() == [f"phase3/{DAY}"]

    # Pub/Sub redelivers: all three run (the done ones again, idempotently).
    status, _, body = push(app, {"game_date": DAY}, "m1")
    assert status.startswith("200"), body
    assert body["counts"]["done"] == 3
    assert triggers() == [f"phase3/{DAY}", f"mlb_phase3/{DAY}"]
    stored = wh.rows()
    assert without(stored, *PROP_COLUMNS, "processed_at") == PGS_EXPECTED
    assert sum(r["points_line"] is not None for r in stored) == 14
    assert len(wh.rows("mlb_pitcher_game_summary")) == PLAYERS // 2
