"""Full-text search over one user's conversations, through real ConversationStore instances.

The index is SQLite's FTS5 in ``<user dir>/.search.sqlite``: a cache the tests damage,
delete, make stale from another store (another kernel) and kill mid-write, and whose
answers must always be those of the conversation files.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from datetime import timedelta
from pathlib import Path

import pytest
from disks import mount_small_disk, remount_read_only, unmount
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polling import wait_until

import nbchat.store
from nbchat import ConversationStore, Message, records
from nbchat.errors import SearchError
from nbchat.search import INDEX_NAME, SearchHit, match_expression
from nbchat.types import Conversation, new_id, utcnow

REPO = Path(__file__).resolve().parent.parent


def store_of(data_dir: Path, user: str = "alice") -> ConversationStore:
    return ConversationStore(data_dir, user)


def ids(hits: list[SearchHit]) -> list[str | None]:
    return [hit.message_id for hit in hits]


def index_rows(store: ConversationStore, sql: str, *args: object) -> list[tuple[object, ...]]:
    db = sqlite3.connect(store.directory / INDEX_NAME)
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


@pytest.fixture
def store(tmp_path: Path) -> ConversationStore:
    return store_of(tmp_path / "data")


# -- what is found ----------------------------------------------------------------------------


def test_hits_are_ranked_best_first_with_a_snippet_around_the_word_and_the_message_id(
    store: ConversationStore,
) -> None:
    chat = store.create("Cooking")
    filler = " ".join(f"filler{n}" for n in range(60))
    once = store.append(chat.id, Message("user", f"{filler} how long to boil an egg {filler}"))
    often = store.append(
        chat.id, Message("assistant", "Boil it six minutes; boil gently, a rolling boil cracks it.")
    )
    other = store.create("Unrelated")
    store.append(other.id, Message("user", "nothing about that here"))

    hits = store.search("boil")

    assert ids(hits) == [often.id, once.id]
    best = hits[0]
    assert (best.conversation_id, best.title, best.role) == (chat.id, "Cooking", "assistant")
    assert best.snippet == "[Boil] it six minutes; [boil] gently, a rolling [boil] cracks it."
    assert best.parts[0] == ("Boil", True) and ("boil", True) in best.parts
    assert best.time == often.time and best.score > hits[1].score
    assert "[boil]" in hits[1].snippet and hits[1].snippet.startswith("…")
    assert len(hits[1].snippet) < len(once.content) / 2  # around the hit, not the whole message


def test_every_word_must_match_and_the_last_word_may_be_unfinished(store: ConversationStore) -> None:
    chat = store.create("Data")
    both = store.append(chat.id, Message("user", "merge two DataFrames in pandas"))
    store.append(chat.id, Message("assistant", "pandas alone"))
    assert ids(store.search("pandas merge")) == [both.id]
    assert ids(store.search("merge dataf")) == [both.id]
    assert store.search("dataf merge") == []  # only the last word is a prefix


def test_every_branch_is_searched_not_only_the_path_shown(store: ConversationStore) -> None:
    chat = store.create("Branches")
    question = store.append(chat.id, Message("user", "first question about kittens"))
    old_reply = store.append(chat.id, Message("assistant", "an answer about tigers"))
    new_reply = store.append(
        chat.id, Message("assistant", "a regenerated answer about lions", parent=question.id)
    )
    edited = store.append(chat.id, Message("user", "an edited question about puppies"), new_root=True)
    assert old_reply not in store.get(chat.id).messages  # not on the path shown

    assert ids(store.search("tigers")) == [old_reply.id]
    assert ids(store.search("lions")) == [new_reply.id]
    assert ids(store.search("kittens")) == [question.id]
    assert ids(store.search("puppies")) == [edited.id]
    assert sorted(ids(store.search("about"))) == sorted([question.id, old_reply.id, new_reply.id, edited.id])


def test_titles_are_found_as_hits_without_a_message(store: ConversationStore) -> None:
    chat = store.create("Sourdough starter")
    store.append(chat.id, Message("user", "how often do I feed it"))
    [hit] = store.search("sourdough")
    assert (hit.conversation_id, hit.message_id, hit.role) == (chat.id, None, None)
    assert hit.snippet == "[Sourdough] starter" and hit.title == "Sourdough starter"


def test_an_interrupted_reply_is_found_as_written_and_once_saved_is_found_once(
    store: ConversationStore, tmp_path: Path
) -> None:
    chat = store.create("Drafts")
    question = store.append(chat.id, Message("user", "tell me about volcanoes"))
    store.search("warm")  # the index exists: the drafts below go through the append hook
    reply_id = "f" * 32
    store.append_draft(chat.id, records.Draft(reply_id, question.id, None, question.time, "Magma rises ", ""))
    reader = store_of(tmp_path / "data")  # another kernel: sees the drafts as an interrupted reply
    assert ids(reader.search("magma")) == [reply_id]
    assert store.search("magma") == []  # the writer shows its reply live, not as a hit to open
    store.append_draft(
        chat.id, records.Draft(reply_id, question.id, None, question.time, "through basalt", "")
    )
    assert ids(reader.search("basalt")) == [reply_id]
    assert ids(reader.search("rises basalt")) == [reply_id]
    store.append(chat.id, Message("assistant", "Magma rises through basalt vents.", id=reply_id))
    assert ids(reader.search("magma")) == [reply_id]
    assert [h.snippet for h in reader.search("vents")] == ["Magma rises through basalt [vents]."]
    assert [h.message_id for h in store.search("magma")] == [reply_id]
    assert index_rows(store, "SELECT count(*) FROM entries WHERE message_id = ?", reply_id) == [(1,)]


def test_a_reply_of_a_kernel_that_died_is_found_by_its_drafts(tmp_path: Path) -> None:
    dead = store_of(tmp_path / "data")
    chat = dead.create("Died")
    question = dead.append(chat.id, Message("user", "explain geysers"))
    dead.search("warm")
    for text in ("Water heats ", "deep underground ", "until it erupts"):
        dead.append_draft(chat.id, records.Draft("e" * 32, question.id, None, question.time, text, ""))
    del dead  # the kernel died mid-reply
    reopened = store_of(tmp_path / "data")
    [hit] = reopened.search("underground erupts")
    assert (hit.message_id, hit.role) == ("e" * 32, "assistant")
    assert hit.snippet == "Water heats deep [underground] until it [erupts]"


# -- the user's words, not FTS5 syntax ------------------------------------------------------------


HOSTILE = [
    '"',
    '""',
    "*",
    "-",
    ":",
    "(",
    ")",
    "AND",
    "OR",
    "NOT",
    "NEAR",
    "a AND",
    "NOT sea",
    "-sea",
    "sea*",
    "^sea",
    "body:sea",
    "words:sea",
    "NEAR(sea shell)",
    'sea" OR "x',
    "sea' OR 1=1 --",
    "sea; DROP TABLE entries",
    "\\",
    "{sea}",
    "+sea",
    "sea\x00shell",
    "\x02sea\x03",
    "🐚 sea",
    "sea" * 300,
]


@pytest.mark.parametrize("query", HOSTILE)
def test_no_query_a_user_can_type_raises_anything_but_a_clear_search_error(
    store: ConversationStore, query: str
) -> None:
    chat = store.create("Beach")
    store.append(chat.id, Message("user", "a sea shell and a NOT sign, body: sea"))
    try:
        hits = store.search(query)
    except SearchError as refused:
        assert "Type a word" in str(refused) or "at most" in str(refused)
    else:
        assert all(hit.conversation_id == chat.id for hit in hits)
    assert store.search("sea shell")  # the index is still fine


def test_operator_words_are_searched_as_words(store: ConversationStore) -> None:
    chat = store.create("Logic")
    said = store.append(chat.id, Message("user", "salt AND pepper, NOT sugar"))
    store.append(chat.id, Message("assistant", "just salt"))
    assert ids(store.search("and")) == [said.id]
    assert ids(store.search("NOT sugar")) == [said.id]
    assert ids(store.search("-pepper")) == [said.id]
    assert ids(store.search('"pepper')) == [said.id]


@pytest.mark.parametrize("query", ["", "   ", "\n\t", '"" *', "- : ( )"])
def test_an_empty_query_is_refused_with_a_clear_search_error(store: ConversationStore, query: str) -> None:
    store.append(store.create("x").id, Message("user", "words"))
    with pytest.raises(SearchError, match="Type a word to search for"):
        store.search(query)


def test_a_query_that_is_not_text_or_a_bad_limit_is_refused(store: ConversationStore) -> None:
    with pytest.raises(SearchError, match="is text, not int"):
        store.search(42)  # type: ignore[arg-type]
    with pytest.raises(SearchError, match="whole number from 1"):
        store.search("words", limit=0)


def test_each_word_is_quoted_and_the_last_is_a_prefix() -> None:
    assert match_expression('say "hi" AND-or') == '"say" """hi""" "AND-or" *'


@pytest.mark.parametrize(
    ("text", "query"),
    [
        ("Un café crème, s'il vous plaît", "cafe creme"),
        ("Un cafe creme", "café"),
        ("Straße und Größe", "GROßE"),  # case folded, diacritics removed (ß stays ß)
        ("我们的数据分析很有意思", "数据"),  # Chinese: a two-character word inside a run
        ("我们的数据分析很有意思", "析"),
        ("東京でデータを分析する", "データ"),  # Japanese katakana inside a sentence
        ("데이터를 분석합니다", "데이터"),  # Korean with a particle attached
        ("ΕΛΛΗΝΙΚΆ γράμματα", "ελληνικά"),  # case folded (accents are kept off Latin letters only)
        ("ПРИВЕТ мир", "привет"),
    ],
)
def test_unicode_words_are_found(store: ConversationStore, text: str, query: str) -> None:
    chat = store.create("Unicode")
    message = store.append(chat.id, Message("user", text))
    store.append(chat.id, Message("assistant", "nothing alike"))
    [hit] = store.search(query)
    assert hit.message_id == message.id
    assert "\u200b" not in hit.snippet and hit.snippet.replace("[", "").replace("]", "") == text


# -- one user only ---------------------------------------------------------------------------------


def test_bobs_words_never_show_in_alices_results_with_both_in_one_data_dir(tmp_path: Path) -> None:
    alice, bob = store_of(tmp_path / "data", "alice"), store_of(tmp_path / "data", "bob")
    mine = alice.append(alice.create("Alice's plans").id, Message("user", "secret plans for the garden"))
    theirs = bob.create("Bob's secret")
    bob.append(theirs.id, Message("user", "secret plans for the heist"))
    assert ids(alice.search("secret")) == [mine.id]
    assert alice.search("heist") == [] and alice.search("bob") == []
    assert {h.conversation_id for h in bob.search("secret plans")} == {theirs.id}
    assert (alice.directory / INDEX_NAME).exists() and (bob.directory / INDEX_NAME).exists()
    assert alice.directory != bob.directory


def test_a_user_with_no_conversations_finds_nothing_and_nothing_is_created(tmp_path: Path) -> None:
    store = store_of(tmp_path / "data")
    assert store.search("anything") == []
    assert not (tmp_path / "data").exists()


# -- a cache of the files -------------------------------------------------------------------------


def test_an_append_indexes_its_message_right_after_and_the_index_stays_as_long_as_the_file(
    store: ConversationStore,
) -> None:
    """The index's writer thread applies the append (the append itself never waits for SQLite)."""
    chat = store.create("Now")
    store.search("warm")  # the index exists from here on
    message = store.append(chat.id, Message("user", "indexed right away"))
    path = store.directory / f"{chat.id}.jsonl"
    wait_until(
        lambda: (
            index_rows(store, "SELECT size FROM conversations WHERE id = ?", chat.id)
            == [(path.stat().st_size,)]
        )
    )
    assert index_rows(store, "SELECT role FROM entries WHERE message_id = ?", message.id) == [("user",)]
    assert ids(store.search("indexed right away")) == [message.id]


