"""The kernel's ChatSession: accounts, conversations, settings and send → stream → save, end to end.

Against the loopback Ollama server (a real HTTP server speaking Ollama's API)
and, for the local engine, a tiny real Qwen3 checkpoint.
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from polling import wait_until

import nbchat.session
from conftest import PASSWORD, chatting
from nbchat import ChatSession, Config, load_config
from nbchat.errors import (
    AuthenticationFailed,
    BackendUnavailable,
    ContextOverflow,
    ConversationNotFound,
    GenerationFailed,
    InvalidValue,
    ModelNotChosen,
    NoConversation,
    NotLoggedIn,
    ReplyInProgress,
)
from nbchat.testing.ollama_server import FakeModel, OllamaTestServer
from nbchat.types import DEFAULT_TITLE

MODEL = "ollama:qwen3:1.7b"
PLAIN_MODEL = "ollama:llama3.2:1b"


@pytest.fixture
def server() -> Iterator[OllamaTestServer]:
    with OllamaTestServer() as running:
        running.add_model(FakeModel("tiny:ctx", thinking=False, context_length=300))
        yield running


@pytest.fixture
def session(make_session: Callable[..., ChatSession], server: OllamaTestServer) -> ChatSession:
    return make_session(server, "alice", "bob")


def logged_in(session: ChatSession, model: str | None = MODEL) -> ChatSession:
    return chatting(session, "alice", model, "Chat")


def chat_bodies(server: OllamaTestServer) -> list[dict]:
    return [r["body"] for r in server.requests if r["path"] == "/api/chat"]


# -- who is logged in ---------------------------------------------------------------------------


def test_a_new_session_has_nobody_logged_in_and_refuses_everything(session: ChatSession) -> None:
    assert session.user is None and session.current is None and session.reply is None
    for attempt in (session.conversations, session.history, lambda: session.send("hi")):
        with pytest.raises(NotLoggedIn, match="Log in first"):
            attempt()


def test_register_does_not_log_in_and_login_names_the_user(session: ChatSession) -> None:
    assert session.register("Carol", PASSWORD) is None
    assert session.user is None
    session.login("carol", PASSWORD)
    assert session.user == "Carol" and session.username == "carol"


def test_a_wrong_password_keeps_the_current_user_logged_in(session: ChatSession) -> None:
    session.login("alice", PASSWORD)
    with pytest.raises(AuthenticationFailed):
        session.login("bob", "not the password")
    assert session.user == "alice"


def test_two_users_in_one_kernel_never_see_each_others_conversations(session: ChatSession) -> None:
    logged_in(session)
    secret = session.current
    assert secret is not None
    session.send("my secret plan").wait()
    session.login("bob", PASSWORD)  # switching users logs alice out first
    assert session.user == "bob"
    assert session.conversations() == [] and session.current is None
    with pytest.raises(ConversationNotFound):
        session.select(secret.id)
    with pytest.raises(ConversationNotFound):
        session.rename(secret.id, "mine now")
    with pytest.raises(ConversationNotFound):
        session.delete(secret.id)
    session.login("alice", PASSWORD)
    assert [c.title for c in session.conversations()] == ["Chat"]


def test_logout_leaves_nothing_of_the_user_in_memory(session: ChatSession) -> None:
    logged_in(session)
    reply = session.send("remember me")
    reply.wait()
    store = weakref.ref(session._login.conversations)  # type: ignore[union-attr]
    reply_ref = weakref.ref(reply)
    del reply
    session.logout()
    gc.collect()
    assert session.user is None and session.current is None and session.reply is None
    assert reply_ref() is None and store() is None
    with pytest.raises(NotLoggedIn):
        session.history()


def test_logout_stops_a_streaming_reply_and_keeps_its_partial_text(
    session: ChatSession, server: OllamaTestServer
) -> None:
    server.chunk_count, server.chunk_delay_s = 500, 0.02
    logged_in(session)
    conversation_id = session.current.id  # type: ignore[union-attr]
    reply = session.send("a long answer please")
    wait_until(lambda: len(reply.text) > 0)
    session.logout()
    assert reply.done and reply.partial
    session.login("alice", PASSWORD)
    saved = session.select(conversation_id).messages[-1]
    assert saved.content == reply.text and saved.stats["partial"] is True


# -- conversations ------------------------------------------------------------------------------


def test_conversations_are_created_listed_renamed_and_deleted(session: ChatSession) -> None:
    session.login("alice", PASSWORD)
    first = session.new_conversation("First")
    second = session.new_conversation("Second")
    assert session.current.id == second.id  # type: ignore[union-attr]
    assert second.model is None  # "— choose a model —" until one is chosen
    assert [c.title for c in session.conversations()] == ["Second", "First"]
    session.select(first.id)
    assert session.current.id == first.id  # type: ignore[union-attr]
    assert session.rename(first.id, "Plans").title == "Plans"
    session.delete(first.id)
    assert session.current is None
    assert [c.title for c in session.conversations()] == ["Second"]


def test_the_first_prompt_names_an_untitled_conversation(session: ChatSession) -> None:
    session.login("alice", PASSWORD)
    session.new_conversation()
    session.configure(model=MODEL)
    assert session.current.title == DEFAULT_TITLE  # type: ignore[union-attr]
    session.send("How do   monads\nwork in Haskell?").wait()
    assert session.current.title == "How do monads work in Haskell?"  # type: ignore[union-attr]
    session.send("and in Python?").wait()
    assert session.current.title == "How do monads work in Haskell?"  # type: ignore[union-attr]


# -- settings -----------------------------------------------------------------------------------


def test_settings_belong_to_the_conversation(session: ChatSession) -> None:
    session.login("alice", PASSWORD)
    one = session.new_conversation("One")
    session.configure(model=MODEL, temperature=0.2, max_new_tokens=64, think=True, system="Be brief.")
    session.new_conversation("Two")
    assert session.settings.model is None and session.settings.temperature == 0.7
    settings = session.select(one.id).settings
    assert (settings.model, settings.temperature, settings.max_new_tokens) == (MODEL, 0.2, 64)
    assert settings.think is True and settings.system == "Be brief."


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"temperature": 2.5}, "from 0 to 2"),
        ({"temperature": -0.1}, "from 0 to 2"),
        ({"max_new_tokens": 0}, "from 1 to"),
        ({"max_new_tokens": 1.5}, "whole number"),
        ({"think": "yes"}, "True or False"),
        ({"model": "gpt-4"}, "Unknown model id"),
        ({"colour": "blue"}, "Unknown setting 'colour'"),
        ({"model": "ollama:tiny:ctx", "max_new_tokens": 300}, "below ollama:tiny:ctx's context of 300"),
    ],
)
def test_bad_settings_are_refused_and_nothing_changes(
    session: ChatSession, changes: dict, message: str
) -> None:
    logged_in(session)
    before = session.settings
    with pytest.raises(InvalidValue, match=message):
        session.configure(**changes)
    assert session.settings == before


def test_choosing_a_small_context_model_lowers_max_tokens_with_a_warning(session: ChatSession) -> None:
    """Picking a model in a dropdown never fails because of the previous model's max tokens."""
    logged_in(session)
    session.configure(max_new_tokens=512)
    with pytest.warns(nbchat.NbchatWarning, match="lowered from 512 to 150"):
        session.configure(model="ollama:tiny:ctx")  # 300 tokens of context
    assert session.settings.model == "ollama:tiny:ctx" and session.settings.max_new_tokens == 150


