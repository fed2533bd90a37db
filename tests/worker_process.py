"""A ``tests/workers.py`` process as the process tests drive it: started, read line by line, killed.

The ``spawn`` fixture (in conftest.py) starts them and kills any still running at the end.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from nbchat import ConversationStore
from nbchat.crypto import LineCipher, new_data_key

WORKERS_PY = Path(__file__).with_name("workers.py")
REPO_ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 30.0  # generous: a 2-core machine starting a dozen interpreters at once
FINISH_TIMEOUT_S = 45.0
STORE_KEY_VARIABLE = "NBCHAT_TEST_STORE_KEY"  # workers.py reads it in open_store()
STORE_KINDS = ["clear", "encrypted"]


def worker_env(key: bytes | None) -> dict[str, str] | None:
    """The environment of a worker that opens its stores with ``key`` (None: inherit, clear stores)."""
    if key is None:
        return None
    return {**os.environ, STORE_KEY_VARIABLE: key.hex()}


class StoreKind:
    """Clear or encrypted stores, the same for the test and its workers: ``open`` gives the test's
    store, ``key`` goes to ``spawn(..., key=...)``, ``clear_lines`` turns a file's lines into what a
    clear file would hold, so the same checks run on both."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.key = new_data_key() if name == "encrypted" else None
        self.cipher = LineCipher(self.key) if self.key is not None else None

    @property
    def encrypted(self) -> bool:
        return self.cipher is not None

    def open(self, data_dir: Path, user: str) -> ConversationStore:
        return ConversationStore(data_dir, user, cipher=self.cipher)

    def clear_lines(self, records: list[dict[str, object]], conversation_id: str) -> list[dict[str, object]]:
        """Each line of a file (the header first) as a clear record: sealed lines opened at their position."""
        if self.cipher is None:
            return records
        opened = []
        for position, record in enumerate(records):
            token = record["sealed"]
            assert isinstance(token, str), f"line {position + 1} is not sealed: {record!r}"
            clear = self.cipher.open(token, conversation_id=conversation_id, position=position)
            opened.append(json.loads(clear))
        return opened


def leaked_texts(root: Path, texts: list[str]) -> list[tuple[str, str]]:
    """``(file, text)`` for each of ``texts`` found (ignoring case) in any byte of any file under
    ``root``, hidden, temporary and moved-aside files included."""
    found = []
    for path in sorted(root.rglob("*")):
        try:
            if not path.is_file():
                continue
            data = path.read_bytes().lower()
        except FileNotFoundError:  # a temp file gone meanwhile
            continue
        found += [(str(path), text) for text in texts if text.lower().encode() in data]
    return found


class Worker:
    """One ``tests/workers.py`` process; a thread collects its complete stdout lines as they come."""

    def __init__(
        self, args: tuple[object, ...], stderr_path: Path, env: dict[str, str] | None = None
    ) -> None:
        self.stderr_path = stderr_path
        with stderr_path.open("wb") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, str(WORKERS_PY), *map(str, args)],
                env=env,
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
