"""An analytics service that runs several processors for one Pub/Sub push message.

The upstream pipeline's analytics service runs every processor that depends on the
message's source table and answers 200 even when one of them could not run, so a
processor that found its date busy is acked and its data silently dropped. Here each
processor's outcome goes into :class:`processor_guard.outcomes.Outcomes`, which folds
them into one answer:

* 200 + JSON: every processor done (or skipped: the message did not concern it).
* 503 + Retry-After: one was busy (``LockBusy``, ``TriggerPending``) or lost its lease;
  Pub/Sub redelivers the message and the processors re-run idempotently.
* 500: one failed; Pub/Sub redelivers too, and it shows as an error.
* 400: the message itself is malformed (route it to a dead-letter topic).

Run it with the same environment as ``push_endpoint.py``::

    PROCESSOR_GUARD_STORE=sqlite:///tmp/leases.db DATA_DIR=/tmp PORT=8080 \
    PROCESSOR_GUARD_PUBLISHER=file:///tmp/triggers.jsonl python examples/analytics_service.py

A message may name the processors to run (``{"game_date": ..., "processors": [...]}``);
without that every processor of the service runs.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar
from wsgiref.simple_server import make_server

sys.path.insert(0, str(Path(__file__).parent))

from analytics_base import AnalyticsProcessorBase
from player_game_summary import PlayerGameSummaryProcessor
from push_endpoint import StartResponse, parse_push

from processor_guard import ConfigError
from processor_guard.demo import data as demo_data
from processor_guard.leases import parse_game_date
from processor_guard.outcomes import Outcomes

log = logging.getLogger(__name__)

ProcessorFactory = Callable[[], Any]  # a new processor with run(opts) per message


class TeamOffenseGameSummaryProcessor(AnalyticsProcessorBase):
    """One row per team and game, from the demo's seeded date."""

    table: ClassVar[str] = "team_offense_game_summary"

    def extract(self, opts: dict[str, Any]) -> list[dict[str, Any]]:
        day = parse_game_date(opts["end_date"], argument="end_date")
        games = demo_data.games_for(day)[: int(opts.get("games", 10))]
        return demo_data.table_rows(self.table, games, game_date=day)

    def transform(self, raw: list[dict[str, Any]], opts: dict[str, Any]) -> list[dict[str, Any]]:
        now = dt.datetime.now(dt.timezone.utc).isoformat()
        return [dict(row, processed_at=now) for row in raw]


PROCESSORS: dict[str, type[AnalyticsProcessorBase]] = {
    "player_game_summary": PlayerGameSummaryProcessor,
    "team_offense_game_summary": TeamOffenseGameSummaryProcessor,
}


def run_message(opts: dict[str, Any], processors: Mapping[str, ProcessorFactory]) -> Outcomes:
    """Run every processor the message asks for, each to its own outcome."""
    for key in ("start_date", "end_date"):
        parse_game_date(opts[key], argument="game_date")
    wanted = opts.get("processors")
    if wanted is not None and (
        not isinstance(wanted, list) or any(name not in processors for name in wanted)
    ):
        raise ConfigError(f"processors must list some of {sorted(processors)}, got {wanted!r}")
    outcomes = Outcomes()
    for name, make in processors.items():
        if wanted is not None and name not in wanted:
            outcomes.skip(name, "not asked for by this message")
            continue
        outcomes.run(name, lambda make=make: make().run(dict(opts)))  # type: ignore[misc]
    return outcomes


def make_app(processors: Mapping[str, ProcessorFactory]) -> Callable[..., Iterable[bytes]]:
    """A WSGI app running ``processors`` for each push message."""

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ["REQUEST_METHOD"] != "POST":
            start_response("405 Method Not Allowed", [("Content-Type", "text/plain")])
            return [b"POST a Pub/Sub push message\n"]
        length = int(environ.get("CONTENT_LENGTH") or 0)
        try:
            opts = parse_push(environ["wsgi.input"].read(length))
            outcomes = run_message(opts, processors)
        except ConfigError as bad:
            start_response("400 Bad Request", [("Content-Type", "application/json")])
            return [json.dumps({"status": "bad message", "detail": str(bad)}).encode()]
        answer = outcomes.answer()
        log.info("message %s: %s", opts.get("trigger_message_id"), answer.body["counts"])
        start_response(answer.status_line, list(answer.headers))
        return [answer.body_bytes()]

    return app


def make_processors_from_env(
    environ: Mapping[str, str] = os.environ,
) -> dict[str, ProcessorFactory]:
    """One factory per processor, sharing the warehouse, lease store and tracker that
    ``push_endpoint.make_processor_from_env`` configures from the environment."""
    from push_endpoint import make_processor_from_env

    first = make_processor_from_env(environ)()
    warehouse, tracker, dataset = first.warehouse, first.tracker, first.dataset
    if isinstance(warehouse, str):  # a DuckDB file: create the other tables too
        import duckdb

        with duckdb.connect(warehouse) as con:
            for table in PROCESSORS:
                con.execute(demo_data.create_table_sql(table))
    return {
        name: (lambda cls=cls: cls(warehouse, tracker, dataset=dataset))
        for name, cls in PROCESSORS.items()
    }


def serve(build: Callable[[], Mapping[str, ProcessorFactory]], name: str) -> None:
    """Serve pushes for the processors ``build()`` makes from the environment."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    try:
        processors = build()
    except ConfigError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        raise SystemExit(64) from None
    port = int(os.environ.get("PORT", "8080"))
    with make_server(os.environ.get("HOST", "127.0.0.1"), port, make_app(processors)) as server:
        print("listening on {}:{}".format(*server.server_address[:2]), file=sys.stderr, flush=True)
        server.serve_forever()


def main() -> None:
    """Serve pushes, configured by the environment (see above)."""
    serve(make_processors_from_env, "analytics_service")


if __name__ == "__main__":
    main()
