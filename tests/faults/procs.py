"""Child processes for the fault suite: a JSON-lines holder we can pause, resume and drive."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from fixtures.services import stop_process

HOLDER = Path(__file__).with_name("holder.py")


class HolderProcess:
    """``holder.py`` in its own OS process, talking JSON lines over its stdin/stdout."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        src = str(Path(__file__).resolve().parents[2] / "src")
        env = {**env, "PYTHONPATH": os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))}
        self.proc = subprocess.Popen(
            [sys.executable, str(HOLDER), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._stderr: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._stderr.append(line)

    @property
    def stderr(self) -> str:
        return "".join(self._stderr[-40:])

    def expect(self, event: str, timeout: float = 30) -> dict[str, Any]:
        """The next message, which must be ``event`` ("starting" notes are skipped
        unless asked for)."""
        while True:
            message = self._next(timeout)
            if message.get("event") == "starting" and event != "starting":
                continue
            assert message.get("event") == event, (message, self.stderr)
            return message

    def _next(self, timeout: float) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(
                f"holder sent nothing for {timeout}s; stderr:\n{self.stderr}"
            ) from None
        if line is None:
            self.proc.wait(5)
            raise AssertionError(f"holder exited ({self.proc.returncode}); stderr:\n{self.stderr}")
        message: dict[str, Any] = json.loads(line)
        return message

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def pause(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def finish(self, timeout: float = 30) -> int:
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            return self.proc.wait(timeout)
        finally:
            self.stop()

    def stop(self) -> None:
        stop_process(self.proc)  # type: ignore[arg-type]
