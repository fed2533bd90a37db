"""The model process: loads one model and runs every ``generate`` in its main thread.

Started by the kernel as ``python -m nbchat.backends.local.child PARENT_PID KERNEL_CWD``
(``process.spawn``); it speaks the JSON-lines protocol described in ``process``.
docs/local-model.md says why generation lives here and not in a kernel thread.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import json
import os
import queue
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, BinaryIO, cast

from nbchat.backends.local import packing
from nbchat.backends.local.devices import empty_device_caches
from nbchat.backends.local.kv_cache import Limits, PromptCaches, cache_keyword, usable
from nbchat.backends.local.precision import choose


def main(argv: list[str]) -> None:
    """Load, report, then run every ``generate`` in this, the main, thread.

    The first request says what to load, so this interpreter and torch start
    while the kernel still resolves the tokenizer. stdout carries only
    protocol lines (anything printed goes to stderr); stdin brings requests,
    read by a thread that also records cancellations. Interrupts aimed at the
    kernel's process group are ignored: stopping is the kernel's message. It
    leaves through ``os._exit``: nothing is left worth finalising, and a
    normal exit with the stdin reader blocked can abort the interpreter.
    """
    parent_pid = int(argv[0])
    if len(argv) > 1 and argv[1]:
        # Started in nbchat's own directory so that `-m` imports the kernel's nbchat; from here
        # on, relative paths (HF_HOME=./cache, say) mean what they mean in the kernel.
        with contextlib.suppress(OSError):
            os.chdir(argv[1])
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    with contextlib.suppress(ValueError, AttributeError):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    channel = _Channel(out)
    requests: queue.Queue[list[Any]] = queue.Queue()
    cancelled: set[int] = set()
    threading.Thread(target=_read_requests, args=(requests, cancelled), daemon=True).start()
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()
    request = requests.get()
    if request[0] == "fetch":  # a hub id: its files first (found in the cache, or downloaded)
        _fetch(channel, *request[1:])
        request = requests.get()
    import torch  # noqa: F401 - the slow imports overlap with the kernel's tokenizer loading
    import transformers  # noqa: F401

    if request[0] != "load":
        os._exit(0)
    try:
        state = _load(*request[1:])
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
            report = _generate(channel, state, request_id, ids, kwargs, seed, cancelled)
            channel.send("done", request_id, report)
        except Exception as exc:
            kind = "oom" if _is_oom(exc) else "failed"
            if kind == "oom":
                state.prompts.clear()  # memory for the next reply comes before faster prompts
            channel.send("error", request_id, kind, f"{type(exc).__name__}: {exc}")
            gc.collect()
            empty_device_caches()
        finally:
            cancelled.discard(request_id)


def _fetch(channel: _Channel, repo_id: str, allow_download: bool) -> None:
    """Answer ``["fetched", folder]`` or ``["fetch_error", kind, detail]``; ``["download", done, total,
    bytes_per_s]`` a few times a second while files come from the hub. The kernel waits for it before
    loading the tokenizer, and kills this process to cancel (the partial files stay, for a resume)."""
    from nbchat.backends.local import download

    try:
        folder = download.find_cached(repo_id)
        if folder is None:
            problem = download.hub_problem()
            if problem is not None:
                raise download.DownloadFailed("offline", problem)
            if not allow_download:
                chosen = download.plan(repo_id)
                raise download.DownloadFailed("not_cached", str(chosen.total))
            folder = download.fetch(repo_id, lambda *step: channel.send("download", *step))
    except download.DownloadFailed as failure:
        channel.send("fetch_error", failure.kind, failure.detail)
        os._exit(1)
    except Exception as exc:  # a bug or an odd hub: the kernel still hears why
        channel.send("fetch_error", "failed", f"{type(exc).__name__}: {exc}")
        os._exit(1)
    channel.send("fetched", folder)


class _Channel:
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


def _read_requests(requests: queue.Queue[list[Any]], cancelled: set[int]) -> None:
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


def _watch_parent(parent_pid: int) -> None:
    """Exit if the kernel dies even though something else still holds our stdin open."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent_pid:
            os._exit(0)


@dataclass
class _State:
    model: Any
    eos_ids: set[int]
    info: dict[str, Any]
    prompts: PromptCaches  # the KV caches of recent prompts (kv_cache.py)


def _load(source: str, dtype_name: str, local_only: bool) -> _State:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    limits = Limits.from_env()  # a mistyped setting fails the load, saying which one
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    device, dtype_name, native_bf16 = choose(torch, dtype_name)  # precision.py: auto by the hardware
    dtype = getattr(torch, dtype_name)
    model = AutoModelForCausalLM.from_pretrained(
        source,
        dtype=dtype,
        low_cpu_mem_usage=True,  # ignored (always on) by transformers 5, needed by 4.x
        local_files_only=local_only,
        device_map=device if device != "cpu" else None,
    )
    model.eval()
    parameters = sum(p.numel() for p in model.parameters())  # before packing turns weights into buffers
    packed = packing.pack_linears(model) if packing.wanted(device, dtype_name, native_bf16) else 0
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
    tensors = itertools.chain(model.parameters(), model.buffers())
    info = {
        "device": device,
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),  # what the weights are in
        "native_bf16": native_bf16,  # what computes bf16 natively here (a CPU feature, the GPU), or None
        "parameters": parameters,
        "packed_linears": packed,  # linear layers in oneDNN's layout (packing.py), 0 where not
        "memory_bytes": sum(t.numel() * t.element_size() for t in tensors),
        "max_position_embeddings": int(getattr(model.config, "max_position_embeddings", 32768)),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
        "pid": os.getpid(),
        "prompt_cache": limits.describe(),
    }
    return _State(model, eos_ids, info, PromptCaches(limits))


def _generate(
    channel: _Channel,
    state: _State,
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
            stop = torch.full((input_ids.shape[0],), request_id in cancelled, dtype=torch.bool)
            return cast(torch.BoolTensor, stop)  # torch.full's annotation says Tensor; it is bool here

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
    caching = state.prompts.limits.prompts > 0 and usable(kwargs)
    with torch.inference_mode():
        cache, reused = state.prompts.take(ids, state.model) if caching else (None, 0)
        extra = {cache_keyword(state.model): cache} if caching else {}
        # generate() encodes only the tokens after the cache's: the full ids still go in, for the
        # logits processors (repetition penalty) and the streamer, which see the whole sequence.
        output = state.model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            streamer=Relay(),
            stopping_criteria=StoppingCriteriaList([Cancelled()]),
            **extra,
            **kwargs,
        )
    sequence = output[0].tolist()
    new = sequence[len(ids) :]
    del output, input_ids
    if cache is not None:  # it holds every token fed: all but the last one generated
        state.prompts.keep(sequence[: cache.get_seq_length()], cache)
        del cache
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
    return {
        "finish_reason": reason,
        "completion_tokens": len(new),
        "cached_tokens": reused,  # prompt tokens not encoded again: their keys and values were kept
        "ttft_s": ttft,
        "tokens_per_s": rate,
    }


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    torch = sys.modules.get("torch")
    oom = getattr(torch, "OutOfMemoryError", None) if torch is not None else None
    return (oom is not None and isinstance(exc, oom)) or "out of memory" in str(exc).lower()


if __name__ == "__main__":
    main(sys.argv[1:])
