"""Does ``unload()`` give a local model's memory back? RSS before loading, loaded, and after unloading.

    .venv/bin/python bench/memory.py [--json FILE]

A fresh interpreter (standing in for a kernel) loads a random Qwen3 checkpoint of a few hundred
MB through nbchat's production path, then unloads it. Memory is the resident set of the kernel
plus its model process, read from ``/proc``:

- ``memory_returned_fraction``: memory given back by ``unload()`` ÷ the model's weights
  (target ≥ 0.9; above 1 means torch's own runtime in the model process went back too);
- ``memory_kernel_kept_mb``: what the kernel still holds after unloading, over its start (the
  tokenizer's and transformers' Python modules: a module, once imported, stays).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from common import figures_main

CHILD = r"""
import gc, json, os, sys, time
import nbchat
from nbchat.backends.transformers import TransformersBackend

def rss(pid):
    try:
        with open(f"/proc/{pid}/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))
    except FileNotFoundError:
        return 0

me = os.getpid()
before = rss(me)
backend = TransformersBackend()
info = backend.load(sys.argv[1])
child = info["pid"]
time.sleep(0.5)
loaded = rss(me) + rss(child)
weights = info["memory_bytes"]
backend.unload(sys.argv[1])
gc.collect()
deadline = time.time() + 10
while rss(child) and time.time() < deadline:
    time.sleep(0.1)
after = rss(me) + rss(child)
print(json.dumps({"before": before, "loaded": loaded, "after": after, "weights": weights}))
"""


def measure(hidden_size: int, layers: int) -> dict[str, float]:
    from nbchat.testing.tiny_qwen3 import tiny_qwen3

    scratch = Path(tempfile.mkdtemp(prefix="nbchat-bench-memory-"))
    try:
        checkpoint = tiny_qwen3(scratch / "qwen3", hidden_size=hidden_size, num_layers=layers)
        output = subprocess.check_output([sys.executable, "-c", CHILD, str(checkpoint)], text=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    sizes = json.loads(output.strip().splitlines()[-1])
    returned = sizes["loaded"] - sizes["after"]
    mb = 2**20
    return {
        "memory_weights_mb": sizes["weights"] / mb,
        "memory_loaded_mb": sizes["loaded"] / mb,
        "memory_returned_mb": returned / mb,
        "memory_returned_fraction": returned / sizes["weights"],
        "memory_kernel_kept_mb": (sizes["after"] - sizes["before"]) / mb,
    }


def main() -> int:
    def options(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--hidden-size", type=int, default=768)
        parser.add_argument("--layers", type=int, default=12)

    return figures_main(
        __doc__, lambda args: measure(args.hidden_size, args.layers), digits=3, options=options
    )


if __name__ == "__main__":
    raise SystemExit(main())
