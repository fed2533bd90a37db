"""A ``tests/workers.py`` process as the process tests drive it: started, read line by line, killed.

The ``spawn`` fixture (in conftest.py) starts them and kills any still running at the end.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

WORKERS_PY = Path(__file__).with_name("workers.py")
REPO_ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 30.0  # generous: a 2-core machine starting a dozen interpreters at once
FINISH_TIMEOUT_S = 45.0


class Worker:
    """One ``tests/workers.py`` process; a thread collects its complete stdout lines as they come."""

    def __init__(self, args: tuple[object, ...], stderr_path: Path) -> None:
        self.stderr_path = stderr_path
        with stderr_path.open("wb") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, str(WORKERS_PY), *map(str, args)],
                stdout=subprocess.PIPE,
                stderr=stderr,
                stdin=subprocess.DEVNULL,
                cwd=REPO_ROOT,
            )
        self._lines: list[str] = []
        self._eof = False
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            if raw.endswith(b"\n"):  # a line cut short by a kill was never fully printed
                with self._changed:
                    self._lines.append(raw.decode("utf-8").rstrip("\n"))
                    self._changed.notify_all()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    @property
    def lines(self) -> list[str]:
        with self._changed:
            return list(self._lines)

    @property
    def acks(self) -> list[str]:
        """Every line after ``ready``: the operations the worker reported as done."""
        return [line for line in self.lines if line != "ready"]

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait_for_line(self, expected: str, timeout: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while expected not in self._lines:
                left = deadline - time.monotonic()
                if self._eof or left <= 0:
                    break
                self._changed.wait(left)
            else:
                return
        self.stop()
        pytest.fail(f"worker never printed {expected!r}; stdout {self.lines!r}; stderr:\n{self.stderr}")

    def kill(self) -> None:
        """SIGKILL: no cleanup, no flushing, no atexit; then collect what it had printed."""
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=FINISH_TIMEOUT_S)
        self._reader.join(timeout=FINISH_TIMEOUT_S)
        assert self.proc.returncode == -signal.SIGKILL, self.stderr

    def finish(self) -> Worker:
        """Wait for a normal exit (killing it on a timeout) and insist that it succeeded."""
        try:
            self.proc.wait(timeout=FINISH_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.stop()
            pytest.fail(f"worker still running after {FINISH_TIMEOUT_S} s; stderr:\n{self.stderr}")
        self._reader.join(timeout=FINISH_TIMEOUT_S)
        assert self.proc.returncode == 0, f"worker failed ({self.proc.returncode}):\n{self.stderr}"
        return self

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(timeout=5)
