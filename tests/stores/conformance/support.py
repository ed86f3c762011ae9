"""Driving ``lease_worker.py`` processes from the tests."""

from __future__ import annotations

from pathlib import Path

from fixtures.procs import JsonLinesProcess

WORKER = Path(__file__).with_name("lease_worker.py")


class Worker(JsonLinesProcess):
    """One ``lease_worker.py`` OS process; JSON lines out, plain lines in."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        super().__init__(WORKER, args, env)
