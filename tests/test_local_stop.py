"""Stop ends a local-model reply within about a second in every state it can be in.

Waiting for its turn behind another reply, generating, stuck behind a model
process that froze (a real ``SIGSTOP``), or still loading the model: each is
reached for real with the tiny Qwen3 through the production load path, and
each test measures how long the reply took to end after ``cancel()``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from consumer import Consumer
from polling import wait_until

from nbchat.backends.base import LoadProgress
from nbchat.backends.transformers import TransformersBackend, loaded, unload
from nbchat.testing.tiny_qwen3 import tiny_qwen3
from nbchat.types import GenerationParams, Message

pytestmark = pytest.mark.slow

HELLO = [Message("system", "Be brief."), Message("user", "Hello there! How are you?")]
LONG = GenerationParams(temperature=1.0, max_new_tokens=1900, seed=1)
GREEDY = GenerationParams(temperature=0.0, max_new_tokens=8)
STOP_WITHIN_S = 1.5  # "about a second", with room for a loaded 2-core machine


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_qwen3(tmp_path_factory.mktemp("qwen3") / "tiny", seed=0)


@pytest.fixture
def own(checkpoint: Path, tmp_path: Path) -> Iterator[str]:
    """A model of this test's own (a copy under another path), unloaded afterwards."""
    path = str(shutil.copytree(checkpoint, tmp_path / "own"))
    yield path
    unload(path)


@pytest.fixture
def freezer() -> Iterator[list[int]]:
    """Pids the test froze with SIGSTOP: thawed and killed at teardown, whatever happened."""
    frozen: list[int] = []
    yield frozen
    for pid in frozen:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
            os.kill(pid, signal.SIGKILL)


def running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie has already given its memory back)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def child_pids() -> set[int]:
    """This process's children now (any thread's)."""
    pids: set[int] = set()
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(OSError):
            pids.update(int(p) for p in (task / "children").read_text().split())
    return {pid for pid in pids if running(pid)}


def test_stop_while_waiting_for_the_turn_ends_that_reply_and_leaves_the_other_generating(
    own: str,
) -> None:
    backend = TransformersBackend()
    first = Consumer(backend.stream(own, HELLO, LONG))
    wait_until(lambda: len(first.chunks) >= 3, 60)
    queued = Consumer(backend.stream(own, HELLO, GREEDY))
    wait_until(lambda: queued.reply._handle is not None, 10)  # it holds the model, waiting for its turn

    assert queued.stop() < STOP_WITHIN_S
    assert queued.reply.stats is not None and queued.reply.stats.finish_reason == "cancelled"
    assert queued.reply.token_ids == [] and queued.reply.text == ""
    seen = len(first.chunks)
    wait_until(lambda: len(first.chunks) > seen, 10)  # the other reply is still generating
    assert first.stop() < STOP_WITHIN_S
    assert first.reply.stats is not None and first.reply.stats.finish_reason == "cancelled"


def test_stop_ends_a_reply_at_once_when_the_model_process_froze_and_the_next_reply_gets_a_fresh_one(
    own: str, freezer: list[int]
) -> None:
    backend = TransformersBackend()
    pid = int(backend.load(own)["pid"])
    frozen = Consumer(backend.stream(own, HELLO, LONG))
    wait_until(lambda: len(frozen.chunks) >= 3, 60)
    os.kill(pid, signal.SIGSTOP)
    freezer.append(pid)

    took = frozen.stop()
    assert took < STOP_WITHIN_S, f"the reply ended {took:.1f} s after Stop"
    reply = frozen.reply
    assert reply.stats is not None and reply.stats.finish_reason == "cancelled" and reply.error is None
    assert reply.text == "".join(c.text for c in frozen.chunks if c.kind == "text")
    assert reply.text + reply.thinking and reply.stats.completion_tokens == len(reply.token_ids) > 0
    # The frozen process is never used again: it is killed and forgotten, and the next reply
    # starts a fresh one instead of queueing behind a generate that never ends.
    wait_until(lambda: not running(pid), 10)
    assert f"transformers:{own}" not in loaded()
    again = backend.stream(own, HELLO, GREEDY).wait()
    assert again.stats is not None and again.stats.finish_reason == "length"
    assert int(backend.load(own)["pid"]) != pid


