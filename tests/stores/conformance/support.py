"""Driving ``lease_worker.py`` processes from the tests."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from fixtures.services import spawn, stop_process

WORKER = Path(__file__).with_name("lease_worker.py")


class Worker:
    """One ``lease_worker.py`` OS process; JSON lines out, plain lines in."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.proc = spawn(
            [sys.executable, str(WORKER), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        self._lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._stderr: list[bytes] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(json.loads(line))
        self._lines.put(None)

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._stderr.append(line)

    def stderr(self) -> str:
        return b"".join(self._stderr[-40:]).decode(errors="replace")

    def next(self, timeout: float = 60.0) -> dict[str, Any]:
        """The next JSON line; fails the test with the worker's stderr if none comes."""
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"worker sent nothing in {timeout}s:\n{self.stderr()}") from None
        if line is None:
            self.proc.wait(10)
            raise AssertionError(f"worker exited ({self.proc.returncode}) early:\n{self.stderr()}")
        return line

    def send(self, text: str = "go") -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode() + b"\n")
        self.proc.stdin.flush()

    def pause(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def finish(self, timeout: float = 60.0) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        stop_process(self.proc, grace=5)
