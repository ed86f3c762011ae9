"""The Pub/Sub push handler of ``push_endpoint.py`` for async services (Starlette + uvicorn).

Same contract, same answers (see ``push_endpoint.answer_for``): 204 done; 409 +
Retry-After when another instance holds the date; 503 + Retry-After while the trigger is
pending; 400 for a message that can never be processed; 500 when the lease was lost or
the processor failed. What changes is that one process serves many pushes at once on
its event loop:

* ``run`` is an ``async def`` under ``@guarded``: the leases are taken, renewed and
  released on the loop (``async with date_lock`` underneath), and a request cancelled
  mid-run (client gone, server shutting down) releases them.
* The MERGE (``asafe_merge``) and the completion record (``tracker.arecord``) run on
  worker threads with the task's leases, fenced as in the sync endpoint, while the loop
  answers other pushes; a push for a date being processed gets 409 at once.

Run it with the environment of ``push_endpoint.py``::

    PROCESSOR_GUARD_STORE=redis://localhost:6379/0 DATA_DIR=/tmp PORT=8080 \\
    PROCESSOR_GUARD_EXPECTED=player_game_summary \\
    PROCESSOR_GUARD_PUBLISHER=file:///tmp/triggers.jsonl python examples/push_endpoint_async.py
"""

from __future__ import annotations

import logging
import os
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))  # run on its own: find the sync example

from player_game_summary import PlayerGameSummaryProcessor
from push_endpoint import answer_for, make_processor_from_env, parse_push
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from processor_guard import ConfigError, GuardError, asafe_merge, guarded
from processor_guard.completion.tracker import TriggerPending

log = logging.getLogger(__name__)


class AsyncPlayerGameSummaryProcessor(PlayerGameSummaryProcessor):
    """``PlayerGameSummaryProcessor`` whose ``run`` awaits the lease, MERGE and record."""

    @guarded(lambda self: self.table, ttl=60.0, wait=0)
    async def run(self, opts: dict[str, Any]) -> bool:  # type: ignore[override]
        run_id = str(opts.get("run_id") or uuid.uuid4().hex)
        try:
            rows = self.transform(self.extract(opts), opts)
            written = await self.asave(rows)
        except GuardError:
            raise  # LeaseLost / StaleFence / MergeFailed: the endpoint answers 500
        except Exception:
            log.exception("%s failed for %s", self.table, opts.get("end_date"))
            return False
        for day, covered in self.days_covered(opts, rows):  # still under the lease
            state = await self.tracker.arecord(
                day, self.table, execution_id=run_id, record_count=written, covered=covered
            )
            if state.waiting_for_publish:
                raise TriggerPending(state)
        return True

    async def asave(self, rows: list[dict[str, Any]]) -> int:
        """``save``, with the fenced MERGE on a worker thread."""
        rows = self.deduped(rows)
        self.merged(await asafe_merge(self.warehouse, self.target, rows, **self.merge_keys))
        return len(rows)


def make_app(make_processor: Callable[[], AsyncPlayerGameSummaryProcessor]) -> Starlette:
    """An ASGI app that runs one processor per push request (other methods get 405)."""

    async def push(request: Request) -> Response:
        try:
            opts = parse_push(await request.body())
            ok = await make_processor().run(opts)
        except Exception as exc:
            status, text, headers = answer_for(exc)
            return PlainTextResponse(text, status, headers)
        if not ok:
            return PlainTextResponse("processor reported failure\n", 500)
        return Response(status_code=204)

    return Starlette(routes=[Route("/", push, methods=["POST"])])


def main() -> None:
    """Serve player_game_summary pushes, configured by the environment (see above)."""
    import uvicorn

    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    try:
        make_processor = make_processor_from_env(processor_class=AsyncPlayerGameSummaryProcessor)
    except ConfigError as exc:
        print(f"push_endpoint_async: error: {exc}", file=sys.stderr)
        raise SystemExit(64) from None
    uvicorn.run(
        make_app(make_processor),
        host=os.environ.get("HOST", "127.0.0.1"),
        port=int(os.environ.get("PORT", "8080")),
        log_level="warning",
    )


if __name__ == "__main__":
    main()
