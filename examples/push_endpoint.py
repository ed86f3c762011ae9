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

Run it (the environment is described in ``make_processor_from_env``)::

    PROCESSOR_GUARD_STORE=sqlite:///tmp/leases.db DATA_DIR=/tmp PORT=8080 \
    PROCESSOR_GUARD_EXPECTED=player_game_summary \
    PROCESSOR_GUARD_PUBLISHER=file:///tmp/triggers.jsonl python examples/push_endpoint.py

and push what Pub/Sub would (``data`` is base64 of ``{"game_date": "2026-02-03"}``)::

    curl -i -X POST localhost:8080/ -H 'Content-Type: application/json' -d \
      '{"message": {"data": "eyJnYW1lX2RhdGUiOiAiMjAyNi0wMi0wMyJ9", "messageId": "1"},
        "subscription": "projects/p/subscriptions/pgs"}'
"""

from __future__ import annotations

import base64
import json
import logging
import os
import random
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from http import HTTPStatus
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


def answer_for(exc: Exception) -> tuple[int, str, dict[str, str]]:
    """The status, text and headers that answer a push whose processing raised ``exc``
    (the contract above; the async endpoint answers with the same)."""
    if isinstance(exc, ConfigError):
        return 400, f"{exc}\n", {}
    if isinstance(exc, LockBusy):
        # Retryable: another instance is on this date right now.
        return 409, f"{exc}\n", {"Retry-After": str(max(1, round(exc.remaining or 1)))}
    if isinstance(exc, TriggerPending):
        return 503, f"{exc}\n", {"Retry-After": str(max(1, round(exc.retry_after)))}
    log.error("processing failed", exc_info=exc)  # LeaseLost, StaleFence, anything else
    return 500, f"{type(exc).__name__}: {exc}\n", {}


def make_app(make_processor: Callable[[], Processor]) -> Callable[..., Iterable[bytes]]:
    """A WSGI app that runs one processor per push request."""

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        def answer(
            status: int, text: str = "", headers: Mapping[str, str] | None = None
        ) -> list[bytes]:
            line = f"{status} {HTTPStatus(status).phrase}"
            start_response(line, [("Content-Type", "text/plain"), *(headers or {}).items()])
            return [text.encode()]

        if environ["REQUEST_METHOD"] != "POST":
            return answer(405, "POST a Pub/Sub push message\n")
        length = int(environ.get("CONTENT_LENGTH") or 0)
        try:
            opts = parse_push(environ["wsgi.input"].read(length))
            ok = make_processor().run(opts)
        except Exception as exc:
            return answer(*answer_for(exc))
        if not ok:
            return answer(500, "processor reported failure\n")
        return answer(204)

    return app


def make_processor_from_env(
    environ: Mapping[str, str] = os.environ, processor_class: type[Any] | None = None
) -> Callable[[], Processor]:
    """A factory of player_game_summary processors (``processor_class``, by default
    ``PlayerGameSummaryProcessor``) configured by environment variables.

    ``PROCESSOR_GUARD_STORE``     lease store URL (redis://, firestore://, sqlite:///).
    ``PROCESSOR_GUARD_WAREHOUSE`` duckdb:///path or bigquery://PROJECT/DATASET
                                  (default: duckdb ``$DATA_DIR/warehouse.duckdb``).
    ``PROCESSOR_GUARD_COMPLETION`` firestore://PROJECT or sqlite:///path
                                  (default: sqlite ``$DATA_DIR/completion.db``).
    ``PROCESSOR_GUARD_PUBLISHER`` pubsub://projects/P/topics/T, file:///path.jsonl or
                                  python:module:function; without one every complete
                                  date answers 503 (the trigger cannot be sent).
    ``PROCESSOR_GUARD_EXPECTED``  comma-separated processors the phase waits for
                                  (default: the five analytics tables).
    ``PROCESSOR_GUARD_PHASE``     the phase (default phase3).
    """
    sys.path.insert(0, str(Path(__file__).parent))
    from player_game_summary import PlayerGameSummaryProcessor, scheduled_games

    from processor_guard import CompletionTracker
    from processor_guard.cli import completion_client, publisher
    from processor_guard.demo.data import EXPECTED_PROCESSORS, create_table_sql

    if not environ.get("PROCESSOR_GUARD_STORE"):
        raise ConfigError("PROCESSOR_GUARD_STORE (the lease store URL) is not set")
    folder = Path(environ.get("DATA_DIR", "."))
    warehouse_url = environ.get("PROCESSOR_GUARD_WAREHOUSE") or (
        f"duckdb:///{(folder / 'warehouse.duckdb').resolve()}"
    )
    warehouse, dataset = _open_warehouse(warehouse_url, create_table_sql("player_game_summary"))
    completion_url = environ.get("PROCESSOR_GUARD_COMPLETION")
    if not completion_url:
        completion_url = f"sqlite:///{(folder / 'completion.db').resolve()}"
        Path(completion_url[len("sqlite://") :]).touch()
    publish_spec = environ.get("PROCESSOR_GUARD_PUBLISHER")
    if not publish_spec:
        log.warning("PROCESSOR_GUARD_PUBLISHER is not set: complete dates answer 503")
    expected = environ.get("PROCESSOR_GUARD_EXPECTED")
    tracker = CompletionTracker(
        completion_client(completion_url),
        environ.get("PROCESSOR_GUARD_PHASE", "phase3"),
        [n.strip() for n in expected.split(",")] if expected else list(EXPECTED_PROCESSORS),
        publisher(publish_spec) if publish_spec else None,
        required=scheduled_games,
    )
    cls = processor_class or PlayerGameSummaryProcessor
    return lambda: cls(warehouse, tracker, dataset=dataset)


def _open_warehouse(url: str, create_sql: str) -> tuple[Any, str]:
    """The warehouse object and dataset the processor writes to, its table created."""
    if url.startswith("duckdb://"):
        import duckdb

        path = url[len("duckdb://") :]
        give_up = time.monotonic() + 30
        while True:  # several endpoints starting together take turns on the file lock
            try:
                with duckdb.connect(path) as con:
                    con.execute(create_sql)
                return path, "main"
            except duckdb.IOException:
                if time.monotonic() > give_up:
                    raise
                time.sleep(random.uniform(0.05, 0.2))
    from processor_guard.writes.inspect import open_warehouse

    source = open_warehouse(url)
    return source.warehouse, str(source.dataset)


def main() -> None:
    """Serve player_game_summary pushes, configured by the environment (see above)."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    try:
        make_processor = make_processor_from_env()
    except ConfigError as exc:
        print(f"push_endpoint: error: {exc}", file=sys.stderr)
        raise SystemExit(64) from None
    app = make_app(make_processor)
    port = int(os.environ.get("PORT", "8080"))
    with make_server(os.environ.get("HOST", "127.0.0.1"), port, app) as server:
        print("listening on {}:{}".format(*server.server_address[:2]), file=sys.stderr, flush=True)
        server.serve_forever()


if __name__ == "__main__":
    main()
