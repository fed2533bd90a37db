"""Two conversations on one local model take turns: the second waits, saying so, and Stop works for each.

One kernel has one model process per model, and it generates one reply at a
time. Two replies meet on it when two sessions of one kernel chat with it (two
``ChatSession``s of user code, each with its own login), or when the kernel's
session (a panel, ``%chat``) answers while the user's own code streams from
the same model. (Two kernels each have their own model process: nothing to
wait for.) Each case is run for real with the tiny Qwen3, greedy, in threads.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
from consumer import Consumer
from polling import wait_until

from conftest import chatting
from nbchat import ChatSession
from nbchat.backends.base import LoadProgress
from nbchat.backends.transformers import TransformersBackend, unload
from nbchat.reply import Reply
from nbchat.testing.ollama_server import OllamaTestServer
from nbchat.testing.tiny_qwen3 import tiny_qwen3
from nbchat.types import GenerationParams, Message

pytestmark = pytest.mark.slow

QUESTION = "What is the capital of France?"
LONG = GenerationParams(temperature=0.0, max_new_tokens=8000)  # greedy: this tiny model never stops early
SHORT = GenerationParams(temperature=0.0, max_new_tokens=12)
STOP_WITHIN_S = 1.5  # "about a second", with room for a loaded 2-core machine


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The tiny Qwen3 (a long context, so a reply can run until stopped), loaded once for the module."""
    path = str(tiny_qwen3(tmp_path_factory.mktemp("qwen3") / "turns", max_position_embeddings=16384))
    TransformersBackend().load(path)
    yield path
    unload(path)


def stop(reply: Reply) -> float:
    """Stop a session's reply; how many seconds it took to end (inf: not within 30 s)."""
    asked = time.monotonic()
    reply.cancel()
    return time.monotonic() - asked if reply.join(30) else float("inf")


def on_model(session: ChatSession, user: str, model: str, max_new_tokens: int) -> ChatSession:
    chatting(session, user, f"transformers:{model}")
    session.configure(temperature=0.0, max_new_tokens=max_new_tokens)
    return session


def test_a_second_session_waits_for_the_model_saying_so_then_answers_exactly_as_it_would_alone(
    make_session: Callable[..., ChatSession], server: OllamaTestServer, model: str
) -> None:
    alice = on_model(make_session(server, "alice"), "alice", model, 8000)
    bob = on_model(make_session(server, "bob"), "bob", model, 12)
    alone = bob.send(QUESTION).wait(60).text
    bob.new_conversation()
    bob.configure(model=f"transformers:{model}", temperature=0.0, max_new_tokens=12)

    running = alice.send("Tell me a long story, please.")
    wait_until(lambda: len(running.text) > 20, 60)
    waiting = bob.send(QUESTION)
    wait_until(lambda: waiting.status.startswith("Waiting for"), 10)
    assert waiting.status == f"Waiting for transformers:{model}: another reply is using it…"
    assert waiting.text == "" and not waiting.done
    seen = len(running.text)
    wait_until(lambda: len(running.text) > seen, 10)  # the first reply goes on meanwhile

    assert stop(running) < STOP_WITHIN_S  # Stop for the running one lets the waiting one start
    waiting.wait(60)
    assert waiting.text == alone and waiting.text  # no token of the other reply got into it
    assert "is free after" in waiting.status and waiting.status.endswith("of waiting; generating…")
    assert running.stats is not None and running.stats.finish_reason == "cancelled"
    assert alice.history()[-1].content == running.text and bob.history()[-1].content == alone


def test_stopping_the_waiting_reply_ends_it_at_once_and_the_running_one_goes_on(
    make_session: Callable[..., ChatSession], server: OllamaTestServer, model: str
) -> None:
    session = on_model(make_session(server, "alice"), "alice", model, 12)
    users_code = Consumer(TransformersBackend().stream(model, [Message("user", "A long story.")], LONG))
    wait_until(lambda: len(users_code.chunks) >= 3, 60)
    waiting = session.send(QUESTION)  # the panel's (or %chat's) reply, while the user's code streams
    wait_until(lambda: waiting.status.startswith("Waiting for"), 10)

    assert stop(waiting) < STOP_WITHIN_S
    assert waiting.stats is not None and waiting.stats.finish_reason == "cancelled"
    assert waiting.text == "" and waiting.message is None  # nothing streamed: nothing saved
    assert session.history()[-1].content == QUESTION  # the question stays, to be asked again
    seen = len(users_code.chunks)
    wait_until(lambda: len(users_code.chunks) > seen, 10)  # undisturbed
    assert not users_code.reply.done
    assert users_code.stop() < STOP_WITHIN_S
    assert session.regenerate().wait(60).text  # the model is free again


def test_the_backends_progress_callback_hears_waiting_then_turn_and_the_waiting_reply_is_unchanged(
    model: str,
) -> None:
    question = [Message("user", QUESTION)]
    alone = TransformersBackend().stream(model, question, SHORT)
    alone.wait()
    events: list[LoadProgress] = []
    first = Consumer(TransformersBackend().stream(model, [Message("user", "A long story.")], LONG))
    wait_until(lambda: len(first.chunks) >= 3, 60)
    second = Consumer(TransformersBackend(on_progress=events.append).stream(model, question, SHORT))
    wait_until(lambda: [e.phase for e in events] == ["waiting"], 10)
    time.sleep(0.3)
    assert not second.reply.done and second.chunks == []

    assert first.stop() < STOP_WITHIN_S
    second.thread.join(60)
    assert [e.phase for e in events] == ["waiting", "turn"]
    assert events[0].model == events[1].model == f"transformers:{model}"
    assert events[1].elapsed_s >= 0.3  # how long it waited
    assert second.reply.token_ids == alone.token_ids and second.reply.text == alone.text
    assert second.reply.stats is not None and second.reply.stats.finish_reason in ("length", "stop")


def test_a_panel_whose_reply_waits_for_the_model_says_so_in_its_status_line(
    make_session: Callable[..., ChatSession], server: OllamaTestServer, model: str
) -> None:
    from nbchat.panel import ChatPanel

    alice = on_model(make_session(server, "alice"), "alice", model, 8000)
    bob = on_model(make_session(server, "bob"), "bob", model, 12)
    panel = ChatPanel(bob)
    running = alice.send("Tell me a long story, please.")
    wait_until(lambda: len(running.text) > 20, 60)
    panel.prompt.value = QUESTION
    panel.send_button.click()
    wait_until(lambda: "Waiting for" in panel.status.value, 10)
    assert "Generating with" in panel.status.value and "another reply is using it" in panel.status.value
    assert stop(running) < STOP_WITHIN_S
    wait_until(lambda: bob.reply is not None and bob.reply.done, 60)
    wait_until(lambda: panel._live is None, 10)  # the panel has shown the end of the reply
    assert "Waiting for" not in panel.status.value  # its turn came, and it ended
    panel.close()