def test_configure_needs_a_conversation(session: ChatSession) -> None:
    session.login("alice", PASSWORD)
    with pytest.raises(NoConversation, match="start a new one or pick one"):
        session.configure(model=MODEL)


def test_settings_apply_to_the_very_next_message(session: ChatSession, server: OllamaTestServer) -> None:
    logged_in(session)
    session.send("one").wait()
    session.configure(temperature=1.3, max_new_tokens=77, model=PLAIN_MODEL, system="Answer in French.")
    session.send("two").wait()
    first, second = chat_bodies(server)
    assert first["options"]["temperature"] == 0.7 and first["model"] == "qwen3:1.7b"
    assert second["options"]["temperature"] == 1.3 and second["options"]["num_predict"] == 77
    assert second["model"] == "llama3.2:1b"
    assert second["messages"][0] == {"role": "system", "content": "Answer in French."}


# -- sending ------------------------------------------------------------------------------------


def test_send_is_refused_without_a_model_and_nothing_is_saved(
    session: ChatSession, server: OllamaTestServer
) -> None:
    logged_in(session, model=None)
    with pytest.raises(ModelNotChosen, match="Choose a model"):
        session.send("hello")
    assert session.history() == [] and chat_bodies(server) == []


@pytest.mark.parametrize("prompt", ["", "   ", "\n\t"])
def test_an_empty_prompt_is_refused(session: ChatSession, prompt: str) -> None:
    logged_in(session)
    with pytest.raises(InvalidValue, match="empty"):
        session.send(prompt)
    assert session.history() == []


