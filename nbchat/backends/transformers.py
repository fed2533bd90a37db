"""Local models (Qwen3) with Hugging Face transformers, generating in a model process the kernel owns.

Where generation runs, and why
------------------------------
On CPU, decoding speed depends on *which thread* calls ``model.generate``.
torch's CPU wheels use GNU OpenMP (their bundled libgomp): every thread that
runs torch ops gets its own team of OpenMP worker threads, and as soon as a
process holds more OpenMP threads than cores, libgomp throttles its
spin-waiting (``gomp_throttled_spin_count_var``: about 100 spins instead of
300,000) so workers sleep and are woken by futex between the hundreds of
parallel regions of every token. A kernel's main thread gets its team the
first time a user's cell runs torch; from then on, generation in *any other*
thread — the textbook ``Thread(target=model.generate)`` with a
``TextIteratorStreamer``, or a long-lived worker thread that owns the model —
pays that wake-up cost on every op. ``OMP_WAIT_POLICY``/``GOMP_SPINCOUNT``
cannot fix it (they do not raise the throttled count, and are read only when
torch is first imported, which a library imported into a running kernel does
not control); one OpenMP thread avoids the teams but gives up a core for the
prompt.

``bench/qwen_threads.py`` measures the alternatives side by side (2-core AMD
EPYC VM without AVX-512, torch 2.13.0 CPU, fresh processes, medians over 5
rounds of per-round ratios; "+work": the process's main thread runs torch
work of its own before each reply, as a notebook user does). Generation of
64 greedy tokens by a random 164M-parameter Qwen3 (float32), ratio to
``model.generate`` in the main thread of a fresh process::

    raw (main thread)        11.5 tok/s  1.00x    worker thread            1.04x
    raw, second process                  1.08x    worker thread +work      1.12x
    thread per reply                     1.02x    ... OMP_WAIT_POLICY      1.15x
    thread per reply +work               1.04x    ... 1 OpenMP thread      1.22x
    model process (chosen)               1.05x
    model process +work                  1.09x

Decoding this model here is bound by memory bandwidth (about 11 tok/s), and
the bandwidth drifts with the neighbours' load: the second ``raw`` process
alone strays by 8%, and three runs of the bench put the variants anywhere
from 0.87x to 1.22x. At this size the OpenMP cost (tens of microseconds per
parallel region, about a hundred regions per token) hides in that noise; the
0.63x once seen for threads on this kind of machine did not reproduce for
whole generations. The bench's second section measures the effect itself,
undiluted: a small cache-resident matmul ([8x256] @ [256x512], microseconds
per op)::

    main thread                                 48.6 us  1.00x
    other thread, main never ran torch          42.6 us  1.00x
    other thread after main ran torch           69.3 us  0.62x   (0.53-0.65x over 5 runs)
    ... with OMP_WAIT_POLICY=PASSIVE            76.5 us  0.57x
    ... with GOMP_SPINCOUNT=1e7                 71.4 us  0.57x
    ... with torch.set_num_threads(1)           50.5 us  0.84x
    child process of a parent that ran torch    45.2 us  0.88x   (0.84-1.06x over 4 runs: noise)

So the model lives in a **dedicated model process**: the one design immune to
the effect by construction, whatever the kernel does with torch, and as fast
as the main thread in every measurement. It has other merits: the kernel's
GIL stays free for widgets while tokens are produced, seeding a reply never
touches the user's torch RNG, and unloading returns every byte.

The model process is a fresh interpreter (``python -c``; never a fork of a
kernel that has torch threads, nor ``multiprocessing``'s spawn, which would
re-run the caller's ``__main__`` script) whose main thread loads the model
and runs every ``generate``. The kernel keeps only the tokenizer (chat
template, token counting, incremental decoding): prompt ids go to the
process and generated ids come back one by one as JSON lines over its
stdin/stdout, and a ``TextIteratorStreamer`` here turns them into text at
word boundaries. From the caller's side nothing changes:

- a model is loaded once per kernel and shared (a registry keyed by model id,
  a lock per id so concurrent first uses load once); loading reports
  ``tokenizer``/``weights``/``ready`` progress and records ``load_seconds``;
- ``cancel()`` stops generation within a token (a ``StoppingCriteria`` reading
  a flag that the process's stdin reader sets);
- an exception in ``generate`` (out of memory included) comes back as
  ``GenerationFailed``, a loading failure as ``ModelLoadError``, and a process
  that dies (killed for memory, say) fails the reply in flight with a clear
  message and is reloaded on next use — never a hang;
- ``unload()`` gives back every byte: the process that held the weights,
  caches and any CUDA context exits (which ``empty_cache`` alone never
  achieves); this side drops its tokenizer, collects garbage and empties the
  cuda/mps cache if it uses torch itself.

The process never outlives the kernel: it exits when its stdin reaches EOF
(the kernel died, however abruptly), when its parent process changes, and at
the kernel's normal exit (an ``atexit`` hook). Interrupting a cell does not
reach it (it ignores SIGINT); stopping is a message.

Importing this module imports neither torch nor transformers: transformers
(with torch) is imported here on first use, for the tokenizer.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import itertools
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

from nbchat.backends.base import LoadPhase, LoadProgress, ProgressCallback, ReplyStream
from nbchat.backends.chat import ThinkParser, chat_messages
from nbchat.config import DEFAULT_QWEN_MODEL
from nbchat.errors import BackendError, ContextOverflow, GenerationFailed, ModelLoadError
from nbchat.types import Chunk, GenerationParams, GenerationStats, Message

__all__ = [
    "LoadProgress",
    "ThinkParser",
    "TransformersBackend",
    "TransformersReply",
    "count_tokens",
    "loaded",
    "unload",
]

PREFIX = "transformers"
ENV_MODEL = "NBCHAT_QWEN_MODEL"

# Qwen's sampling recommendations per mode (the model cards); temperature comes from the params.
THINKING_SAMPLING = {"top_p": 0.95, "top_k": 20, "min_p": 0.0}
ANSWER_SAMPLING = {"top_p": 0.8, "top_k": 20, "min_p": 0.0}

_POLL_S = 0.05  # how often a waiting reply looks at its cancel flag
_SHUTDOWN_S = 10.0  # grace period for a model process to stop or exit before it is killed
_LOAD_TIMEOUT_S = 3600.0
_STALL_TIMEOUT_S = 3600.0  # no token for this long (the process alive): give up on the reply



def sampling_kwargs(params: GenerationParams) -> dict[str, Any]:
    """``generate`` keyword arguments for ``params``, with Qwen's per-mode defaults.

    Temperature 0 (asked for explicitly: the default is 0.7) means greedy
    decoding; anything else samples, with ``top_p``/``top_k`` from the params
    when given, else Qwen's recommendation for the mode.
    """
    if params.temperature == 0:
        return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None, "min_p": None}
    defaults = THINKING_SAMPLING if params.think else ANSWER_SAMPLING
    return {
        "do_sample": True,
        "temperature": params.temperature,
        "top_p": params.top_p if params.top_p is not None else defaults["top_p"],
        "top_k": params.top_k if params.top_k is not None else defaults["top_k"],
        "min_p": defaults["min_p"],
    }


# -- the kernel's side of one model process ------------------------------------------------------


@dataclass
class _LocalModel:
    """A loaded model: its process, the kernel's copy of the tokenizer, what the process reported.

    The process is spoken to in JSON lines: the kernel writes requests to its
    stdin, a reader thread here turns its stdout lines into ``inbox`` entries
    (``None`` marks the end of its output: it exited).
    """

    model_id: str
    tokenizer: Any
    process: subprocess.Popen[bytes]
    info: dict[str, Any] = field(default_factory=dict)
    inbox: queue.Queue[list[Any] | None] = field(default_factory=queue.Queue)
    send_lock: threading.Lock = field(default_factory=threading.Lock)
    turn: threading.Lock = field(default_factory=threading.Lock)  # one generation at a time
    current: TransformersReply | None = None
    dead: str | None = None  # why the process is gone, once it is

    def __post_init__(self) -> None:
        threading.Thread(target=self._read, name="nbchat-model-reader", daemon=True).start()

    @property
    def alive(self) -> bool:
        return self.dead is None and self.process.poll() is None

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            try:
                self.inbox.put(json.loads(line))
            except ValueError:
                continue  # not one of ours; the model process sends everything else to stderr
        self.inbox.put(None)

    def send(self, *message: Any) -> None:
        data = (json.dumps(message) + "\n").encode()
        with self.send_lock:
            try:
                assert self.process.stdin is not None
                self.process.stdin.write(data)
                self.process.stdin.flush()
            except (OSError, ValueError) as exc:  # a closed pipe: the process is gone
                raise GenerationFailed(self._death_message()) from exc

    def receive(self, timeout: float) -> list[Any] | None:
        """The process's next message, or None after ``timeout``; its death raises ``GenerationFailed``."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                message = self.inbox.get(timeout=max(0.0, min(_POLL_S, deadline - time.monotonic())))
            except queue.Empty:
                if time.monotonic() >= deadline:
                    return None
                continue
            if message is None:
                self.inbox.put(None)  # every later reader must see the end too
                raise GenerationFailed(self._death_message())
            return message

    def _death_message(self) -> str:
        try:
            code = self.process.wait(_SHUTDOWN_S)
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
        with contextlib.suppress(OSError, ValueError), self.send_lock:
            assert self.process.stdin is not None
            self.process.stdin.write(b'["shutdown"]\n')
            self.process.stdin.close()
        try:
            self.process.wait(_SHUTDOWN_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(_SHUTDOWN_S)
        if self.process.stdout is not None:
            self.process.stdout.close()


_REGISTRY: dict[str, _LocalModel] = {}
_REGISTRY_LOCK = threading.Lock()
_LOAD_LOCKS: dict[str, threading.Lock] = {}
_REQUEST_IDS = itertools.count(1)


def _resolve(model: str) -> str:
    """The registry key of a model: a local directory's absolute path, else the hub id as given."""
    name = model.strip().removeprefix(f"{PREFIX}:")
    if _looks_like_path(name):
        return str(Path(name).expanduser().resolve())
    return name


def _looks_like_path(name: str) -> bool:
    return (
        name.startswith(("/", "./", "../", "~", "\\"))
        or (len(name) > 1 and name[1] == ":")  # C:\ on Windows
        or name.count("/") > 1
        or Path(name).expanduser().exists()
    )


def _load(model: str, on_progress: ProgressCallback | None, dtype: str | None = None) -> _LocalModel:
    """The loaded model for ``model``, loading it (once, whoever asks at the same time) if needed."""
    key = _resolve(model)
    with _REGISTRY_LOCK:
        handle = _REGISTRY.get(key)
        if handle is not None and handle.alive:
            return handle
        lock = _LOAD_LOCKS.setdefault(key, threading.Lock())
    with lock:
        with _REGISTRY_LOCK:
            handle = _REGISTRY.get(key)
            if handle is not None and handle.alive:
                return handle
        handle = _start(key, on_progress, dtype)
        with _REGISTRY_LOCK:
            _REGISTRY[key] = handle
        return handle


def _start(key: str, on_progress: ProgressCallback | None, dtype: str | None) -> _LocalModel:
    started = time.perf_counter()

    def progress(phase: LoadPhase) -> None:
        if on_progress is not None:
            on_progress(LoadProgress(f"{PREFIX}:{key}", phase, time.perf_counter() - started))

    if _looks_like_path(key) and not Path(key).is_dir():
        raise ModelLoadError(
            f"No model directory at {key!r}. Point {ENV_MODEL} (or the model id "
            f"'transformers:<path>') at a local directory holding config.json, the weights and the "
            f"tokenizer files, or use a Hugging Face hub id such as {DEFAULT_QWEN_MODEL!r}."
        )
    process = _spawn()  # its interpreter starts while the tokenizer loads here
    try:
        progress("tokenizer")
        tokenizer, local_only = _load_tokenizer(key)
    except BaseException:
        process.kill()
        process.communicate()  # reaps it and closes both pipes
        raise
    progress("weights")
    handle = _LocalModel(key, tokenizer, process)
    try:
        handle.send("load", key, dtype or "auto", local_only)
        message = handle.receive(timeout=_LOAD_TIMEOUT_S)
        if message is None:
            raise ModelLoadError(f"Loading {key!r} took more than {_LOAD_TIMEOUT_S:.0f} s; gave up.")
        if message[0] == "load_error":
            raise ModelLoadError(_load_error_message(key, message[1], message[2]))
        handle.info = dict(message[1], load_seconds=time.perf_counter() - started)
    except GenerationFailed:  # the process died while loading
        handle.shutdown()
        code = process.returncode
        kind = "oom" if code in (-9, 137) else "load"
        detail = f"the model process exited with code {code} while loading"
        raise ModelLoadError(_load_error_message(key, kind, detail)) from None
    except BaseException:
        handle.shutdown()
        raise
    progress("ready")
    return handle


def _spawn() -> subprocess.Popen[bytes]:
    """Start a model process: a fresh interpreter (never a fork of a kernel that has torch threads).

    A plain command line rather than ``multiprocessing``'s spawn, which would
    re-run the caller's ``__main__`` script in the child.
    """
    package_root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    code = "from nbchat.backends.transformers import _child_main; _child_main()"
    return subprocess.Popen(
        [sys.executable, "-c", code, str(os.getpid())], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
    )


def _load_tokenizer(key: str) -> tuple[Any, bool]:
    """The tokenizer, and whether the model must come from local files only.

    A hub id is looked up in the local cache first; only if it is missing
    there is the hub asked, and only after a quick check that it can be
    reached: offline, huggingface_hub retries for most of a minute per file.
    """
    from transformers import AutoTokenizer

    try:
        if _looks_like_path(key):
            return AutoTokenizer.from_pretrained(key), True
        with contextlib.suppress(Exception):
            return AutoTokenizer.from_pretrained(key, local_files_only=True), True
        problem = _hub_problem()
        if problem is not None:
            raise ModelLoadError(
                f"Could not load model {key!r}: it is not in the local Hugging Face cache and the hub "
                f"is unreachable ({problem}). Download it where the hub is reachable, or set {ENV_MODEL} "
                "to a local directory holding config.json, the weights and the tokenizer files."
            )
        return AutoTokenizer.from_pretrained(key), False
    except ModelLoadError:
        raise
    except Exception as exc:  # transformers raises OSError, ValueError, HF hub errors...
        raise ModelLoadError(_load_error_message(key, "load", f"{type(exc).__name__}: {exc}")) from None


def _hub_problem() -> str | None:
    """Why the Hugging Face hub cannot be reached now (None if a connection opens within 3 s)."""
    if (os.environ.get("HF_HUB_OFFLINE") or "").strip().lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    endpoint = urllib.parse.urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=3.0).close()
    except OSError as exc:
        return f"{host}: {exc}"
    return None


