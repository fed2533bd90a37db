"""Every nbchat benchmark in one run: prints a table, writes bench/results.json, regenerates the README's.

    .venv/bin/python bench/run.py            # about 3 minutes on 2 cores
    .venv/bin/python bench/run.py --quick    # fewer rounds, for a quick look (not for the README)

Each figure is measured side by side with its reference in this one run on this machine (see
each module's docstring): ``engines.py`` (import time, Ollama client, Qwen3 streaming),
``ui.py`` (the panel in a real kernel), ``store.py`` (appends, listing), ``memory.py``
(``unload()``), ``context.py`` (summaries of the kernel's objects, what attaching costs a send),
``search.py`` (full-text search over 100,000 messages, what the index adds to an append),
``long_chat.py`` (opening 1,000 messages in the browser, streaming into a long conversation),
``qwen_precision.py`` / ``qwen_cache.py`` (the local model's dtypes, its prompt cache) and
``hub_download.py`` (a model's first download from a loopback hub).
Targets are checked and shown; the run does not stop at a miss.

    .venv/bin/python bench/run.py --only search   # one module's figures, merged into results.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import time
from collections.abc import Callable
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path

import context
import crypto
import engines
import hub_download
import long_chat
import memory
import qwen_cache
import qwen_precision
import search
import store
import ui

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results.json"
README = HERE.parent / "README.md"
TABLE_START, TABLE_END = "<!-- bench:start -->", "<!-- bench:end -->"

#: figure → (what it is, target text, check)
TARGETS: dict[str, tuple[str, str, Callable[[object], bool] | None]] = {
    "import_s": ("`import nbchat` in a fresh interpreter", "< 0.3 s", lambda v: float(v) < 0.3),
    "import_and_load_ext_s": ("`import nbchat` + `%load_ext nbchat`", "< 0.3 s", lambda v: float(v) < 0.3),
    "torch_imported": ("torch imported by either", "no", lambda v: v is False),
    "qwen_backend_ratio": (
        "Qwen3 streaming ÷ raw `generate`, clean kernel",
        "≥ 0.97",
        lambda v: float(v) >= 0.97,
    ),
    "qwen_backend_work_ratio": (
        "Qwen3 streaming ÷ raw `generate`, after the kernel's own torch work",
        "≥ 0.97",
        lambda v: float(v) >= 0.97,
    ),
    "qwen_stream_ratio": ("Qwen3: the lower of the two", "≥ 0.97", lambda v: float(v) >= 0.97),
    "qwen_raw_control_ratio": ("Qwen3: a second raw process ÷ raw (the noise floor)", "—", None),
    "qwen_ttft_overhead_s": ("Qwen3: first visible text, nbchat − raw first token", "—", None),
    "qwen_bf16_decode_speedup": (
        "Qwen3 decode tokens/s, bfloat16 ÷ float32, CPU with native bf16 (null: none)",
        "≥ 1.25",
        lambda v: v is not None and float(v) >= 1.25,
    ),
    "qwen_bf16_prefill_speedup": (
        "Qwen3 prefill of ~512 tokens, float32 time ÷ bfloat16 time",
        "≥ 3",
        lambda v: v is not None and float(v) >= 3,
    ),
    "qwen_bf16_reason": ("why bf16 is (not) measured", "—", None),
    "qwen_bandwidth_fraction": (
        "Qwen3 decode: tokens/s × weight bytes per token ÷ measured read bandwidth (auto's dtype)",
        "≥ 0.7",
        lambda v: float(v) >= 0.7,
    ),
    "qwen_bandwidth_fraction_unpacked": ("that with torch's own bf16 kernel (weights not packed)", "—", None),
    "qwen_bf16_packing_decode_speedup": (
        "Qwen3 bf16 decode, weights packed for oneDNN ÷ not (packing.py)",
        "—",
        None,
    ),
    "qwen_read_bandwidth_gb_s": ("read bandwidth a torch sweep measures, GB/s", "—", None),
    "qwen_int8_decode_speedup": ("Qwen3 decode, int8 weight-only (torchao) ÷ bf16", "> 1 to offer it", None),
    "qwen_int8_reason": ("why int8 is (not) measured", "—", None),
    "qwen_precision_checkpoint": ("the precision bench's checkpoint", "—", None),
    "qwen_ttft_growth": (
        "Qwen3 first token after ~2,000 tokens of history ÷ in a new conversation (prompt cache)",
        "≤ 1.5",
        lambda v: float(v) <= 1.5,
    ),
    "qwen_ttft_growth_uncached": ("that with the cache off: raw re-encoding (the anchor)", "—", None),
    "qwen_ttft_long_s": ("Qwen3 first token after ~2,000 tokens of history, s (cache on)", "—", None),
    "qwen_ttft_long_uncached_s": ("the same with the cache off, s", "—", None),
    "qwen_cache_checkpoint": ("the prompt-cache bench's checkpoint", "—", None),
    "hub_download_overhead": (
        "a model's download (2 × 200 MB shards, loopback hub): nbchat's path ÷ plain snapshot_download",
        "≤ 1.1",
        lambda v: float(v) <= 1.1,
    ),
    "hub_download_mb_s": (
        "that download through nbchat's path, MB/s (loopback: the client's pace)",
        "—",
        None,
    ),
    "hub_download_plain_mb_s": ("the same with plain snapshot_download, MB/s", "—", None),
    "login_kdf_s": (
        "the KDF at login: scrypt n=2**16, r=8, p=1, unwrapping the data key",
        "0.1–0.5 s",
        lambda v: 0.1 <= float(v) <= 0.5,
    ),
    "encrypt_line_us": ("seal one ~600-byte store line, AES-256-GCM (µs)", "—", None),
    "decrypt_line_us": ("open one such line (µs)", "—", None),
    "ollama_client_ratio": (
        "Ollama: nbchat ÷ official client, 20,000 chunks",
        "≥ 1.1",
        lambda v: float(v) >= 1.1,
    ),
    "redraws_per_s": ("panel redraws while ~1,000 chunks/s stream", "≤ 20 /s", lambda v: float(v) <= 20),
    "ui_cost_fraction": ("kernel CPU the panel adds ÷ reply time", "< 0.10", lambda v: float(v) < 0.10),
    "append_ratio_conversations": (
        "append latency, 1,000 conversations ÷ 1",
        "≤ 1.5",
        lambda v: float(v) <= 1.5,
    ),
    "append_ratio_messages": ("append latency, 5,000 messages ÷ 10", "≤ 2", lambda v: float(v) <= 2),
    "list_1000_s": ("list 1,000 conversations of 100 messages", "—", None),
    "list_bodies_ratio": (
        "that ÷ listing 1,000 of 1 message (1 = no message bodies read)",
        "≤ 1.5",
        lambda v: float(v) <= 1.5,
    ),
    "memory_returned_fraction": (
        "memory `unload()` gives back ÷ the model's weights",
        "≥ 0.9",
        lambda v: float(v) >= 0.9,
    ),
    "memory_kernel_kept_mb": ("MB the kernel keeps after unloading (tokenizer, modules)", "—", None),
    "context_summary_s": (
        "summary of a 1,000,000 × 20 DataFrame or a 10,000,000-element array, the slower",
        "< 0.1 s",
        lambda v: float(v) < 0.1,
    ),
    "context_overhead_fraction": (
        "kernel CPU building the context of a send (2 @mentions, 2 cells) ÷ reply time",
        "< 0.05",
        lambda v: float(v) < 0.05,
    ),
    "search_100k_s": (
        "search 100,000 messages in 1,000 conversations (median over rare to common words)",
        "< 0.05 s",
        lambda v: float(v) < 0.05,
    ),
    "search_100k_common_s": ("that for a word in a third of the messages (all ranked)", "—", None),
    "search_index_build_s": ("the first search: the index built from the files", "—", None),
    "index_append_overhead": (
        "append latency the search index adds (median; written behind by its thread) ÷ an append",
        "< 0.20",
        lambda v: float(v) < 0.20,
    ),
    "index_append_overhead_mean": ("the same with means (FTS5 merges now and then)", "—", None),
    "encrypt_append_overhead": (
        "append latency, encrypted account ÷ clear (interleaved, medians)",
        "≤ 1.3",
        lambda v: float(v) <= 1.3,
    ),
    "encrypt_append_s": ("one encrypted append, s", "—", None),
    "encrypt_append_clear_s": ("one clear append beside it, s", "—", None),
    "encrypt_list_1000_s": ("list 1,000 encrypted conversations of 100 messages", "—", None),
    "encrypt_list_overhead": ("that ÷ the same listing in clear", "≤ 1.5", lambda v: float(v) <= 1.5),
    "search_100k_encrypted_s": (
        "search 100,000 messages of an encrypted account (index in memory)",
        "< 0.05 s",
        lambda v: float(v) < 0.05,
    ),
    "search_index_build_encrypted_s": (
        "its in-memory index built from the sealed files (in the background at login)",
        "—",
        None,
    ),
    "open_1000_messages_s": (
        "open a 1,000-message conversation in the panel, JupyterLab + Chromium (median)",
        "< 0.5 s",
        lambda v: float(v) < 0.5,
    ),
    "stream_cost_ratio_long_vs_new": (
        "kernel CPU of a streamed reply with the panel, 1,000-message conversation ÷ new one",
        "≤ 1.2",
        lambda v: float(v) <= 1.2,
    ),
}


def shown(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def table(results: dict[str, object]) -> str:
    rows = ["| figure | measured | target | met |", "| --- | --- | --- | --- |"]
    for key, (what, target, check) in TARGETS.items():
        if key not in results:
            continue
        met = "" if check is None else ("yes" if check(results[key]) else "**no**")
        rows.append(f"| {what} (`{key}`) | {shown(results[key])} | {target} | {met} |")
    return "\n".join(rows)


def update_readme(results: dict[str, object]) -> None:
    text = README.read_text()
    if TABLE_START not in text or TABLE_END not in text:
        raise SystemExit(f"README.md has no {TABLE_START} ... {TABLE_END} block to fill")
    block = (
        f"{TABLE_START}\nMeasured {results['date'][:10]} on {results['machine']} by `bench/run.py` "
        f"(generated from `bench/results.json`):\n\n{table(results)}\n{TABLE_END}"
    )
    README.write_text(re.sub(re.escape(TABLE_START) + ".*?" + re.escape(TABLE_END), block, text, flags=re.S))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="fewer rounds; results.json and README untouched"
    )
    parser.add_argument(
        "--only", help="comma-separated steps (e.g. search): their figures replace theirs in results.json"
    )
    args = parser.parse_args()
    only = set(args.only.split(",")) if args.only else None
    started = time.perf_counter()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    results: dict[str, object] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {cores} cores, Python {platform.python_version()}",
        "versions": {name: version(name) for name in ("nbchat", "torch", "transformers", "httpx", "ollama")},
    }
    rounds = 3 if args.quick else 5
    for name, step in (
        ("import", lambda: engines.bench_import(rounds)),
        ("ollama", lambda: engines.bench_ollama(rounds)),
        ("store", store.measure_in_scratch),
        ("ui", ui.measure),
        ("long", long_chat.measure),  # browser timings first, before the heavy model steps
        ("memory", lambda: memory.measure(768, 12)),
        ("context", context.measure),
        ("qwen", lambda: engines.bench_qwen(args.quick)),
        ("search", search.measure_in_scratch),
        ("qwen_precision", qwen_precision.measure_in_scratch),
        ("qwen_cache", qwen_cache.measure_in_scratch),
        ("hub_download", hub_download.measure_in_scratch),
        ("crypto", crypto.measure),
    ):
        if only is not None and name not in only:
            continue
        print(f"-- {name}", flush=True)
        results.update(step())
    if only is not None:  # the other figures stay those of the last full run
        measured = {k: v for k, v in results.items() if k not in ("date", "machine", "versions")}
        partial = {**json.loads(RESULTS.read_text()), **measured}
        partial.setdefault("partial_runs", {})[",".join(sorted(only))] = results["date"]
        results = partial
    else:
        results["bench_seconds"] = round(time.perf_counter() - started)
    print()
    print(table(results))
    if not args.quick:
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")
        update_readme(results)
        print(f"\nwrote {RESULTS.relative_to(HERE.parent)} and the README's table")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
