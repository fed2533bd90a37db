"""What attaching the kernel's data to a question costs.

    .venv/bin/python bench/context.py [--json FILE]

- ``context_summary_s``: summarising a 1,000,000 × 20 pandas DataFrame (16 float, 2 int and 2
  text columns, some nulls) and a 10,000,000-element float64 array: the median of 5 rounds
  each, the slower of the two (target < 0.1 s each);
- ``context_overhead_fraction``: in a real IPython shell that ran 2 cells and holds both
  objects, the process CPU time (every thread: summaries run in a worker) of building what a
  ``send("… @df … @nums", cells=2)`` attaches (``resolve_mentions``, ``recent_cells``,
  ``with_context``: what the session calls) ÷ the wall time of that send's reply from the
  loopback Ollama server, in its own process, streaming 200 chunks 20 ms apart (50 tokens/s,
  a small model on a laptop). Target < 0.05.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

from common import figures_main

ROUNDS = 5
REPLY_CHUNKS = 200
CHUNK_DELAY_S = 0.02
PROMPT = "Which columns of @df look like @nums, and what did my last cells do?"


def big_objects() -> tuple[object, object]:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(12)
    rows = 1_000_000
    columns: dict[str, object] = {f"x{i}": rng.standard_normal(rows) for i in range(16)}
    columns["x3"][::97] = np.nan  # type: ignore[index]
    columns |= {"count": rng.integers(0, 100, rows), "year": rng.integers(1990, 2025, rows)}
    columns["city"] = rng.choice(["Oslo", "Rome", "Lima", "Pune"], rows)
    columns["code"] = [f"c{i % 999}" for i in range(rows)]
    return pd.DataFrame(columns), rng.standard_normal(10_000_000)


def median_s(step: Callable[[], object]) -> float:
    times = []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def start_server() -> tuple[subprocess.Popen[str], str]:
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "nbchat.testing.ollama_server",
            "--chunk-count",
            str(REPLY_CHUNKS),
            "--chunk-delay",
            str(CHUNK_DELAY_S),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None
    line = server.stdout.readline().strip()
    if not line.startswith("READY "):
        server.kill()
        raise RuntimeError(f"the loopback Ollama server did not start: {line!r}")
    return server, line.split(" ", 1)[1]


def measure() -> dict[str, float]:
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.utils.capture import capture_output

    from nbchat import context

    df, nums = big_objects()
    frame_s = median_s(lambda: context.summarize("df", df))
    array_s = median_s(lambda: context.summarize("nums", nums))

    shell = InteractiveShell.instance()
    context.install_cell_recorder(shell)
    shell.user_ns |= {"df": df, "nums": nums}
    with capture_output():
        shell.run_cell("means = df.mean(numeric_only=True)\nmeans.head()", store_history=True)
        shell.run_cell("nums.std()", store_history=True)

    def build() -> str:
        items = [*context.resolve_mentions(PROMPT, shell.user_ns), context.recent_cells(2, shell)]
        return context.with_context(context.unescape_mentions(PROMPT), [i for i in items if i is not None])

    cpu = []
    for _ in range(ROUNDS):
        started = time.process_time()
        build()
        cpu.append(time.process_time() - started)

    server, url = start_server()
    data = tempfile.mkdtemp(prefix="nbchat-bench-context-")
    saved = {name: os.environ.get(name) for name in ("OLLAMA_HOST", "NBCHAT_DATA_DIR")}
    os.environ |= {"OLLAMA_HOST": url, "NBCHAT_DATA_DIR": data}  # bench/run.py's later steps get them back
    try:
        from nbchat import ChatSession

        session = ChatSession()
        session.register("bench", "correct horse")
        session.login("bench", "correct horse")
        session.new_conversation("bench")
        session.configure(model="ollama:llama3.2:1b", max_new_tokens=REPLY_CHUNKS + 10)
        walls = []
        for _ in range(3):
            started = time.perf_counter()
            reply = session.send(PROMPT, cells=2, namespace=shell.user_ns).wait()
            walls.append(time.perf_counter() - started)
            assert len(reply.text.split()) == REPLY_CHUNKS, len(reply.text.split())
            asked = session.history()[-2]
            assert [item.kind for item in asked.context] == ["object", "object", "cells"], asked.context
        session.logout()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        server.terminate()
        server.wait(10)
        shutil.rmtree(data, ignore_errors=True)
    return {
        "context_frame_summary_s": frame_s,
        "context_array_summary_s": array_s,
        "context_summary_s": max(frame_s, array_s),
        "context_build_cpu_s": statistics.median(cpu),
        "context_reply_wall_s": statistics.median(walls),
        "context_overhead_fraction": statistics.median(cpu) / statistics.median(walls),
    }


def main() -> int:
    return figures_main(__doc__, lambda args: measure())


if __name__ == "__main__":
    raise SystemExit(main())