def test_appending_before_any_search_creates_no_index(store: ConversationStore) -> None:
    store.append(store.create("Quiet").id, Message("user", "never searched"))
    assert not (store.directory / INDEX_NAME).exists()
    assert len(store.search("searched")) == 1


def test_what_another_kernel_appended_is_found(tmp_path: Path) -> None:
    here, there = store_of(tmp_path / "data"), store_of(tmp_path / "data")
    chat = here.create("Shared")
    assert here.search("giraffe") == []
    first = there.append(chat.id, Message("user", "a giraffe from the other kernel"))
    assert ids(here.search("giraffe")) == [first.id]
    # A writer that never told the index (an older nbchat): found by the stat before the search.
    late = Message("assistant", "an okapi, written behind the index's back", parent=first.id)
    with (here.directory / f"{chat.id}.jsonl").open("ab") as handle:
        handle.write(records.message_line(late))
    assert ids(here.search("okapi")) == [late.id]
    assert ids(there.search("okapi")) == [late.id]


def test_a_conversation_created_by_another_kernel_is_found(tmp_path: Path) -> None:
    here, there = store_of(tmp_path / "data"), store_of(tmp_path / "data")
    here.create("Mine")
    assert here.search("walrus") == []  # the index exists from here on
    chat = there.create("Walrus facts")
    assert [h.conversation_id for h in here.search("walrus")] == [chat.id]


