"""Encrypted accounts end to end (issue 15): with ``[policy] encrypt_local_accounts = true`` a
login's data key opens an encrypted store, nothing a user writes reaches the disk in clear (the
search index lives in memory), and an account from before is converted at its next login, crash-
safely (a worker SIGKILLed at random moments while it converts)."""

from __future__ import annotations

import json
import random
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from polling import wait_until

from conftest import CHEAP_KDF, PASSWORD, chatting
from nbchat import Accounts, ChatSession, Config, ConversationEncrypted, ConversationStore, Message, crypto
from nbchat.config import Policy
from nbchat.errors import AuthenticationFailed, NbchatWarning
from nbchat.search import INDEX_NAME
from nbchat.testing.ollama_server import THINKING_TEXT, OllamaTestServer

REPO_ROOT = Path(__file__).resolve().parent.parent
ENCRYPTING = Policy(encrypt_local_accounts=True)


def word() -> str:
    """A word no ciphertext, id or time will ever contain by chance."""
    return "zq" + "".join(secrets.choice("bcdfghjklmnpstvwxz") for _ in range(14))


def leaks(root: Path, words: list[str]) -> list[tuple[str, str]]:
    """(file, word) for every word found in any byte of any file under ``root``, temp files too."""
    found = []
    for path in sorted(root.rglob("*")):
        try:
            data = path.read_bytes() if path.is_file() else b""
        except FileNotFoundError:
            continue  # a temp file gone meanwhile
        found += [(str(path), w) for w in words if w.lower().encode() in data.lower()]
    return found


def key_of(config: Config, name: str) -> bytes:
    record = json.loads(config.users_file.read_bytes())["users"][name]["data_key"]
    return crypto.unwrap_data_key(record, PASSWORD, account=name)


@pytest.fixture
def config(config: Config) -> Config:
    return replace(config, policy=ENCRYPTING)


@pytest.fixture
def encrypted(make_session: Callable[..., ChatSession], server: OllamaTestServer) -> ChatSession:
    return make_session(server, "alice", "bob")


def write_everything(session: ChatSession, server: OllamaTestServer, user: str) -> list[str]:
    """Log ``user`` in and write a conversation with a unique word in every field; returns the words."""
    title, system, question, answer, context, renamed = (word() for _ in range(6))
    chatting(session, user, title=f"about {title}")
    session.configure(system=f"You like {system}.", think=True)
    server.reply_words = [f"{answer} ", "indeed"]
    reply = session.send(f"What of {question} in @notes?", namespace={"notes": f"notes on {context}"})
    reply.wait(30)
    session.rename(session.current.id, f"now {renamed}")  # type: ignore[union-attr]
    return [title, system, question, answer, context, renamed]


# -- two users on one data dir ---------------------------------------------------------------------


def test_no_word_of_either_user_reaches_the_disk_while_streaming_or_after(
    encrypted: ChatSession, server: OllamaTestServer, config: Config
) -> None:
    alice = write_everything(encrypted, server, "alice")
    encrypted.logout()
    bob = write_everything(encrypted, server, "bob")
    # The whole sentence, spaces and all: a short word alone ("that") turns up in kilobytes of
    # base64 by chance, lower-cased, once in a few dozen runs.
    thinking = [THINKING_TEXT.rstrip(".")]
    streamed = word()
    server.reply_words = [f"{streamed} "] * 40
    server.chunk_delay_s = 0.05
    reply = encrypted.send(f"Stream {word()} slowly")
    path = config.conversations_dir / "bob" / f"{encrypted.current.id}.jsonl"  # type: ignore[union-attr]
    lines = len(path.read_bytes().splitlines())
    wait_until(lambda: len(path.read_bytes().splitlines()) > lines + 1, 10)  # drafts are being saved
    assert not reply.done
    assert leaks(config.data_dir, alice + bob + [streamed, *thinking]) == []
    reply.wait(30)
    assert encrypted.search(streamed)  # the index, in memory, has it
    assert leaks(config.data_dir, alice + bob + [streamed, *thinking]) == []
    assert not list(config.data_dir.rglob(INDEX_NAME + "*"))


def test_search_finds_each_users_own_words_only(encrypted: ChatSession, server: OllamaTestServer) -> None:
    alice = write_everything(encrypted, server, "alice")
    encrypted.logout()
    bob = write_everything(encrypted, server, "bob")
    for found in (bob[2], bob[3], bob[5]):  # question, answer, title
        assert encrypted.search(found), found
    assert [hit for w in alice for hit in encrypted.search(w)] == []
    encrypted.logout()
    encrypted.login("alice", PASSWORD)
    assert encrypted.search(alice[3]) and encrypted.search(alice[5])
    assert [hit for w in bob for hit in encrypted.search(w)] == []