def _load_error_message(key: str, kind: str, detail: str) -> str:
    first_line = detail.strip().splitlines()[0] if detail.strip() else detail
    if kind == "oom":
        return (
            f"Not enough memory to load {key!r} ({first_line}). Use a smaller model (Qwen/Qwen3-0.6B), "
            "close other notebooks that hold models, or load it in half precision "
            "(TransformersBackend(dtype='bfloat16'): half the memory of float32 on a CPU)."
        )
    where = "the local directory" if _looks_like_path(key) else "the local Hugging Face cache, then the hub"
    return (
        f"Could not load model {key!r} (tried {where}): {first_line} "
        f"If the hub is unreachable, download the model elsewhere and set {ENV_MODEL} to a local "
        "directory holding config.json, the weights and the tokenizer files."
    )


def loaded() -> list[str]:
    """Model ids (``transformers:<name>``) loaded in this kernel now."""
    with _REGISTRY_LOCK:
        return [f"{PREFIX}:{key}" for key, h in _REGISTRY.items() if h.alive]


def unload(model: str | None = None) -> list[str]:
    """Unload ``model`` (default: every local model) and give its memory back; returns the ids unloaded.

    A reply in flight on that model is cancelled first (its partial text is
    kept). The model process exits, so every byte of weights, caches and
    device memory it held is returned to the system; the kernel drops its
    tokenizer, runs ``gc.collect()`` and empties the cuda/mps cache if torch
    is in use here.
    """
    with _REGISTRY_LOCK:
        keys = [key for key in (list(_REGISTRY) if model is None else [_resolve(model)]) if key in _REGISTRY]
        handles = [_REGISTRY.pop(key) for key in keys]
    for handle in handles:
        reply = handle.current
        if reply is not None:
            reply.cancel()
        got_turn = handle.turn.acquire(timeout=_SHUTDOWN_S)
        try:
            handle.shutdown()
        finally:
            if got_turn:
                handle.turn.release()
        handle.tokenizer = None
        handle.current = None
    del handles
    gc.collect()
    _empty_device_caches()
    return [f"{PREFIX}:{key}" for key in keys]


