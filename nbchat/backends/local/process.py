"""The kernel's handle on one model process: starting it, and the pipe protocol spoken with it.

JSON arrays, one per line. To the process (its stdin): for a hub id first ``["fetch", repo_id,
allow_download]``, answered by ``["download", done_bytes, total_bytes, bytes_per_s]`` lines while
files come from the hub, then ``["fetched", folder]`` or ``["fetch_error", kind, detail]``; then
``["load", source, dtype, local_only]``, ``["generate", request_id, prompt_ids, generate_kwargs,
seed]``, ``["cancel", request_id]``, ``["shutdown"]``. From it (its stdout): ``["ready", info]`` or
``["load_error", kind, detail]``, then per request ``["tokens", request_id, [ids]]`` and an
end marker, ``["done", request_id, report]`` or ``["error", request_id, kind, detail]``.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nbchat.errors import GenerationFailed

CHILD_MODULE = "nbchat.backends.local.child"
POLL_S = 0.05  # how often a waiting reply looks at its cancel flag
SHUTDOWN_S = 10.0  # grace period for a model process to stop or exit before it is killed
FROZEN_AFTER_S = 2.0  # a process with a request to finish that uses no CPU for this long is frozen


def spawn() -> subprocess.Popen[bytes]:
    """Start a model process: a fresh interpreter (never a fork of a kernel that has torch threads).

    ``python -m`` rather than ``multiprocessing``'s spawn, which would re-run the
    caller's ``__main__`` script in the child. It starts in the directory this
    kernel imported nbchat from, which ``-m`` puts first on the child's
    ``sys.path``: the child runs the kernel's own nbchat (an editable install,
    a checkout on ``sys.path``) with nothing added to ``PYTHONPATH``, and a
    notebook directory's ``torch.py`` cannot shadow anything. The child then
    changes to the kernel's working directory.
    """
    import nbchat

    package_root = Path(nbchat.__file__).resolve().parent.parent
    try:
        kernel_cwd = os.getcwd()
    except OSError:  # the kernel's directory was deleted: stay where nbchat is
        kernel_cwd = ""
    env = dict(os.environ)
    env.pop("PYTHONSAFEPATH", None)  # it would keep the starting directory off the child's sys.path
    return subprocess.Popen(
        [sys.executable, "-m", CHILD_MODULE, str(os.getpid()), kernel_cwd],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=package_root,
        env=env,
    )


@dataclass(eq=False)
class LocalModel:
    """A loaded model: its process, the kernel's copy of the tokenizer, what the process reported.

    A reader thread turns the process's stdout lines into ``inbox`` entries
    (``None`` marks the end of its output: it exited); a writer thread feeds
    ``outbox`` to its stdin, so sending never blocks, even when the process is
    frozen and its pipe full. ``turn`` lets one reply generate at a time;
    ``current`` is that reply.
    """

    model_id: str
    tokenizer: Any
    process: subprocess.Popen[bytes]
    info: dict[str, Any] = field(default_factory=dict)
    inbox: queue.Queue[list[Any] | None] = field(default_factory=queue.Queue)
    outbox: queue.Queue[bytes | None] = field(default_factory=queue.Queue)
    turn: threading.Lock = field(default_factory=threading.Lock)  # one generation at a time
    current: Any = None  # the reply generating now
    dead: str | None = None  # why the process is gone, once it is

    def __post_init__(self) -> None:
        threading.Thread(target=self._read, name="nbchat-model-reader", daemon=True).start()
        threading.Thread(target=self._write, name="nbchat-model-writer", daemon=True).start()

    @property
    def alive(self) -> bool:
        return self.dead is None and self.process.poll() is None

    def _read(self) -> None:
        assert self.process.stdout is not None
        with contextlib.suppress(OSError, ValueError):  # ValueError: the pipe was closed under us
            for line in self.process.stdout:
                try:
                    self.inbox.put(json.loads(line))
                except ValueError:
                    continue  # not one of ours; the model process sends everything else to stderr
        self.inbox.put(None)

    def _write(self) -> None:
        stdin = self.process.stdin
        assert stdin is not None
        while (data := self.outbox.get()) is not None:
            try:
                stdin.write(data)
                stdin.flush()
            except (OSError, ValueError):  # a closed pipe: the process is gone, and receive says so
                break
        with contextlib.suppress(OSError, ValueError):
            stdin.close()  # EOF: the process exits at once

    def send(self, *message: Any) -> None:
        """Queue a message for the process; never blocks (a dead process shows in ``receive``)."""
        self.outbox.put((json.dumps(message) + "\n").encode())

    def receive(self, timeout: float) -> list[Any] | None:
        """The process's next message, or None after ``timeout``; its death raises ``GenerationFailed``."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                message = self.inbox.get(timeout=max(0.0, min(POLL_S, deadline - time.monotonic())))
            except queue.Empty:
                if time.monotonic() >= deadline:
                    return None
                continue
            if message is None:
                self.inbox.put(None)  # every later reader must see the end too
                raise GenerationFailed(self.death_message())
            return message

    def death_message(self) -> str:
        try:
            code = self.process.wait(SHUTDOWN_S)
        except subprocess.TimeoutExpired:
            code = None
        self.dead = self.dead or (f"exit code {code}" if code is not None else "its output closed")
        hint = " (killed: the system may have run out of memory)" if code in (-9, 137) else ""
        return (
            f"The model process for {self.model_id!r} stopped unexpectedly ({self.dead}{hint}). "
            "It will be reloaded on the next message; try a smaller model or fewer new tokens if it repeats."
        )

    def shutdown(self) -> None:
        """Ask the process to exit and make sure it does (it is killed after a grace period)."""
        self.dead = self.dead or "unloaded"
        self.outbox.put(b'["shutdown"]\n')
        self.outbox.put(None)
        if _stopped(self.process.pid):  # frozen by a signal: it would never read the request
            self.process.kill()
        try:
            self.process.wait(SHUTDOWN_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(SHUTDOWN_S)
        if self.process.stdout is not None:
            self.process.stdout.close()

    def kill(self, why: str) -> None:
        """End the process now, without asking (it froze, or its half-done load is unwanted)."""
        self.dead = self.dead or why
        with contextlib.suppress(OSError):
            self.process.kill()  # SIGKILL ends a stopped (SIGSTOP) process too
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(SHUTDOWN_S)
        self.outbox.put(None)  # the writer's last write fails at once now; it closes stdin and ends

    def close_at_exit(self) -> None:
        """The interpreter is exiting: EOF on its stdin makes the process exit at once.

        The writer thread closes stdin, so this never blocks on a write stuck in the pipe of a
        frozen process (the caller kills what has not exited after a moment).
        """
        self.outbox.put(None)


def rss_bytes(pid: int) -> int | None:
    """Resident memory of ``pid`` (Linux ``/proc``), None where unknown."""
    try:
        pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")


class FreezeWatch:
    """Tells a frozen model process from a busy one, while it owes the kernel an end marker.

    Frozen: stopped by a signal (``SIGSTOP``, a debugger), or no CPU time used
    for ``FROZEN_AFTER_S`` (deadlocked). A process still computing (a long
    prompt, a slow token) is busy. Where ``/proc`` is missing it never says
    frozen, and the caller's deadline decides.
    """

    def __init__(self, pid: int, still_s: float = FROZEN_AFTER_S) -> None:
        self._pid = pid
        self._still_s = still_s
        self._ticks: int | None = None
        self._since = time.monotonic()

    def frozen(self) -> bool:
        state = _cpu_state(self._pid)
        if state is None:
            return False
        letter, ticks = state
        if letter in "Tt":
            return True
        now = time.monotonic()
        if ticks != self._ticks:
            self._ticks, self._since = ticks, now
            return False
        return now - self._since >= self._still_s


def _cpu_state(pid: int) -> tuple[str, int] | None:
    """The state letter of ``pid`` and the CPU ticks it has used (Linux ``/proc``), None where unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[0], int(fields[11]) + int(fields[12])  # state, utime + stime
    except (OSError, ValueError, IndexError):
        return None


def _stopped(pid: int) -> bool:
    state = _cpu_state(pid)
    return state is not None and state[0] in "Tt"
