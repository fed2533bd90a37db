"""Conversation store figures, measured side by side in one run (scratch data dir, this machine's disk).

    .venv/bin/python bench/store.py [--json FILE]

- ``append_ratio_conversations``: median latency of one append (lock, read what other kernels
  added, one fsynced line) when the user has 1,000 conversations ÷ when they have 1 (target
  ≤ 1.5: an append touches one file).
- ``append_ratio_messages``: the same with 5,000 vs 10 messages in the conversation (target
  ≤ 2: appends never rewrite the conversation).
- ``list_1000_s``: listing 1,000 conversations of 100 messages each; ``list_bodies_ratio``:
  that ÷ listing 1,000 conversations of 1 message (≈ 1: listing reads first lines only).

Encrypted at rest (issue 15), a store opened with ``cipher=LineCipher(new_data_key())`` beside a
clear one in the same data dir, so both see the same disk at the same moment:

- ``encrypt_append_overhead``: median append latency, encrypted ÷ clear, the two stores'
  appends interleaved in shuffled rounds (target ≤ 1.3: sealing a line costs microseconds,
  the fsync milliseconds).
- ``encrypt_list_overhead``: listing 1,000 conversations of 100 messages, encrypted ÷ clear
  (target ≤ 1.5: each sealed header is opened, still first lines only).
- ``search_100k_encrypted_s``: the median search over 100,000 messages in 1,000 conversations
  of an encrypted store once its index (in memory: no index file for an encrypted account) is
  built, the queries and files of ``bench/search.py`` (target < 0.05 s, as in clear);
  ``search_index_build_encrypted_s``: building that index, which opens every line (the session
  does it in the background at login; here the first search does it).

The encrypted files are written clear in the store's line format, then converted by the
store's own ``seal()``, as an account is at its first encrypted login.

The big conversations are written straight in the store's own line format (``nbchat.records``),
as thousands of fsynced appends would only measure the disk's patience.
"""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import replace
from pathlib import Path

import search
from common import figures_main, in_scratch

from nbchat import Accounts, Config, ConversationStore, Message, records
from nbchat.config import Policy
from nbchat.crypto import LineCipher, new_data_key
from nbchat.types import new_id

APPENDS = 60
ROUNDS = 5


def median_append_s(store: ConversationStore, conversation_id: str, count: int = APPENDS) -> float:
    store.get(conversation_id)  # a kernel that holds the conversation, as the session does
    times = []
    for number in range(count):
        message = Message("user", f"benchmark message {number}")
        start = time.perf_counter()
        store.append(conversation_id, message)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def fill(store: ConversationStore, conversation_id: str, messages: int) -> None:
    """Give a conversation ``messages`` more messages, written in the store's line format."""
    path = store.directory / f"{conversation_id}.jsonl"
    lines = b"".join(
        records.message_line(Message("user" if i % 2 == 0 else "assistant", f"message {i} " + "x" * 200))
        for i in range(messages)
    )
    with path.open("ab") as handle:
        handle.write(lines)


def copies(store: ConversationStore, template_id: str, count: int) -> None:
    """``count`` more conversations like the template, each with its own id in its header."""
    template = store.get(template_id)
    body = (store.directory / f"{template_id}.jsonl").read_bytes().split(b"\n", 1)[1]
    for _ in range(count):
        clone = replace(template, id=new_id())
        (store.directory / f"{clone.id}.jsonl").write_bytes(records.header_line(clone) + body)


def median_list_s(store: ConversationStore) -> float:
    times = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        count = len(store.list())
        times.append(time.perf_counter() - start)
    assert count >= 1000, count
    return statistics.median(times)


def measure(scratch: Path) -> dict[str, float]:
    # The clear figures (a site with encryption off); measure_encrypted() has the encrypted ones.
    clear = Config(data_dir=scratch / "data", policy=Policy(encrypt_local_accounts=False))
    accounts = Accounts(clear, bcrypt_rounds=4)
    accounts.register("bench", "correct horse")
    store = accounts.login("bench", "correct horse").conversations

    first = store.create("first").id
    one_conversation = median_append_s(store, first)
    copies(store, store.create("template").id, 998)
    many_conversations = median_append_s(store, first)

    small = store.create("ten messages").id
    fill(store, small, 10)
    big = store.create("five thousand messages").id
    fill(store, big, 5000)
    ten_messages = median_append_s(store, small)
    five_thousand = median_append_s(store, big)

    lists = {}
    for label, size in (("short", 1), ("long", 100)):
        accounts = Accounts(replace(clear, data_dir=scratch / label), bcrypt_rounds=4)
        accounts.register("lister", "correct horse")
        lister = accounts.login("lister", "correct horse").conversations
        template = lister.create("template").id
        fill(lister, template, size)
        copies(lister, template, 999)
        lists[label] = median_list_s(lister)
    return {
        "append_1_conversation_s": one_conversation,
        "append_1000_conversations_s": many_conversations,
        "append_ratio_conversations": many_conversations / one_conversation,
        "append_10_messages_s": ten_messages,
        "append_5000_messages_s": five_thousand,
        "append_ratio_messages": five_thousand / ten_messages,
        "list_1000_s": lists["long"],
        "list_bodies_ratio": lists["long"] / lists["short"],
    }