def test_a_renamed_conversation_is_found_by_its_new_title_not_the_old(tmp_path: Path) -> None:
    here, there = store_of(tmp_path / "data"), store_of(tmp_path / "data")
    chat = here.create("Old title")
    message = here.append(chat.id, Message("user", "body stays"))
    here.search("old")
    here.rename(chat.id, "Brand new title")
    assert here.search("old") == []
    assert [(h.message_id, h.title) for h in here.search("brand")] == [(None, "Brand new title")]
    there.rename(chat.id, "Renamed elsewhere")
    assert [h.title for h in here.search("elsewhere")] == ["Renamed elsewhere"]
    assert [(h.message_id, h.title) for h in here.search("body")] == [(message.id, "Renamed elsewhere")]


def test_a_rename_keeps_the_message_rows(store: ConversationStore) -> None:
    chat = store.create("Before")
    for n in range(20):
        store.append(chat.id, Message("user", f"message number{n}"))
    store.search("before")
    rows = index_rows(store, "SELECT rowid FROM entries WHERE message_id IS NOT NULL ORDER BY rowid")
    store.rename(chat.id, "After")
    assert index_rows(store, "SELECT rowid FROM entries WHERE message_id IS NOT NULL ORDER BY rowid") == rows
    assert len(store.search("number")) == 20


