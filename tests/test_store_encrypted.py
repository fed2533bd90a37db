"""A store given a data key (issue 15) writes every line sealed, and keeps every guarantee of the
clear store: the same behaviour, the same repairs, damage reported without losing anything else,
and no word of a conversation in any byte under the data dir."""

from __future__ import annotations

import gc
import json
import random
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nbchat import (
    ConversationSettings,
    ConversationStore,
    CorruptFile,
    Message,
    NbchatWarning,
    UnsupportedVersion,
    records,
)
from nbchat.crypto import LineCipher, new_data_key
from nbchat.errors import ConversationEncrypted
from nbchat.types import MAX_MODEL_ID_CHARS, MAX_SYSTEM_CHARS, MAX_TITLE_CHARS, ContextItem

EXAMPLES = Path(__file__).resolve().parent.parent / "data" / "examples"

Opener = Callable[[], ConversationStore]


@pytest.fixture
def cipher() -> LineCipher:
    return LineCipher(new_data_key())


@pytest.fixture(params=["clear", "encrypted"])
def opener(request: pytest.FixtureRequest, data_dir: Path, cipher: LineCipher) -> Opener:
    """A fresh store of alice's each call (another kernel), with or without her key."""
    key = cipher if request.param == "encrypted" else None
    return lambda: ConversationStore(data_dir, "alice", cipher=key)


@pytest.fixture
def sealed(data_dir: Path, cipher: LineCipher) -> Opener:
    return lambda: ConversationStore(data_dir, "alice", cipher=cipher)


def file_of(store: ConversationStore, conversation_id: str) -> Path:
    return store.directory / f"{conversation_id}.jsonl"


def word() -> str:
    """A word no ciphertext, id or time will ever contain by chance."""
    return "zq" + "".join(secrets.choice("bcdfghjklmnpstvwxz") for _ in range(14))


def every_byte(root: Path) -> Iterator[tuple[Path, bytes]]:
    """Every file under ``root``, hidden and temporary ones too (those gone meanwhile skipped)."""
    for path in sorted(root.rglob("*")):
        try:
            if path.is_file():
                yield path, path.read_bytes()
        except FileNotFoundError:
            continue


def leaks(root: Path, words: list[str]) -> list[tuple[str, str]]:
    found = []
    for path, data in every_byte(root):
        lowered = data.lower()
        found += [(str(path), w) for w in words if w.encode() in lowered]
    return found


# -- the same behaviour, clear and encrypted -----------------------------------------------------


def test_messages_thinking_stats_and_context_round_trip_through_another_store(opener: Opener) -> None:
    store = opener()
    conversation = store.create("Chat", ConversationSettings(model="qwen3", system="Be brief."))
    question = store.append(
        conversation.id,
        Message("user", "2+2?", context=(ContextItem("object", "df", "DataFrame 3 × 2", "a b\n1 2"),)),
    )
    answer = store.append(
        conversation.id,
        Message("assistant", "**4**", thinking="Arithmetic.", model="qwen3", stats={"finish_reason": "stop"}),
    )
    reloaded = opener().get(conversation.id)
    assert reloaded.messages == (question, answer)
    assert reloaded.settings == conversation.settings and reloaded.title == "Chat"


def test_listing_is_newest_first_and_reads_first_lines_only(opener: Opener) -> None:
    store = opener()
    first, _ = store.create("First"), store.create("Second")
    store.append(first.id, Message("user", "bump"))
    with file_of(store, first.id).open("ab") as handle:
        handle.write(b"not JSON, and list() never looks at it\n")
    assert [s.title for s in opener().list()] == ["First", "Second"]


def test_an_append_only_adds_one_line_to_the_same_file(opener: Opener) -> None:
    store = opener()
    conversation = store.create("Chat")
    for i in range(5):
        store.append(conversation.id, Message("user", f"message {i}"))
    path = file_of(store, conversation.id)
    before, inode = path.read_bytes(), path.stat().st_ino
    store.append(conversation.id, Message("assistant", "one more"))
    after = path.read_bytes()
    assert path.stat().st_ino == inode
    assert after.startswith(before) and after[len(before) :].count(b"\n") == 1


