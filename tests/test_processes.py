"""Several real processes on one data dir: the cross-process guarantees of accounts and the store.

Every worker is a separate Python process running ``tests/workers.py`` (never a
fork of pytest), so locks, caches and crashes behave as they do between two
Jupyter kernels. Workers that must start together wait for a "go" file; workers
that get killed print each acknowledgement only after the store call returned,
so the test knows exactly which operations were promised to the user.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import random
import shutil
import time
import warnings
from collections import Counter
from pathlib import Path

import pytest
from worker_process import STORE_KINDS, WORKERS_PY, StoreKind, Worker, leaked_texts

import nbchat.store
from conftest import CHEAP_KDF
from nbchat import (
    Accounts,
    AuthenticationFailed,
    Config,
    Conversation,
    ConversationStore,
    Message,
    NbchatError,
    NbchatWarning,
    NotLoggedIn,
    records,
)
from nbchat.accounts import FREE_FAILURES

pytestmark = pytest.mark.slow

TORN_WARNING = "dropped an incomplete last line"


def _load_workers_module():
    spec = importlib.util.spec_from_file_location("nbchat_test_workers", WORKERS_PY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


workers = _load_workers_module()
message_id = workers.message_id
parse_message_id = workers.parse_message_id


@pytest.fixture(params=STORE_KINDS)
def kind(request: pytest.FixtureRequest) -> StoreKind:
    """The store-level tests run twice: on clear stores and on an encrypted account's stores."""
    return StoreKind(request.param)


def assert_nothing_leaked(kind: StoreKind, data: Path, texts: list[str]) -> None:
    """On encrypted stores, no text the workers or the test wrote is in any byte under ``data``; on
    clear ones the same search finds them (so it searches the right place)."""
    found = leaked_texts(data, texts)
    if kind.encrypted:
        assert found == []
    else:
        assert found, f"none of {texts} in the clear files: the leak check looks in the wrong place"


# Every message the workers write holds these (with spaces: never inside base64url ciphertext).
WORKER_TEXTS = ["writer 1 message", "writer 2 message", " lorem ipsum"]


def release_together(workers_: list[Worker], go_file: Path) -> None:
    """Open the starting gate once every worker is set up and spinning on it."""
    for worker in workers_:
        worker.wait_for_line("ready")
    go_file.touch()


def conversation_file(store: ConversationStore, conversation_id: str) -> Path:
    return store.directory / f"{conversation_id}.jsonl"


def jsonl_records(path: Path, kind: StoreKind | None = None) -> list[dict[str, object]]:
    """Every line of a conversation file, each checked to be a complete JSON object (on encrypted
    stores, each sealed line opened at its position)."""
    raw = path.read_bytes()
    assert raw.endswith(b"\n"), f"{path.name} does not end with a complete line"
    parsed = []
    for number, line in enumerate(raw.split(b"\n")[:-1], start=1):
        record = json.loads(line)  # raises on a torn or corrupt line
        assert isinstance(record, dict), f"line {number} is not a JSON object"
        parsed.append(record)
    if kind is not None:
        parsed = kind.clear_lines(parsed, path.name.removesuffix(".jsonl"))
    assert parsed and parsed[0].get("version") == records.FORMAT_VERSION, "the first line is not a header"
    return parsed


def complete_lines(path: Path, kind: StoreKind | None = None) -> tuple[list[dict[str, object]], bytes]:
    """Every newline-terminated line, each checked to be a JSON object (opened, on encrypted stores),
    and the unterminated tail (a torn write, or a write in progress by a live process), if any."""
    complete, _, tail = path.read_bytes().rpartition(b"\n")
    parsed = [json.loads(line) for line in complete.split(b"\n")]
    assert all(isinstance(record, dict) for record in parsed)
    if kind is not None:
        parsed = kind.clear_lines(parsed, path.name.removesuffix(".jsonl"))
    return parsed, tail