@atexit.register
def _close_all() -> None:
    """At interpreter exit, end every model process without waiting on replies in flight."""
    with _REGISTRY_LOCK:
        handles = list(_REGISTRY.values())
        _REGISTRY.clear()
    for handle in handles:
        with contextlib.suppress(OSError, ValueError):
            assert handle.process.stdin is not None
            handle.process.stdin.close()  # EOF: the process exits at once
    for handle in handles:
        try:
            handle.process.wait(2.0)
        except subprocess.TimeoutExpired:
            handle.process.kill()


def _empty_device_caches() -> None:
    torch = sys.modules.get("torch")  # never import torch just to empty a cache it never filled
    if torch is None:
        return
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    mps = getattr(torch, "mps", None)
    if mps is not None and torch.backends.mps.is_available():
        mps.empty_cache()


def count_tokens(model: str, messages: Sequence[Message], *, think: bool = False) -> int:
    """Prompt tokens of ``messages`` as they would be sent (chat template + generation prompt)."""
    handle = _load(model, None)
    return len(_prompt_ids(handle, _render_prompt(handle, messages, think)))


def _render_prompt(handle: _LocalModel, messages: Sequence[Message], think: bool) -> str:
    return handle.tokenizer.apply_chat_template(
        chat_messages(messages), tokenize=False, add_generation_prompt=True, enable_thinking=think
    )


