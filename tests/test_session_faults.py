"""The session when things go wrong: a full disk, an engine that will not answer, odd replies, odd titles.

Every fault here is real: a 2 MB tmpfs that fills up, a loopback Ollama server that
stalls, a logout in the middle of a reply. What must hold: a reply is never lost
silently, Stop and logout never wait on the engine, and a first prompt can never
make ``send()`` fail half-way.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from disks import fill
from polling import wait_until

from conftest import CHEAP_KDF, PASSWORD, chatting
from nbchat import Accounts, ChatSession, Config
from nbchat.errors import InvalidValue, NbchatError, StoreError
from nbchat.reply import CANCEL_GRACE_S, clean_stats
from nbchat.testing.ollama_server import OllamaTestServer
from nbchat.types import DEFAULT_TITLE, MAX_CONTENT_CHARS, Conversation, Message

MODEL = "ollama:qwen3:1.7b"
#: Generous on a loaded 2-core machine, and far below the stalls the servers are told to make.
PROMPT_END_S = CANCEL_GRACE_S + 2.0


@pytest.fixture
def session(make_session: Callable[..., ChatSession], server: OllamaTestServer) -> ChatSession:
    return chatting(make_session(server, "alice"))


# -- a full disk ----------------------------------------------------------------------------------


@pytest.fixture
def disk_session(small_disk: Path, server: OllamaTestServer) -> ChatSession:
    config = Config(data_dir=small_disk / "nbchat", max_users=10, ollama_host=server.url)
    session = ChatSession(config, accounts=Accounts(config, bcrypt_rounds=4, kdf=CHEAP_KDF))
    session.register("alice", PASSWORD)
    return chatting(session)


def test_a_reply_that_cannot_be_saved_says_so_and_keeps_its_text(
    disk_session: ChatSession, small_disk: Path, server: OllamaTestServer
) -> None:
    # Words long enough that the reply needs new pages: tmpfs fills whole 4 KiB pages.
    words = [f"{n:03d}" + "x" * 400 + " " for n in range(30)]
    server.reply_words, server.chunk_delay_s = words, 0.02
    reply = disk_session.send("Tell me something")
    wait_until(lambda: len(reply.text) > 0, 10)
    filler = fill(small_disk)  # the disk fills up while the reply streams
    with pytest.raises(StoreError) as caught:
        reply.wait(30)
    assert reply.error is caught.value and reply.save_error is caught.value
    assert "saved" in str(caught.value) or "space" in str(caught.value)
    assert reply.text == "".join(words)  # every word is still here, in memory
    assert reply.message is None and "Not saved" not in reply.markdown()  # error and save_error are one
    assert "**Error:**" in reply.markdown()
    assert [m.role for m in disk_session.history()] == ["user"]  # the disk has only the question

    filler.unlink()  # space is back: the session works again, nothing half-written got in the way
    server.reply_words, server.chunk_delay_s = None, 0.0
    again = disk_session.send("And now?").wait(30)
    assert again.message is not None
    assert [m.content for m in disk_session.history()] == ["Tell me something", "And now?", again.text]


def test_a_question_that_cannot_be_saved_is_refused_and_nothing_starts(
    disk_session: ChatSession, small_disk: Path
) -> None:
    filler = fill(small_disk)
    with pytest.raises(StoreError):
        disk_session.send("Hello? " * 1000)  # more than the free end of the file's last page
    assert disk_session.reply is None
    filler.unlink()
    assert disk_session.history() == []
    disk_session.send("Hello again").wait(30)
    assert [m.role for m in disk_session.history()] == ["user", "assistant"]


# -- Stop and logout never wait on the engine ---------------------------------------------------


def test_stop_ends_a_reply_whose_server_has_not_sent_a_byte(
    session: ChatSession, server: OllamaTestServer
) -> None:
    server.first_chunk_delay_s = 30.0  # a cold model load on the server
    reply = session.send("Hello")
    time.sleep(0.3)  # the request is out; the server is "loading"
    started = time.monotonic()
    session.stop()
    assert reply.join(PROMPT_END_S), "Stop waited on a server that had not answered"
    assert time.monotonic() - started < PROMPT_END_S
    assert reply.error is None and reply.stats is not None and reply.stats.finish_reason == "cancelled"
    assert reply.message is None  # nothing had streamed: nothing to keep
    session.configure(temperature=0.5)  # the session is free again at once
    server.first_chunk_delay_s = 0.0
    assert session.send("Again").wait(30).message is not None


def test_stop_ends_a_reply_whose_server_stalls_mid_stream_and_keeps_the_partial(
    session: ChatSession, server: OllamaTestServer
) -> None:
    server.chunk_count, server.fault, server.fault_after_chunks = 50, "stall", 5
    reply = session.send("Hello")
    wait_until(lambda: len(reply.text.split()) == 5, 10)
    started = time.monotonic()
    session.stop()
    assert reply.join(PROMPT_END_S) and time.monotonic() - started < PROMPT_END_S
    saved = session.history()[-1]
    assert saved.role == "assistant" and saved.content == reply.text and saved.stats["partial"] is True


def test_logout_during_a_stalled_reply_saves_the_partial_before_forgetting_the_user(
    session: ChatSession, server: OllamaTestServer
) -> None:
    server.chunk_count, server.fault, server.fault_after_chunks = 50, "stall", 4
    reply = session.send("Hello")
    wait_until(lambda: len(reply.text.split()) == 4, 10)
    started = time.monotonic()
    session.logout()
    assert time.monotonic() - started < PROMPT_END_S + 1, "logout blocked the kernel on a stalled server"
    assert session.user is None and reply.done and reply.error is None
    session.login("alice", PASSWORD)
    (conversation,) = session.conversations()
    session.select(conversation.id)
    saved = session.history()[-1]
    assert saved.content == reply.text and len(saved.content.split()) == 4 and saved.stats["partial"] is True


def test_chunks_an_engine_sends_after_stop_ended_the_reply_are_dropped(
    session: ChatSession, server: OllamaTestServer
) -> None:
    """What is saved is what was shown when Stop ended the reply, even if the engine goes on."""
    server.chunk_count, server.chunk_delay_s = 40, 0.05
    reply = session.send("Hello")
    wait_until(lambda: len(reply.text) > 0, 10)
    reply.end_now()  # as the grace timer does for an engine that has not let go
    shown = reply.text
    time.sleep(0.3)
    assert reply.text == shown and reply.done
    assert session.history()[-1].content == shown


# -- no network call under the session's lock ----------------------------------------------------


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A server that accepts connections and never answers a byte."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()


def test_choosing_a_model_on_a_silent_server_never_blocks_the_rest_of_the_session(
    session: ChatSession, silent_server: str
) -> None:
    """configure() asks Ollama for the model's context; a panel's redraw must not wait for it."""
    session.config = replace(session.config, ollama_host=silent_server, read_timeout_s=4.0)
    asking = threading.Thread(target=_configure_quietly, args=(session, "ollama:qwen3:0.6b"))
    asking.start()
    time.sleep(0.5)  # configure() is now waiting for the silent server
    assert asking.is_alive()
    started = time.monotonic()
    current = session.current  # what a panel's redraw reads
    assert time.monotonic() - started < 1.0, "the session's lock was held across a network call"
    assert current is not None and current.settings.model == MODEL
    asking.join(10)


def _configure_quietly(session: ChatSession, model: str) -> None:
    with contextlib.suppress(NbchatError):  # the silent server times out: only the lock matters here
        session.configure(model=model)


# -- odd replies are kept ------------------------------------------------------------------------


def test_a_reply_over_the_message_size_limit_is_saved_cut_with_a_note(
    session: ChatSession, server: OllamaTestServer
) -> None:
    word = "x" * 9_999
    server.reply_words = [word] * (MAX_CONTENT_CHARS // 10_000 + 5)
    reply = session.send("Say a lot").wait(120)
    assert len(reply.text) > MAX_CONTENT_CHARS  # what streamed is all in memory
    saved = session.history()[-1]
    assert len(saved.content) <= MAX_CONTENT_CHARS and saved.stats["truncated"] is True
    assert saved.content.endswith("to be saved.)*") and f"{len(reply.text):,}" in saved.content


@pytest.mark.parametrize(
    ("stat", "value"),
    [
        ("prompt_tokens", [1]),
        ("duration_s", float("nan")),
        ("tokens_per_s", float("inf")),
        ("completion_tokens", 10**400),
        ("prompt_tokens", {"a": 1}),
        ("error", "x" * 50_000),
        ("error", "lone \ud800 surrogate"),
    ],
)
def test_a_statistic_that_cannot_be_saved_is_dropped_or_bounded_never_the_reply(
    stat: str, value: object
) -> None:
    record = clean_stats({"finish_reason": "stop", stat: value})
    Message("assistant", "kept", stats=record)  # saveable
    assert record["finish_reason"] == "stop"
    if isinstance(value, str):
        assert len(record[stat]) <= 10_000 and "\ud800" not in record[stat]
    else:
        assert stat not in record


# -- titles ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "title"),
    [
        ("👩‍💻 review my code", "👩‍💻 review my code"),  # a ZWJ emoji sequence is text
        ("שלום\u200f עולם", "שלום\u200f עולם"),  # so is a right-to-left mark
        ("\ufeffHello there", "Hello there"),  # a BOM pasted from a file is not
        ("\x1b[31mred\x1b[0m alert", "red alert"),  # nor a terminal colour code
        ("tabs\tand\nnew\r\nlines", "tabs and new lines"),
        ("\u200b\u2060", DEFAULT_TITLE),  # nothing visible: the default title stays
    ],
)
def test_the_first_prompt_always_gives_a_clean_title_and_the_reply_starts(
    session: ChatSession, prompt: str, title: str
) -> None:
    reply = session.send(prompt)
    assert session.current is not None and session.current.title == title
    reply.wait(30)
    assert [m.content for m in session.history()] == [prompt, reply.text]


def test_a_typed_title_may_hold_emoji_sequences_and_rtl_marks_but_no_controls(session: ChatSession) -> None:
    conversation = session.current
    assert conversation is not None
    assert session.rename(conversation.id, "👨‍👩‍👧 Family \u200fמשפחה").title == "👨‍👩‍👧 Family \u200fמשפחה"
    for bad in ("\ufeffTitle", "a\x1bb", "evil\u202eexe.txt"):
        with pytest.raises(InvalidValue, match="U\\+"):
            session.rename(conversation.id, bad)
    assert session.current is not None and session.current.title == "👨‍👩‍👧 Family \u200fמשפחה"


def test_a_prompt_that_cannot_be_saved_is_refused_before_anything_is(session: ChatSession) -> None:
    with pytest.raises(InvalidValue, match="surrogates"):
        session.send("half a pair \ud800")
    assert session.history() == [] and session.current is not None
    assert session.current.title == DEFAULT_TITLE and session.reply is None


# -- nothing of the user stays in memory ----------------------------------------------------------


def test_a_finished_reply_holds_its_own_exchange_never_the_conversation(session: ChatSession) -> None:
    for n in range(3):
        session.send(f"question {n}").wait(30)
    kept = session.reply  # what `reply = s.send(...)` keeps: the user's own output
    assert kept is not None and kept.message is not None
    conversation_id = kept.conversation_id
    ids = {m.id for m in session.history()}
    session.logout()
    gc.collect()
    alive = [o for o in gc.get_objects() if type(o) is Message and o.id in ids]
    assert {id(m) for m in alive} <= {id(kept.prompt), id(kept.message)}
    assert not [o for o in gc.get_objects() if type(o) is Conversation and o.id == conversation_id]


# -- a frozen local model process ----------------------------------------------------------------


@pytest.fixture
def frozen_model(tmp_path: Path) -> Iterator[tuple[str, list[int]]]:
    """A tiny Qwen3 of this test's own, and the pids the test froze (thawed, killed, unloaded after)."""
    from nbchat.backends.transformers import unload
    from nbchat.testing.tiny_qwen3 import tiny_qwen3

    path = str(tiny_qwen3(tmp_path / "qwen3", seed=0))
    frozen: list[int] = []
    yield path, frozen
    for pid in frozen:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
            os.kill(pid, signal.SIGKILL)
    unload(path)


