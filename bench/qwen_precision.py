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
- ``qwen_bf16_packing_decode_speedup`` / ``_prefill_speedup``, ``qwen_bandwidth_fraction_unpacked``:
  a third process loads bf16 with ``NBCHAT_QWEN_PACK_WEIGHTS=0`` (torch's own bf16 kernel):
  what packing the weights for oneDNN (``packing.py``, what users get) is worth.
- ``qwen_int8_decode_speedup``: int8 weight-only (torchao through transformers'
  ``TorchAoConfig``) ÷ bf16, both loaded in this process after the model processes are gone,
  or ``null`` with ``qwen_int8_reason`` where torchao is missing (``pip install -e '.[bench]'``).
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
UNPACKED = "bfloat16, unpacked"  # NBCHAT_QWEN_PACK_WEIGHTS=0: torch's own bf16 kernel
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
        return "torchao is not installed (`pip install torchao` to measure it): int8 not measured"
    return None


def int8_speedup(path: str, rounds: int) -> float:
    """Decode tokens/s of int8 weight-only (torchao via ``TorchAoConfig``) ÷ bf16, both in this process.

    Loaded as transformers users load a quantised model, alternating, greedy ``DECODE_TOKENS``
    tokens after a short prompt; the first token (the prompt) is timed apart and left out.
    """
    import torch
    from torchao.quantization import Int8WeightOnlyConfig
    from transformers import AutoModelForCausalLM, TorchAoConfig

    models = {
        "bfloat16": AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16),
        "int8": AutoModelForCausalLM.from_pretrained(
            path, dtype=torch.bfloat16, quantization_config=TorchAoConfig(Int8WeightOnlyConfig())
        ),
    }
    ids = torch.tensor([[9, 8, 7, 6, 5, 4, 3, 2, 1, 10, 11, 12]])

    def rate(model: Any) -> float:
        with torch.inference_mode():
            started = time.perf_counter()
            model.generate(ids, max_new_tokens=1, do_sample=False)
            first = time.perf_counter() - started
            started = time.perf_counter()
            model.generate(ids, max_new_tokens=DECODE_TOKENS, min_new_tokens=DECODE_TOKENS, do_sample=False)
            return (DECODE_TOKENS - 1) / (time.perf_counter() - started - first)

    rates: dict[str, list[float]] = {name: [] for name in models}
    for model in models.values():
        rate(model)  # warm-up
    for number in range(rounds):
        for name in list(models) if number % 2 == 0 else list(models)[::-1]:
            rates[name].append(rate(models[name]))
    return statistics.median(rates["int8"]) / statistics.median(rates["bfloat16"])


def measure(scratch: Path, rounds: int = 3) -> Mapping[str, Any]:
    from transformers.utils import logging

    from nbchat.backends.local.packing import ENV_PACK
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
        paths[UNPACKED] = str(hardlinked_copy(float32_path, scratch / "unpacked"))
    decode = {
        way: TransformersBackend(
            dtype="float32" if way == "float32" else "bfloat16",
            generate_kwargs={"min_new_tokens": DECODE_TOKENS},
        )
        for way in paths
    }
    infos = {}
    for way, path in paths.items():  # the model process reads the packing switch at its load
        os.environ[ENV_PACK] = "0" if way == UNPACKED else "1"
        infos[way] = decode[way].load(path)
    os.environ.pop(ENV_PACK, None)
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
            qwen_bf16_packed_linears=infos["bfloat16"]["packed_linears"],
            qwen_bf16_packing_decode_speedup=tokens_per_s["bfloat16"] / tokens_per_s[UNPACKED],
            qwen_bf16_packing_prefill_speedup=prefill_s[UNPACKED] / prefill_s["bfloat16"],
            qwen_bandwidth_fraction_unpacked=tokens_per_s[UNPACKED]
            * infos[UNPACKED]["memory_bytes"]
            / bandwidth,
        )
    else:
        figures.update(
            qwen_bf16_decode_speedup=None,
            qwen_bf16_prefill_speedup=None,
            qwen_bf16_reason="no native bf16 on this CPU (no AVX512-BF16, no AMX-BF16): auto keeps float32",
        )
    cannot = torchao_reason() or (None if native else "no native bf16 to compare int8 with")
    if cannot is None:
        speedup = int8_speedup(paths["float32"], rounds)
        figures["qwen_int8_decode_speedup"] = speedup
        figures["qwen_int8_reason"] = f"torchao int8 weight-only decodes at {speedup:.2f}× bf16 here: " + (
            "offered" if speedup > 1 else "slower, so not offered as a dtype"
        )
    else:
        figures["qwen_int8_decode_speedup"] = None
        figures["qwen_int8_reason"] = cannot
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
