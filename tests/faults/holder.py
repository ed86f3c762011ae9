"""A lease holder run as its own OS process, so a test can SIGSTOP and SIGCONT it.

Protocol (one JSON object per line on stdout, commands on stdin), repeated per round:
  -> {"event": "starting", "round": i}      (about to acquire, waiting if busy)
  -> {"event": "acquired", "fence": N, "pid": P, "round": i}
  <- "go"         (the test has paused us past our ttl and resumed us)
  -> {"event": "result", ...}   what a stale holder experienced on resume
Stores come from ``open_store(url)``; ``--duckdb`` names a DuckDB file whose table the
holder writes (fenced) on resume.
"""

from __future__ import annotations

import argparse
import contextvars
import json
import os
import sys
from typing import Any

from processor_guard import LeaseLost, StaleFence, date_lock, open_store


def say(**payload: Any) -> None:
    sys.stdout.write(json.dumps(payload) + "\n")
    sys.stdout.flush()


def stale_write(duckdb_path: str, table: str, fence: int, round_no: int) -> str:
    """Write the way a holder paused between its last check and its write would."""
    from processor_guard import safe_merge

    rows = [
        {"game_date": "2026-02-03", "player_lookup": f"player{i}", "points": -1 - round_no}
        for i in range(3)
    ]
    try:
        # An empty context: no current lease, so only the fence stands between this
        # write and the table, as when the pause fell after the holder's last check.
        contextvars.Context().run(
            safe_merge,
            duckdb_path,
            table,
            rows,
            keys=("game_date", "player_lookup"),
            partition_field="game_date",
            order_by=None,
            fence=fence,
        )
    except StaleFence:
        return "StaleFence"
    except Exception as exc:
        return f"unexpected {type(exc).__name__}: {exc}"
    return "written"


def hold_once(store: Any, args: argparse.Namespace, round_no: int) -> dict[str, Any] | None:
    """One round: acquire, announce, wait for "go", then report; None if lost too early."""
    result: dict[str, Any] = {"event": "result", "round": round_no}
    announced = False
    say(event="starting", round=round_no)
    try:
        with date_lock(
            args.scope,
            args.date,
            store=store,
            ttl=args.ttl,
            wait=30,
            owner=f"holder-{round_no}",
        ) as lease:
            lease.check()
            say(event="acquired", fence=lease.fence, pid=os.getpid(), round=round_no)
            announced = True
            if sys.stdin.readline().strip() != "go":
                raise SystemExit(2)
            if args.duckdb:
                result["write"] = stale_write(args.duckdb, args.table, lease.fence, round_no)
            try:
                lease.check()
                result["check"] = "passed"
            except LeaseLost:
                result["check"] = "LeaseLost"
            result["lost_event"] = lease.lost
        result["exit"] = "clean"
    except LeaseLost:
        if not announced:
            return None
        result["exit"] = "LeaseLost"
    return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--scope", default="faults")
    parser.add_argument("--date", default="2026-02-03")
    parser.add_argument("--ttl", type=float, required=True)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--duckdb")
    parser.add_argument("--table", default="main.player_game_summary")
    args = parser.parse_args()

    store = open_store(args.url)
    store.holder(f"{args.scope}:{args.date}")  # connect first: a cold client is slow once
    for round_no in range(args.rounds):
        for _ in range(5):  # on a loaded machine a lease may be lost before it is announced
            result = hold_once(store, args, round_no)
            if result is not None:
                break
        else:
            return 3
        say(**result)
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