def test_a_deleted_conversation_is_not_found_whoever_deleted_it(tmp_path: Path) -> None:
    here, there = store_of(tmp_path / "data"), store_of(tmp_path / "data")
    gone, kept = here.create("Gone"), here.create("Kept")
    here.append(gone.id, Message("user", "parrot one"))
    alive = here.append(kept.id, Message("user", "parrot two"))
    other = here.create("Other")
    here.append(other.id, Message("user", "parrot three"))
    assert len(here.search("parrot")) == 3
    here.delete(gone.id)
    assert len(here.search("parrot")) == 2
    there.delete(other.id)
    assert ids(here.search("parrot")) == [alive.id]
    assert index_rows(here, "SELECT DISTINCT conversation FROM entries") == [(kept.id,)]


def test_an_old_format_file_is_indexed_when_first_appended_to(store: ConversationStore) -> None:
    old = (REPO / "data" / "examples" / "conversation-v1.jsonl").read_bytes()
    conversation_id = json.loads(old.split(b"\n", 1)[0])["id"]
    store.directory.mkdir(parents=True)
    (store.directory / f"{conversation_id}.jsonl").write_bytes(old)
    assert store.search("runny")  # a v1 file is searched as it is
    store.append(conversation_id, Message("user", "and a quail egg?"))  # rewrites it at version 3
    assert [h.role for h in store.search("quail")] == ["user"]
    assert len(store.search("runny")) == len(
        [m for m in store.get(conversation_id).tree if "runny" in m.content]
    )


# -- damage: rebuilt silently ----------------------------------------------------------------------


def expected_hits(store: ConversationStore, word: str) -> set[str]:
    """The ids of the messages holding ``word``, from the conversation files."""
    return {
        message.id
        for summary in store.list()
        for message in store.get(summary.id).tree
        if word in message.content.lower().split()
    }


def many(store: ConversationStore, conversations: int = 5, messages: int = 6) -> None:
    for c in range(conversations):
        chat = store.create(f"Conversation {c}")
        for m in range(messages):
            word = "heron" if (c + m) % 3 == 0 else "stork"
            store.append(chat.id, Message("user", f"a {word} number {c} {m}"))


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda p: p.write_bytes(os.urandom(8192)), id="garbage"),
        pytest.param(lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]), id="truncated-half"),
        pytest.param(lambda p: p.write_bytes(p.read_bytes()[: 4096 + 100]), id="truncated-mid-page"),
        pytest.param(lambda p: p.write_bytes(p.read_bytes()[:50]), id="truncated-header"),
        pytest.param(lambda p: p.write_bytes(b""), id="emptied"),
        pytest.param(lambda p: p.unlink(), id="deleted"),
        pytest.param(lambda p: p.write_bytes(b"SQLite format 3\x00" + os.urandom(4080)), id="bad-pages"),
    ],
)
@pytest.mark.parametrize("who", ["same store", "fresh store"])
def test_a_damaged_or_missing_index_is_rebuilt_silently_with_the_right_hits(
    tmp_path: Path, damage: object, who: str
) -> None:
    store = store_of(tmp_path / "data")
    many(store)
    herons = expected_hits(store, "heron")
    assert set(ids(store.search("heron", limit=100))) == herons
    index = store.directory / INDEX_NAME
    damage(index)  # type: ignore[operator]
    searcher = store if who == "same store" else store_of(tmp_path / "data")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning either: a cache is not the user's concern
        assert set(ids(searcher.search("heron", limit=100))) == herons
        assert set(ids(searcher.search("stork", limit=100))) == expected_hits(store, "stork")
    assert index_rows(searcher, "PRAGMA integrity_check") == [("ok",)]
    assert not searcher._index.in_memory  # rebuilt on disk, not given up
    added = store.append(store.list()[0].id, Message("user", "a late heron"))
    assert added.id in ids(searcher.search("heron", limit=100))