def test_another_users_files_do_not_open_with_this_users_key(
    encrypted: ChatSession, server: OllamaTestServer, config: Config
) -> None:
    write_everything(encrypted, server, "bob")
    bobs = encrypted.current.id  # type: ignore[union-attr]
    encrypted.logout()
    wrong = ConversationStore(config.data_dir, "bob", cipher=crypto.LineCipher(key_of(config, "alice")))
    with pytest.raises(ConversationEncrypted, match="another key"):
        wrong.get(bobs)
    with pytest.warns(NbchatWarning, match="another key"):
        assert wrong.list() == []  # skipped, named in the warning
    clear = ConversationStore(config.data_dir, "bob")
    with pytest.raises(ConversationEncrypted):
        clear.get(bobs)


def test_logging_out_and_in_again_reads_everything_and_a_wrong_password_gets_nothing(
    encrypted: ChatSession, server: OllamaTestServer
) -> None:
    words = write_everything(encrypted, server, "alice")
    before = encrypted.current
    encrypted.logout()
    with pytest.raises(AuthenticationFailed):
        encrypted.login("alice", "not the password")
    assert encrypted.user is None
    encrypted.login("alice", PASSWORD)
    again = encrypted.select(before.id)  # type: ignore[union-attr]
    assert again.title == before.title and again.settings == before.settings  # type: ignore[union-attr]
    assert [m.content for m in again.tree.messages] == [m.content for m in before.tree.messages]  # type: ignore[union-attr]
    answer = again.tree.messages[-1]
    assert words[3] in answer.content and answer.thinking == THINKING_TEXT
    assert words[4] in again.tree.messages[0].context[0].summary


def test_the_policy_turned_off_later_still_opens_an_encrypted_account(
    encrypted: ChatSession, server: OllamaTestServer, config: Config
) -> None:
    words = write_everything(encrypted, server, "alice")
    encrypted.logout()
    plain_config = replace(encrypted.config, policy=Policy(encrypt_local_accounts=False))
    plain = ChatSession(plain_config, accounts=Accounts(plain_config, bcrypt_rounds=4, kdf=CHEAP_KDF))
    plain.login("alice", PASSWORD)
    (summary,) = plain.conversations()
    assert words[5] in summary.title
    server.reply_words = [f"{word()} "]
    plain.select(summary.id)
    later = word()
    plain.send(f"later {later}").wait(30)
    assert plain.search(later) and leaks(config.data_dir, [*words, later]) == []
    plain.logout()


# -- converting an account from before -------------------------------------------------------------


def test_a_clear_account_is_converted_at_its_next_login_and_reads_the_same(
    make_session: Callable[..., ChatSession], server: OllamaTestServer, config: Config
) -> None:
    plain_config = replace(make_session(server).config, policy=Policy(encrypt_local_accounts=False))
    clear = ChatSession(plain_config, accounts=Accounts(plain_config, bcrypt_rounds=4, kdf=CHEAP_KDF))
    clear.register("carol", PASSWORD)
    words = write_everything(clear, server, "carol")
    assert clear.search(words[3])  # a clear index file now holds the words
    before = {s.id: clear.select(s.id) for s in clear.conversations()}
    clear.logout()
    folder = config.conversations_dir / "carol"
    assert (folder / INDEX_NAME).exists() and leaks(config.data_dir, words)
    damaged = folder / f"{'0' * 32}.jsonl.corrupt-20260101T000000000000Z"
    damaged.write_bytes(damaged_bytes(words[0]))  # named as the store names a damaged file moved aside
    stale = folder / f".{'1' * 32}.jsonl.abc.tmp"
    stale.write_bytes(f"temp {words[1]}".encode())  # a kill's leftover of a clear write

    session = make_session(server)
    session.login("carol", PASSWORD)
    assert leaks(config.data_dir, words) == []
    assert not (folder / INDEX_NAME).exists() and not damaged.exists() and not stale.exists()
    for conversation_id, conversation in before.items():
        again = session.select(conversation_id)
        assert again.title == conversation.title and again.tree.messages == conversation.tree.messages
    assert session.search(words[3])
    sealed = damaged.with_name(damaged.name + ".sealed")
    store = ConversationStore(config.data_dir, "carol", cipher=crypto.LineCipher(key_of(config, "carol")))
    assert store.open_damaged(sealed) == damaged_bytes(words[0])
    assert store.unsealed() == []


def test_a_wrong_password_converts_nothing_and_a_sealed_damaged_file_opens_with_its_key_only(
    config: Config,
) -> None:
    written, words = old_account_with_conversations(config, 2)
    folder = config.conversations_dir / "dave"
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    accounts = Accounts(config, bcrypt_rounds=4, kdf=CHEAP_KDF)
    with pytest.raises(AuthenticationFailed):
        accounts.login("dave", "not the password")
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before
    assert "data_key" not in json.loads(config.users_file.read_bytes())["users"]["dave"]

    damaged = folder / f"{'2' * 32}.jsonl.corrupt-20260101T000000000000Z"
    damaged.write_bytes(damaged_bytes(words[0]))
    login = accounts.login("dave", PASSWORD)
    sealed = damaged.with_name(damaged.name + ".sealed")
    assert login.conversations.open_damaged(sealed) == damaged_bytes(words[0])
    accounts.register("erin", PASSWORD)
    other = accounts.login("erin", PASSWORD).conversations
    with pytest.raises(ConversationEncrypted, match="another key"):
        other.open_damaged(sealed)
    assert clear_left(config, written) == 0 and leaks(config.data_dir, words) == []


