"""Conversation store figures, measured side by side in one run (scratch data dir, this machine's disk).

    .venv/bin/python bench/store.py [--json FILE]

- ``append_ratio_conversations``: median latency of one append (lock, read what other kernels
  added, one fsynced line) when the user has 1,000 conversations ÷ when they have 1 (target
  ≤ 1.5: an append touches one file).
- ``append_ratio_messages``: the same with 5,000 vs 10 messages in the conversation (target
  ≤ 2: appends never rewrite the conversation).
- ``list_1000_s``: listing 1,000 conversations of 100 messages each; ``list_bodies_ratio``:
  that ÷ listing 1,000 conversations of 1 message (≈ 1: listing reads first lines only).

The big conversations are written straight in the store's own line format (``nbchat.records``),
as thousands of fsynced appends would only measure the disk's patience.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import replace
from pathlib import Path

from common import figures_main, in_scratch

from nbchat import Accounts, Config, ConversationStore, Message, records
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
    accounts = Accounts(Config(data_dir=scratch / "data"), bcrypt_rounds=4)
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
        accounts = Accounts(Config(data_dir=scratch / label), bcrypt_rounds=4)
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


measure_in_scratch = in_scratch(measure, "nbchat-bench-store-")


def main() -> int:
    return figures_main(__doc__, lambda args: measure_in_scratch(), digits=6)


if __name__ == "__main__":
    raise SystemExit(main())
