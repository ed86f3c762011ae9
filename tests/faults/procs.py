"""Child processes for the fault suite: a JSON-lines holder we can pause, resume and drive."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fixtures.procs import JsonLinesProcess

HOLDER = Path(__file__).with_name("holder.py")


class HolderProcess(JsonLinesProcess):
    """``holder.py`` in its own OS process, talking JSON lines over its stdin/stdout."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        super().__init__(HOLDER, args, env)

    def expect(self, event: str, timeout: float = 30) -> dict[str, Any]:
        """The next message, which must be ``event`` ("starting" notes are skipped
        unless asked for)."""
        while True:
            message = self.next(timeout)
            if message.get("event") == "starting" and event != "starting":
                continue
            assert message.get("event") == event, (message, self.stderr)
            return message

    def finish(self, timeout: float = 30, *, close_stdin: bool = True) -> int:
        try:
            return super().finish(timeout, close_stdin=close_stdin)
        finally:
            self.stop()