def _prompt_ids(handle: _LocalModel, prompt: str) -> list[int]:
    return list(handle.tokenizer(prompt, add_special_tokens=False)["input_ids"])


# -- the backend --------------------------------------------------------------------------------


class TransformersBackend:
    """Local models through transformers: ``transformers:<hub id or local directory>``.

    Instances are cheap and share the kernel's loaded models. ``generate_kwargs``
    are extra ``model.generate`` arguments for every reply of this instance
    (e.g. ``{"repetition_penalty": 1.1}``, which helps small models that repeat).
    ``dtype`` (``"bfloat16"``, ``"float16"``, ``"float32"``) overrides the
    automatic choice (half precision on a GPU, float32 on a CPU) for models
    this instance loads first; a model already loaded keeps its dtype.
    """

    prefix = PREFIX

    def __init__(
        self,
        *,
        models: Sequence[str] | None = None,
        on_progress: ProgressCallback | None = None,
        generate_kwargs: Mapping[str, Any] | None = None,
        dtype: Literal["bfloat16", "float16", "float32"] | None = None,
    ) -> None:
        if dtype not in (None, "bfloat16", "float16", "float32"):
            raise ValueError(f"dtype must be bfloat16, float16, float32 or None (automatic), not {dtype!r}.")
        self._dtype = dtype
        self._configured = list(models) if models is not None else None
        self._on_progress = on_progress
        self._generate_kwargs = dict(generate_kwargs or {})
        try:  # they travel to the model process as JSON
            json.dumps(self._generate_kwargs)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"generate_kwargs must be plain JSON-able values: {exc}") from None

    def models(self) -> list[str]:
        """The configured model (``NBCHAT_QWEN_MODEL``, default Qwen/Qwen3-1.7B) and every loaded one."""
        configured = self._configured if self._configured is not None else [_configured_model()]
        ids = [f"{PREFIX}:{name}" for name in configured]
        return ids + [m for m in loaded() if m not in ids]

    def health(self) -> dict[str, Any]:
        """Loaded models with their device, dtype, parameters, memory and load time; no torch import."""
        with _REGISTRY_LOCK:
            handles = [h for h in _REGISTRY.values() if h.alive]
        models = []
        for handle in handles:
            entry = {"model": f"{PREFIX}:{handle.model_id}", "pid": handle.process.pid, **handle.info}
            rss = _rss_bytes(handle.process.pid)
            if rss is not None:
                entry["process_rss_bytes"] = rss
            models.append(entry)
        return {
            "backend": PREFIX,
            "ok": True,
            "design": "dedicated model process (see nbchat.backends.transformers)",
            "configured": self.models(),
            "loaded": models,
        }

    def load(self, model: str, *, on_progress: ProgressCallback | None = None) -> dict[str, Any]:
        """Load ``model`` now (it is otherwise loaded by the first reply); returns what ``health`` shows."""
        handle = self._loaded_model(model, on_progress)
        return {"model": f"{PREFIX}:{handle.model_id}", **handle.info}

    def _loaded_model(self, model: str, on_progress: ProgressCallback | None = None) -> _LocalModel:
        return _load(model, on_progress or self._on_progress, self._dtype)

    def loaded(self) -> list[str]:
        return loaded()

    def unload(self, model: str | None = None) -> list[str]:
        return unload(model)

    def count_tokens(self, model: str, messages: Sequence[Message], *, think: bool = False) -> int:
        """Exact prompt tokens (the real tokenizer and chat template); loads the model if needed."""
        handle = self._loaded_model(model)
        return len(_prompt_ids(handle, _render_prompt(handle, messages, think)))

    def context_window(self, model: str) -> int:
        """The model's context length (``max_position_embeddings``); loads the model if needed."""
        return int(self._loaded_model(model).info["max_position_embeddings"])

    def render_prompt(self, model: str, messages: Sequence[Message], *, think: bool = False) -> str:
        """The exact text the model is given for ``messages`` (thinking stripped from the history)."""
        return _render_prompt(self._loaded_model(model), messages, think)

    def stream(self, model: str, messages: Sequence[Message], params: GenerationParams) -> TransformersReply:
        """A reply to ``messages``; loading, templating and generating start when it is iterated."""
        return TransformersReply(self, model, list(messages), params)


