"""The kernel's loaded local models: each loaded once, shared by every reply, given back on unload.

A model id maps to one ``LocalModel`` (its process). Loading runs in a thread
of its own, one per model id however many callers ask at once; callers wait
for it and may stop waiting (Stop) at any moment. A load nobody waits for any
more is ended, so the registry only ever holds fully loaded models. A reply
that ends before its process finished generating (Stop, a failure) hands the
process's turn to ``settle``, which gives it back once the process is done,
or retires a process that froze: killed and forgotten, so the next use
starts a fresh one.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import subprocess
import threading
import time
from dataclasses import dataclass, field

from nbchat.backends.base import LoadProgress, ProgressCallback
from nbchat.backends.local import PREFIX
from nbchat.backends.local.devices import empty_device_caches
from nbchat.backends.local.loader import LoadCancelled, resolve, start
from nbchat.backends.local.process import POLL_S, SHUTDOWN_S, FreezeWatch, LocalModel
from nbchat.errors import BackendError, ModelNotDownloaded

_REGISTRY: dict[str, LocalModel] = {}
_LOADING: dict[str, _Load] = {}
_LOCK = threading.Lock()


@dataclass(eq=False)
class _Load:
    """One model being loaded, and how many callers still wait for it."""

    key: str
    download: bool  # whether it may fetch a hub model's files (a warm start's may not)
    done: threading.Event = field(default_factory=threading.Event)
    abort: threading.Event = field(default_factory=threading.Event)
    waiters: int = 0
    handle: LocalModel | None = None
    error: BaseException | None = None
    listeners: list[ProgressCallback] = field(default_factory=list)  # every waiter's, not only the first's
    last: LoadProgress | None = None  # the latest phase, told to a waiter who joins late
    telling: threading.RLock = field(default_factory=threading.RLock)  # one step told at a time, in order

    def tell(self, step: LoadProgress) -> None:
        with self.telling:
            with _LOCK:
                self.last = step
                listeners = list(self.listeners)
            for listener in _distinct(listeners):
                _call(listener, step)

    def catch_up(self, on_progress: ProgressCallback, now: LoadProgress | None) -> None:
        """Tell a waiter who joined at step ``now`` that step, unless a later one reached it already."""
        with self.telling:
            if now is not None and self.last is now:
                _call(on_progress, now)


def _call(listener: ProgressCallback, step: LoadProgress) -> None:
    with contextlib.suppress(Exception):  # one view's failure must not end the load
        listener(step)


def _distinct(listeners: list[ProgressCallback]) -> list[ProgressCallback]:
    """Each callback once, however many waiters passed it (``events.append`` twice: equal, not hashable)."""
    distinct: list[ProgressCallback] = []
    for listener in listeners:
        if listener not in distinct:
            distinct.append(listener)
    return distinct


def load(
    model: str,
    on_progress: ProgressCallback | None = None,
    dtype: str | None = None,
    cancel: threading.Event | None = None,
    *,
    download: bool = True,
) -> LocalModel:
    """The loaded model for ``model``, loading it (once, whoever asks at the same time) if needed.

    ``on_progress`` hears the phases of the load while this call waits for it,
    also when it joins a load someone else started (a warm start): first the
    phase it is in, then each later one. When ``cancel`` is set, this caller
    stops waiting within ``POLL_S`` (``LoadCancelled``); the load goes on only
    if someone else still waits for it. With ``download`` False a hub model not
    on this machine raises ``ModelNotDownloaded``; a caller who joined such a
    load and may download starts a load that does.
    """
    while True:
        try:
            return _load(model, on_progress, dtype, cancel, download)
        except ModelNotDownloaded:
            if not download:
                raise


def _load(
    model: str,
    on_progress: ProgressCallback | None,
    dtype: str | None,
    cancel: threading.Event | None,
    download: bool,
) -> LocalModel:
    key = resolve(model)
    with _LOCK:
        handle = _REGISTRY.get(key)
        if handle is not None and handle.alive:
            return handle
        job = _LOADING.get(key)
        starting = job is None or job.abort.is_set()  # (an abandoned load is ending: start afresh)
        if job is None or starting:
            job = _LOADING[key] = _Load(key, download)
        job.waiters += 1
        joined_at = job.last if on_progress is not None and on_progress not in job.listeners else None
        if on_progress is not None:
            job.listeners.append(on_progress)  # before the load starts: its starter hears every step
        if starting:
            threading.Thread(target=_run, args=(job, dtype), name="nbchat-model-load", daemon=True).start()
    try:
        if on_progress is not None:
            job.catch_up(on_progress, joined_at)
        while not job.done.wait(POLL_S):
            if cancel is not None and cancel.is_set():
                raise LoadCancelled(key)
    finally:
        with _LOCK:
            job.waiters -= 1
            if on_progress is not None and on_progress in job.listeners:
                job.listeners.remove(on_progress)
            if job.waiters == 0 and not job.done.is_set():
                job.abort.set()  # nobody wants it any more
    if job.error is not None:
        raise job.error
    assert job.handle is not None
    return job.handle


def _run(job: _Load, dtype: str | None) -> None:
    try:
        handle = start(job.key, job.tell, dtype, job.abort, allow_download=job.download)
        with _LOCK:
            if not job.abort.is_set():
                _REGISTRY[job.key] = job.handle = handle
        if job.handle is None:  # everyone stopped waiting just as it got ready
            handle.shutdown()
            raise LoadCancelled(job.key)
    except BaseException as exc:  # handed to every waiter
        job.error = exc
    finally:
        with _LOCK:
            if _LOADING.get(job.key) is job:
                del _LOADING[job.key]
            job.done.set()


def get(model: str) -> LocalModel | None:
    """The model if it is loaded now; never loads it."""
    with _LOCK:
        handle = _REGISTRY.get(resolve(model))
    return handle if handle is not None and handle.alive else None


def handles() -> list[LocalModel]:
    """Every loaded model whose process is alive."""
    with _LOCK:
        return [h for h in _REGISTRY.values() if h.alive]


def loaded() -> list[str]:
    """Model ids (``transformers:<name>``) loaded in this kernel now."""
    return [f"{PREFIX}:{h.model_id}" for h in handles()]


def forget(handle: LocalModel) -> None:
    """Drop ``handle`` from the registry (its process is gone or untrusted): the next use reloads."""
    with _LOCK:
        if _REGISTRY.get(handle.model_id) is handle:
            del _REGISTRY[handle.model_id]


def retire(handle: LocalModel, why: str) -> None:
    """End a process that can no longer be trusted (it froze): killed now, the next use reloads."""
    forget(handle)
    handle.kill(why)


def settle(handle: LocalModel, request_id: int) -> None:
    """Take ``handle``'s turn over from a reply that ended before its process finished ``request_id``.

    In the background, the process is asked to stop that request and its
    output read up to the end marker; then the turn is free for the next
    reply. A process that does not get there — frozen (``FreezeWatch``), or
    still busy after ``SHUTDOWN_S`` — is retired instead of letting the next
    reply queue behind a generate that never ends.
    """
    if handle.dead is not None:
        handle.turn.release()
        return
    handle.send("cancel", request_id)
    settling = threading.Thread(target=_settle, args=(handle, request_id), name="nbchat-model-settle")
    settling.daemon = True
    settling.start()


def _settle(handle: LocalModel, request_id: int) -> None:
    try:
        watch = FreezeWatch(handle.process.pid)
        deadline = time.monotonic() + SHUTDOWN_S
        while time.monotonic() < deadline and not watch.frozen():
            message = handle.receive(timeout=POLL_S)
            if message is not None and message[0] in ("done", "error") and message[1] == request_id:
                return
        retire(handle, "it stopped responding and was ended")
    except BackendError:  # it died meanwhile: the next use reloads it
        return
    finally:
        handle.turn.release()


def unload(model: str | None = None) -> list[str]:
    """Unload ``model`` (default: every local model) and give its memory back; returns the ids unloaded.

    A reply in flight on that model is cancelled first (its partial text is
    kept). The model process exits, so every byte of weights, caches and
    device memory it held is returned to the system; the kernel drops its
    tokenizer, runs ``gc.collect()`` and empties the cuda/mps cache if torch
    is in use here.
    """
    with _LOCK:
        keys = [key for key in (list(_REGISTRY) if model is None else [resolve(model)]) if key in _REGISTRY]
        unloading = [_REGISTRY.pop(key) for key in keys]
    for handle in unloading:
        reply = handle.current
        if reply is not None:
            reply.cancel()
        got_turn = handle.turn.acquire(timeout=SHUTDOWN_S)
        try:
            handle.shutdown()
        finally:
            if got_turn:
                handle.turn.release()
        handle.tokenizer = None
        handle.current = None
    del unloading
    gc.collect()
    empty_device_caches()
    return [f"{PREFIX}:{key}" for key in keys]


@atexit.register
def _close_all() -> None:
    """At interpreter exit, end every model process without waiting on replies in flight."""
    with _LOCK:
        closing = list(_REGISTRY.values())
        _REGISTRY.clear()
    for handle in closing:
        handle.close_at_exit()
    for handle in closing:
        try:
            handle.process.wait(2.0)
        except subprocess.TimeoutExpired:
            handle.process.kill()
