"""Search figures, measured side by side in one run (scratch data dir, this machine's disk).

    .venv/bin/python bench/search.py [--json FILE]

- ``search_100k_s``: median time of ``ConversationStore.search`` (one stat per conversation
  file to catch up, then the FTS5 query, ranked, with snippets) for one user with 100,000
  messages in 1,000 conversations, over queries of words from rare to common (about 10 to
  10,000 matching messages), two-word and prefix queries included; target < 0.05 s.
  ``search_100k_common_s``: the same for a word in about a third of all messages (every match
  is ranked: the worst case; no target). ``search_index_build_s``: the first search, which
  builds the index from the files.
- ``index_append_overhead``: (median append time with the index − without) ÷ without, two
  users side by side in one data dir, appends alternating (target < 0.20). Without = a user
  who never searched (no index file: an append costs one stat more). ``index_append_overhead_mean``
  is the same with means (FTS5 merges its segments now and then, which a median hides).

The conversations are written straight in the store's own line format (``nbchat.records``),
from a fixed-seed vocabulary with Zipf-like word frequencies; 100,000 fsynced appends would
only measure the disk's patience.
"""

from __future__ import annotations

import itertools
import random
import statistics
import time
from pathlib import Path

from common import figures_main, in_scratch

from nbchat import ConversationStore, Message, records
from nbchat.types import Conversation, new_id, utcnow

CONVERSATIONS = 1_000
MESSAGES = 100  # per conversation
WORDS_PER_MESSAGE = 40
VOCABULARY = 30_000
ROUNDS = 7
APPENDS = 400


def vocabulary() -> list[str]:
    """Pronounceable made-up words, fixed by the seed: real tokens, none a prefix of a query by chance."""
    rng = random.Random(7)  # noqa: S311 -- made-up text, fixed by the seed
    syllables = [c + v for c in "bcdfghjklmnprstvwz" for v in "aeiou"]
    words: set[str] = set()
    while len(words) < VOCABULARY:
        words.add("".join(rng.choice(syllables) for _ in range(rng.randint(2, 4))))
    return sorted(words)


def build(data_dir: Path, user: str) -> tuple[ConversationStore, list[str], list[int]]:
    """``CONVERSATIONS`` conversations of ``MESSAGES`` messages: the store, the words, their counts."""
    store = ConversationStore(data_dir, user)
    store.create("warm-up")  # makes the directory the way the store does
    for path in store.directory.glob("*.jsonl"):
        path.unlink()
    words = vocabulary()
    cumulative = list(itertools.accumulate(1 / (rank + 1) ** 1.05 for rank in range(len(words))))
    rng = random.Random(11)  # noqa: S311 -- made-up text, fixed by the seed
    counts = [0] * len(words)
    for c in range(CONVERSATIONS):
        conversation = Conversation(
            id=new_id(), title=f"Conversation {c} about {words[c * 7]}", created=utcnow(), updated=utcnow()
        )
        lines = [records.header_line(conversation)]
        parent = None
        for m in range(MESSAGES):
            chosen = rng.choices(range(len(words)), cum_weights=cumulative, k=WORDS_PER_MESSAGE)
            for index in set(chosen):
                counts[index] += 1
            message = Message(
                "user" if m % 2 == 0 else "assistant", " ".join(words[i] for i in chosen), parent=parent
            )
            parent = message.id
            lines.append(records.message_line(message))
        (store.directory / f"{conversation.id}.jsonl").write_bytes(b"".join(lines))
    return store, words, counts


def word_matching(words: list[str], counts: list[int], target: int) -> str:
    """The word whose number of matching messages is closest to ``target``."""
    return words[min(range(len(words)), key=lambda i: abs(counts[i] - target))]


def median_search_s(store: ConversationStore, query: str) -> tuple[float, int]:
    times, hits = [], 0
    for _ in range(ROUNDS):
        start = time.perf_counter()
        hits = len(store.search(query))
        times.append(time.perf_counter() - start)
    return statistics.median(times), hits


def append_times(indexed: ConversationStore, plain: ConversationStore) -> tuple[list[float], list[float]]:
    """Alternating appends to a 100-message conversation of each user: (with index, without)."""
    stores = {"indexed": indexed, "plain": plain}
    targets = {}
    for label, store in stores.items():
        chat = store.create(f"append target {label}")
        for number in range(MESSAGES):
            store.append(chat.id, Message("user", f"seed message {number} with a few words"))
        targets[label] = chat.id
    times: dict[str, list[float]] = {"indexed": [], "plain": []}
    rng = random.Random(3)  # noqa: S311 -- made-up text, fixed by the seed
    for number in range(APPENDS):
        order = list(stores)
        rng.shuffle(order)
        for label in order:
            message = Message("user", f"benchmark message {number} about the weather and pandas")
            start = time.perf_counter()
            stores[label].append(targets[label], message)
            times[label].append(time.perf_counter() - start)
    return times["indexed"], times["plain"]


def measure(scratch: Path) -> dict[str, float]:
    data = scratch / "data"
    started = time.perf_counter()
    store, words, counts = build(data, "searcher")
    written_s = time.perf_counter() - started

    started = time.perf_counter()
    store.search(words[0])
    build_s = time.perf_counter() - started

    queries = [word_matching(words, counts, n) for n in (10, 100, 1_000, 10_000)]
    queries += [f"{queries[2]} {queries[3]}", queries[2][:-1]]  # two words; an unfinished word
    timings = {}
    for query in queries:
        timings[query] = median_search_s(store, query)
        print(f"   {query!r:28} {timings[query][1]:3} hits  {timings[query][0] * 1000:7.2f} ms", flush=True)
    common = word_matching(words, counts, CONVERSATIONS * MESSAGES // 3)
    common_s, _ = median_search_s(store, common)

    plain = ConversationStore(data, "plain")  # never searches: no index file
    with_index, without = append_times(store, plain)
    assert not (plain.directory / ".search.sqlite").exists()
    assert store.search("benchmark message weather")  # the appends were indexed
    median_with, median_without = statistics.median(with_index), statistics.median(without)
    mean_with, mean_without = statistics.fmean(with_index), statistics.fmean(without)
    return {
        "search_100k_s": statistics.median(t for t, _ in timings.values()),
        "search_100k_slowest_s": max(t for t, _ in timings.values()),
        "search_100k_common_s": common_s,
        "search_index_build_s": build_s,
        "search_files_written_s": written_s,
        "append_with_index_s": median_with,
        "append_without_index_s": median_without,
        "index_append_overhead": (median_with - median_without) / median_without,
        "index_append_overhead_mean": (mean_with - mean_without) / mean_without,
    }


measure_in_scratch = in_scratch(measure, "nbchat-bench-search-")


def main() -> int:
    return figures_main(__doc__, lambda args: measure_in_scratch(), digits=6)


if __name__ == "__main__":
    raise SystemExit(main())