def _configured_model() -> str:
    return (os.environ.get(ENV_MODEL) or "").strip() or DEFAULT_QWEN_MODEL


def _rss_bytes(pid: int) -> int | None:
    try:
        pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")


class TransformersReply(ReplyStream):
    """One reply generated by a model process; cancel from any thread, partial text kept."""

    def __init__(
        self, backend: TransformersBackend, model: str, messages: list[Message], params: GenerationParams
    ) -> None:
        super().__init__(PREFIX, model, messages, params)
        self._backend = backend
        self._handle: _LocalModel | None = None
        self._ended = False
        self._request_id = next(_REQUEST_IDS)
        self.prompt: str | None = None  # the exact text the model was given, once known
        self.token_ids: list[int] = []  # the generated token ids, eos included, as they arrived

    def _on_cancel(self) -> None:
        handle = self._handle
        if handle is not None and handle.current is self:
            with contextlib.suppress(BackendError):  # the process is gone: nothing left to stop
                handle.send("cancel", self._request_id)

    def _generate(self) -> Generator[Chunk, None, GenerationStats]:
        handle = self._backend._loaded_model(self._model)
        self._handle = handle
        params = self._params
        self.prompt = _render_prompt(handle, self._messages, params.think)
        ids = _prompt_ids(handle, self.prompt)
        _check_context(handle, len(ids), params)
        if not self._wait_for_turn(handle):
            return GenerationStats("cancelled", prompt_tokens=len(ids), completion_tokens=0)
        self._ended = False  # the model process sent this request's end marker
        try:
            handle.current = self
            kwargs = {**sampling_kwargs(params), **self._backend._generate_kwargs}
            kwargs["max_new_tokens"] = params.max_new_tokens
            handle.send("generate", self._request_id, ids, kwargs, params.seed)
            if self.cancelled:
                handle.send("cancel", self._request_id)
            return (yield from self._relay(handle, ids))
        finally:
            if not self._ended:  # abandoned mid-way (closed, or this side failed): stop the process
                self._settle(handle)
            handle.current = None
            handle.turn.release()

    def _wait_for_turn(self, handle: _LocalModel) -> bool:
        """Wait while another reply uses this model; False if cancelled meanwhile."""
        while not handle.turn.acquire(timeout=_POLL_S):
            if self.cancelled:
                return False
            if handle.dead is not None:
                raise GenerationFailed(f"The model {handle.model_id!r} was unloaded; send the message again.")
        if handle.dead is not None:
            handle.turn.release()
            raise GenerationFailed(f"The model {handle.model_id!r} was unloaded; send the message again.")
        if self.cancelled:
            handle.turn.release()
            return False
        return True

    def _relay(self, handle: _LocalModel, prompt_ids: list[int]) -> Generator[Chunk, None, GenerationStats]:
        """Turn the child's token ids into text and thinking chunks until it reports the end."""
        import torch
        from transformers import TextIteratorStreamer

        streamer = TextIteratorStreamer(
            handle.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=_SHUTDOWN_S
        )
        streamer.put(torch.tensor([prompt_ids]))  # what generate() does first; skip_prompt drops it
        parser = ThinkParser()
        while True:
            message = handle.receive(timeout=_STALL_TIMEOUT_S)
            if message is None:
                raise GenerationFailed(
                    f"The model process for {handle.model_id!r} sent nothing for {_STALL_TIMEOUT_S:.0f} s."
                )
            if message[1] != self._request_id:
                continue  # a late message of an abandoned reply
            kind = message[0]
            if kind == "tokens":
                self.token_ids.extend(message[2])
                streamer.put(torch.tensor(message[2]))
                yield from _pieces(streamer, parser)
                continue
            self._ended = True
            streamer.end()
            yield from _pieces(streamer, parser)
            yield from parser.flush()
            if kind == "error":
                raise GenerationFailed(_generation_error_message(message[2], message[3]))
            report = message[2]
            return GenerationStats(
                report["finish_reason"],
                prompt_tokens=len(prompt_ids),
                completion_tokens=report["completion_tokens"],
                ttft_s=report["ttft_s"],
                tokens_per_s=report["tokens_per_s"],
            )

    def _settle(self, handle: _LocalModel) -> None:
        """The reply was abandoned or failed mid-way: stop the child and read up to its end marker."""
        if handle.dead is not None:
            return
        try:
            handle.send("cancel", self._request_id)
            deadline = time.monotonic() + _SHUTDOWN_S
            while time.monotonic() < deadline:
                message = handle.receive(timeout=_POLL_S)
                if message is not None and message[0] in ("done", "error") and message[1] == self._request_id:
                    return
        except BackendError:
            return
        # The child did not stop in time: it cannot be trusted with the next reply.
        with _REGISTRY_LOCK:
            if _REGISTRY.get(handle.model_id) is handle:
                del _REGISTRY[handle.model_id]
        handle.shutdown()