def _children() -> set[int]:
    pids: set[int] = set()
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(OSError):
            pids.update(int(p) for p in (task / "children").read_text().split())
    return pids


@pytest.mark.slow
def test_logout_while_the_local_model_process_is_frozen_saves_the_partial_at_once(
    make_session: Callable[..., ChatSession], server: OllamaTestServer, frozen_model: tuple[str, list[int]]
) -> None:
    path, frozen = frozen_model
    session = chatting(make_session(server, "alice"), "alice", f"transformers:{path}")
    session.configure(max_new_tokens=1900, temperature=1.0)
    before = _children()
    reply = session.send("Hello there! How are you?")
    wait_until(lambda: len(reply.text) > 20, 120)
    (pid,) = _children() - before  # the model process this reply started
    os.kill(pid, signal.SIGSTOP)
    frozen.append(pid)
    time.sleep(0.3)
    shown = reply.text
    started = time.monotonic()
    session.logout()
    assert time.monotonic() - started < PROMPT_END_S + 1, "logout waited on a frozen model process"
    session.login("alice", PASSWORD)
    (conversation,) = session.conversations()
    session.select(conversation.id)
    saved = session.history()[-1]
    assert saved.role == "assistant" and saved.stats["partial"] is True
    assert saved.content.startswith(shown) and saved.content == reply.text