def test_send_needs_a_conversation(session: ChatSession) -> None:
    session.login("alice", PASSWORD)
    with pytest.raises(NoConversation):
        session.send("hello")


def test_a_reply_streams_and_is_saved_with_its_stats(session: ChatSession) -> None:
    logged_in(session)
    reply = session.send("Hello there")
    chunks = [chunk.text for chunk in reply]
    assert "".join(chunks) == reply.text == "You said: Hello there"
    assert len(chunks) > 1
    question, answer = session.history()
    assert (question.role, question.content) == ("user", "Hello there")
    assert (answer.role, answer.content, answer.model) == ("assistant", reply.text, MODEL)
    assert answer.stats["finish_reason"] == "stop" and answer.stats["completion_tokens"] > 0
    assert reply.message == answer and not reply.partial


def test_the_question_is_saved_before_the_reply_starts(
    session: ChatSession, server: OllamaTestServer
) -> None:
    server.first_chunk_delay_s = 0.5
    logged_in(session)
    reply = session.send("are you there?")
    assert [m.content for m in session.history()] == ["are you there?"]
    reply.wait()
    assert len(session.history()) == 2


def test_thinking_is_saved_for_display_but_never_sent_back(
    session: ChatSession, server: OllamaTestServer
) -> None:
    logged_in(session)
    session.configure(think=True)
    first = session.send("think about it").wait()
    assert first.thinking and session.history()[-1].thinking == first.thinking
    session.send("and now?").wait()
    sent = chat_bodies(server)[-1]
    assert sent["think"] is True
    assert all(set(m) == {"role", "content"} for m in sent["messages"])
    assert first.thinking not in str(sent["messages"])


def test_two_readers_each_see_every_chunk(session: ChatSession, server: OllamaTestServer) -> None:
    server.chunk_count, server.chunk_delay_s = 20, 0.005
    logged_in(session)
    reply = session.send("hi")
    seen: list[str] = []
    reply.subscribe(lambda r: seen.append(r.text))
    assert "".join(c.text for c in reply) == "".join(c.text for c in reply) == reply.text
    wait_until(lambda: seen and seen[-1] == reply.text)


def test_a_second_send_while_streaming_is_refused(session: ChatSession, server: OllamaTestServer) -> None:
    server.chunk_count, server.chunk_delay_s = 100, 0.02
    logged_in(session)
    session.send("first")
    with pytest.raises(ReplyInProgress, match="still streaming"):
        session.send("second")