def _pieces(streamer: Any, parser: ThinkParser) -> Generator[Chunk, None, None]:
    while True:
        try:
            piece = streamer.text_queue.get_nowait()
        except queue.Empty:
            return
        if piece is streamer.stop_signal:
            return
        yield from parser.feed(piece)


def _check_context(handle: _LocalModel, prompt_tokens: int, params: GenerationParams) -> None:
    limit = int(handle.info["max_position_embeddings"])
    if params.context_size is not None:
        limit = min(limit, params.context_size)
    needed = prompt_tokens + params.max_new_tokens
    if needed > limit:
        raise ContextOverflow(
            f"The conversation needs {prompt_tokens:,} prompt tokens + {params.max_new_tokens:,} new tokens "
            f"= {needed:,}, which is {needed - limit:,} more than the {limit:,}-token context of "
            f"{handle.model_id!r}. Shorten the conversation or lower max_new_tokens."
        )


def _generation_error_message(kind: str, detail: str) -> str:
    if kind == "oom":
        return (
            f"Out of memory while generating ({detail}). Lower max_new_tokens, shorten the "
            "conversation, use a smaller model (Qwen/Qwen3-0.6B), or load it in half precision "
            "(TransformersBackend(dtype='bfloat16'))."
        )
    return f"Generation failed: {detail}"


