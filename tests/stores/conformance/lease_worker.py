"""A worker OS process for the conformance suite; talks JSON lines on stdout.

``count``: after a ``go`` line on stdin, take the lease N times; inside each hold do a
non-atomic read-modify-write of a counter file and log the fence, in lock order
(``--api=async --tasks=K``: K asyncio tasks of the process do so, N times each).
``hold``: take the lease once, report its fence, hold it until a line arrives on
stdin, then leave the ``with`` block and report how that went.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time

from processor_guard import GuardError, LeaseLost, date_lock, open_store


def emit(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def count(args: argparse.Namespace) -> None:
    store = open_store(args.url)
    owner = f"{args.name}:{os.getpid()}"
    emit(event="ready")
    sys.stdin.readline()
    for _ in range(args.n):
        with date_lock(
            args.scope, args.date, store=store, ttl=args.ttl, wait=args.wait, owner=owner
        ) as lease:
            with open(args.counter, "r+") as f:
                value = int(f.read() or "0")
                # Widen the window in which an overlapping holder would lose an update.
                time.sleep(random.uniform(0, args.jitter))
                f.seek(0)
                f.write(str(value + 1))
                f.truncate()
            with open(args.log, "a") as log:
                log.write(f"{lease.fence} {owner}\n")
    emit(event="done", acquired=args.n)


def count_async(args: argparse.Namespace) -> None:
    """``count`` on the async API: ``--tasks`` tasks of this process, N each, contend."""
    store = open_store(args.url)  # async with date_lock gives its async face

    async def one(owner: str) -> None:
        for _ in range(args.n):
            async with date_lock(
                args.scope, args.date, store=args.url, ttl=args.ttl, wait=args.wait, owner=owner
            ) as lease:
                with open(args.counter, "r+") as f:
                    value = int(f.read() or "0")
                    # Yield to the other tasks of this process while "holding" the value.
                    await asyncio.sleep(random.uniform(0, args.jitter))
                    f.seek(0)
                    f.write(str(value + 1))
                    f.truncate()
                with open(args.log, "a") as log:
                    log.write(f"{lease.fence} {owner}\n")

    async def main() -> None:
        owners = [f"{args.name}:{os.getpid()}:t{i}" for i in range(args.tasks)]
        await asyncio.gather(*(one(owner) for owner in owners))

    store.close()
    emit(event="ready")
    sys.stdin.readline()
    asyncio.run(main())
    emit(event="done", acquired=args.n * args.tasks)


def hold(args: argparse.Namespace) -> None:
    store = open_store(args.url)
    owner = f"{args.name}:{os.getpid()}"
    try:
        with date_lock(args.scope, args.date, store=store, ttl=args.ttl, owner=owner) as lease:
            emit(event="held", fence=lease.fence, owner=owner)
            sys.stdin.readline()
            emit(event="leaving", lost=lease.lost)
    except LeaseLost as exc:
        emit(event="lost", reason=exc.reason)
        return
    except GuardError as exc:
        emit(event="error", error=repr(exc))
        return
    emit(event="released")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["count", "hold"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--scope", default="conformance")
    parser.add_argument("--date", default="2026-02-03")
    parser.add_argument("--name", default="worker")
    parser.add_argument("--ttl", type=float, default=5.0)
    parser.add_argument("--wait", type=float, default=120.0)
    parser.add_argument("--n", type=int, default=1)
    parser.add_argument("--jitter", type=float, default=0.0002)
    parser.add_argument("--counter")
    parser.add_argument("--log")
    parser.add_argument("--api", choices=["sync", "async"], default="sync")
    parser.add_argument("--tasks", type=int, default=1)
    args = parser.parse_args()
    if args.mode == "hold":
        hold(args)
    elif args.api == "async":
        count_async(args)
    else:
        count(args)


if __name__ == "__main__":
    main()