def test_an_index_of_another_schema_is_rebuilt(store: ConversationStore) -> None:
    many(store, 2, 3)
    store.search("heron")
    db = sqlite3.connect(store.directory / INDEX_NAME)
    db.execute("PRAGMA user_version = 99")
    db.commit()
    db.close()
    fresh = store_of(store.directory.parent.parent)
    assert set(ids(fresh.search("heron"))) == expected_hits(store, "heron")
    assert index_rows(fresh, "PRAGMA user_version") == [(1,)]


def test_a_store_whose_index_another_kernel_rebuilt_uses_the_new_one(tmp_path: Path) -> None:
    here, there = store_of(tmp_path / "data"), store_of(tmp_path / "data")
    chat = here.create("Rebuilt")
    here.search("x")
    there.search("x")
    (here.directory / INDEX_NAME).write_bytes(b"garbage" * 100)
    assert here.search("rebuilt")  # here deletes it and builds a new file
    message = there.append(chat.id, Message("user", "a pelican"))  # there's connection was to the old file
    assert ids(here.search("pelican")) == [message.id]
    assert ids(there.search("pelican")) == [message.id]


# -- killed mid-write ------------------------------------------------------------------------------

WORKER = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from nbchat import ConversationStore, Message
    from nbchat.search import INDEX_NAME
    data, mode, tag = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    store = ConversationStore(data, "alice")
    chats = [s.id for s in store.list()]
    print("ready", flush=True)
    deadline = time.monotonic() + 30
    seq = 0
    while time.monotonic() < deadline:
        if mode in ("append", "plain"):  # plain: appends only
            chat = chats[seq % len(chats)]
            store.append(chat, Message("user", f"k{tag}n{seq:05d} " + "filler words " * (seq % 7) * 20))
            if seq % 9 == 4 and mode == "append":
                store.rename(chat, f"title k{tag}n{seq:05d}")
            if seq % 5 == 2 and mode == "append":  # a branch switch: a select line
                tree = store.get(chat).tree
                store.select(chat, tree.messages[(seq * 7) % len(tree.messages)].id)
        else:  # rebuild: the index deleted, then built again by a search
            for suffix in ("", "-journal"):
                try:
                    os.unlink(str(store.directory / INDEX_NAME) + suffix)
                except FileNotFoundError:
                    pass
            store.search("filler")
        sys.stdout.write(f"{seq} {time.time()}\\n")  # one write: a line is whole or absent
        sys.stdout.flush()
        seq += 1
    """
)


def test_a_process_killed_mid_update_leaves_every_conversation_loadable_and_the_index_right(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    store = store_of(data)
    for n in range(12):
        chat = store.create(f"Chat {n}")
        for m in range(15):
            store.append(chat.id, Message("user", f"seed{n}x{m} filler words " * 10))
    store.search("seed")
    rng = random.Random(13)
    for round_ in range(6):
        mode = "append" if round_ % 2 == 0 else "rebuild"
        worker = subprocess.Popen(
            [sys.executable, "-c", WORKER, str(data), mode, str(round_)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert worker.stdout is not None
        assert worker.stdout.readline().strip() == "ready", worker.stderr.read() if worker.stderr else ""
        time.sleep(rng.uniform(0.05, 0.8))
        os.kill(worker.pid, signal.SIGKILL)
        out, err = worker.communicate(timeout=30)
        assert worker.returncode == -signal.SIGKILL, err
        acknowledged = [int(line.split()[0]) for line in out.splitlines()]
        assert acknowledged or mode == "rebuild", "the worker was killed before doing anything"

        reader = store_of(data)
        conversations = [reader.get(s.id) for s in reader.list()]  # every one loadable
        assert len(conversations) == 12
        index = data / "conversations" / "alice" / INDEX_NAME
        if index.exists():  # killed mid-transaction: the journal rolls it back, nothing is damaged
            assert index_rows(reader, "PRAGMA integrity_check") == [("ok",)]
        if mode == "append":
            words = {m.content.split()[0] for c in conversations for m in c.tree if m.content.startswith("k")}
            for seq in acknowledged:
                assert f"k{round_}n{seq:05d}" in words  # acknowledged = saved
            for word in sorted(words)[-15:]:
                found = reader.search(word)
                held = [m.id for c in conversations for m in c.tree if m.content.startswith(word + " ")]
                assert [h.message_id for h in found if h.message_id] == held
        assert len(reader.search("seed", limit=1000)) == 12 * 15
        assert not reader._index.in_memory


# -- a read-only data dir ---------------------------------------------------------------------------


@pytest.mark.parametrize("index", ["none", "whole", "hot journal"])
def test_a_read_only_data_dir_can_still_be_searched(tmp_path: Path, index: str) -> None:
    disk = tmp_path / "disk"
    mount_small_disk(disk, "size=16m,mode=0700")
    try:
        writer = store_of(disk / "data")
        many(writer, 4, 5)
        if index == "none":
            assert not (writer.directory / INDEX_NAME).exists()
        else:
            writer.search("heron")
        if index == "hot journal":  # a writer killed mid-transaction: the file may be half-written
            with open(writer.directory / (INDEX_NAME + "-journal"), "r+b") as journal:
                journal.write(bytes.fromhex("d9d505f920a163d7"))  # SQLite's journal magic
        herons = expected_hits(writer, "heron")
        before = sorted((p.name, p.stat().st_size) for p in writer.directory.iterdir())
        reader = store_of(disk / "data")
        reader.list()  # a kernel that was using the data dir when it became read-only
        writer.close()  # logged out: its index file is closed, or the remount would be refused as busy
        remount_read_only(disk)
        for store in (reader, store_of(disk / "data")):
            assert set(ids(store.search("heron", limit=100))) == herons
            assert store._index.in_memory
            # An index left whole is copied into memory: no conversation had to be read for it.
            assert (store._cache == {}) == (index == "whole")
            with pytest.raises(OSError, match="read-only filesystem"):
                store.append(store.list()[0].id, Message("user", "a heron too"))
            assert set(ids(store.search("heron", limit=100))) == herons
        assert sorted((p.name, p.stat().st_size) for p in writer.directory.iterdir()) == before
    finally:
        unmount(disk)


def test_hit_times_are_the_messages(store: ConversationStore) -> None:
    chat = store.create("Times")
    when = store.append(chat.id, Message("user", "an ibis")).time
    [hit] = store.search("ibis")
    assert hit.time == when and hit.time.utcoffset() == timedelta(0)


def test_a_conversation_file_that_cannot_be_read_is_left_out_and_the_others_are_found(
    store: ConversationStore,
) -> None:
    good = store.create("Good")
    kept = store.append(good.id, Message("user", "a finch"))
    newer = store.create("From a newer nbchat")
    store.append(newer.id, Message("user", "a finch from the future"))
    path = store.directory / f"{newer.id}.jsonl"
    header, body = path.read_bytes().split(b"\n", 1)
    path.write_bytes(header.replace(b'"version":3', b'"version":99') + b"\n" + body)
    assert ids(fresh_store(store).search("finch")) == [kept.id]
    assert ids(store.search("finch")) == [kept.id]
    path.write_bytes(header + b"\n" + body)  # readable again: found again
    assert len(store.search("finch")) == 2


def test_an_index_path_that_cannot_hold_a_database_is_searched_in_memory(store: ConversationStore) -> None:
    chat = store.create("Memory")
    first = store.append(chat.id, Message("user", "an albatross"))
    (store.directory / INDEX_NAME).mkdir()  # not a file: SQLite cannot open it
    assert ids(store.search("albatross")) == [first.id]
    assert store._index.in_memory
    second = store.append(chat.id, Message("user", "another albatross"))  # kept up to date in memory
    assert sorted(ids(store.search("albatross"))) == sorted([first.id, second.id])


def fresh_store(store: ConversationStore) -> ConversationStore:
    return ConversationStore(store.directory.parent.parent, store.username)


def big_history(store: ConversationStore, conversations: int = 120) -> None:
    """``conversations`` of 100 messages, written in the store's line format: fast to make, slow to index."""
    store.directory.mkdir(parents=True, exist_ok=True)
    for n in range(conversations):
        chat = Conversation(id=new_id(), title=f"Chat {n}", created=utcnow(), updated=utcnow())
        lines, parent = [records.header_line(chat)], None
        for m in range(100):
            message = Message("user", f"crane{n}x number {m} " + "filler words " * 10, parent=parent)
            lines.append(records.message_line(message))
            parent = message.id
        (store.directory / f"{chat.id}.jsonl").write_bytes(b"".join(lines))


