"""The upstream-shaped processors behind one push endpoint, several per message.

The HTTP side is ``analytics_service.make_app`` (each processor's outcome folded by
``processor_guard.outcomes.Outcomes``: 200 when all are done, 503 + Retry-After when one
is busy or lost, 500 when one failed); this module only says which processors run:
``player_game_summary``, then its prop-line enrichment pass (both hold the
``player_game_summary`` lease of the date, one after the other) and the MLB pitcher
summary, which takes ``opts={'date': ...}`` as upstream's MLB processors do.

Run it on a DuckDB file (``DATA_DIR``) with a lease store::

    PROCESSOR_GUARD_STORE=sqlite:///tmp/leases.db DATA_DIR=/tmp PORT=8080 \
    python examples/upstream_service.py
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from analytics_service import ProcessorFactory, serve
from upstream_processors import (
    MlbPitcherGameSummaryProcessor,
    PlayerGameSummaryProcessor,
    PlayerPropEnrichmentProcessor,
)
from upstream_tables import create_tables

from processor_guard import CompletionTracker, ConfigError

NBA_PROCESSORS = ("player_game_summary", "player_prop_enrichment")


class DateOpts:
    """Adapts a processor that takes ``opts={'date': ...}`` to the service's
    ``start_date``/``end_date`` opts (one date per message)."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor

    def run(self, opts: dict[str, Any]) -> bool:
        if opts["start_date"] != opts["end_date"]:
            raise ConfigError("the MLB processors run one date per message")
        passed = {k: opts[k] for k in ("run_id", "correlation_id") if k in opts}
        return bool(self.processor.run({"date": opts["end_date"], **passed}))


def make_processors(
    warehouse: Any,
    nba_tracker: CompletionTracker,
    mlb_tracker: CompletionTracker,
    *,
    dataset: str,
    players: int = 40,
) -> dict[str, ProcessorFactory]:
    """One factory per processor, in the order they run for a message."""

    def nba(cls: type[Any]) -> ProcessorFactory:
        return lambda: cls(warehouse, nba_tracker, dataset=dataset, players=players)

    return {
        "player_game_summary": nba(PlayerGameSummaryProcessor),
        "player_prop_enrichment": nba(PlayerPropEnrichmentProcessor),
        "mlb_pitcher_game_summary": lambda: DateOpts(
            MlbPitcherGameSummaryProcessor(warehouse, mlb_tracker, dataset=dataset, players=players)
        ),
    }


def make_processors_from_env(environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """Processors on ``DATA_DIR/warehouse.duckdb``, completion in ``DATA_DIR/completion.db``
    (triggers appended to ``DATA_DIR/triggers.jsonl``); leases from
    ``PROCESSOR_GUARD_STORE``."""
    from processor_guard.cli import publisher
    from processor_guard.completion.docstore import SQLiteDocumentClient

    if not environ.get("PROCESSOR_GUARD_STORE"):
        raise ConfigError("PROCESSOR_GUARD_STORE (the lease store URL) is not set")
    folder = Path(environ.get("DATA_DIR", ".")).resolve()
    warehouse = str(folder / "warehouse.duckdb")
    create_tables(warehouse, "main")
    docs = SQLiteDocumentClient(folder / "completion.db")
    publish = publisher(f"file://{folder / 'triggers.jsonl'}")
    nba = CompletionTracker(docs, "phase3", list(NBA_PROCESSORS), publish)
    mlb = CompletionTracker(docs, "mlb_phase3", ["mlb_pitcher_game_summary"], publish)
    return make_processors(warehouse, nba, mlb, dataset="main")


def main() -> None:
    """Serve pushes, configured by the environment (see above)."""
    serve(make_processors_from_env, "upstream_service")


if __name__ == "__main__":
    main()
