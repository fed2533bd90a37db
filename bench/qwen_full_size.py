"""What a user of Qwen3-1.7B on this CPU waits for: the README's table, at the model's full size.

    .venv/bin/python bench/qwen_full_size.py   # about 5 minutes on 2 cores, 14 GB of disk and RAM

Not part of ``bench/run.py`` (too slow for a routine run): a random checkpoint of exactly
Qwen3-1.7B's shape (``tiny_qwen3``: hidden 2048, 28 layers, 16/8 attention heads' widths, MLP
6,144, vocabulary 151,936 rows, tied embeddings: 1.72 B parameters) loaded through nbchat's real
backend, first in float32, then in bfloat16 (what ``auto`` picks on a CPU with native bf16,
its weights packed for oneDNN), one model process at a time. For each: the load, decode
tokens/s (32 greedy tokens after a short prompt, the model process's own timing), the time
to the first token of a new ~512- and ~2,000-token prompt, and of the next turn of that
~2,000-token conversation (its KV cache kept: only the new tokens are encoded). Prints a
Markdown table to paste into the README.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from qwen_cache import conversation, first_token_s
from qwen_precision import long_prompt

HIDDEN, LAYERS, VOCAB = 2048, 28, 151_936
DECODE_TOKENS = 32


def measure_dtype(path: str, dtype: str) -> dict[str, float]:
    from nbchat.backends.transformers import TransformersBackend, unload
    from nbchat.types import GenerationParams, Message

    backend = TransformersBackend(dtype=dtype, generate_kwargs={"min_new_tokens": DECODE_TOKENS})  # type: ignore[arg-type]
    started = time.perf_counter()
    info = backend.load(path)
    row: dict[str, float] = {"load_s": time.perf_counter() - started, "gb": info["memory_bytes"] / 1e9}
    plain = TransformersBackend()
    try:
        short = [Message("user", "Hello there! Tell me about the weather today.")]
        greedy = GenerationParams(temperature=0.0, max_new_tokens=DECODE_TOKENS)
        backend.stream(path, short, greedy).wait()  # the first generate of a process is slower
        stats = backend.stream(path, short, greedy).wait().stats
        assert stats is not None and stats.tokens_per_s
        row["decode"] = stats.tokens_per_s
        row["prefill_512_s"], row["prefill_512_tokens"], _ = first_token_s(
            plain, path, long_prompt(plain, path, 1)
        )
        history = conversation(plain, path, 2)
        row["prefill_2000_s"], row["prefill_2000_tokens"], _ = first_token_s(plain, path, history)
        history = [*history, Message("assistant", "Yes."), Message("user", "And what comes next?")]
        row["next_turn_s"], _, cached = first_token_s(plain, path, history)
        row["next_turn_cached_tokens"] = float(cached or 0)
    finally:
        unload(path)
    print(f"  {dtype}: {row}", flush=True)
    return row


def main() -> int:
    from nbchat.testing.tiny_qwen3 import tiny_qwen3

    with tempfile.TemporaryDirectory(prefix="nbchat-bench-full-") as scratch:
        started = time.perf_counter()
        path = str(
            tiny_qwen3(
                Path(scratch) / "qwen3-1.7b-shape",
                hidden_size=HIDDEN,
                num_layers=LAYERS,
                vocab_size=VOCAB,
                max_position_embeddings=4096,
            )
        )
        print(f"checkpoint built in {time.perf_counter() - started:.0f} s", flush=True)
        rows = {dtype: measure_dtype(path, dtype) for dtype in ("float32", "bfloat16")}
    load = os.getloadavg()[0]

    def cells(key: str, fmt: str) -> str:
        return " | ".join(fmt.format(rows[d][key]) for d in rows)

    print(f"\n(load average at the end: {load:.2f})\n")
    print("| | float32 | bfloat16 (auto here) |\n| --- | --- | --- |")
    print(f"| weights in memory | {cells('gb', '{:.1f} GB')} |")
    print(f"| load (model process start included) | {cells('load_s', '{:.0f} s')} |")
    print(f"| decode, tokens/s | {cells('decode', '{:.1f}')} |")
    print(f"| first token, new prompt of ~512 tokens | {cells('prefill_512_s', '{:.1f} s')} |")
    print(f"| first token, new prompt of ~2,000 tokens | {cells('prefill_2000_s', '{:.1f} s')} |")
    print(
        f"| first token, the next turn of that conversation (KV cache) | {cells('next_turn_s', '{:.1f} s')} |"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