def test_stop_keeps_the_partial_reply_marked_as_such(session: ChatSession, server: OllamaTestServer) -> None:
    server.chunk_count, server.chunk_delay_s = 1000, 0.01
    logged_in(session)
    reply = session.send("count to a thousand")
    for number, _ in enumerate(reply):
        if number == 5:
            assert session.stop() is reply
    assert reply.stats.finish_reason == "cancelled" and reply.partial  # type: ignore[union-attr]
    saved = session.history()[-1]
    assert saved.content == reply.text and reply.text.startswith("w0 w1 w2 w3 w4 w5")
    assert saved.stats["partial"] is True and saved.stats["finish_reason"] == "cancelled"
    assert len(reply.text.split()) < 1000
    wait_until(lambda: server.cancelled_streams == 1)  # the server stopped generating too
    assert session.stop() is None  # nothing in flight any more


def test_a_reply_stopped_before_its_first_token_saves_nothing(
    session: ChatSession, server: OllamaTestServer
) -> None:
    server.first_chunk_delay_s = 2.0
    logged_in(session)
    reply = session.send("slow start")
    session.stop()
    reply.wait()
    assert reply.message is None and [m.role for m in session.history()] == ["user"]


def test_an_error_mid_reply_keeps_the_partial_text(session: ChatSession, server: OllamaTestServer) -> None:
    server.fault, server.fault_after_chunks = "midstream_error", 3
    server.chunk_count = 10
    logged_in(session)
    reply = session.send("break please")
    with pytest.raises(GenerationFailed):
        reply.wait()
    saved = session.history()[-1]
    assert saved.content == reply.text == "w0 w1 w2 "
    assert saved.stats["partial"] is True and saved.stats["finish_reason"] == "error"
    assert saved.stats["error"] == str(reply.error)


def test_an_unreachable_server_is_a_saved_error_reply(session: ChatSession, server: OllamaTestServer) -> None:
    logged_in(session)
    server.stop()
    reply = session.send("anyone?")
    with pytest.raises(BackendUnavailable, match=server.url):
        reply.wait()
    saved = session.history()[-1]
    assert saved.role == "assistant" and saved.content == "" and "anyone?" not in saved.stats["error"]
    assert str(reply.error) in reply.markdown()


# -- fitting the context ------------------------------------------------------------------------


def test_old_turns_are_left_out_when_the_context_is_full(
    session: ChatSession, server: OllamaTestServer
) -> None:
    server.reply_words = ["ok"]
    logged_in(session, model=None)
    session.configure(model="ollama:tiny:ctx", max_new_tokens=100, system="Be brief.")  # 300 of context
    for number in range(8):
        reply = session.send(f"message {number} " + "blah " * 40).wait()
    sent = chat_bodies(server)[-1]
    assert sent["options"]["num_ctx"] == 300
    assert sent["messages"][0] == {"role": "system", "content": "Be brief."}
    assert sent["messages"][-1]["content"].startswith("message 7")
    assert sent["messages"][1]["role"] == "user"  # never an answer without its question
    assert len(sent["messages"]) < 1 + 2 * 8 - 1
    assert reply.dropped_messages == 2 * 8 - 1 - (len(sent["messages"]) - 1)
    assert session.history()[-1].stats["dropped_messages"] == reply.dropped_messages
    assert len(session.history()) == 16  # nothing is deleted: only the prompt is shortened


def test_a_prompt_too_long_for_the_context_says_by_how_much(
    session: ChatSession, server: OllamaTestServer
) -> None:
    logged_in(session, model=None)
    session.configure(model="ollama:tiny:ctx", max_new_tokens=100)
    reply = session.send("word " * 400)
    with pytest.raises(ContextOverflow, match=r"shorten it by about [\d,]+ tokens") as caught:
        reply.wait()
    assert caught.value.available == 200 and caught.value.needed > 200
    assert chat_bodies(server) == []


# -- health and the kernel's session ------------------------------------------------------------


