"""What a save costs on BigQuery: request bytes, jobs, statements, and the largest batch
one request can carry. ``python -m benchmarks.bench_writes`` writes results/writes.json.

Sizes are measured on the script the adapter would send (no server needed). Jobs
and statements are counted on the BigQuery emulator (every query job the client
submits) and on the BigQuery rules model (every statement it runs, cancellations
included) for 348-row saves: the first save into a table, then later ones.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "tests"))

from fixtures.pgs_rows import date_rows  # noqa: E402
from fixtures.pgs_wide import WIDE_SCHEMA, wide_rows  # noqa: E402
from processor_guard.writes.warehouse import BigQueryWarehouse, Column, MergePlan  # noqa: E402
from processor_guard.writes.warehouse.bigquery import (  # noqa: E402
    QUERY_TEXT_LIMIT,
    REQUEST_LIMIT,
    SCRIPT_VARIABLE_LIMIT,
    encoded_request_bytes,
)

DAY = dt.date(2026, 2, 3)
KEYS = ("game_date", "player_lookup")


class _Offline:
    project = "bench"


def _wide_plan(rows: int, fence: int | None = 7) -> MergePlan:
    from processor_guard._values import coerce

    columns = tuple(Column(n, t, m == "REQUIRED", t, p, s) for n, t, m, p, s in WIDE_SCHEMA)
    data = [
        {c.name: coerce(r.get(c.name), c.type, precision=c.precision, scale=c.scale)
         for c in columns}
        for r in wide_rows(DAY, rows)
    ]  # fmt: skip
    return MergePlan("bench.ds.player_game_summary", KEYS, "game_date", columns, data, (DAY,),
                     fence=fence, order_by="processed_at")  # fmt: skip


def _fits(wh: BigQueryWarehouse, rows: int) -> bool:
    script, variable = wh.inline_script(_wide_plan(rows))
    return (
        variable <= SCRIPT_VARIABLE_LIMIT
        and len(script.encode("utf-8")) <= QUERY_TEXT_LIMIT
        and encoded_request_bytes(script) <= REQUEST_LIMIT
    )


def sizes() -> dict[str, Any]:
    wh = BigQueryWarehouse(_Offline())
    script, variable = wh.inline_script(_wide_plan(348))
    low, high = 1, 20_000
    while low < high:  # the largest row count whose script still fits one request
        mid = (low + high + 1) // 2
        low, high = (mid, high) if _fits(wh, mid) else (low, mid - 1)
    return {
        "schema_columns": len(WIDE_SCHEMA),
        "request_bytes_348_rows": encoded_request_bytes(script),
        "query_text_bytes_348_rows": len(script.encode("utf-8")),
        "rows_variable_bytes_348_rows": variable,
        "largest_single_request_rows": low,
        "limits": {
            "query_text": QUERY_TEXT_LIMIT,
            "script_variable": SCRIPT_VARIABLE_LIMIT,
            "request": REQUEST_LIMIT,
        },
    }


def _statements(script: str) -> int:
    return sum(1 for line in script.splitlines() if line.rstrip().endswith(";"))


def emulator_jobs() -> dict[str, Any]:
    from fixtures.bigquery_emulator import BigQueryEmulator
    from processor_guard import safe_merge

    emulator = BigQueryEmulator()
    try:
        client = emulator.client()
        table = emulator.create_player_game_summary(client)
        submitted: list[str] = []
        query = client.query

        def counted(sql: str, *args: Any, **kwargs: Any) -> Any:
            submitted.append(sql)
            return query(sql, *args, **kwargs)

        client.query = counted
        wh = BigQueryWarehouse(client)
        out: dict[str, Any] = {}
        for label, fence, threshold, day in [
            ("first save (creates the guard table)", 5, 4_000_000, DAY),
            ("fenced", 5, 4_000_000, DAY + dt.timedelta(days=1)),
            ("unfenced", None, 4_000_000, DAY + dt.timedelta(days=2)),
            ("staging", 5, 1, DAY + dt.timedelta(days=3)),
        ]:
            submitted.clear()
            result = safe_merge(wh, table, date_rows(day), keys=KEYS, fence=fence,
                                staging_threshold_bytes=threshold)  # fmt: skip
            out[label] = {
                "query_jobs": len(submitted),
                "jobs_reported": result.jobs,
                "script_statements": _statements(submitted[-1]),
                "path": result.path,
            }
        return out
    finally:
        emulator.stop()


def model_statements() -> dict[str, Any]:
    from fixtures.bq_rules import BigQueryRules, RulesWarehouse
    from fixtures.pgs_rows import DUCKDB_PGS
    from processor_guard import safe_merge

    model = BigQueryRules(rate=None)
    model.conn.execute(DUCKDB_PGS.format(name="player_game_summary"))
    wh = RulesWarehouse(model)
    out = {}
    for label, fence, day in [("fenced", 5, DAY), ("unfenced", None, DAY + dt.timedelta(1))]:
        safe_merge(wh, "player_game_summary", date_rows(day), keys=KEYS, fence=fence)
        before = len(model.statements)
        safe_merge(wh, "player_game_summary", date_rows(day + dt.timedelta(7)), keys=KEYS,
                   fence=fence)  # fmt: skip
        sent = model.statements[before:]
        out[label] = {"statements": len(sent), "kinds": [s.split()[0] for s in sent]}
    return out


def main() -> dict[str, Any]:
    report = {"sizes": sizes(), "model": model_statements(), "emulator": emulator_jobs()}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "writes.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
