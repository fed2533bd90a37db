"""Where should a local Qwen3 generate inside a Jupyter kernel? Tokens per second, side by side.

Run: ``.venv/bin/python bench/qwen_threads.py`` (about 10 minutes on 2 cores).

Every variant runs in its own fresh Python process (a stand-in for a kernel)
that loads the same random ~164M-parameter Qwen3 checkpoint built by
``nbchat.testing.tiny_qwen3`` and generates 64 greedy tokens
(``min_new_tokens=64``, so eos cannot end a run early) after one warm-up
generation. The driver then asks the variants for one timed generation each,
round after round, one variant at a time (the others sleep on a pipe), with a
``raw`` run before and after every other variant's run, and reports the median
tokens/s and the median (and quartiles) of each run's ratio to the mean of the
two ``raw`` runs around it. Comparing neighbours matters: on shared cloud machines the
memory bandwidth, which bounds CPU decoding, drifts by 2x within minutes.

Variants ("+work": before every generation the process's main thread runs
torch work of its own, a few large matmuls and a small training step, as a
notebook user does):

- ``raw``: ``model.generate`` in the main thread of a fresh process (the ceiling);
- ``raw_control``: the same in a second process: its ratio to ``raw`` is the noise floor;
- ``thread_per_reply``: the textbook recipe, a new ``threading.Thread(target=model.generate)``
  per reply, model loaded in the main thread;
- ``worker``: one long-lived thread that loads the model and runs every generate;
- ``worker_passive``: the same with ``OMP_WAIT_POLICY=PASSIVE`` set before torch is
  imported (in a real kernel the user may have imported torch already, so this is
  the best case for tuning);
- ``worker_1thread``: the worker calls ``torch.set_num_threads(1)`` (no OpenMP team at all);
- ``backend``: nbchat's ``TransformersBackend`` — a dedicated model process whose
  main thread generates, tokens streamed back over a pipe.

Decoding a model this size on CPU is bound by memory bandwidth, and on a shared
machine that bandwidth drifts with the neighbours' load, so the generation
ratios carry that noise (``raw_control`` shows how much). A second section
therefore probes the OpenMP effect itself, undiluted: microseconds per small,
cache-resident matmul, run in the main thread, in other threads (before and
after the main thread ran torch, with ``OMP_WAIT_POLICY=PASSIVE``,
``GOMP_SPINCOUNT=1e7``, or one thread), and in a child process of a parent that
ran torch. Both sections alternate the order of the variants from round to
round so that a steady drift cancels out.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

NEW_TOKENS = 64
PROMPT = "Hello there! Could you tell me a little about the weather today?"
VARIANTS = (
    "raw",
    "raw_control",
    "thread_per_reply",
    "thread_per_reply+work",
    "worker",
    "worker+work",
    "worker_passive+work",
    "worker_1thread+work",
    "backend",
    "backend+work",
)


# -- inside one variant's process ---------------------------------------------------------------


def torch_work() -> None:
    """What a notebook user's own cell might do: a few big matmuls, one small training step."""
    import torch

    a = torch.randn(1024, 1024)
    for _ in range(5):
        a = a @ a
        a = a / a.norm()
    layer = torch.nn.Linear(256, 256)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    loss = layer(torch.randn(64, 256)).pow(2).mean()
    loss.backward()
    optimizer.step()


Run = tuple[float, float]  # tokens per second, seconds to the first token


def in_process_generator(checkpoint: str) -> Callable[[], Run]:
    """Load model and tokenizer here (in the calling thread); return a timed 64-token generate."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32, low_cpu_mem_usage=True)
    model.eval()
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": PROMPT}],
        add_generation_prompt=True,
        enable_thinking=False,
        return_tensors="pt",
        return_dict=True,
    )

    from transformers.generation.streamers import BaseStreamer

    class FirstToken(BaseStreamer):
        """Notes when generate produces its first new token (its first put is the prompt)."""

        def __init__(self) -> None:
            self.puts = 0
            self.at: float | None = None

        def put(self, value: Any) -> None:
            self.puts += 1
            if self.puts == 2:
                self.at = time.perf_counter()

        def end(self) -> None:
            pass

    def generate() -> Run:
        first = FirstToken()
        start = time.perf_counter()
        out = model.generate(
            **inputs, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False, streamer=first
        )
        elapsed = time.perf_counter() - start
        assert out.shape[1] - inputs["input_ids"].shape[1] == NEW_TOKENS and first.at is not None
        return NEW_TOKENS / elapsed, first.at - start

    return generate


def backend_generator(checkpoint: str) -> Callable[[], Run]:
    """nbchat's chosen design, through its public API (the model id is the checkpoint path)."""
    from nbchat.backends.transformers import TransformersBackend
    from nbchat.types import GenerationParams, Message

    backend = TransformersBackend(dtype="float32", generate_kwargs={"min_new_tokens": NEW_TOKENS})  # as raw
    backend.load(checkpoint)
    params = GenerationParams(temperature=0.0, max_new_tokens=NEW_TOKENS)
    messages = [Message("user", PROMPT)]

    def generate() -> Run:
        start = time.perf_counter()
        first: float | None = None
        reply = backend.stream(checkpoint, messages, params)
        for _ in reply:  # as a reader sees it: the first visible text, then the rest
            if first is None:
                first = time.perf_counter()
        elapsed = time.perf_counter() - start
        assert reply.stats is not None and reply.stats.completion_tokens == NEW_TOKENS, reply.stats
        assert first is not None
        return NEW_TOKENS / elapsed, first - start

    return generate