def test_health_reports_engines_storage_and_accounts(session: ChatSession, server: OllamaTestServer) -> None:
    session.login("alice", PASSWORD)
    report = session.health()
    assert report.ok and report.ollama["reachable"] and report.storage["writable"]
    assert report.accounts == {"max_users": 10, "users": 2}
    assert report.session["user"] == "alice"
    text = str(report)
    assert f"Ollama: reachable at {server.url}" in text and "Accounts: 2 of 10 used" in text
    assert "nbchat health: OK" in report._repr_markdown_()
    assert report.to_dict()["ok"] is True


def test_health_without_ollama_is_still_ok_with_a_note(
    session: ChatSession, server: OllamaTestServer
) -> None:
    server.stop()
    report = session.health()
    assert report.ok and not report.ollama["reachable"]
    assert any("Local models" in note for note in report.notes)


def test_health_names_a_data_dir_that_cannot_be_written(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    report = ChatSession(Config(data_dir=blocker / "data")).health()
    assert not report.ok and report.storage["writable"] is False
    assert any("NBCHAT_DATA_DIR" in problem for problem in report.problems)


@pytest.fixture
def kernel_session(monkeypatch: pytest.MonkeyPatch, data_dir: Path) -> Iterator[None]:
    monkeypatch.setenv("NBCHAT_DATA_DIR", str(data_dir))
    monkeypatch.setattr(nbchat.session, "_session", None)
    yield
    nbchat.session._session = None


def test_the_kernel_has_one_session(kernel_session: None) -> None:
    assert nbchat.get_session() is nbchat.get_session()


def test_a_jupyterhub_user_is_logged_in_without_a_password(
    kernel_session: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JUPYTERHUB_USER", "ann.lee@uni.edu")
    session = nbchat.get_session()
    assert session.user == "ann.lee@uni.edu" and session.hub_login
    assert session.username is not None and session.username.startswith("ann.lee-uni")
    session.new_conversation("Mine")
    assert [c.title for c in session.conversations()] == ["Mine"]


def test_trusting_the_hub_user_can_be_switched_off(
    kernel_session: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JUPYTERHUB_USER", "ann")
    monkeypatch.setenv("NBCHAT_TRUST_HUB_USER", "0")
    session = nbchat.get_session()
    assert session.user is None
    with pytest.raises(nbchat.ConfigError, match="switched off"):
        session.login_from_hub()


def test_models_lists_ollama_and_the_local_qwen3(
    kernel_session: None, monkeypatch: pytest.MonkeyPatch, server: OllamaTestServer
) -> None:
    monkeypatch.setenv("OLLAMA_HOST", server.url)
    assert nbchat.models() == ["ollama:llama3.2:1b", "ollama:qwen3:1.7b", "ollama:tiny:ctx", "qwen3"]
    assert load_config().ollama_host == server.url


# -- the local engine ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_context_qwen3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A tiny real Qwen3 whose context is only 256 tokens, loaded through the production path."""
    from nbchat.backends.transformers import unload
    from nbchat.testing.tiny_qwen3 import tiny_qwen3

    path = tiny_qwen3(tmp_path_factory.mktemp("qwen3") / "ctx256", max_position_embeddings=256)
    yield f"transformers:{path}"
    unload(str(path))


def test_a_local_qwen3_reply_is_fitted_with_its_real_tokenizer_and_saved(
    session: ChatSession, small_context_qwen3: str
) -> None:
    from nbchat.backends import resolve

    logged_in(session, model=small_context_qwen3)
    session.configure(max_new_tokens=16, temperature=0.0)
    streams: list[object] = []
    for number in range(6):
        reply = session.send(f"question {number}: " + "tell me more " * 6)
        reply.subscribe(lambda r: streams.append(r._stream) if r._stream is not None else None)
        reply.wait()
    backend, name = resolve(small_context_qwen3)
    assert reply.dropped_messages > 0
    prompt = streams[-1].prompt  # type: ignore[attr-defined] - the exact text the model was given
    assert "question 5" in prompt and "question 0" not in prompt
    assert len(backend._loaded_model(name).tokenizer(prompt)["input_ids"]) <= 256 - 16  # type: ignore[attr-defined]
    saved = session.history()[-1]
    assert saved.model == small_context_qwen3 and 0 < saved.stats["completion_tokens"] <= 16
    assert saved.stats["finish_reason"] in ("length", "stop") and saved.content == reply.text


# -- a shared OpenAI-compatible server ----------------------------------------------------------


def test_an_openai_compatible_server_is_offered_checked_and_chatted_with(
    session: ChatSession, server: OllamaTestServer
) -> None:
    from nbchat.testing.openai_server import OpenAITestServer

    with OpenAITestServer() as vllm:
        session.config = replace(session.config, openai_base_url=vllm.base_url)
        models, problem = session.model_choices()
        openai_models = [m for m in models if m.startswith("openai:")]
        assert problem is None and openai_models and models[-1] == "qwen3"
        report = session.health()
        assert report.openai is not None and report.openai["reachable"]
        assert f"OpenAI-compatible server: reachable at {vllm.base_url}" in str(report)
        logged_in(session, model=openai_models[0])
        assert session.send("hello there").wait(10).text == "You said: hello there"
        assert session.history()[-1].model == openai_models[0]
    report = session.health()
    assert report.ok and report.openai is not None and not report.openai["reachable"]
    assert any("openai: models" in note for note in report.notes)


def test_the_read_timeout_comes_from_the_environment(tmp_path: Path) -> None:
    assert load_config({"NBCHAT_DATA_DIR": str(tmp_path)}).read_timeout_s == 120.0
    assert load_config({"NBCHAT_DATA_DIR": str(tmp_path), "NBCHAT_READ_TIMEOUT": "5"}).read_timeout_s == 5.0
    with pytest.raises(nbchat.ConfigError, match="NBCHAT_READ_TIMEOUT must be a positive number"):
        load_config({"NBCHAT_DATA_DIR": str(tmp_path), "NBCHAT_READ_TIMEOUT": "-1"})


def test_loading_a_local_model_says_how_far_it_got(session: ChatSession, tmp_path: Path) -> None:
    from nbchat.backends.transformers import unload
    from nbchat.testing.tiny_qwen3 import tiny_qwen3

    path = tiny_qwen3(tmp_path / "fresh-qwen3")
    try:
        logged_in(session, model=f"transformers:{path}")
        session.configure(max_new_tokens=8)
        statuses: list[str] = []
        reply = session.send("hello")
        reply.subscribe(lambda r: statuses.append(r.status) if r.status not in statuses[-1:] else None)
        reply.wait(120)
        assert any("the tokenizer" in s for s in statuses) or any("the weights" in s for s in statuses)
        assert any("loaded in" in s for s in statuses)
        # ...and in which precision, and why (the tests run local models in float32).
        assert any("s (float32: set by NBCHAT_QWEN_DTYPE" in s for s in statuses), statuses
        assert reply.markdown() and not reply.markdown().startswith("*Loading")
    finally:
        unload(str(path))


# -- a password change ---------------------------------------------------------------------------


def test_a_password_change_ends_the_other_kernels_logins_and_this_one_goes_on(
    make_session: Callable[..., ChatSession], server: OllamaTestServer
) -> None:
    here = chatting(make_session(server, "alice"), "alice", MODEL, "Plans")
    other_kernel = chatting(make_session(server), "alice", MODEL, "Elsewhere")
    here.change_password(PASSWORD, "battery staple")
    with pytest.raises(NotLoggedIn, match="password was changed"):
        other_kernel.conversations()
    assert here.user == "alice" and here.current is not None and here.current.title == "Plans"
    assert here.send("still here?").wait(30).message is not None
    with pytest.raises(AuthenticationFailed):
        other_kernel.login("alice", PASSWORD)
    other_kernel.login("alice", "battery staple")
    assert {c.title for c in other_kernel.conversations()} == {"Plans", "Elsewhere"}