# -- the model process ----------------------------------------------------------------------------


def _child_main() -> None:
    """The model process: load, report, then run every ``generate`` in this, the main, thread.

    Started as ``python -c ... PARENT_PID``; its first request says what to
    load, so the interpreter and torch start while the kernel still resolves
    the tokenizer. Its stdout carries only protocol lines (anything printed
    goes to stderr); stdin brings requests, read by a thread that also records
    cancellations. Interrupts aimed at the kernel's process group are ignored:
    stopping is the kernel's message. It leaves through ``os._exit``: nothing
    is left worth finalising, and a normal exit with the stdin reader blocked
    can abort the interpreter.
    """
    parent_pid = int(sys.argv[1])
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    with contextlib.suppress(ValueError, AttributeError):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    channel = _ChildChannel(out)
    requests: queue.Queue[list[Any]] = queue.Queue()
    cancelled: set[int] = set()
    threading.Thread(target=_child_reader, args=(requests, cancelled), daemon=True).start()
    threading.Thread(target=_child_watchdog, args=(parent_pid,), daemon=True).start()
    import torch  # noqa: F401 - the slow imports overlap with the kernel's tokenizer loading
    import transformers  # noqa: F401

    request = requests.get()
    if request[0] != "load":
        os._exit(0)
    try:
        state = _child_load(*request[1:])
    except BaseException as exc:
        channel.send("load_error", "oom" if _is_oom(exc) else "load", f"{type(exc).__name__}: {exc}")
        os._exit(1)
    channel.send("ready", state.info)
    while True:
        request = requests.get()
        if request[0] != "generate":
            os._exit(0)
        _, request_id, ids, kwargs, seed = request
        try:
            report = _child_generate(channel, state, request_id, ids, kwargs, seed, cancelled)
            channel.send("done", request_id, report)
        except Exception as exc:
            kind = "oom" if _is_oom(exc) else "failed"
            channel.send("error", request_id, kind, f"{type(exc).__name__}: {exc}")
            gc.collect()
            _empty_device_caches()
        finally:
            cancelled.discard(request_id)