def test_a_reply_queued_behind_a_frozen_process_runs_on_a_fresh_one_once_the_frozen_reply_is_stopped(
    own: str, freezer: list[int]
) -> None:
    backend = TransformersBackend()
    pid = int(backend.load(own)["pid"])
    frozen = Consumer(backend.stream(own, HELLO, LONG))
    wait_until(lambda: len(frozen.chunks) >= 3, 60)
    os.kill(pid, signal.SIGSTOP)
    freezer.append(pid)
    queued = backend.stream(own, HELLO, GREEDY)
    waiting = Consumer(queued)
    wait_until(lambda: queued._handle is not None, 10)

    assert frozen.stop() < STOP_WITHIN_S
    waiting.thread.join(60)
    assert not waiting.thread.is_alive()
    assert queued.error is None, queued.error
    assert queued.stats is not None and queued.stats.finish_reason == "length"
    assert int(backend.load(own)["pid"]) != pid


def test_stop_while_the_model_is_loading_ends_the_reply_and_leaves_nothing_loaded(own: str) -> None:
    phases: list[str] = []
    backend = TransformersBackend(on_progress=lambda p: phases.append(p.phase))
    before = child_pids()
    loading = Consumer(backend.stream(own, HELLO, GREEDY))
    wait_until(lambda: "weights" in phases, 60)  # the model process is reading the weights

    assert loading.stop() < STOP_WITHIN_S
    assert loading.reply.stats is not None and loading.reply.stats.finish_reason == "cancelled"
    assert "ready" not in phases and f"transformers:{own}" not in loaded()
    wait_until(lambda: child_pids() <= before, 10)  # the half-loaded process is gone too
    # Nothing half-loaded is left behind: the next use loads the model afresh, and it works.
    assert backend.stream(own, HELLO, GREEDY).wait().stats.finish_reason == "length"  # type: ignore[union-attr]


def test_prepare_stops_waiting_when_cancelled_and_leaves_nothing_loaded(own: str) -> None:
    events: list[LoadProgress] = []
    cancel = threading.Event()
    backend = TransformersBackend()
    before = child_pids()
    outcome: list[float] = []

    def prepare() -> None:
        backend.prepare(own, on_progress=events.append, cancel=cancel)
        outcome.append(time.monotonic())

    preparing = threading.Thread(target=prepare, daemon=True)
    preparing.start()
    wait_until(lambda: any(e.phase == "weights" for e in events), 60)
    asked = time.monotonic()
    cancel.set()
    preparing.join(30)
    assert outcome and outcome[0] - asked < STOP_WITHIN_S
    assert [e.phase for e in events] == ["tokenizer", "weights"]
    assert f"transformers:{own}" not in loaded()
    wait_until(lambda: child_pids() <= before, 10)


def test_unloading_a_frozen_model_process_ends_it_at_once(own: str, freezer: list[int]) -> None:
    backend = TransformersBackend()
    pid = int(backend.load(own)["pid"])
    os.kill(pid, signal.SIGSTOP)
    freezer.append(pid)
    asked = time.monotonic()
    assert unload(own) == [f"transformers:{own}"]
    assert time.monotonic() - asked < STOP_WITHIN_S  # no grace period for a process that cannot hear
    assert not running(pid)


def test_unloading_during_a_reply_on_a_frozen_process_ends_both_at_once(own: str, freezer: list[int]) -> None:
    backend = TransformersBackend()
    pid = int(backend.load(own)["pid"])
    frozen = Consumer(backend.stream(own, HELLO, LONG))
    wait_until(lambda: len(frozen.chunks) >= 3, 60)
    os.kill(pid, signal.SIGSTOP)
    freezer.append(pid)
    asked = time.monotonic()
    unload(own)
    assert time.monotonic() - asked < 2 * STOP_WITHIN_S
    frozen.thread.join(5)
    assert frozen.reply.stats is not None and frozen.reply.stats.finish_reason == "cancelled"
    assert not running(pid) and f"transformers:{own}" not in loaded()