def ids_by_writer(ids: list[str]) -> dict[int, list[int]]:
    """The sequence numbers of each writer's messages, in file order."""
    grouped: dict[int, list[int]] = {}
    for value in ids:
        tag, seq = parse_message_id(value)
        grouped.setdefault(tag, []).append(seq)
    return grouped


def load_recording_warnings(store: ConversationStore, conversation_id: str) -> tuple[Conversation, list[str]]:
    """``store.get`` plus the text of every ``NbchatWarning`` it raised (a torn line is allowed)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        conversation = store.get(conversation_id)
    return conversation, [str(w.message) for w in caught if issubclass(w.category, NbchatWarning)]


# -- accounts ------------------------------------------------------------------------------------


def test_concurrent_registration_never_exceeds_the_user_cap(tmp_path: Path, spawn) -> None:
    """12 processes register 12 different names at the same instant with NBCHAT_MAX_USERS=10:
    exactly 10 get an account, the other 2 get ``UserLimitReached``, and users.json holds 10 users."""
    data, go = tmp_path / "data", tmp_path / "go"
    names = [f"user{number:02d}" for number in range(12)]
    started = [spawn("register", data, 10, name, go) for name in names]
    release_together(started, go)
    results = [json.loads(worker.finish().acks[-1]) for worker in started]

    assert Counter(r["result"] for r in results) == {"ok": 10, "UserLimitReached": 2}, results
    winners = sorted(r["key"] for r in results if r["result"] == "ok")
    users = json.loads((data / "users.json").read_text())["users"]
    assert sorted(users) == winners
    accounts = Accounts(Config(data_dir=data, max_users=10), bcrypt_rounds=4, kdf=CHEAP_KDF)
    assert [name.lower() for name in accounts.usernames()] == winners


def test_concurrent_registration_of_one_name_in_different_cases_has_one_winner(tmp_path: Path, spawn) -> None:
    """6 processes register Bob/bob/BOB/... at the same instant: names ignore case, so exactly one
    succeeds, the other 5 get ``UsernameTaken``, and users.json holds one account, spelled as the
    winner spelled it."""
    data, go = tmp_path / "data", tmp_path / "go"
    spellings = ["Bob", "bob", "BOB", "bOb", "BoB", "boB"]
    started = [spawn("register", data, 10, name, go) for name in spellings]
    release_together(started, go)
    results = [json.loads(worker.finish().acks[-1]) for worker in started]

    assert Counter(r["result"] for r in results) == {"ok": 1, "UsernameTaken": 5}, results
    (winner,) = (r["name"] for r in results if r["result"] == "ok")
    users = json.loads((data / "users.json").read_text())["users"]
    assert list(users) == ["bob"]
    assert users["bob"]["name"] == winner


# -- concurrent appends ----------------------------------------------------------------------------


def test_four_processes_appending_to_one_conversation_lose_and_duplicate_nothing(
    tmp_path: Path, spawn, kind: StoreKind
) -> None:
    """4 processes × 200 appends to ONE conversation, all released at once: the conversation ends with
    all 800 messages exactly once, each writer's messages in the order it appended them, and the file
    is valid JSON Lines (a header, then one complete message per line; sealed lines on encrypted
    stores, with no word of any message in any byte under the data dir)."""
    data, go = tmp_path / "data", tmp_path / "go"
    store = kind.open(data, "alice")
    conversation = store.create("shared by four kernels")
    writers, per_writer = range(1, 5), 200
    started = [
        spawn("append", data, "alice", conversation.id, tag, per_writer, go, key=kind.key) for tag in writers
    ]
    release_together(started, go)
    for worker in started:
        worker.finish()

    messages = kind.open(data, "alice").get(conversation.id).messages
    ids = [m.id for m in messages]
    assert len(ids) == len(set(ids)) == 4 * per_writer
    assert set(ids) == {message_id(tag, seq) for tag in writers for seq in range(per_writer)}
    assert ids_by_writer(ids) == {tag: list(range(per_writer)) for tag in writers}
    for message in messages:
        tag, seq = parse_message_id(message.id)
        assert message.content == workers.message_content(tag, seq, workers.scheduled_size(tag, seq))
    lines = jsonl_records(conversation_file(store, conversation.id), kind)
    assert [line["id"] for line in lines[1:]] == ids
    # The writer's own, long-lived store agrees with a fresh one.
    assert [m.id for m in store.get(conversation.id).messages] == ids
    assert_nothing_leaked(kind, data, [*WORKER_TEXTS, "writer 4 message", "shared by four kernels"])


def test_four_processes_appending_across_four_conversations_lose_and_duplicate_nothing(
    tmp_path: Path, spawn, kind: StoreKind
) -> None:
    """4 processes × 200 appends spread over 4 conversations of one user (every writer writes to every
    conversation, rotating): each conversation ends with exactly its 200 messages, none lost or
    duplicated, each writer's in order, and every file is valid JSON Lines (sealed lines on encrypted
    stores, with no word of any message in any byte under the data dir)."""
    data, go = tmp_path / "data", tmp_path / "go"
    store = kind.open(data, "alice")
    conversations = [store.create(f"conversation {number}") for number in range(4)]
    joined = ",".join(c.id for c in conversations)
    writers, per_writer = range(1, 5), 200
    started = [spawn("append", data, "alice", joined, tag, per_writer, go, key=kind.key) for tag in writers]
    release_together(started, go)
    for worker in started:
        worker.finish()

    fresh = kind.open(data, "alice")
    for index, conversation in enumerate(conversations):
        expected = {
            tag: [seq for seq in range(per_writer) if (seq + tag) % len(conversations) == index]
            for tag in writers
        }
        ids = [m.id for m in fresh.get(conversation.id).messages]
        assert len(ids) == len(set(ids)) == per_writer
        assert ids_by_writer(ids) == expected
        lines = jsonl_records(conversation_file(store, conversation.id), kind)
        assert [line["id"] for line in lines[1:]] == ids
    assert sorted(s.id for s in fresh.list()) == sorted(c.id for c in conversations)
    assert_nothing_leaked(kind, data, [*WORKER_TEXTS, "writer 4 message", "conversation 0"])


# -- two kernels of one user -----------------------------------------------------------------------


def run_ops(spawn, data: Path, user: str, conversation_id: str, ops: list[dict[str, object]]) -> dict:
    """Run ``ops`` in another process (a fresh store: another kernel) and return its final view."""
    worker = spawn("ops", data, user, conversation_id, json.dumps(ops)).finish()
    return json.loads(worker.acks[-1])


def appends(tag: int, count: int) -> list[dict[str, object]]:
    return [
        {
            "op": "append",
            "role": "assistant",
            "content": f"from kernel {tag}: {seq}",
            "id": message_id(tag, seq),
        }
        for seq in range(count)
    ]


@pytest.mark.reliability
def test_eight_kernels_of_two_users_hammering_one_data_dir_lose_and_duplicate_nothing(
    tmp_path: Path, spawn, kind: StoreKind
) -> None:
    """8 processes, 4 per user, 150 appends each over that user's 3 conversations, all released at
    once: every conversation of both users ends with exactly its messages (none lost, none duplicated,
    none in the other user's files), each writer's in order, and every file is valid JSON Lines that
    conforms to the on-disk schemas in data/ (encrypted: each user with a key of their own, every
    line a sealed envelope that opens to a valid clear line, no message text on disk)."""
    from test_schemas import assert_records_valid, assert_sealed_file_valid

    data, go = tmp_path / "data", tmp_path / "go"
    users = {"alice": range(1, 5), "bob": range(5, 9)}
    keys = {user: StoreKind(kind.name) for user in users}  # encrypted: two accounts, two keys
    per_writer = 150
    conversations = {}
    for user in users:
        store = keys[user].open(data, user)
        conversations[user] = [store.create(f"{user} {number}") for number in range(3)]
    started = [
        spawn(
            "append", data, user, ",".join(c.id for c in conversations[user]), tag, per_writer, go,
            key=keys[user].key,
        )
        for user, tags in users.items()
        for tag in tags
    ]
    release_together(started, go)
    for worker in started:
        worker.finish()

    for user, tags in users.items():
        fresh = keys[user].open(data, user)
        ids = []
        for conversation in conversations[user]:
            messages = fresh.get(conversation.id).messages
            ids.extend(m.id for m in messages)
            path = conversation_file(fresh, conversation.id)
            assert_records_valid(jsonl_records(path, keys[user]))  # complete lines, each valid
            if kind.encrypted:
                assert_sealed_file_valid(path)
            for tag, seqs in ids_by_writer([m.id for m in messages]).items():
                assert seqs == sorted(seqs), f"writer {tag} out of order in {conversation.title}"
        assert len(ids) == len(set(ids)) == len(tags) * per_writer
        assert set(ids) == {message_id(tag, seq) for tag in tags for seq in range(per_writer)}
    assert_nothing_leaked(kind, data, [*WORKER_TEXTS, "writer 8 message", "alice 0", "bob 2"])


def test_a_loaded_conversation_picks_up_another_processes_appends_and_renames(
    tmp_path: Path, spawn, monkeypatch
) -> None:
    """Two kernels of one user: a store that already loaded a conversation sees, on its next get(),
    the messages another process appended (parsing only those new lines), a rename and a settings
    change made by the other process (a rewrite: re-read in full), and then resumes reading only
    new lines. A second store of this process with a stale cache appends after the other's messages."""
    data = tmp_path / "data"
    kernel_a = ConversationStore(data, "alice")
    kernel_c = ConversationStore(data, "Alice")  # same user, names ignore case
    conversation = kernel_a.create("shared")
    first = kernel_a.append(conversation.id, Message("user", "hello from A"))
    assert [m.id for m in kernel_c.get(conversation.id).messages] == [first.id]
    kernel_a.get(conversation.id)

    parsed: list[bytes] = []
    real_parse = records.parse_line

    def counting_parse(
        line: bytes, version: int = records.FORMAT_VERSION, previous: str | None = None
    ) -> records.Line:
        parsed.append(line)
        return real_parse(line, version, previous)

    monkeypatch.setattr(nbchat.store.records, "parse_line", counting_parse)

    # Another process appends three messages; A reads just those three lines.
    other = run_ops(spawn, data, "alice", conversation.id, appends(2, 3))
    from_b = [message_id(2, seq) for seq in range(3)]
    assert other["ids"] == [first.id, *from_b]
    parsed.clear()
    seen = kernel_a.get(conversation.id)
    assert [m.id for m in seen.messages] == [first.id, *from_b]
    assert [m.content for m in seen.messages[1:]] == [f"from kernel 2: {seq}" for seq in range(3)]
    assert len(parsed) == 3
    assert seen.messages[0] is first  # what was already read is kept, not re-parsed

    # C loaded the conversation before B wrote: its append still lands after B's messages.
    from_c = kernel_c.append(conversation.id, Message("user", "from C"))
    assert [m.id for m in kernel_c.get(conversation.id).messages] == [first.id, *from_b, from_c.id]
    parsed.clear()
    assert [m.id for m in kernel_a.get(conversation.id).messages] == [first.id, *from_b, from_c.id]
    assert len(parsed) == 1

    # A rename and a settings change by the other process (atomic rewrites) are picked up too.
    ops = [
        {"op": "rename", "title": "renamed by B"},
        {"op": "settings", "changes": {"model": "qwen3:1.7b", "temperature": 0.2}},
        *appends(3, 1),
    ]
    run_ops(spawn, data, "alice", conversation.id, ops)
    seen = kernel_a.get(conversation.id)
    assert seen.title == "renamed by B"
    assert (seen.settings.model, seen.settings.temperature) == ("qwen3:1.7b", 0.2)
    assert [m.id for m in seen.messages] == [first.id, *from_b, from_c.id, message_id(3, 0)]
    assert [s.title for s in kernel_a.list()] == ["renamed by B"]
    assert kernel_c.get(conversation.id).title == "renamed by B"

    # After the rewrite, A is back to reading only what is new.
    run_ops(spawn, data, "alice", conversation.id, appends(4, 2))
    parsed.clear()
    seen = kernel_a.get(conversation.id)
    assert [m.id for m in seen.messages][-2:] == [message_id(4, 0), message_id(4, 1)]
    assert len(parsed) == 2
    jsonl_records(conversation_file(kernel_a, conversation.id))


# -- SIGKILL ---------------------------------------------------------------------------------------


def check_appends(
    conversation: Conversation,
    acked: dict[int, int],
    finished: dict[int, int] | None = None,
    *,
    still_writing: bool = False,
) -> dict[int, int]:
    """Every acknowledged append is present, nothing twice, each writer's messages a gap-free prefix
    0..n-1 in order. For a killed writer in ``acked``, n is its acknowledged count or one more (written,
    but killed before the ack); with ``still_writing``, n is at least the acknowledged count; for a
    writer in ``finished`` (killed, seen before), n is exactly what was seen. Returns n per writer."""
    finished = finished or {}
    ids = [m.id for m in conversation.messages]
    assert len(ids) == len(set(ids)), "a message was saved twice"
    grouped = ids_by_writer(ids)
    assert set(grouped) <= set(acked) | set(finished), f"unknown writers {set(grouped) - set(acked)}"
    for tag, count in finished.items():
        assert grouped.get(tag, []) == list(range(count)), f"writer {tag}'s messages changed"
    present = {}
    for tag, count in acked.items():
        seqs = grouped.get(tag, [])
        assert seqs == list(range(len(seqs))), f"writer {tag}: gap or reorder in {seqs}"
        most = len(seqs) if still_writing else count + 1
        assert count <= len(seqs) <= most, f"writer {tag}: {count} acknowledged, {len(seqs)} saved"
        present[tag] = len(seqs)
    return present


SIGKILL_ROUNDS = {"clear": 50, "encrypted": 20}  # encrypted: the same loop, fewer rounds (CI time)


@pytest.mark.reliability
def test_sigkill_in_a_tight_append_loop_never_loses_an_acknowledged_message(
    tmp_path: Path, spawn, kind: StoreKind
) -> None:
    """50 times in a row (20 on encrypted stores) on ONE conversation, a worker appends in a tight
    loop and is SIGKILLed after a random (seeded) delay. After each kill: the conversation loads,
    every acknowledged message is there, nothing is duplicated, and every complete line of the file
    is valid JSON.

    A torn last line (the kill landing inside write(2)) may be dropped with an ``NbchatWarning``.
    Since a real kill only rarely lands inside the write itself, about half of the rounds that did
    not tear a line simulate one by appending a prefix of a message line (never acknowledged). On even
    rounds the test's own long-lived store (which reads only new lines) repairs it; on odd rounds the
    check loads a copy, leaving the torn line for the next worker, which must repair it before
    appending (its stderr shows the warning). On encrypted stores the simulated torn line is a prefix
    of a sealed line, and afterwards no word of any message is in any byte under the data dir."""
    rng = random.Random(20240611)
    data = tmp_path / "data"
    kind.open(data, "carol").create("killed fifty times")
    reader = kind.open(data, "carol")  # a kernel that keeps the conversation open
    (conversation_id,) = (s.id for s in reader.list())
    path = conversation_file(reader, conversation_id)
    reader.get(conversation_id)

    finished: dict[int, int] = {}  # writers already killed and checked: tag -> messages saved
    left_for_next_worker = False
    real_torn = simulated_torn = 0
    for round_ in range(SIGKILL_ROUNDS[kind.name]):
        tag = round_ + 1
        worker = spawn("append-loop", data, "carol", conversation_id, tag, rng.randrange(2**32), key=kind.key)
        worker.wait_for_line("ready")
        if left_for_next_worker:
            assert TORN_WARNING in worker.stderr, worker.stderr
            assert complete_lines(path)[1] == b"", "the worker did not repair the torn line"
        time.sleep(rng.uniform(0.0, 0.15))
        worker.kill()

        ids = worker.acks
        assert ids == [message_id(tag, seq) for seq in range(len(ids))]

        torn = complete_lines(path)[1]
        if torn:
            real_torn += 1
        elif rng.random() < 0.5:
            line = records.message_line(Message("user", "never acknowledged", id=message_id(tag, 2**40)))
            if kind.cipher is not None:
                position = len(complete_lines(path)[0])
                line = records.seal_line(line, kind.cipher, conversation_id, position)
            # Short of the closing brace: a whole line that only lost its newline is a saved message.
            torn = line[: rng.randrange(1, len(line) - 1)]
            with path.open("ab") as handle:
                handle.write(torn)
            simulated_torn += 1

        if round_ % 2 == 0:
            conversation, nbchat_warnings = load_recording_warnings(reader, conversation_id)
            left_for_next_worker = False
            assert complete_lines(path)[1] == b"", "the torn line was not repaired"
        else:
            copy = tmp_path / f"copy-{round_}"
            shutil.copytree(data, copy)
            conversation, nbchat_warnings = load_recording_warnings(kind.open(copy, "carol"), conversation_id)
            shutil.rmtree(copy)
            left_for_next_worker = bool(torn)
        if torn:
            assert len(nbchat_warnings) == 1 and TORN_WARNING in nbchat_warnings[0], nbchat_warnings
        else:
            assert nbchat_warnings == []
        present = check_appends(conversation, {tag: len(ids)}, finished)
        # Writers ran one after another, so their messages are not interleaved.
        tags = [parse_message_id(m.id)[0] for m in conversation.messages]
        assert tags == sorted(tags)
        finished[tag] = present[tag]  # a saved but unacknowledged message must stay saved from now on

    # The incremental reader and a full read of the repaired file agree; the file is clean JSON Lines.
    final, final_warnings = load_recording_warnings(kind.open(data, "carol"), conversation_id)
    assert len(final_warnings) == int(left_for_next_worker)  # the last round may leave a torn line
    assert final == reader.get(conversation_id)
    assert [line["id"] for line in jsonl_records(path, kind)[1:]] == [m.id for m in final.messages]
    assert simulated_torn + real_torn > 0
    assert_nothing_leaked(kind, data, [*WORKER_TEXTS, "never acknowledged", "killed fifty times"])
    print(
        f"{sum(finished.values())} messages saved; torn lines: {real_torn} real, {simulated_torn} simulated"
    )


REWRITE_ROUNDS = {"clear": 10, "encrypted": 5}


def test_sigkill_during_rename_and_settings_rewrites_keeps_file_loadable_and_appends(
    tmp_path: Path, spawn, kind: StoreKind
) -> None:
    """While one worker appends in a loop, another loops on rename()/update_settings() (atomic whole-file
    rewrites) and is SIGKILLed after a random (seeded) delay, 10 times. After each kill the file loads
    without any repair, holds every append acknowledged so far exactly once and in order, and its title
    and settings are those of the last acknowledged rewrite (or of the one after it, done but not yet
    acknowledged). Left-over temp files of killed rewrites never show up as conversations. On encrypted
    stores (5 rounds) no title, system prompt or message is in any byte under the data dir, temp files
    of killed rewrites included."""
    rng = random.Random(5150)
    data = tmp_path / "data"
    store = kind.open(data, "dave")
    conversation = store.create("rewritten")
    appender = spawn(
        "append-loop", data, "dave", conversation.id, 1, rng.randrange(2**32), "0,50,400", key=kind.key
    )
    appender.wait_for_line("ready")

    title, system = "rewritten", ""
    for round_ in range(REWRITE_ROUNDS[kind.name]):
        start = round_ * 1000
        rewriter = spawn("rewrite-loop", data, "dave", conversation.id, start, key=kind.key)
        rewriter.wait_for_line("ready")
        time.sleep(rng.uniform(0.02, 0.2))
        rewriter.kill()
        acked_appends = len(appender.acks)  # read before loading: all of these must be in the file

        done = [int(line.split()[1]) for line in rewriter.acks]
        assert done == list(range(start, start + len(done)))
        maybe_done = start + len(done)  # killed during this one: it may or may not have happened
        renames = [n for n in done if n % 2 == 0]
        settings = [n for n in done if n % 2 == 1]
        if renames:
            title = f"title {renames[-1]}"
        if settings:
            system = f"system {settings[-1]}"
        allowed_titles = {title} | ({f"title {maybe_done}"} if maybe_done % 2 == 0 else set())
        allowed_systems = {system} | ({f"system {maybe_done}"} if maybe_done % 2 == 1 else set())

        loaded, nbchat_warnings = load_recording_warnings(kind.open(data, "dave"), conversation.id)
        assert nbchat_warnings == []
        assert loaded.title in allowed_titles
        assert loaded.settings.system in allowed_systems
        title, system = loaded.title, loaded.settings.system
        check_appends(loaded, {1: acked_appends}, still_writing=True)
        # The appender goes on writing: the file holds what was loaded, then maybe more (and maybe a
        # line being written right now), every complete line valid JSON.
        lines, _ = complete_lines(conversation_file(store, conversation.id), kind)
        saved = [m.id for m in loaded.messages]
        assert [line["id"] for line in lines[1 : len(saved) + 1]] == saved
        assert [s.id for s in store.list()] == [conversation.id]

    appender.kill()  # it may tear its last line: that one was never acknowledged
    final, nbchat_warnings = load_recording_warnings(kind.open(data, "dave"), conversation.id)
    assert all(TORN_WARNING in text for text in nbchat_warnings), nbchat_warnings
    check_appends(final, {1: len(appender.acks)})
    assert final.title == title and final.settings.system == system
    jsonl_records(conversation_file(store, conversation.id), kind)
    assert_nothing_leaked(kind, data, ["writer 1 message", "title ", "system ", "rewritten"])
    leftovers = [p.name for p in store.directory.iterdir() if p.name.endswith(".tmp")]
    rounds = REWRITE_ROUNDS[kind.name]
    print(f"{len(final.messages)} appends around {rounds} killed rewriters; {len(leftovers)} temp files left")


@pytest.mark.parametrize("step", ["authenticated", "renamed", "users-written"])
def test_a_deletion_killed_at_any_step_is_finished_by_the_next_kernel_or_never_began(
    tmp_path: Path, spawn, step: str
) -> None:
    """A kernel deleting eve is SIGKILLed at ``step``. Before the rename of her directory to
    ``.deleted-*`` (the point of no return) nothing has changed: the account still works fully.
    From the rename on, the next kernel to use the accounts finishes the deletion: the name can be
    registered again, the old password no longer logs in, and nothing is left in ``.deleted-*``."""
    data = tmp_path / "data"
    accounts = Accounts(Config(data_dir=data), bcrypt_rounds=4, kdf=CHEAP_KDF)
    accounts.register("eve", workers.PASSWORD)
    accounts.register("bob", workers.PASSWORD)
    accounts.login("eve", workers.PASSWORD).conversations.create("eve's chat")
    accounts.login("bob", workers.PASSWORD).conversations.create("bob's chat")
    assert step in Accounts.DELETION_STEPS

    worker = spawn("delete-pausing", data, "eve", workers.PASSWORD, step)
    worker.wait_for_line(f"reached {step}")
    worker.kill()

    next_kernel = Accounts(Config(data_dir=data), bcrypt_rounds=4, kdf=CHEAP_KDF)
    if step == "authenticated":
        titles = [c.title for c in next_kernel.login("eve", workers.PASSWORD).conversations.list()]
        assert titles == ["eve's chat"]
    else:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert next_kernel.usernames() == ["bob"]
            next_kernel.register("eve", "a new password")
        finished = [str(w.message) for w in caught if "interrupted" in str(w.message)]
        assert len(finished) == (1 if step == "renamed" else 0), finished
        assert next_kernel.login("eve", "a new password").conversations.list() == []
        with pytest.raises(AuthenticationFailed):
            next_kernel.login("eve", workers.PASSWORD)
    assert list((data / "conversations").glob(".deleted-*")) == []
    bobs = next_kernel.login("bob", workers.PASSWORD).conversations.list()
    assert [c.title for c in bobs] == ["bob's chat"]


def test_a_password_change_killed_between_its_two_writes_is_repaired_by_the_next_login(
    tmp_path: Path, spawn
) -> None:
    """Killed after users.json has the new password (and login token) but before the directory's marker
    does: the new password logs in and reaches the conversations, and the login from before the change
    has ended."""
    data = tmp_path / "data"
    accounts = Accounts(Config(data_dir=data), bcrypt_rounds=4, kdf=CHEAP_KDF)
    accounts.register("eve", workers.PASSWORD)
    before = accounts.login("eve", workers.PASSWORD)
    before.conversations.create("eve's chat")

    new_password = "a new password"
    worker = spawn("change-password-pausing", data, "eve", workers.PASSWORD, new_password, "password-saved")
    worker.wait_for_line("reached password-saved")
    worker.kill()

    next_kernel = Accounts(Config(data_dir=data), bcrypt_rounds=4, kdf=CHEAP_KDF)
    assert [c.title for c in next_kernel.login("eve", new_password).conversations.list()] == ["eve's chat"]
    with pytest.raises(NotLoggedIn):
        before.conversations.list()


# -- races found while writing these tests, fixed since -----------------------------------------


def test_simultaneous_failed_logins_from_many_processes_get_no_more_guesses_than_sequential_ones(
    tmp_path: Path, spawn
) -> None:
    """The login throttle is shared by every kernel of the data dir: 10 processes trying wrong passwords
    for one name at the same instant may get at most FREE_FAILURES (5) verdicts, the same as 10 attempts
    one after another; the others must get ``LoginThrottled``, so parallelism cannot multiply the
    documented brute-force rate (README: at most ~25 guesses an hour per name)."""
    data, go = tmp_path / "data", tmp_path / "go"
    # Cost 10: checking a password takes a moment, as with the production cost 12.
    Accounts(Config(data_dir=data), bcrypt_rounds=10, kdf=CHEAP_KDF).register("alice", workers.PASSWORD)
    started = [spawn("login", data, "alice", f"wrong guess {number}", go) for number in range(10)]
    release_together(started, go)
    outcome = Counter(json.loads(worker.finish().acks[-1])["result"] for worker in started)

    assert set(outcome) <= {"AuthenticationFailed", "LoginThrottled"}, outcome
    assert outcome["AuthenticationFailed"] <= FREE_FAILURES, outcome


def test_a_login_of_an_account_deleted_by_another_process_cannot_reach_a_new_account_of_that_name(
    tmp_path: Path, spawn
) -> None:
    """Kernel 1 is logged in as eve. Kernel 2 (another process) deletes the account, registers the name
    again for someone else, and saves a private conversation. Kernel 1's old login must neither see
    that conversation nor plant one in the new account (README: "A new account never inherits files
    left under its name")."""
    data = tmp_path / "data"
    accounts = Accounts(Config(data_dir=data), bcrypt_rounds=4, kdf=CHEAP_KDF)
    accounts.register("eve", "old eve's password")
    old_login = accounts.login("eve", "old eve's password")
    old_login.conversations.create("old eve's chat")

    other = spawn("replace-account", data, "eve", "old eve's password", "new eve's password").finish()
    secret_id = json.loads(other.acks[-1])["id"]

    try:
        seen_by_old = [s.title for s in old_login.conversations.list()]
    except NbchatError:
        seen_by_old = []
    assert "the new account's private chat" not in seen_by_old
    with pytest.raises(NbchatError):
        old_login.conversations.get(secret_id)
    with contextlib.suppress(NbchatError):
        old_login.conversations.create("planted by the deleted account")
    new_login = accounts.login("eve", "new eve's password")
    assert [s.title for s in new_login.conversations.list()] == ["the new account's private chat"]