def test_rename_and_settings_keep_every_message_draft_and_branch(opener: Opener) -> None:
    store = opener()
    conversation = store.create("Old")
    q = store.append(conversation.id, Message("user", "q"))
    a = store.append(conversation.id, Message("assistant", "a"))
    b = store.append(conversation.id, Message("assistant", "b", parent=q.id))
    store.select(conversation.id, a.id)
    store.append_draft(conversation.id, records.Draft(secrets.token_hex(16), a.id, None, a.time, "half", ""))
    store.rename(conversation.id, "New")
    store.update_settings(conversation.id, temperature=0.1)
    fresh = opener().get(conversation.id)
    assert fresh.title == "New" and fresh.settings.temperature == 0.1
    assert [m.content for m in fresh.messages] == ["q", "a", "half"]
    assert fresh.messages[-1].stats == {"partial": True, "live": True}, "its writer is still open"
    assert [m.id for m in fresh.tree.alternatives(a.id)] == [a.id, b.id]
    assert opener().append(conversation.id, Message("user", "next")).parent == fresh.messages[-1].id


def test_another_store_sees_drafts_as_still_being_written_until_the_reply_is_saved(opener: Opener) -> None:
    store = opener()
    conversation = store.create("Chat")
    question = store.append(conversation.id, Message("user", "q"))
    reply = Message("assistant", "the answer", parent=question.id)
    store.append_draft(conversation.id, records.Draft(reply.id, question.id, None, reply.time, "the", ""))
    assert [m.id for m in store.get(conversation.id).messages] == [question.id]
    other = opener()
    assert other.get(conversation.id).messages[-1].stats == {"partial": True, "live": True}
    other.append(conversation.id, reply)
    assert [m.content for m in store.get(conversation.id).messages] == ["q", "the answer"]


def test_switching_branches_is_seen_by_every_store_and_new_messages_continue_it(opener: Opener) -> None:
    store = opener()
    conversation = store.create("Chat")
    q1 = store.append(conversation.id, Message("user", "q1"))
    a1 = store.append(conversation.id, Message("assistant", "a1"))
    q2 = store.append(conversation.id, Message("user", "q2"))
    b1 = store.append(conversation.id, Message("assistant", "b1", parent=q1.id))
    assert store.select(conversation.id, a1.id).messages[-1].id == q2.id
    fresh = opener()
    fresh.select(conversation.id, b1.id)
    assert store.get(conversation.id).messages[-1].id == b1.id
    assert fresh.append(conversation.id, Message("user", "q3")).parent == b1.id


def test_deleting_a_conversation_removes_it_from_the_list(opener: Opener) -> None:
    store = opener()
    keep, drop = store.create("Keep"), store.create("Drop")
    store.delete(drop.id)
    assert [s.id for s in opener().list()] == [keep.id]


def test_the_longest_header_nbchat_can_write_still_lists_and_loads(opener: Opener) -> None:
    settings = ConversationSettings(model="m" * MAX_MODEL_ID_CHARS, system="\x01" * MAX_SYSTEM_CHARS)
    conversation = opener().create("𝕏" * MAX_TITLE_CHARS, settings)
    fresh = opener()
    assert [s.title for s in fresh.list()] == [conversation.title]
    assert fresh.get(conversation.id).settings == settings