def test_building_a_big_index_lets_other_kernels_append_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(nbchat.store, "SEARCH_SLICE_S", 0.0)  # one conversation a slice, whatever the speed
    data = tmp_path / "data"
    store = store_of(data)
    big_history(store, 40)
    writer = subprocess.Popen(
        [sys.executable, "-c", WORKER, str(data), "plain", "7"], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    assert writer.stdout is not None and writer.stdout.readline().strip() == "ready"
    time.sleep(0.3)
    started = time.time()
    hits = store.search("crane5x", limit=1000)
    ended = time.time()
    writer.kill()
    out, _ = writer.communicate(timeout=30)
    times = [float(line.split()[1]) for line in out.splitlines()]
    during = [t for t in times if started < t < ended]
    assert ended - started > 39 * nbchat.store.SEARCH_PAUSE_S  # a pause after each slice
    assert len(during) >= 3, (ended - started, len(out.splitlines()))  # the writer was not shut out
    assert len(hits) == 100 and {h.role for h in hits} == {"user"}


def test_building_a_big_index_lets_a_reply_of_the_same_kernel_keep_saving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(nbchat.store, "SEARCH_SLICE_S", 0.0)
    store = store_of(tmp_path / "data")
    big_history(store, 40)
    chat = store.create("Streaming")
    question = store.append(chat.id, Message("user", "a long answer, please"))
    saved: list[float] = []
    searching = threading.Event()
    done = threading.Event()

    def stream() -> None:  # the session's reply thread, saving its text so far
        searching.wait(10)
        while not done.is_set():
            store.append_draft(chat.id, records.Draft("d" * 32, question.id, None, utcnow(), "more ", ""))
            saved.append(time.time())
            time.sleep(0.01)

    thread = threading.Thread(target=stream)
    thread.start()
    try:
        started = time.time()
        searching.set()
        hits = store.search("crane7x", limit=1000)
        ended = time.time()
    finally:
        done.set()
        thread.join(10)
    assert ended - started > 39 * nbchat.store.SEARCH_PAUSE_S  # a pause after each slice
    assert len([t for t in saved if started < t < ended]) >= 3  # the reply was not held up by the search
    assert len(hits) == 100


# -- the index is a function of the files --------------------------------------------------------

WORDS = st.sampled_from(["alpha", "beta", "gamma", "数据", "café"])
OPS = st.one_of(
    st.tuples(st.just("append"), st.integers(0, 1), st.integers(0, 3), WORDS),
    st.tuples(st.just("branch"), st.integers(0, 1), st.integers(0, 3), st.integers(0, 50), WORDS),
    st.tuples(st.just("draft"), st.integers(0, 1), st.integers(0, 3), WORDS),
    st.tuples(st.just("finish"), st.integers(0, 3)),
    st.tuples(st.just("more"), st.integers(0, 3), WORDS),
    st.tuples(st.just("select"), st.integers(0, 1), st.integers(0, 3), st.integers(0, 50)),
    st.tuples(st.just("rename"), st.integers(0, 1), st.integers(0, 3), WORDS),
    st.tuples(st.just("create"), st.integers(0, 1), WORDS),
    st.tuples(st.just("delete"), st.integers(0, 1), st.integers(0, 3)),
    st.tuples(st.just("search"), st.integers(0, 1)),
    st.tuples(st.just("behind"), st.integers(0, 3), WORDS),
)


def index_content(store: ConversationStore, only: set[str] | None = None) -> set[tuple[object, ...]]:
    """What the index holds: (conversation, message id, role, partial, text) for every row."""
    if not (store.directory / INDEX_NAME).exists():
        return set()  # never built: a user with no conversation
    rows = index_rows(
        store,
        "SELECT e.conversation, e.message_id, e.role, e.partial, w.body"
        " FROM entries e JOIN words w ON w.rowid = e.rowid",
    )
    return {(*row[:4], str(row[4]).replace("\u200b", "")) for row in rows if only is None or row[0] in only}


def apply(
    op: tuple[object, ...], stores: list[ConversationStore], drafts: dict[str, tuple[int, str, str]]
) -> None:
    """One operation of one of two kernels (``drafts``: conversation → (store, reply id, text so far))."""
    kind, rest = op[0], op[1:]
    chats = sorted(s.id for s in stores[0].list())
    pick = lambda n: chats[n % len(chats)] if chats else None  # noqa: E731
    if kind == "create":
        stores[rest[0]].create(f"about {rest[1]}")  # type: ignore[index]
    elif kind == "search":
        stores[rest[0]].search("alpha")  # type: ignore[index]
    elif kind == "finish":
        chat = pick(rest[0])  # type: ignore[arg-type]
        if chat in drafts:
            writer, reply, text = drafts.pop(chat)
            stores[writer].append(chat, Message("assistant", text + " done", id=reply))
    elif kind == "more":  # the next draft line of a reply streaming
        chat = pick(rest[0])  # type: ignore[arg-type]
        if chat in drafts:
            writer, reply, text = drafts[chat]
            more = f"{rest[1]} more "
            draft = records.Draft(
                reply, _drafted_parent(stores[writer], chat, reply), None, utcnow(), more, ""
            )
            stores[writer].append_draft(chat, draft)
            drafts[chat] = (writer, reply, text + more)
    elif kind == "behind":  # a writer that never tells the index
        chat = pick(rest[0])  # type: ignore[arg-type]
        if chat is not None and chat not in drafts:
            leaf = stores[0].get(chat).tree.leaf()
            line = records.message_line(
                Message("user", f"{rest[1]} behind", parent=leaf.id if leaf else None)
            )
            with (stores[0].directory / f"{chat}.jsonl").open("ab") as handle:
                handle.write(line)
    else:
        store, chat = stores[rest[0]], pick(rest[1])  # type: ignore[index,arg-type]
        if chat is None or (chat in drafts and kind != "rename"):
            return  # one reply at a time per conversation, as the session does
        tree = store.get(chat).tree
        if kind == "append":
            store.append(chat, Message("user", f"{rest[2]} said"))
        elif kind == "branch" and tree.messages:
            parent = tree.messages[rest[2] % len(tree.messages)]  # type: ignore[operator]
            store.append(chat, Message("assistant", f"{rest[3]} again", parent=parent.id))
        elif kind == "draft":
            leaf = tree.leaf()
            reply = new_id()
            text = f"{rest[2]} partial "
            store.append_draft(
                chat, records.Draft(reply, leaf.id if leaf else None, None, utcnow(), text, "")
            )
            drafts[chat] = (rest[0], reply, text)  # type: ignore[assignment]
        elif kind == "select" and tree.messages:
            store.select(chat, tree.messages[rest[2] % len(tree.messages)].id)  # type: ignore[operator]
        elif kind == "rename":
            store.rename(chat, f"renamed {rest[2]}")
        elif kind == "delete":
            store.delete(chat)


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(ops=st.lists(OPS, min_size=1, max_size=25))
def test_an_index_that_says_it_is_up_to_date_holds_exactly_what_a_rebuild_from_the_files_holds(
    tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[object, ...]]
) -> None:
    data = tmp_path_factory.mktemp("property") / "data"
    stores = [store_of(data), store_of(data)]
    stores[0].create("first")
    stores[0].search("alpha")
    drafts: dict[str, tuple[int, str, str]] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for op in ops:
            apply(op, stores, drafts)
    directory = stores[0].directory
    files = {p.name[:-6]: (p.stat().st_ino, p.stat().st_size) for p in directory.glob("*.jsonl")}
    recorded = index_rows(stores[0], "SELECT id, inode, size FROM conversations")
    current = {cid for cid, inode, size in recorded if files.get(str(cid)) == (inode, size)}

    copy = tmp_path_factory.mktemp("rebuilt") / "data"
    shutil.copytree(data, copy)
    for leftover in (copy / "conversations" / "alice").glob(INDEX_NAME + "*"):
        leftover.unlink()
    rebuilt = store_of(copy)
    rebuilt.search("alpha")
    assert index_content(stores[0], current) == index_content(rebuilt, current)  # the hooks were exact
    stores[1].search("alpha")  # caught up: the whole index is the files' again
    assert index_content(stores[0]) == index_content(rebuilt)


def _drafted_parent(store: ConversationStore, chat: str, reply: str) -> str | None:
    """The message a streaming reply answers, read from its first draft line in the file."""
    for line in (store.directory / f"{chat}.jsonl").read_bytes().splitlines()[1:]:
        record = json.loads(line)
        if record.get("draft") == reply:
            return record["parent"]  # type: ignore[no-any-return]
    raise AssertionError(f"no draft of {reply}")


def test_the_index_and_its_journal_are_private_to_the_user(store: ConversationStore) -> None:
    store.append(store.create("Private").id, Message("user", "a secret"))
    old = os.umask(0o022)
    try:
        store.search("secret")
        store.append(store.list()[0].id, Message("user", "another secret"))
    finally:
        os.umask(old)
    made = sorted(store.directory.glob(INDEX_NAME + "*"))
    assert [p.name for p in made] == [INDEX_NAME, INDEX_NAME + "-journal"]
    assert {p.stat().st_mode & 0o777 for p in made} == {0o600}