class _ChildChannel:
    """Protocol lines to the kernel; one write per message, so lines never interleave."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._lock = threading.Lock()

    def send(self, *message: Any) -> None:
        data = (json.dumps(message) + "\n").encode()
        with self._lock:
            try:
                self._out.write(data)
            except OSError:  # the kernel is gone
                os._exit(0)


def _child_reader(requests: queue.Queue[list[Any]], cancelled: set[int]) -> None:
    """Route the kernel's messages; the end of stdin means the kernel is gone: exit at once."""
    for line in sys.stdin.buffer:
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if message[0] == "cancel":
            cancelled.add(message[1])
        else:
            requests.put(message)
    os._exit(0)


def _child_watchdog(parent_pid: int) -> None:
    """Exit if the kernel dies even though something else still holds our stdin open."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent_pid:
            os._exit(0)


@dataclass
class _ChildState:
    model: Any
    eos_ids: set[int]
    info: dict[str, Any]


def _child_load(source: str, dtype_name: str, local_only: bool) -> _ChildState:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    device, dtype = _pick_device(torch)
    if dtype_name != "auto":
        dtype = getattr(torch, dtype_name)
    model = AutoModelForCausalLM.from_pretrained(
        source,
        dtype=dtype,
        low_cpu_mem_usage=True,  # ignored (always on) by transformers 5, needed by 4.x
        local_files_only=local_only,
        device_map=device if device != "cpu" else None,
    )
    model.eval()
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
    tensors = itertools.chain(model.parameters(), model.buffers())
    info = {
        "device": device,
        "dtype": str(dtype).removeprefix("torch."),
        "parameters": sum(p.numel() for p in model.parameters()),
        "memory_bytes": sum(t.numel() * t.element_size() for t in tensors),
        "max_position_embeddings": int(getattr(model.config, "max_position_embeddings", 32768)),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
        "pid": os.getpid(),
    }
    return _ChildState(model, eos_ids, info)


def _pick_device(torch: Any) -> tuple[str, Any]:
    """cuda, then mps, then cpu; half precision on a GPU (bf16 where supported), float32 on CPU."""
    if torch.cuda.is_available():
        return "cuda", torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if torch.backends.mps.is_available():
        return "mps", torch.float16
    return "cpu", torch.float32


def _child_generate(
    channel: _ChildChannel,
    state: _ChildState,
    request_id: int,
    ids: list[int],
    kwargs: dict[str, Any],
    seed: int | None,
    cancelled: set[int],
) -> dict[str, Any]:
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList
    from transformers.generation.streamers import BaseStreamer

    class Cancelled(StoppingCriteria):
        """Stop at the next token once the kernel asked to cancel this request."""

        def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
            return torch.full((input_ids.shape[0],), request_id in cancelled, dtype=torch.bool)

    times: list[float] = []

    class Relay(BaseStreamer):
        """Send each new token id to the kernel the moment generate produces it."""

        prompt_seen = False

        def put(self, value: torch.Tensor) -> None:
            if not self.prompt_seen:  # generate's first put is the prompt
                self.prompt_seen = True
                return
            times.append(time.perf_counter())
            channel.send("tokens", request_id, value.reshape(-1).tolist())

        def end(self) -> None:
            pass

    if seed is not None:
        torch.manual_seed(seed)
    else:
        torch.seed()  # a fresh process always starts from the same default seed
    input_ids = torch.tensor([ids], device=state.model.device)
    started = time.perf_counter()
    with torch.inference_mode():
        output = state.model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            streamer=Relay(),
            stopping_criteria=StoppingCriteriaList([Cancelled()]),
            **kwargs,
        )
    new = output[0, len(ids) :].tolist()
    del output, input_ids
    if request_id in cancelled:
        reason = "cancelled"
    elif new and new[-1] in state.eos_ids:
        reason = "stop"
    elif len(new) >= kwargs["max_new_tokens"]:
        reason = "length"
    else:
        reason = "stop"
    ttft = times[0] - started if times else None
    rate = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else None
    return {"finish_reason": reason, "completion_tokens": len(new), "ttft_s": ttft, "tokens_per_s": rate}


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    torch = sys.modules.get("torch")
    oom = getattr(torch, "OutOfMemoryError", None) if torch is not None else None
    return (oom is not None and isinstance(exc, oom)) or "out of memory" in str(exc).lower()