def damaged_bytes(secret: str) -> bytes:
    return f"not json {secret}\n".encode()


WORKER = r"""
import sys, time
from pathlib import Path
from nbchat import Accounts, Config
from nbchat.config import Policy
from nbchat.crypto import KdfParams

data_dir, name, password = sys.argv[1:]
config = Config(data_dir=Path(data_dir), policy=Policy(encrypt_local_accounts=True))
ticks = [time.time()]
def ticking():  # a minute on at every reading: a login killed half-way counts as a failed one, and
    ticks[0] += 61.0  # dozens of them must not trip the data dir's failure-rate limit
    return ticks[0]

accounts = Accounts(config, bcrypt_rounds=4, kdf=KdfParams(n=2**10, r=8, p=1), clock=ticking)
print("ready", flush=True)
accounts.login(name, password)
print("converted", flush=True)
"""


def old_account_with_conversations(config: Config, count: int) -> tuple[dict[str, list[str]], list[str]]:
    """A clear account (policy off) with ``count`` conversations; their messages and all words."""
    plain = replace(config, policy=Policy(encrypt_local_accounts=False))
    accounts = Accounts(plain, bcrypt_rounds=4, kdf=CHEAP_KDF)
    accounts.register("dave", PASSWORD)
    store = accounts.login("dave", PASSWORD).conversations
    written: dict[str, list[str]] = {}
    words = []
    for _ in range(count):
        secret = word()
        conversation = store.create(f"title {secret}")
        texts = [f"{secret} question {i} " + "padding " * 200 for i in range(4)]
        for text in texts:
            store.append(conversation.id, Message("user", text))
        written[conversation.id] = texts
        words.append(secret)
    assert store.search(words[0])  # a clear index, to be removed
    store.close()
    return written, words


def clear_left(config: Config, written: dict[str, list[str]]) -> int:
    """How many conversations are still clear, after checking each reads exactly as written
    (through the key once the account has one: it reads clear and sealed files alike)."""
    record = json.loads(config.users_file.read_bytes())["users"]["dave"]
    cipher = crypto.LineCipher(key_of(config, "dave")) if "data_key" in record else None
    store = ConversationStore(config.data_dir, "dave", cipher=cipher)
    for conversation_id, texts in written.items():
        assert [m.content for m in store.get(conversation_id).tree.messages] == texts
    left = len(written) if cipher is None else len(store.unsealed())
    store.close()
    return left


def test_conversions_killed_at_random_moments_leave_every_conversation_readable(config: Config) -> None:
    rng = random.Random(1515)
    written, words = old_account_with_conversations(config, 60)  # about 0.15 s of sealing here
    half_done = 0
    for _ in range(30):
        proc = subprocess.Popen(
            [sys.executable, "-c", WORKER, str(config.data_dir), "dave", PASSWORD],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            cwd=REPO_ROOT,
            text=True,
        )
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0, 0.06))
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode in (0, -signal.SIGKILL), err[-2000:]
        left = clear_left(config, written)  # each kill leaves every conversation whole
        if left == 0:
            break
        half_done += left < len(written)  # killed with clear and sealed files side by side
    assert half_done >= 3, "the kills did not land inside the conversion"
    login = Accounts(config, bcrypt_rounds=4, kdf=CHEAP_KDF).login("dave", PASSWORD)  # finishes it
    assert clear_left(config, written) == 0 and leaks(config.data_dir, words) == []
    assert not list((config.conversations_dir / "dave").glob(INDEX_NAME + "*"))
    assert sorted(s.id for s in login.conversations.list()) == sorted(written)
    login.close()


def test_a_kill_after_each_sealed_file_is_finished_by_the_next_login(config: Config) -> None:
    written, words = old_account_with_conversations(config, 3)

    class Stopping(Accounts):
        def _reached(self, step: str) -> None:
            if step == "conversation-sealed":
                raise KeyboardInterrupt  # as a kill would stop it: after one atomic rewrite

    for left in (2, 1):
        with pytest.raises(KeyboardInterrupt):
            Stopping(config, bcrypt_rounds=4, kdf=CHEAP_KDF).login("dave", PASSWORD)
        assert clear_left(config, written) == left
    Accounts(config, bcrypt_rounds=4, kdf=CHEAP_KDF).login("dave", PASSWORD).close()
    assert clear_left(config, written) == 0 and leaks(config.data_dir, words) == []