def serve(variant: str, checkpoint: str) -> None:
    """Set the variant up, warm it up, then answer every ``go`` line with one tokens/s line."""
    base, _, work = variant.partition("+")
    if base == "worker_passive":
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    elif base == "worker_spin":
        os.environ["GOMP_SPINCOUNT"] = "10000000"
    import torch

    run: Callable[[], Run]
    if base in ("raw", "raw_control", "thread_per_reply"):
        generate = in_process_generator(checkpoint)
        if base != "thread_per_reply":
            run = generate
        else:

            def run() -> Run:
                result: list[Run] = []
                thread = threading.Thread(target=lambda: result.append(generate()))
                thread.start()
                thread.join()
                return result[0]

    elif base.startswith("worker"):
        jobs: queue.Queue[None] = queue.Queue()
        results: queue.Queue[Run] = queue.Queue()

        def worker() -> None:
            if base == "worker_1thread":
                torch.set_num_threads(1)
            generate = in_process_generator(checkpoint)
            results.put((0.0, 0.0))
            while True:
                jobs.get()
                results.put(generate())

        threading.Thread(target=worker, daemon=True).start()
        results.get()

        def run() -> Run:
            jobs.put(None)
            return results.get()

    elif base == "backend":
        run = backend_generator(checkpoint)
    else:
        raise SystemExit(f"unknown variant {variant!r}")

    def timed() -> Run:
        if work:
            torch_work()
        return run()

    timed()  # warm-up
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() == "go":
            rate, ttft = timed()
            print(f"{rate:.4f} {ttft:.6f}", flush=True)


# -- the small-op probe: the OpenMP effect without the noise of memory bandwidth --------------------

PROBES = (
    "main",
    "thread, main idle",
    "thread after main torch",
    "thread after main torch, OMP_WAIT_POLICY=PASSIVE",
    "thread after main torch, GOMP_SPINCOUNT=1e7",
    "thread after main torch, 1 thread",
    "process after parent torch",
)


def probe(variant: str) -> None:
    """Print microseconds per small matmul (cache-resident: timing is OpenMP overhead plus compute)."""
    if "PASSIVE" in variant:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    elif "SPINCOUNT" in variant:
        os.environ["GOMP_SPINCOUNT"] = "10000000"
    import torch

    def timed() -> float:
        if "1 thread" in variant:
            torch.set_num_threads(1)
        weight, x = torch.randn(256, 512), torch.randn(8, 256)
        for _ in range(300):
            x @ weight
        runs = []
        for _ in range(7):
            start = time.perf_counter()
            for _ in range(3000):
                x @ weight
            runs.append((time.perf_counter() - start) / 3000 * 1e6)
        return statistics.median(runs)

    if variant == "main":
        result = timed()
    elif variant == "process after parent torch":
        torch_work()
        child = [sys.executable, __file__, "--probe", "main"]
        result = float(subprocess.run(child, capture_output=True, text=True, check=True).stdout)
    else:
        if "after main torch" in variant:
            torch_work()
        box: list[float] = []
        thread = threading.Thread(target=lambda: box.append(timed()))
        thread.start()
        thread.join()
        result = box[0]
    print(f"{result:.2f}", flush=True)


def run_probes(rounds: int) -> None:
    print("\nsmall-op probe: [8x256] @ [256x512] matmul, microseconds per op (fresh process each)")
    values: dict[str, list[float]] = {v: [] for v in PROBES}
    for number in range(rounds):
        for variant in PROBES if number % 2 == 0 else PROBES[::-1]:  # alternate: linear drift cancels
            out = subprocess.run(
                [sys.executable, __file__, "--probe", variant], capture_output=True, text=True, check=True
            ).stdout
            values[variant].append(float(out))
    base = values["main"]
    print(f"{'where the op runs':<52}{'us/op':>8}{'speed vs main':>15}   per round")
    for variant, us in values.items():
        ratio = statistics.median(b / u for b, u in zip(base, us, strict=True))
        print(
            f"{variant:<52}{statistics.median(us):>8.1f}{ratio:>14.2f}x   " + " ".join(f"{u:.1f}" for u in us)
        )


# -- the driver -----------------------------------------------------------------------------------


