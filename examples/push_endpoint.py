"""The HTTP handler a Pub/Sub push subscription calls (standard library WSGI only).

Pub/Sub retries every answer except 102/200/201/202/204, so the status is the contract:

* 204: the date was processed and completion recorded; the message is acked.
* 409 + Retry-After: ``LockBusy``, another instance holds the date. Pub/Sub redelivers
  with backoff, so the newer data is processed once the holder is done (the old
  pipeline answered 200 here and silently dropped it).
* 503 + Retry-After: ``TriggerPending``, the date is complete but its trigger is not
  published yet (the publish failed, or another caller holds the claim until the time
  given); the redelivery publishes it.
* 400: the message cannot be processed, ever (bad JSON, bad date). Pub/Sub still
  redelivers non-2xx, so route such messages to a dead-letter topic.
* 500: the lease was lost (``LeaseLost``/``StaleFence``) or the processor failed;
  redelivery retries the whole run under a new lease.

Run it: ``PROCESSOR_GUARD_STORE=sqlite:///tmp/leases.db DATA_DIR=/tmp PORT=8080 python
examples/push_endpoint.py`` (player_game_summary into ``$DATA_DIR/warehouse.duckdb``).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from wsgiref.simple_server import make_server

from processor_guard import ConfigError, LockBusy
from processor_guard.completion.tracker import TriggerPending

log = logging.getLogger(__name__)

Processor = Any  # anything with run(opts) -> bool, e.g. an AnalyticsProcessorBase
StartResponse = Callable[[str, list[tuple[str, str]]], Any]


def parse_push(body: bytes) -> dict[str, Any]:
    """Processor opts from a Pub/Sub push envelope; ConfigError when malformed."""
    try:
        envelope = json.loads(body)
        message = envelope["message"]
        payload = json.loads(base64.b64decode(message["data"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"not a Pub/Sub push message with a JSON payload: {exc}") from None
    if not isinstance(payload, dict):
        raise ConfigError("the message payload must be a JSON object")
    day = payload.get("game_date") or payload.get("end_date")
    if not isinstance(day, str):
        raise ConfigError("the payload needs game_date (YYYY-MM-DD)")
    return {
        **payload,
        "start_date": payload.get("start_date", day),
        "end_date": payload.get("end_date", day),
        "trigger_message_id": message.get("messageId") or message.get("message_id"),
        "run_id": payload.get("run_id") or message.get("messageId"),
    }


def make_app(make_processor: Callable[[], Processor]) -> Callable[..., Iterable[bytes]]:
    """A WSGI app that runs one processor per push request."""

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        def answer(
            status: str, text: str = "", headers: tuple[tuple[str, str], ...] = ()
        ) -> list[bytes]:
            start_response(status, [("Content-Type", "text/plain"), *headers])
            return [text.encode()]

        if environ["REQUEST_METHOD"] != "POST":
            return answer("405 Method Not Allowed", "POST a Pub/Sub push message\n")
        length = int(environ.get("CONTENT_LENGTH") or 0)
        try:
            opts = parse_push(environ["wsgi.input"].read(length))
            ok = make_processor().run(opts)
        except ConfigError as exc:
            return answer("400 Bad Request", f"{exc}\n")
        except LockBusy as busy:
            # Retryable: another instance is on this date right now.
            wait = max(1, round(busy.remaining or 1))
            return answer("409 Conflict", f"{busy}\n", (("Retry-After", str(wait)),))
        except TriggerPending as pending:
            wait = max(1, round(pending.retry_after))
            return answer("503 Service Unavailable", f"{pending}\n", (("Retry-After", str(wait)),))
        except Exception as exc:  # LeaseLost, StaleFence, anything unexpected
            log.exception("processing failed")
            return answer("500 Internal Server Error", f"{type(exc).__name__}: {exc}\n")
        if not ok:
            return answer("500 Internal Server Error", "processor reported failure\n")
        return answer("204 No Content")

    return app


def main() -> None:
    """Serve player_game_summary on DuckDB and a local completion document (a sketch)."""
    sys.path.insert(0, str(Path(__file__).parent))
    import duckdb
    from player_game_summary import PlayerGameSummaryProcessor

    from processor_guard import CompletionTracker
    from processor_guard.completion.docstore import SQLiteDocumentClient
    from processor_guard.demo.data import EXPECTED_PROCESSORS, create_table_sql

    folder = Path(os.environ.get("DATA_DIR", "."))
    warehouse = str(folder / "warehouse.duckdb")
    with duckdb.connect(warehouse) as con:
        con.execute(create_table_sql("player_game_summary"))
    tracker = CompletionTracker(
        SQLiteDocumentClient(folder / "completion.db"), "phase3", list(EXPECTED_PROCESSORS)
    )
    app = make_app(lambda: PlayerGameSummaryProcessor(warehouse, tracker, dataset="main"))
    port = int(os.environ.get("PORT", "8080"))
    with make_server(os.environ.get("HOST", "127.0.0.1"), port, app) as server:
        print("listening on {}:{}".format(*server.server_address[:2]), file=sys.stderr, flush=True)
        server.serve_forever()


if __name__ == "__main__":
    main()
