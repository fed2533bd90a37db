"""Engine benchmarks, measured side by side in one run on this machine.

    .venv/bin/python bench/engines.py            # all, prints a table, writes bench/engines.json
    .venv/bin/python bench/engines.py --quick    # fewer rounds

(b) Ollama: nbchat's backend vs the official ``ollama`` client, both streaming 20,000 chunks
    as fast as they come from the loopback server running in its own process (target >= 1.1).
(c) ``import nbchat``: wall time in a fresh interpreter, and whether torch got imported (must not).
(a) Qwen3 streaming vs raw ``model.generate``: ``bench/qwen_threads.py`` (run from here with the
    variants raw, raw_control, backend, backend+work; run it alone for every design compared).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHUNKS = 20_000
MODEL = "llama3.2:1b"  # no thinking capability: both clients stream the same answer chunks


def bench_import(rounds: int) -> dict[str, object]:
    code = (
        "import json, sys, time\n"
        "t = time.perf_counter()\n"
        "import nbchat\n"
        "elapsed = time.perf_counter() - t\n"
        "print(json.dumps({'s': elapsed, 'torch': 'torch' in sys.modules}))\n"
    )
    runs = [json.loads(subprocess.check_output([sys.executable, "-c", code])) for _ in range(rounds)]
    return {
        "import_s": statistics.median(r["s"] for r in runs),
        "torch_imported": any(r["torch"] for r in runs),
    }


def start_server() -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "nbchat.testing.ollama_server", "--chunk-count", str(CHUNKS)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    if not line.startswith("READY "):
        process.kill()
        raise RuntimeError(f"the loopback Ollama server did not start: {line!r}")
    return process, line.split(" ", 1)[1]


def nbchat_chunks_per_s(url: str) -> float:
    from nbchat.backends.ollama import OllamaBackend
    from nbchat.types import GenerationParams, Message

    backend = OllamaBackend(url)
    params = GenerationParams(temperature=0.0, max_new_tokens=CHUNKS + 10)
    backend.model_info(MODEL)  # warm the capability cache, as any second reply finds it
    started = time.perf_counter()
    count = sum(1 for _ in backend.stream(MODEL, [Message("user", "go")], params))
    elapsed = time.perf_counter() - started
    backend.close()
    assert count == CHUNKS, count
    return count / elapsed


def official_chunks_per_s(url: str) -> float:
    import ollama

    client = ollama.Client(host=url)
    options = {"temperature": 0.0, "num_predict": CHUNKS + 10, "num_ctx": 8192}
    started = time.perf_counter()
    stream = client.chat(MODEL, messages=[{"role": "user", "content": "go"}], stream=True, options=options)
    count = sum(1 for part in stream if part.message.content)
    elapsed = time.perf_counter() - started
    assert count == CHUNKS, count
    return count / elapsed


def bench_ollama(rounds: int) -> dict[str, object]:
    process, url = start_server()
    try:
        nbchat_runs, official_runs = [], []
        nbchat_chunks_per_s(url), official_chunks_per_s(url)  # warm-up, not counted
        for _ in range(rounds):  # interleaved, so drift on a shared machine hits both
            nbchat_runs.append(nbchat_chunks_per_s(url))
            official_runs.append(official_chunks_per_s(url))
    finally:
        process.terminate()
        process.wait(10)
    nbchat_rate, official_rate = statistics.median(nbchat_runs), statistics.median(official_runs)
    return {
        "ollama_nbchat_chunks_per_s": nbchat_rate,
        "ollama_official_chunks_per_s": official_rate,
        "ollama_client_ratio": nbchat_rate / official_rate,
    }


def bench_qwen(quick: bool) -> dict[str, object]:
    """(a) Runs bench/qwen_threads.py (its table is printed as it goes) and takes its ratios."""
    with tempfile.TemporaryDirectory() as scratch:
        figures = Path(scratch) / "qwen.json"
        args = [sys.executable, str(HERE / "qwen_threads.py"), "--json", str(figures), "--skip-probes"]
        # raw_control (a second raw process) shows the noise floor next to nbchat's figures.
        args += ["--variants", "raw,raw_control,backend,backend+work", "--rounds", "3" if quick else "7"]
        subprocess.run(args, check=True)
        return json.loads(figures.read_text())


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    parser.add_argument("--skip-qwen", action="store_true", help="leave out the (slow) Qwen3 figures")
    args = parser.parse_args()
    rounds = 3 if args.quick else 5

    import httpx
    import ollama

    results: dict[str, object] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, {_cores()} cores, "
        f"Python {platform.python_version()}",
        "versions": {"httpx": httpx.__version__, "ollama": _version("ollama"), "nbchat": _version("nbchat")},
    }
    del ollama
    results.update(bench_import(rounds))
    results.update(bench_ollama(rounds))
    if not args.skip_qwen:
        results.update(bench_qwen(args.quick))

    print(f"{'figure':32} {'value':>12}  target")
    targets = {
        "import_s": "< 0.3 s",
        "torch_imported": "False",
        "ollama_client_ratio": ">= 1.1",
        "qwen_stream_ratio": ">= 0.97",
    }
    for key, value in results.items():
        if key in ("date", "machine", "versions"):
            continue
        shown = f"{value:.3f}" if isinstance(value, float) else str(value)
        print(f"{key:32} {shown:>12}  {targets.get(key, '')}")
    (HERE / "engines.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0


def _version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


if __name__ == "__main__":
    raise SystemExit(main())
