"""Run code of the user's objects (``__repr__``, properties, ``len``) under a time cap.

A summary calls code nbchat does not control: a ``__repr__`` can raise, sleep or build 50 MB.
Python cannot interrupt a thread, and a signal alarm only works on the main thread (a panel's
callback or a worker may be the caller), so the risky part runs in a daemon worker thread and
the caller waits at most the cap. A worker that overruns is left behind, still running; it
cannot keep the kernel from exiting (daemon), and what it produced before the cap is kept
(``Lines``). At most ``MAX_STUCK_WORKERS`` such workers are tolerated at once: after that,
summaries stop calling user code at all until they finish. The limit of this design: code that
holds the GIL without ever releasing it (one enormous C call) delays the caller too.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")

#: Timed-out workers that may still be running before user code is no longer called at all.
MAX_STUCK_WORKERS = 4

_stuck: list[threading.Thread] = []
_stuck_lock = threading.Lock()


@dataclass
class Outcome(Generic[T]):
    """What a capped call gave: its value, the exception it raised, or that it timed out."""

    value: T | None = None
    error: BaseException | None = None
    timed_out: bool = False


def stuck_workers() -> int:
    """How many timed-out workers are still running."""
    with _stuck_lock:
        _stuck[:] = [t for t in _stuck if t.is_alive()]
        return len(_stuck)


def too_many_stuck() -> bool:
    return stuck_workers() >= MAX_STUCK_WORKERS


def call_capped(function: Callable[[], T], timeout: float) -> Outcome[T]:
    """``function()`` in a daemon thread, waited for at most ``timeout`` seconds; never raises."""
    outcome: Outcome[T] = Outcome()

    def work() -> None:
        try:
            outcome.value = function()
        except BaseException as exc:  # a user's repr may raise anything, even SystemExit
            outcome.error = exc

    worker = threading.Thread(target=work, name="nbchat-context-summary", daemon=True)
    worker.start()
    worker.join(max(0.0, timeout))
    if worker.is_alive():
        with _stuck_lock:
            _stuck.append(worker)
        return Outcome(timed_out=True)
    return outcome