def build_checkpoint(directory: Path, hidden_size: int, num_layers: int) -> Path:
    from transformers.utils import logging

    from nbchat.testing.tiny_qwen3 import describe, tiny_qwen3

    logging.disable_progress_bar()

    start = time.perf_counter()
    path = tiny_qwen3(directory, hidden_size=hidden_size, num_layers=num_layers, seed=0)
    info = describe(path)
    params_m = 12 * hidden_size**2 * num_layers / 1e6
    print(
        f"checkpoint: hidden {info['hidden_size']}, {info['num_layers']} layers, vocab {info['vocab_size']}, "
        f"~{params_m:.0f}M parameters, {info['weights_mb']} MB, built in {time.perf_counter() - start:.1f} s"
    )
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--probe", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help="an existing checkpoint directory (default: build one)")
    parser.add_argument("--hidden-size", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=13)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--skip-probes", action="store_true", help="leave out the small-op probe")
    parser.add_argument("--json", help="also write the ratios to raw as JSON to this file")
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.checkpoint)
        return
    if args.probe:
        probe(args.probe)
        return

    scratch = Path(tempfile.mkdtemp(prefix="nbchat-bench-"))
    try:
        checkpoint = (
            Path(args.checkpoint)
            if args.checkpoint
            else build_checkpoint(scratch / "qwen3", args.hidden_size, args.layers)
        )
        ratios = run_variants(str(checkpoint), args.variants.split(","), args.rounds)
        if args.json:
            figures = {
                f"qwen_{v.replace('+', '_')}" + ("" if v.endswith("_ttft_s") else "_ratio"): r
                for v, r in ratios.items()
            }
            if "backend_ttft_s" in ratios and "raw_ttft_s" in ratios:
                figures["qwen_ttft_overhead_s"] = ratios["backend_ttft_s"] - ratios["raw_ttft_s"]
            if "backend" in ratios and "backend+work" in ratios:
                figures["qwen_stream_ratio"] = min(ratios["backend"], ratios["backend+work"])
            Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
        if not args.skip_probes:
            run_probes(args.rounds)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def run_variants(checkpoint: str, variants: list[str], rounds: int) -> dict[str, float]:
    import torch

    print(
        f"torch {torch.__version__}, {os.cpu_count()} CPUs, {torch.get_num_threads()} intra-op threads; "
        f"{NEW_TOKENS} greedy tokens per run, {rounds} rounds"
    )
    processes: dict[str, subprocess.Popen[str]] = {}
    ttfts: dict[str, list[float]] = {v: [] for v in variants}
    env = dict(os.environ, TQDM_DISABLE="1", TRANSFORMERS_VERBOSITY="error")
    try:
        for variant in variants:  # one at a time: loading in parallel would skew the warm-ups
            process = subprocess.Popen(
                [sys.executable, __file__, "--serve", variant, "--checkpoint", checkpoint],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env=env,
            )
            processes[variant] = process
            if read_line(process) != "ready":
                raise SystemExit(f"variant {variant} failed to start")
        speeds: dict[str, list[float]] = {v: [] for v in variants}
        ratios: dict[str, list[float]] = {v: [] for v in variants if v != "raw"}

        def measure(variant: str) -> float:
            process = processes[variant]
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
            speed, ttft = map(float, read_line(process).split())
            speeds[variant].append(speed)
            ttfts[variant].append(ttft)
            return speed

        others = [v for v in variants if v != "raw"]
        for number in range(rounds):
            order = others if number % 2 == 0 else others[::-1]  # linear drift cancels
            if "raw" not in variants:
                for variant in order:
                    measure(variant)
                continue
            before = measure("raw")
            for variant in order:  # raw, A, raw, B, raw, ...: each run sits between two raw runs
                speed = measure(variant)
                after = measure("raw")
                ratios[variant].append(speed / ((before + after) / 2))
                before = after
    finally:
        for process in processes.values():
            process.kill()
            process.wait()
    medians = report(speeds, ratios)
    print(f"{'variant':<24}{'first token, s (median)':>24}")
    for variant, values in ttfts.items():
        medians[f"{variant}_ttft_s"] = statistics.median(values)
        print(f"{variant:<24}{statistics.median(values):>24.4f}")
    return medians


def read_line(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    return process.stdout.readline().strip()


def report(speeds: dict[str, list[float]], ratios: dict[str, list[float]]) -> dict[str, float]:
    """Print the table; return each variant's median ratio to the raw runs either side of it."""
    medians: dict[str, float] = {"raw": 1.0} if "raw" in speeds else {}
    print(f"{'variant':<24}{'tok/s (median)':>15}{'vs raw':>9}{'quartiles':>14}   per run")
    for variant, values in speeds.items():
        shown = quartiles = ""
        if ratios.get(variant):
            medians[variant] = statistics.median(ratios[variant])
            shown = f"{medians[variant]:.3f}x"
            if len(ratios[variant]) >= 4:
                low, _, high = statistics.quantiles(ratios[variant], n=4)
                quartiles = f"{low:.2f}-{high:.2f}"
        runs = " ".join(f"{v:.1f}" for v in values)
        print(f"{variant:<24}{statistics.median(values):>15.2f}{shown:>9}{quartiles:>14}   {runs}")
    return medians


if __name__ == "__main__":
    main()
