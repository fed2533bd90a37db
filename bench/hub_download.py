"""A model's download through nbchat's path ÷ a plain ``huggingface_hub.snapshot_download``, same hub.

    .venv/bin/python bench/hub_download.py             # about half a minute
    .venv/bin/python bench/run.py --only hub_download  # the same, merged into results.json

The loopback hub (``python -m nbchat.testing.hub_server``, in a process of its own so it does not
share this one's interpreter) serves a repo shaped like Qwen3-1.7B's: its small json files and
two weights shards (LFS files, redirected to the content port as the hub redirects to its CDN),
``SHARD_MB`` each of random bytes. Each round downloads it twice into fresh caches, in turn:

- **nbchat**: ``nbchat.backends.local.download.fetch``, exactly what the model process runs on a
  first use: the model info, the shards with their progress read from disk four times a
  second (resumable ``.nbchat-partial`` files), then ``snapshot_download`` for the small files
  and the snapshot's links;
- **plain**: ``snapshot_download(repo, cache_dir=..., endpoint=...)``, what a user would run.

A first round warms both up (imports, page cache) and is not counted. Figures:
``hub_download_overhead`` (median nbchat ÷ median plain; target ≤ 1.1) and
``hub_download_mb_s`` (nbchat's median throughput, MB/s: loopback, so the client's own speed).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from common import figures_main, in_scratch

SHARD_MB = 200
SHARDS = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")
REPO = "bench/Qwen3-shaped"
ROUNDS = 5  # counted, after one warm-up round


def make_repo(folder: Path) -> int:
    """Qwen3-1.7B's file list (small files real-ish, shards random); returns the repo's bytes."""
    import json

    folder.mkdir(parents=True)
    (folder / "config.json").write_text(
        json.dumps({"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3"})
    )
    (folder / "generation_config.json").write_text(json.dumps({"do_sample": True, "temperature": 0.6}))
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 131072}))
    (folder / "tokenizer.json").write_text(
        json.dumps({"model": {"vocab": {f"t{i}": i for i in range(50_000)}}})
    )
    (folder / "merges.txt").write_text("\n".join(f"t{i} t{i + 1}" for i in range(20_000)))
    weight_map = {f"layer.{i}": SHARDS[i % 2] for i in range(28)}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    for shard in SHARDS:
        with (folder / shard).open("wb") as out:
            for _ in range(SHARD_MB):
                out.write(os.urandom(1 << 20))
    return sum(path.stat().st_size for path in folder.iterdir())


def start_hub(folder: Path) -> tuple[subprocess.Popen[str], str]:
    command = [sys.executable, "-m", "nbchat.testing.hub_server", "--repo", f"{REPO}={folder}"]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None
    line = server.stdout.readline().strip()
    if not line.startswith("READY "):
        server.kill()
        raise RuntimeError(f"the loopback hub did not start: {line!r}")
    return server, line.removeprefix("READY ")


def measure(scratch: Path) -> Mapping[str, Any]:
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import disable_progress_bars

    from nbchat.backends.local import download

    disable_progress_bars()
    repo = scratch / "repo"
    total = make_repo(repo)
    server, url = start_hub(repo)
    os.environ["HF_ENDPOINT"] = url  # what nbchat's path reads, at the call
    times: dict[str, list[float]] = {"nbchat": [], "plain": []}
    try:
        for round_number in range(ROUNDS + 1):
            for way in ("nbchat", "plain") if round_number % 2 else ("plain", "nbchat"):
                cache = scratch / f"cache-{way}-{round_number}"
                os.environ["HF_HUB_CACHE"] = str(cache)
                started = time.perf_counter()
                if way == "nbchat":
                    folder = download.fetch(REPO, lambda done, total, speed: None)
                else:
                    folder = snapshot_download(REPO, cache_dir=cache, endpoint=url)
                elapsed = time.perf_counter() - started
                if sorted(p.name for p in Path(folder).iterdir()) != sorted(p.name for p in repo.iterdir()):
                    raise RuntimeError(f"{way} did not download every file into {folder}")
                if round_number:
                    times[way].append(elapsed)
                shutil.rmtree(cache)
                print(f"  round {round_number} {way}: {elapsed:.2f} s", flush=True)
    finally:
        server.terminate()
        server.wait(10)
    nbchat, plain = statistics.median(times["nbchat"]), statistics.median(times["plain"])
    figures = {
        "hub_download_overhead": nbchat / plain,
        "hub_download_mb_s": total / 1e6 / nbchat,
        "hub_download_plain_mb_s": total / 1e6 / plain,
    }
    for key, value in figures.items():
        print(f"  {key}: {value}", flush=True)
    return figures


def measure_in_scratch() -> Mapping[str, Any]:
    return in_scratch(measure, "nbchat-bench-hub-")()


def main() -> int:
    def run(args: argparse.Namespace) -> Mapping[str, Any]:
        return measure_in_scratch()

    return figures_main(__doc__, run)


if __name__ == "__main__":
    raise SystemExit(main())
