"""Engine figures, measured side by side; ``bench/run.py`` runs them with the rest.

(b) Ollama: nbchat's backend vs the official ``ollama`` client, both streaming 20,000 chunks
    as fast as they come from the loopback server running in its own process (target >= 1.1).
(c) ``import nbchat`` and ``%load_ext nbchat``: wall time in a fresh interpreter, and whether
    torch got imported (must not).
(a) Qwen3 streaming vs raw ``model.generate``: ``bench/qwen_threads.py`` (run from here with the
    variants raw, raw_control, backend, backend+work; run it alone for every design compared).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHUNKS = 20_000
MODEL = "llama3.2:1b"  # no thinking capability: both clients stream the same answer chunks


def bench_import(rounds: int) -> dict[str, object]:
    code = (
        "import json, sys, time\n"
        "from IPython.core.interactiveshell import InteractiveShell\n"
        "shell = InteractiveShell.instance()\n"
        "t = time.perf_counter()\n"
        "import nbchat\n"
        "imported = time.perf_counter() - t\n"
        "shell.run_line_magic('load_ext', 'nbchat')\n"
        "loaded = time.perf_counter() - t\n"
        "print(json.dumps({'import': imported, 'load_ext': loaded, 'torch': 'torch' in sys.modules}))\n"
    )
    runs = [json.loads(subprocess.check_output([sys.executable, "-c", code])) for _ in range(rounds)]
    return {
        "import_s": statistics.median(r["import"] for r in runs),
        "import_and_load_ext_s": statistics.median(r["load_ext"] for r in runs),
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
        args += ["--variants", "raw,raw_control,backend,backend+work", "--rounds", "3" if quick else "5"]
        subprocess.run(args, check=True)
        return json.loads(figures.read_text())