def test_a_torn_last_line_is_dropped_and_the_file_repaired(opener: Opener) -> None:
    store = opener()
    conversation = store.create("Chat")
    store.append(conversation.id, Message("user", "saved"))
    path = file_of(store, conversation.id)
    good = path.read_bytes()
    store.append(conversation.id, Message("assistant", "never acknowledged"))
    whole = path.read_bytes()
    path.write_bytes(whole[: len(good) + (len(whole) - len(good)) // 2])  # a crash mid-append
    fresh = opener()
    with pytest.warns(NbchatWarning, match="incomplete last line"):
        assert [m.content for m in fresh.get(conversation.id).messages] == ["saved"]
    assert path.read_bytes() == good
    fresh.append(conversation.id, Message("assistant", "after repair"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [m.content for m in opener().get(conversation.id).messages] == ["saved", "after repair"]


def test_a_last_line_that_lost_its_newline_is_kept_and_the_newline_restored(opener: Opener) -> None:
    store = opener()
    conversation = store.create("Chat")
    store.append(conversation.id, Message("user", "kept"))
    path = file_of(store, conversation.id)
    path.write_bytes(path.read_bytes()[:-1])
    fresh = opener()
    assert [m.content for m in fresh.get(conversation.id).messages] == ["kept"]
    assert path.read_bytes().endswith(b"\n")
    fresh.append(conversation.id, Message("assistant", "next"))
    assert [m.content for m in opener().get(conversation.id).messages] == ["kept", "next"]


# -- what an encrypted file is ----------------------------------------------------------------


def test_an_encrypted_file_shows_only_its_version_id_and_key_in_clear(sealed: Opener, cipher) -> None:
    store = sealed()
    conversation = store.create("Title")
    store.append(conversation.id, Message("user", "hello"))
    header, *body = file_of(store, conversation.id).read_bytes().splitlines()
    record = json.loads(header)
    assert record.keys() == {"version", "id", "key", "sealed"}
    assert record["version"] == records.SEALED_VERSION and record["id"] == conversation.id
    assert record["key"] == records.key_id(cipher)
    assert [json.loads(line).keys() for line in body] == [{"sealed"}]
    inner = cipher.open(record["sealed"], conversation_id=conversation.id, position=0)
    assert json.loads(inner)["version"] == records.FORMAT_VERSION  # the lines inside: today's format
    line = cipher.open(json.loads(body[0])["sealed"], conversation_id=conversation.id, position=1)
    assert json.loads(line)["content"] == "hello"


def test_no_word_of_a_title_message_thinking_context_or_stat_reaches_any_byte_on_disk(
    data_dir: Path, sealed: Opener
) -> None:
    words: list[str] = []

    def new_word() -> str:
        words.append(word())
        return words[-1]

    store, other = sealed(), sealed()
    conversation = store.create(f"title {new_word()}", ConversationSettings(system=f"be {new_word()}"))
    stop = threading.Event()
    failures: list[BaseException] = []

    def second_kernel() -> None:
        try:
            for i in range(40):
                other.append(conversation.id, Message("user", f"{new_word()} number {i}"))
        except BaseException as exc:
            failures.append(exc)
        finally:
            stop.set()

    writer = threading.Thread(target=second_kernel)
    writer.start()
    found = []
    while not stop.is_set():  # look while the other kernel appends: temp files, half-written lines
        found += leaks(data_dir, list(words))
        question = store.append(
            conversation.id,
            Message("user", new_word(), context=(ContextItem("cells", "cells", new_word(), new_word()),)),
        )
        reply, answer = secrets.token_hex(16), new_word()
        draft = records.Draft(reply, question.id, None, question.time, new_word(), new_word())
        store.append_draft(conversation.id, draft)
        thinking, stats = new_word(), {"finish_reason": new_word()}
        saved = Message("assistant", answer, id=reply, parent=question.id, thinking=thinking, stats=stats)
        store.append(conversation.id, saved)
        store.select(conversation.id, question.id)
        store.rename(conversation.id, f"renamed {new_word()}")
    writer.join()
    assert not failures
    assert [hit.message_id for hit in store.search(answer)] == [reply]  # search works, in memory
    found += leaks(data_dir, words)
    assert found == []
    assert len(words) > 40 and len(sealed().get(conversation.id).tree) > 40


# -- damage and keys ------------------------------------------------------------------------------


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def three_messages(store: ConversationStore, title: str = "Chat") -> tuple[str, Path]:
    conversation = store.create(title)
    for content in ("one", "two", "three"):
        store.append(conversation.id, Message("user", content))
    return conversation.id, file_of(store, conversation.id)


def assert_moved_aside_with_its_other_lines_readable(
    error: CorruptFile, cipher: LineCipher, conversation_id: str, good: dict[int, str]
) -> None:
    """Nothing lost: the moved file still holds every other line, each opening where it stands."""
    assert error.moved_to is not None and not error.path.exists()
    lines = lines_of(error.moved_to)
    for position, content in good.items():
        opened = records.open_line(lines[position], cipher, conversation_id, position)
        assert isinstance(opened, Message) and opened.content == content


def test_a_line_copied_from_another_conversation_is_damage_and_nothing_else_is_lost(
    sealed: Opener, cipher: LineCipher
) -> None:
    store = sealed()
    victim, path = three_messages(store, "Victim")
    donor, donor_path = three_messages(store, "Donor")
    lines = lines_of(path)
    lines[2] = lines_of(donor_path)[2]  # the same position, another file
    path.write_bytes(b"".join(lines))
    fresh = sealed()
    with pytest.raises(CorruptFile, match="line 3: it does not decrypt") as error:
        fresh.get(victim)
    assert_moved_aside_with_its_other_lines_readable(error.value, cipher, victim, {1: "one", 3: "three"})
    assert [m.content for m in fresh.get(donor).messages] == ["one", "two", "three"]
    assert [s.title for s in fresh.list()] == ["Donor"]


def test_two_lines_swapped_are_damage_and_nothing_else_is_lost(sealed: Opener, cipher: LineCipher) -> None:
    store = sealed()
    conversation_id, path = three_messages(store)
    lines = lines_of(path)
    lines[1], lines[2] = lines[2], lines[1]
    path.write_bytes(b"".join(lines))
    with pytest.raises(CorruptFile, match="line 2: it does not decrypt") as error:
        sealed().get(conversation_id)
    assert_moved_aside_with_its_other_lines_readable(error.value, cipher, conversation_id, {3: "three"})


@pytest.mark.parametrize("move", ["dropped", "repeated at the end"])
def test_a_line_moved_to_another_position_is_damage(sealed: Opener, cipher: LineCipher, move: str) -> None:
    store = sealed()
    conversation_id, path = three_messages(store)
    lines = lines_of(path)
    lines = lines[:1] + lines[2:] if move == "dropped" else [*lines, lines[1]]
    path.write_bytes(b"".join(lines))
    with pytest.raises(CorruptFile, match="does not decrypt"):
        sealed().get(conversation_id)


def test_a_damaged_encrypted_header_is_moved_aside_when_listing_and_the_others_still_list(
    sealed: Opener,
) -> None:
    store = sealed()
    damaged, path = three_messages(store, "Damaged")
    store.create("Fine")
    header = json.loads(lines_of(path)[0])
    header["sealed"] = header["sealed"][:-4] + ("AAAA" if header["sealed"][-4:] != "AAAA" else "BBBB")
    path.write_bytes(json.dumps(header).encode() + b"\n" + b"".join(lines_of(path)[1:]))
    with pytest.warns(NbchatWarning, match="does not decrypt"):
        assert [s.title for s in sealed().list()] == ["Fine"]
    assert len(list(store.directory.glob(f"{damaged}.jsonl.corrupt-*"))) == 1


def test_another_key_is_refused_and_nothing_is_rewritten_or_moved(data_dir: Path, sealed: Opener) -> None:
    conversation_id, _ = three_messages(sealed())
    before = dict(every_byte(data_dir))
    stranger = ConversationStore(data_dir, "alice", cipher=LineCipher(new_data_key()))
    with pytest.raises(ConversationEncrypted, match="another key"):
        stranger.get(conversation_id)
    with pytest.raises(ConversationEncrypted):
        stranger.append(conversation_id, Message("user", "never written"))
    with pytest.warns(NbchatWarning, match="another key"):
        assert stranger.list() == []
    assert dict(every_byte(data_dir)) == before  # the lock file is all it touched
    assert [m.content for m in sealed().get(conversation_id).messages] == ["one", "two", "three"]


def test_a_store_without_the_key_says_the_conversation_is_encrypted_and_leaves_it(
    data_dir: Path, sealed: Opener
) -> None:
    conversation_id, path = three_messages(sealed())
    before = path.read_bytes()
    clear = ConversationStore(data_dir, "alice")
    with pytest.raises(ConversationEncrypted, match="encrypted: log in"):
        clear.get(conversation_id)
    with pytest.raises(UnsupportedVersion):  # what older callers already handle: left untouched
        clear.rename(conversation_id, "nope")
    with pytest.warns(NbchatWarning, match="encrypted: log in"):
        assert clear.list() == []
    assert path.read_bytes() == before and not list(path.parent.glob("*.corrupt-*"))


# -- clear files of an account not converted yet ---------------------------------------------------


def test_a_store_with_a_key_reads_a_clear_file_and_seals_it_whole_at_its_first_write(
    data_dir: Path, sealed: Opener, cipher: LineCipher
) -> None:
    clear = ConversationStore(data_dir, "alice")
    secret_words = [word() for _ in range(4)]
    conversation = clear.create(f"title {secret_words[0]}")
    q = clear.append(conversation.id, Message("user", secret_words[1]))
    a = clear.append(conversation.id, Message("assistant", secret_words[2], thinking=secret_words[3]))
    clear.append(conversation.id, Message("assistant", "again", parent=q.id))
    clear.select(conversation.id, a.id)
    path = file_of(clear, conversation.id)
    before = path.read_bytes()
    store = sealed()
    assert [s.title for s in store.list()] == [conversation.title]
    assert [m.content for m in store.get(conversation.id).messages] == [secret_words[1], secret_words[2]]
    assert path.read_bytes() == before  # reading converts nothing
    store.append(conversation.id, Message("user", "follow-up"))
    assert leaks(data_dir, secret_words) == []
    assert json.loads(lines_of(path)[0])["version"] == records.SEALED_VERSION
    fresh = sealed().get(conversation.id)
    assert [m.content for m in fresh.messages] == [secret_words[1], secret_words[2], "follow-up"]
    assert len(fresh.tree) == 4
    with pytest.raises(ConversationEncrypted):
        ConversationStore(data_dir, "alice").get(conversation.id)


@pytest.mark.parametrize("example", ["conversation-v1.jsonl", "conversation-v2.jsonl"])
def test_an_older_clear_file_is_upgraded_and_sealed_in_one_rewrite(
    data_dir: Path, sealed: Opener, example: str
) -> None:
    source = EXAMPLES / example
    conversation_id = json.loads(source.read_bytes().splitlines()[0])["id"]
    store = sealed()
    store.directory.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, file_of(store, conversation_id))
    old = ConversationStore(data_dir, "alice").get(conversation_id)
    assert store.get(conversation_id) == old
    store.rename(conversation_id, "Renamed")
    fresh = sealed().get(conversation_id)
    assert fresh.title == "Renamed" and fresh.messages == old.messages
    assert b'"content"' not in file_of(store, conversation_id).read_bytes()


def test_sealing_converts_each_clear_file_once_changing_nothing_it_holds(
    data_dir: Path, sealed: Opener
) -> None:
    clear = ConversationStore(data_dir, "alice")
    secret = word()
    one = clear.create(f"one {secret}")
    q = clear.append(one.id, Message("user", secret, thinking=None))
    clear.append_draft(one.id, records.Draft(secrets.token_hex(16), q.id, None, q.time, secret, ""))
    two = clear.create("two")
    reader = ConversationStore(data_dir, "alice")  # not the drafting one: it shows the draft
    before = {c.id: reader.get(c.id) for c in (one, two)}
    assert before[one.id].messages[-1].content == secret
    store = sealed()
    assert store.seal(one.id) is True  # a kill here: one sealed, two clear; both read
    assert {c: sealed().get(c) for c in before} == before
    assert store.seal(two.id) is True
    path = file_of(store, two.id)
    after = path.read_bytes()
    assert store.seal(two.id) is False and path.read_bytes() == after
    assert {c: sealed().get(c) for c in before} == before  # titles, times, drafts: all as they were
    assert leaks(data_dir, [secret]) == []


def test_an_index_file_left_from_before_is_never_written_by_an_encrypted_store(
    data_dir: Path, sealed: Opener
) -> None:
    clear = ConversationStore(data_dir, "alice")
    conversation = clear.create("Chat")
    clear.append(conversation.id, Message("user", "older words"))
    assert clear.search("older")
    clear.close()
    index = next(clear.directory.glob(".search.sqlite"))
    store = sealed()
    secret = word()
    store.append(conversation.id, Message("user", secret))
    store.rename(conversation.id, f"about {secret}")
    assert [hit.conversation_id for hit in store.search(secret)] == [conversation.id, conversation.id]
    store.close()
    assert leaks(data_dir, [secret]) == [] and index.exists()


def test_an_index_asked_to_stay_in_memory_never_creates_reads_or_deletes_the_file(tmp_path: Path) -> None:
    from nbchat.search import INDEX_NAME, SearchIndex

    store = ConversationStore(tmp_path, "alice")
    conversation = store.create("Chat")
    store.append(conversation.id, Message("user", "memorable words"))
    index = SearchIndex(store.directory, in_memory=True)
    files = store._stamps()
    hits = index.search("memorable", 5, files, lambda cid: store._indexable(cid, None), locked=True)
    assert hits is not None and [hit.conversation_id for hit in hits] == [conversation.id]
    assert index.in_memory and not (store.directory / INDEX_NAME).exists()
    (store.directory / INDEX_NAME).write_bytes(b"not a database")  # a damaged leftover: not its business
    index.removed(conversation.id)
    assert index.search("memorable", 5, files, lambda cid: store._indexable(cid, None), locked=True)
    index.close()
    assert (store.directory / INDEX_NAME).read_bytes() == b"not a database"


# -- SIGKILL -------------------------------------------------------------------------------------

APPEND_LOOP = """
import sys
from pathlib import Path
from nbchat import ConversationStore, Message
from nbchat.crypto import LineCipher

data, key, conversation_id, tag = sys.argv[1:]
store = ConversationStore(Path(data), "alice", cipher=LineCipher(bytes.fromhex(key)))
store.get(conversation_id)  # repairs a torn line a killed predecessor left
print("ready", flush=True)
seq = 0
while True:
    message_id = f"{int(tag):016x}{seq:016x}"
    store.append(conversation_id, Message("user", "x" * (seq % 7) ** 4, id=message_id))
    print(message_id, flush=True)
    seq += 1
"""


@pytest.mark.slow
@pytest.mark.reliability
def test_sigkill_in_a_tight_encrypted_append_loop_never_loses_an_acknowledged_message(
    data_dir: Path, tmp_path: Path
) -> None:
    """Rounds of: a process appends sealed lines until SIGKILLed at a random moment (half the rounds
    without a torn line get a simulated one: a prefix of the next sealed line). Each time a fresh
    store opens every acknowledged message in order, nothing twice, the torn line dropped."""
    rng = random.Random(20261202)
    key = new_data_key()
    cipher = LineCipher(key)
    conversation_id = ConversationStore(data_dir, "alice", cipher=cipher).create("killed").id
    path = data_dir / "conversations" / "alice" / f"{conversation_id}.jsonl"
    saved: list[str] = []
    torn_rounds = 0
    for tag in range(1, 13):
        stderr = (tmp_path / f"stderr-{tag}").open("wb")
        worker = subprocess.Popen(
            [sys.executable, "-c", APPEND_LOOP, str(data_dir), key.hex(), conversation_id, str(tag)],
            stdout=subprocess.PIPE,
            stderr=stderr,
            cwd=Path(__file__).resolve().parent.parent,
        )
        assert worker.stdout is not None
        assert worker.stdout.readline() == b"ready\n"
        time.sleep(rng.uniform(0.0, 0.2))
        worker.kill()
        out, _ = worker.communicate()
        stderr.close()
        assert worker.returncode == -signal.SIGKILL, (tmp_path / f"stderr-{tag}").read_text()
        acked = [line.decode() for line in out.split(b"\n")[:-1]]  # a line cut by the kill: no ack
        data = path.read_bytes()
        if not data.endswith(b"\n"):
            torn_rounds += 1
        elif rng.random() < 0.5:
            lines = data.count(b"\n")
            line = records.seal_line(
                records.message_line(Message("user", "never acked")), cipher, conversation_id, lines
            )
            with path.open("ab") as handle:
                handle.write(line[: rng.randrange(1, len(line) - 1)])
            torn_rounds += 1
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            loaded = ConversationStore(data_dir, "alice", cipher=cipher).get(conversation_id)
        ids = [m.id for m in loaded.messages]
        assert all("incomplete last line" in str(w.message) for w in caught)
        assert len(ids) == len(set(ids)) and ids[: len(saved)] == saved
        mine = ids[len(saved) :]
        assert mine[: len(acked)] == acked and len(mine) <= len(acked) + 1  # one written, not yet acked
        saved = ids
    assert len(saved) > 12 and torn_rounds > 0
    assert all(json.loads(line).keys() == {"sealed"} for line in path.read_bytes().splitlines()[1:])


def test_closing_the_store_lets_go_of_its_key(data_dir: Path) -> None:
    cipher = LineCipher(new_data_key())
    store = ConversationStore(data_dir, "alice", cipher=cipher)
    conversation = store.create("Chat")
    store.append(conversation.id, Message("user", "hello"))
    assert store.search("hello")
    gone = weakref.ref(cipher)
    store.close()
    del cipher
    gc.collect()
    assert gone() is None
