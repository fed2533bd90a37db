"""Starting a model process for one model id: the tokenizer here, the weights there, clear errors.

The registry decides *when* a model is loaded (once per kernel); this module
knows *how*, and what to tell the user when it cannot be done.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nbchat.backends.base import LoadPhase, LoadProgress, ProgressCallback, size_text
from nbchat.backends.local import ENV_MODEL, PREFIX, download, precision
from nbchat.backends.local.process import POLL_S, LocalModel, spawn
from nbchat.config import DEFAULT_QWEN_MODEL, load_config
from nbchat.errors import GenerationFailed, ModelLoadError, ModelNotDownloaded

LOAD_TIMEOUT_S = 3600.0


class LoadCancelled(Exception):  # a signal between our own modules, never shown to a user
    """Everyone who wanted the model stopped waiting; the half-loaded process was ended."""


def resolve(model: str) -> str:
    """The registry key of a model: a local directory's absolute path, else the hub id as given."""
    name = model.strip().removeprefix(f"{PREFIX}:")
    if looks_like_path(name):
        return str(Path(name).expanduser().resolve())
    return name


def looks_like_path(name: str) -> bool:
    return (
        name.startswith(("/", "./", "../", "~", "\\"))
        or (len(name) > 1 and name[1] == ":")  # C:\ on Windows
        or name.count("/") > 1
        or Path(name).expanduser().exists()
    )


def start(
    key: str,
    on_progress: ProgressCallback | None,
    dtype: str | None,
    abort: threading.Event | None = None,
    *,
    allow_download: bool = True,
) -> LocalModel:
    """A new model process with ``key`` loaded; ``abort`` (when set) ends it half-way: ``LoadCancelled``.

    A hub id's files come first: from the Hugging Face cache, else downloaded by the model process
    (``download`` steps with the bytes), unless ``allow_download`` is False (``ModelNotDownloaded``).
    """
    started = time.perf_counter()

    def progress(phase: LoadPhase, detail: str = "", **download: Any) -> None:
        if on_progress is not None:
            elapsed = time.perf_counter() - started
            on_progress(LoadProgress(f"{PREFIX}:{key}", phase, elapsed, detail, **download))

    def check_abort() -> None:
        if abort is not None and abort.is_set():
            raise LoadCancelled(key)

    if looks_like_path(key) and not Path(key).is_dir():
        raise ModelLoadError(
            f"No model directory at {key!r}. Point {ENV_MODEL} (or the model id "
            f"'transformers:<path>') at a local directory holding config.json, the weights and the "
            f"tokenizer files, or use a Hugging Face hub id such as {DEFAULT_QWEN_MODEL!r}."
        )
    requested, origin = requested_dtype(dtype)
    handle = LocalModel(key, None, spawn())  # its interpreter starts while the tokenizer loads here
    try:
        source = key
        if not looks_like_path(key):
            source = fetch_files(handle, key, progress, check_abort, allow_download)
        progress("tokenizer")
        handle.tokenizer = load_tokenizer(key, source)
        check_abort()
        progress("weights")
        handle.send("load", source, requested, True)
        deadline = time.monotonic() + LOAD_TIMEOUT_S
        while (message := handle.receive(timeout=POLL_S)) is None:
            check_abort()
            if time.monotonic() >= deadline:
                raise ModelLoadError(f"Loading {key!r} took more than {LOAD_TIMEOUT_S:.0f} s; gave up.")
        if message[0] == "load_error":
            raise ModelLoadError(load_error_message(key, message[1], message[2]))
        handle.info = dict(message[1], load_seconds=time.perf_counter() - started)
        handle.info["dtype_reason"] = dtype_reason(handle.info, origin)
    except GenerationFailed:  # the process died while loading
        handle.shutdown()
        code = handle.process.returncode
        kind = "oom" if code in (-9, 137) else "load"
        detail = f"the model process exited with code {code} while loading"
        raise ModelLoadError(load_error_message(key, kind, detail)) from None
    except LoadCancelled:
        handle.kill("loading was cancelled")  # a download stops here; its partial files stay, resumable
        raise
    except BaseException:
        handle.shutdown()
        raise
    progress("ready", str(handle.info.get("dtype_reason") or ""))
    return handle


def fetch_files(
    handle: LocalModel,
    repo_id: str,
    progress: Callable[..., None],
    check_abort: Callable[[], None],
    allow_download: bool,
) -> str:
    """The local folder of hub model ``repo_id``, downloaded by the model process if need be."""
    handle.send("fetch", repo_id, allow_download)
    while True:
        message = handle.receive(timeout=POLL_S)
        check_abort()
        if message is None:
            continue
        if message[0] == "download":
            progress("download", done_bytes=message[1], total_bytes=message[2], bytes_per_s=message[3])
        elif message[0] == "fetched":
            return str(message[1])
        elif message[0] == "fetch_error":
            raise fetch_error(repo_id, message[1], message[2])


def fetch_error(repo_id: str, kind: str, detail: str) -> ModelLoadError:
    if kind == "not_cached":
        size = f" ({size_text(int(detail))})" if detail.isdigit() else ""
        return ModelNotDownloaded(
            f"{repo_id} is not on this machine yet: the first message to it downloads it{size}."
        )
    if kind == "offline":
        return ModelLoadError(
            f"Could not load model {repo_id!r}: it is not in the local Hugging Face cache and the hub "
            f"is unreachable ({detail}). Download it where the hub is reachable, or set {ENV_MODEL} "
            "to a local directory holding config.json, the weights and the tokenizer files."
        )
    return ModelLoadError(download.message(repo_id, kind, detail))


def requested_dtype(explicit: str | None) -> tuple[str, str | None]:
    """The dtype to ask the model process for, and the setting that asked (None: ``auto`` decides).

    ``TransformersBackend(dtype=...)`` wins, then ``NBCHAT_QWEN_DTYPE``, then the site file's
    ``qwen_dtype``; all read now, so a value set in a running kernel holds for the next load.
    """
    if explicit is not None:
        return explicit, f"TransformersBackend(dtype={explicit!r})"
    config = load_config()
    return config.qwen_dtype, config.qwen_dtype_source if config.qwen_dtype != "auto" else None


def dtype_reason(info: dict[str, Any], origin: str | None) -> str:
    """The model process's report (device, dtype, native bf16) and the setting, as one line."""
    return precision.reason(str(info.get("dtype")), str(info.get("device")), info.get("native_bf16"), origin)


def load_tokenizer(key: str, source: str) -> Any:
    """The tokenizer of model ``key`` from ``source``, the local folder holding its files."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source)
    except Exception as exc:  # transformers raises OSError, ValueError, HF hub errors...
        raise ModelLoadError(load_error_message(key, "load", f"{type(exc).__name__}: {exc}")) from None


def load_error_message(key: str, kind: str, detail: str) -> str:
    first_line = detail.strip().splitlines()[0] if detail.strip() else detail
    if kind == "oom":
        return (
            f"Not enough memory to load {key!r} ({first_line}). Use a smaller model (Qwen/Qwen3-0.6B), "
            f"close other notebooks that hold models, or load it in half precision ({precision.ENV_DTYPE}="
            "bfloat16, or TransformersBackend(dtype='bfloat16'): half the memory of float32 on a CPU)."
        )
    where = "the local directory" if looks_like_path(key) else "the local Hugging Face cache, then the hub"
    return (
        f"Could not load model {key!r} (tried {where}): {first_line} "
        f"If the hub is unreachable, download the model elsewhere and set {ENV_MODEL} to a local "
        "directory holding config.json, the weights and the tokenizer files."
    )
