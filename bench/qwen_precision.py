"""bfloat16 vs float32 for the local Qwen3 on this CPU, side by side, and how close decoding gets
to the machine's memory bandwidth.

    .venv/bin/python bench/qwen_precision.py            # about 2 minutes on 2 cores
    .venv/bin/python bench/run.py --only qwen_precision # the same, merged into results.json

One random checkpoint of Qwen3's architecture (``tiny_qwen3``: Qwen3-1.7B's hidden size 2048 and
vocabulary of 151,936 rows, tied embeddings, 8 of its 28 layers: 0.71 B parameters, 2.9 GB in
float32, so every matmul has the real model's shape and the run stays near 2 minutes) is loaded
twice through nbchat's real backend (``TransformersBackend(dtype=...)``: two model processes,
``from_pretrained`` as for Qwen/Qwen3-1.7B). Rounds alternate the two, so a drift of the
machine's bandwidth (shared cloud hosts) hits both alike. Decode: tokens/s of 32 greedy
tokens after a short prompt (the model process's own timing, first token excluded).
Prefill: time to the first token of a ~512-token prompt, each round's prompt new from its
first words (a KV cache kept across turns must not serve it). The figures:

- ``qwen_bf16_decode_speedup``, ``qwen_bf16_prefill_speedup``: bf16 ÷ float32 (targets ≥ 1.25
  and ≥ 3); ``null`` with ``qwen_bf16_reason`` where the CPU has no native bf16 (AVX512-BF16,
  AMX-BF16), where bf16 is emulated and ``auto`` keeps float32.
- ``qwen_bandwidth_fraction``: decode tokens/s × bytes of weights read per token (all of them:
  with tied embeddings the output layer reads the whole vocabulary matrix) ÷ the read bandwidth
  a torch sweep measures here in the same run (the best of several sums over 1 GiB, with the
  model's thread count); in the dtype ``auto`` picks (target ≥ 0.7).
- ``qwen_int8_decode_speedup``: int8 weight-only (torchao through transformers'
  ``TorchAoConfig``) ÷ bf16, or ``null`` with ``qwen_int8_reason`` where torchao is missing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from common import figures_main, in_scratch

HIDDEN, LAYERS, VOCAB = 2048, 8, 151_936  # Qwen3-1.7B's width and vocabulary, 8 of its 28 layers
DECODE_TOKENS = 32
PREFILL_TOKENS = 512
SENTENCE = "The quick brown fox jumps over the lazy dog while the kernel streams a reply. "


def read_bandwidth(threads: int, gib: float = 1.0, repeats: int = 7) -> float:
    """Bytes per second torch reads here: the best of ``repeats`` sums over ``gib`` GiB of float32."""
    import torch

    torch.set_num_threads(threads)
    data = torch.ones(int(gib * 2**30) // 4, dtype=torch.float32)
    data.sum()  # pages touched, threads started
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        data.sum()
        best = min(best, time.perf_counter() - start)
    size = data.numel() * data.element_size()
    del data
    return size / best


def hardlinked_copy(source: Path, target: Path) -> Path:
    """The checkpoint under another path (another model id: a process of its own), no bytes copied."""
    target.mkdir()
    for item in source.iterdir():
        os.link(item, target / item.name)
    return target


def long_prompt(backend: Any, model: str, round_number: int) -> list[Any]:
    """Messages whose prompt is about ``PREFILL_TOKENS`` tokens, new from the first words on."""
    from nbchat.types import Message

    def messages(sentences: int) -> list[Any]:
        return [Message("system", f"Round {round_number}. Be brief."), Message("user", SENTENCE * sentences)]

    per_sentence = backend.count_tokens(model, messages(11)) - backend.count_tokens(model, messages(1))
    base = backend.count_tokens(model, messages(1))
    return messages(1 + max(0, round((PREFILL_TOKENS - base) / (per_sentence / 10))))


def torchao_reason() -> str | None:
    """Why int8 weight-only cannot be measured here, or None if it can."""
    try:
        import torchao  # noqa: F401
    except ImportError:
        return "torchao is not installed (it is no dependency of nbchat): int8 not measured, not offered"
    return None


def measure(scratch: Path, rounds: int = 3) -> Mapping[str, Any]:
    from transformers.utils import logging

    from nbchat.backends.local.precision import cpu_bf16_feature, cpu_flags
    from nbchat.backends.transformers import TransformersBackend, unload
    from nbchat.testing.tiny_qwen3 import tiny_qwen3
    from nbchat.types import GenerationParams, Message

    logging.disable_progress_bar()
    load_before = os.getloadavg()[0]  # other work on the cores skews bf16 (more compute) the most
    native = cpu_bf16_feature(cpu_flags() or set())
    started = time.perf_counter()
    float32_path = tiny_qwen3(scratch / "float32", hidden_size=HIDDEN, num_layers=LAYERS, vocab_size=VOCAB)
    print(f"checkpoint built in {time.perf_counter() - started:.1f} s", flush=True)
    paths = {"float32": str(float32_path)}
    if native:
        paths["bfloat16"] = str(hardlinked_copy(float32_path, scratch / "bfloat16"))
    decode = {
        dtype: TransformersBackend(dtype=dtype, generate_kwargs={"min_new_tokens": DECODE_TOKENS})  # type: ignore[arg-type]
        for dtype in paths
    }
    infos = {dtype: decode[dtype].load(path) for dtype, path in paths.items()}
    threads = int(infos["float32"]["threads"])
    bandwidth = read_bandwidth(threads)
    greedy = GenerationParams(temperature=0.0, max_new_tokens=DECODE_TOKENS)
    first_only = GenerationParams(temperature=0.0, max_new_tokens=1)
    short = [Message("user", "Hello there! Tell me about the weather today.")]
    plain = TransformersBackend()  # the same loaded models: dtype matters only at a load
    rates: dict[str, list[float]] = {dtype: [] for dtype in paths}
    prefills: dict[str, list[float]] = {dtype: [] for dtype in paths}
    prompt_tokens = 0
    try:
        for dtype, path in paths.items():  # warm-up: the first generate of a process is slower
            decode[dtype].stream(path, short, greedy).wait()
        for number in range(rounds):
            order = list(paths) if number % 2 == 0 else list(paths)[::-1]
            for dtype in order:
                stats = decode[dtype].stream(paths[dtype], short, greedy).wait().stats
                assert stats is not None and stats.completion_tokens == DECODE_TOKENS and stats.tokens_per_s
                rates[dtype].append(stats.tokens_per_s)
                messages = long_prompt(plain, paths[dtype], number)
                reply = plain.stream(paths[dtype], messages, first_only).wait()
                assert reply.stats is not None and reply.stats.ttft_s is not None
                prefills[dtype].append(reply.stats.ttft_s)
                prompt_tokens = reply.stats.prompt_tokens or 0
    finally:
        unload()
    tokens_per_s = {dtype: statistics.median(values) for dtype, values in rates.items()}
    prefill_s = {dtype: statistics.median(values) for dtype, values in prefills.items()}
    chosen = "bfloat16" if native else "float32"  # what auto loads on this CPU
    params = int(infos["float32"]["parameters"])
    figures: dict[str, Any] = {
        "qwen_precision_checkpoint": (
            f"random Qwen3, hidden {HIDDEN}, {LAYERS} layers, vocab {VOCAB:,}, "
            f"{params / 1e9:.2f} B parameters"
        ),
        "qwen_cpu_bf16": native,
        "qwen_precision_load_average": max(load_before, os.getloadavg()[0]),
        "qwen_read_bandwidth_gb_s": bandwidth / 1e9,
        "qwen_float32_decode_tokens_per_s": tokens_per_s["float32"],
        "qwen_float32_prefill_s": prefill_s["float32"],
        "qwen_prefill_prompt_tokens": prompt_tokens,
        "qwen_bandwidth_fraction": tokens_per_s[chosen] * infos[chosen]["memory_bytes"] / bandwidth,
        "qwen_bandwidth_fraction_float32": tokens_per_s["float32"]
        * infos["float32"]["memory_bytes"]
        / bandwidth,
    }
    if native:
        figures.update(
            qwen_bf16_decode_tokens_per_s=tokens_per_s["bfloat16"],
            qwen_bf16_prefill_s=prefill_s["bfloat16"],
            qwen_bf16_decode_speedup=tokens_per_s["bfloat16"] / tokens_per_s["float32"],
            qwen_bf16_prefill_speedup=prefill_s["float32"] / prefill_s["bfloat16"],
            qwen_bf16_reason=f"this CPU has {native}",
        )
    else:
        figures.update(
            qwen_bf16_decode_speedup=None,
            qwen_bf16_prefill_speedup=None,
            qwen_bf16_reason="no native bf16 on this CPU (no AVX512-BF16, no AMX-BF16): auto keeps float32",
        )
    figures["qwen_int8_decode_speedup"] = None
    figures["qwen_int8_reason"] = (
        torchao_reason() or "torchao is installed but the int8 run is not written yet"
    )
    for key, value in figures.items():
        print(f"  {key}: {value}", flush=True)
    return figures


def measure_in_scratch() -> Mapping[str, Any]:
    return in_scratch(measure, "nbchat-bench-precision-")()


def main() -> int:
    def run(args: argparse.Namespace) -> Mapping[str, Any]:
        return {
            k: v for k, v in measure_in_scratch().items() if isinstance(v, (int, float)) and v is not None
        }

    return figures_main(__doc__, run)


if __name__ == "__main__":
    raise SystemExit(main())