def sealed_store(data_dir: Path, username: str) -> ConversationStore:
    """The user's store with a fresh data key, every clear file already there converted by ``seal()``."""
    store = ConversationStore(data_dir, username, cipher=LineCipher(new_data_key()))
    for summary in ConversationStore(data_dir, username).list():
        store.seal(summary.id)
    return store


def interleaved_append_s(stores: dict[str, ConversationStore]) -> dict[str, float]:
    """Median append latency of each store, their appends alternating in shuffled order."""
    targets = {label: store.create(f"append target {label}").id for label, store in stores.items()}
    times: dict[str, list[float]] = {label: [] for label in stores}
    rng = random.Random(5)  # noqa: S311 -- only the order of the rounds
    for number in range(APPENDS * ROUNDS):
        order = list(stores)
        rng.shuffle(order)
        for label in order:
            message = Message("user", f"benchmark message {number} about the weather and pandas")
            start = time.perf_counter()
            stores[label].append(targets[label], message)
            times[label].append(time.perf_counter() - start)
    return {label: statistics.median(values) for label, values in times.items()}


def interleaved_list_s(stores: dict[str, ConversationStore]) -> dict[str, float]:
    """Median listing time of each store, the listings alternating."""
    times: dict[str, list[float]] = {label: [] for label in stores}
    for _ in range(ROUNDS * 2):
        for label, store in stores.items():
            start = time.perf_counter()
            count = len(store.list())
            times[label].append(time.perf_counter() - start)
            assert count >= 1000, count
    return {label: statistics.median(values) for label, values in times.items()}


def measure_encrypted(scratch: Path) -> dict[str, float]:
    data = scratch / "encrypted"
    clear = ConversationStore(data, "clear")
    for username in ("clear", "sealed"):
        lister = ConversationStore(data, username)
        template = lister.create("template").id
        fill(lister, template, 100)
        copies(lister, template, 999)
    sealed = sealed_store(data, "sealed")
    written = (sealed.directory / f"{template}.jsonl").read_bytes()
    assert b"template" not in written and b"xxxxx" not in written, "the files were not sealed"
    lists = interleaved_list_s({"clear": clear, "sealed": sealed})
    appends = interleaved_append_s({"clear": clear, "sealed": sealed})

    _, words, counts = search.build(scratch / "search", "searcher")  # clear files, then sealed
    store = sealed_store(scratch / "search", "searcher")
    started = time.perf_counter()
    store.search(words[0])
    build_s = time.perf_counter() - started
    queries = [search.word_matching(words, counts, n) for n in (10, 100, 1_000, 10_000)]
    queries += [f"{queries[2]} {queries[3]}", queries[2][:-1]]  # two words; an unfinished word
    timings = [search.median_search_s(store, query) for query in queries]
    assert all(hits for _, hits in timings), timings
    assert not list(store.directory.glob(".search*")), "an encrypted account's index must not be on disk"
    return {
        "encrypt_append_s": appends["sealed"],
        "encrypt_append_clear_s": appends["clear"],
        "encrypt_append_overhead": appends["sealed"] / appends["clear"],
        "encrypt_list_1000_s": lists["sealed"],
        "encrypt_list_overhead": lists["sealed"] / lists["clear"],
        "search_100k_encrypted_s": statistics.median(t for t, _ in timings),
        "search_index_build_encrypted_s": build_s,
    }


def measure_all(scratch: Path) -> dict[str, float]:
    return {**measure(scratch), **measure_encrypted(scratch)}


measure_in_scratch = in_scratch(measure_all, "nbchat-bench-store-")


def main() -> int:
    return figures_main(__doc__, lambda args: measure_in_scratch(), digits=6)


if __name__ == "__main__":
    raise SystemExit(main())