# -- the API key never reaches the disk -----------------------------------------------------------


@pytest.mark.parametrize("fault", ["echo_auth_event", "echo_auth_body", "echo_auth_reason"])
def test_a_server_echoing_the_api_key_leaves_it_in_no_error_and_no_saved_file(
    session: ChatSession, fault: str
) -> None:
    from nbchat.testing.openai_server import OpenAITestServer

    key = "sk-live-0123456789abcdefSECRET"
    with OpenAITestServer() as vllm:
        session.config = replace(session.config, openai_base_url=vllm.base_url, openai_api_key=key)
        session.configure(model="openai:meta-llama/Llama-3.2-1B-Instruct")
        vllm.fault = fault
        reply = session.send("hello")
        reply.join(30)
    assert reply.error is not None and key not in str(reply.error) and "SECRET" not in str(reply.error)
    files = list((session.config.data_dir / "conversations").rglob("*.jsonl"))
    assert files and all(b"SECRET" not in path.read_bytes() for path in files)
    assert session.history()[-1].stats is not None and "error" in session.history()[-1].stats


@pytest.mark.slow
def test_stop_during_a_first_load_ends_the_reply_at_once_and_loads_nothing(
    make_session: Callable[..., ChatSession], server: OllamaTestServer, frozen_model: tuple[str, list[int]]
) -> None:
    from nbchat.backends.transformers import loaded

    path, _ = frozen_model
    session = chatting(make_session(server, "alice"), "alice", f"transformers:{path}")
    reply = session.send("Hello there!")
    wait_until(lambda: "Loading" in reply.status, 30)
    started = time.monotonic()
    session.stop()
    assert reply.join(PROMPT_END_S), "Stop waited for the model to load"
    assert time.monotonic() - started < PROMPT_END_S
    assert reply.error is None and reply.stats is not None and reply.stats.finish_reason == "cancelled"
    reply._thread.join(60)  # the reply's own thread has let go too, without loading anything
    assert reply._stream is None and f"transformers:{path}" not in loaded()
    assert [m.role for m in session.history()] == ["user"]  # nothing had streamed: nothing saved
    assert session.send("Hello again").wait(120).text  # the next reply loads the model and answers
