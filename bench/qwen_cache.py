"""Time to the first token deep into a conversation, with the prompt cache kept across turns and without.

    .venv/bin/python bench/qwen_cache.py            # about 1-2 minutes on 2 cores
    .venv/bin/python bench/run.py --only qwen_cache # the same, merged into results.json

One random checkpoint of Qwen3's architecture (``tiny_qwen3``: Qwen3-1.7B's hidden size 2048,
its attention shape and its vocabulary of 151,936 rows, 4 of its 28 layers: 0.5 B parameters, a
context of 4,096; encoding 2,000 tokens takes about a second here in bfloat16, and the run stays
near a minute) is loaded twice through nbchat's real backend: as users get it (the prompt cache
on, the dtype ``auto`` picks) and with ``NBCHAT_QWEN_CACHE_PROMPTS=0``, which re-encodes every
prompt in full as raw ``generate`` does. Each round, on each model:

- a **new conversation**: a system prompt new to the process (its round number first) and the
  question; the time to the first token is that of a one-token reply, through
  ``TransformersBackend().stream(...)`` as the panel calls it (rendering and tokenizing in the
  kernel, the pipe, encoding the prompt in the model process);
- a **long conversation**: the same kind of system prompt, about 2,000 tokens of earlier turns
  whose last answer the model process itself generated (the previous turn, not timed), then
  the same question; the same one-token reply is timed.

The long conversation's new tokens are the previous answer (Qwen3's template renders past
answers without their think block, so they are encoded again: in every engine) and the
question, about as many as the new conversation's; what remains is attending to the 2,000
cached tokens, which grows with the layers as the rest does. A first round warms both
processes up and is not counted; the others alternate the two models, so a drift of the
machine hits both alike. The figures:

- ``qwen_ttft_growth``: long ÷ new with the cache (target ≤ 1.5);
- ``qwen_ttft_growth_uncached``: the same with the cache off, the anchor (raw re-encoding);
- ``qwen_ttft_new_s``, ``qwen_ttft_long_s``, ``qwen_ttft_long_uncached_s``: the medians, and
  ``qwen_ttft_history_tokens``, ``qwen_ttft_cached_share``: the long prompt's tokens and the
  share of them the model process did not encode again (its ``cached_tokens``).
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

HIDDEN, LAYERS, VOCAB, CONTEXT = 2048, 4, 151_936, 4096  # Qwen3-1.7B's width and vocabulary
HISTORY_TOKENS = 2000
PREVIOUS_REPLY_TOKENS = 24
QUESTION = "And now, one more question: what should we do next?"
USER_TURN = (
    "Notebooks let people mix code, text and results. A kernel runs the code; a chat panel sends "
    "messages to a model and streams the reply back, one token after another. "
) * 3
ANSWER = "Sure, here is a short answer: yes. Let me think about it for a moment. " * 2


def conversation(backend: Any, model: str, round_number: int) -> list[Any]:
    """A system prompt of this round, then exchanges up to ``HISTORY_TOKENS`` (the last answer open)."""
    from nbchat.types import Message

    messages = [Message("system", f"Round {round_number}: a long conversation. Be brief.")]
    while True:
        messages.append(Message("user", USER_TURN))
        if backend.count_tokens(model, messages) >= HISTORY_TOKENS:
            return messages
        messages.append(Message("assistant", ANSWER))


def first_token_s(backend: Any, model: str, messages: list[Any]) -> tuple[float, int, int | None]:
    """Seconds to a one-token reply through the backend; its prompt tokens and the cached ones.

    The cached count is the model process's ``cached_tokens``, in the reply's stats where the
    backend passes it on (None where it does not).
    """
    from nbchat.types import GenerationParams

    started = time.perf_counter()
    reply = backend.stream(model, messages, GenerationParams(temperature=0.0, max_new_tokens=1)).wait()
    elapsed = time.perf_counter() - started
    stats = reply.stats
    assert stats is not None and stats.completion_tokens == 1, stats
    return elapsed, stats.prompt_tokens or 0, getattr(stats, "cached_tokens", None)


def measure(scratch: Path, rounds: int = 3) -> Mapping[str, Any]:
    from transformers.utils import logging

    from nbchat.backends.transformers import TransformersBackend, unload
    from nbchat.testing.tiny_qwen3 import tiny_qwen3
    from nbchat.types import GenerationParams, Message

    logging.disable_progress_bar()
    started = time.perf_counter()
    cached = str(
        tiny_qwen3(
            scratch / "cached",
            hidden_size=HIDDEN,
            num_layers=LAYERS,
            vocab_size=VOCAB,
            max_position_embeddings=CONTEXT,
        )
    )
    uncached = str(scratch / "uncached")
    os.mkdir(uncached)
    for item in Path(cached).iterdir():  # the same checkpoint under another id: a process of its own
        os.link(item, Path(uncached) / item.name)
    print(f"checkpoint built in {time.perf_counter() - started:.1f} s", flush=True)
    backend = TransformersBackend()
    info = backend.load(cached)
    previous = os.environ.get("NBCHAT_QWEN_CACHE_PROMPTS")
    os.environ["NBCHAT_QWEN_CACHE_PROMPTS"] = "0"
    try:
        backend.load(uncached)
    finally:
        if previous is None:
            del os.environ["NBCHAT_QWEN_CACHE_PROMPTS"]
        else:
            os.environ["NBCHAT_QWEN_CACHE_PROMPTS"] = previous
    answer = GenerationParams(temperature=0.0, max_new_tokens=PREVIOUS_REPLY_TOKENS)
    times: dict[str, dict[str, list[float]]] = {m: {"new": [], "long": []} for m in (cached, uncached)}
    shares: list[float] = []
    history_tokens = 0
    try:
        for model in (cached, uncached):  # warm-up: a process's first generate is slower
            backend.stream(model, [Message("user", "Hello!")], answer).wait()
        for number in range(rounds + 1):  # round 0 warms up: not counted
            for model in (cached, uncached) if number % 2 == 0 else (uncached, cached):
                question = Message("user", QUESTION)
                new = [Message("system", f"Round {number}: a new conversation. Be brief."), question]
                fresh = first_token_s(backend, model, new)[0]
                messages = conversation(backend, model, number)
                reply = backend.stream(model, messages, answer).wait()  # the previous turn
                messages += [Message("assistant", reply.text), question]
                elapsed, prompt_tokens, reused = first_token_s(backend, model, messages)
                name = "cached" if model == cached else "uncached"
                print(f"  round {number} {name}: new {fresh:.3f} s, long {elapsed:.3f} s", flush=True)
                if number == 0:
                    continue
                times[model]["new"].append(fresh)
                times[model]["long"].append(elapsed)
                if model == cached:
                    history_tokens = prompt_tokens
                    if reused is not None:
                        shares.append(reused / prompt_tokens)
    finally:
        unload()
    median = {m: {k: statistics.median(v) for k, v in t.items()} for m, t in times.items()}
    figures: dict[str, Any] = {
        "qwen_ttft_growth": median[cached]["long"] / median[cached]["new"],
        "qwen_ttft_growth_uncached": median[uncached]["long"] / median[uncached]["new"],
        "qwen_ttft_new_s": median[cached]["new"],
        "qwen_ttft_long_s": median[cached]["long"],
        "qwen_ttft_long_uncached_s": median[uncached]["long"],
        "qwen_ttft_history_tokens": history_tokens,
        "qwen_ttft_cached_share": statistics.median(shares) if shares else None,
        "qwen_cache_checkpoint": (
            f"random Qwen3, hidden {HIDDEN}, {LAYERS} layers, vocab {VOCAB:,}, "
            f"{int(info['parameters']) / 1e9:.2f} B "
            f"parameters, {info['dtype']}"
        ),
    }
    for key, value in figures.items():
        print(f"  {key}: {value}", flush=True)
    return figures


def measure_in_scratch() -> Mapping[str, Any]:
    return in_scratch(measure, "nbchat-bench-cache-")()


def main() -> int:
    def run(args: argparse.Namespace) -> Mapping[str, Any]:
        return {k: v for k, v in measure_in_scratch().items() if isinstance(v, (int, float))}

    return figures_main(__doc__, run)


if __name__ == "__main__":
    raise SystemExit(main())
