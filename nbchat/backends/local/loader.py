"""Starting a model process for one model id: the tokenizer here, the weights there, clear errors.

The registry decides *when* a model is loaded (once per kernel); this module
knows *how*, and what to tell the user when it cannot be done.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

from nbchat.backends.base import LoadPhase, LoadProgress, ProgressCallback
from nbchat.backends.local import ENV_MODEL, PREFIX, precision
from nbchat.backends.local.process import POLL_S, LocalModel, spawn
from nbchat.config import DEFAULT_QWEN_MODEL, load_config
from nbchat.errors import GenerationFailed, ModelLoadError

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
    key: str, on_progress: ProgressCallback | None, dtype: str | None, abort: threading.Event | None = None
) -> LocalModel:
    """A new model process with ``key`` loaded; ``abort`` (when set) ends it half-way: ``LoadCancelled``."""
    started = time.perf_counter()

    def progress(phase: LoadPhase, detail: str = "") -> None:
        if on_progress is not None:
            on_progress(LoadProgress(f"{PREFIX}:{key}", phase, time.perf_counter() - started, detail))

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
    process = spawn()  # its interpreter starts while the tokenizer loads here
    try:
        progress("tokenizer")
        tokenizer, local_only = load_tokenizer(key)
        check_abort()
    except BaseException:
        process.kill()
        process.communicate()  # reaps it and closes both pipes
        raise
    progress("weights")
    handle = LocalModel(key, tokenizer, process)
    try:
        handle.send("load", key, requested, local_only)
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
        code = process.returncode
        kind = "oom" if code in (-9, 137) else "load"
        detail = f"the model process exited with code {code} while loading"
        raise ModelLoadError(load_error_message(key, kind, detail)) from None
    except LoadCancelled:
        handle.kill("loading was cancelled")
        raise
    except BaseException:
        handle.shutdown()
        raise
    progress("ready", str(handle.info.get("dtype_reason") or ""))
    return handle


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
    return precision.reason(
        str(info.get("dtype")), str(info.get("device")), info.get("native_bf16"), origin
    )


def load_tokenizer(key: str) -> tuple[Any, bool]:
    """The tokenizer, and whether the model must come from local files only.

    A hub id is looked up in the local cache first; only if it is missing
    there is the hub asked, and only after a quick check that it can be
    reached: offline, huggingface_hub retries for most of a minute per file.
    """
    from transformers import AutoTokenizer

    try:
        if looks_like_path(key):
            return AutoTokenizer.from_pretrained(key), True
        with contextlib.suppress(Exception):
            return AutoTokenizer.from_pretrained(key, local_files_only=True), True
        problem = hub_problem()
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
        raise ModelLoadError(load_error_message(key, "load", f"{type(exc).__name__}: {exc}")) from None


def hub_problem() -> str | None:
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
