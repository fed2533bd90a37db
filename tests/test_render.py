"""Markdown for messages, replies and statistics (nbchat/render.py), on real replies.

Each reply comes from a real session talking to the loopback Ollama server, so
these pin what the panel and the magic show for every way a reply can end.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from polling import wait_until

from conftest import PASSWORD
from nbchat import ChatSession, Reply
from nbchat.render import (
    ending_markdown,
    message_markdown,
    reply_markdown,
    stats_footer,
    thinking_markdown,
    token_facts,
)
from nbchat.testing.ollama_server import OllamaTestServer
from nbchat.types import GenerationStats, Message

MODEL = "ollama:llama3.2:1b"


@pytest.fixture
def session(make_session: Callable[..., ChatSession], server: OllamaTestServer) -> ChatSession:
    session = make_session(server, "alice")
    session.login("alice", PASSWORD)
    session.new_conversation()
    session.configure(model=MODEL)
    return session


def finished(reply: Reply) -> Reply:
    reply.join(10)
    assert reply.done
    return reply


def test_a_finished_reply_looks_as_it_will_once_saved(session: ChatSession) -> None:
    reply = finished(session.send("hello there"))
    assert reply.message is not None
    assert reply_markdown(reply) == message_markdown(reply.message) == "You said: hello there"


def test_thinking_is_folded_and_followed_by_a_blank_line_so_the_text_renders_as_markdown(
    session: ChatSession,
) -> None:
    session.configure(model="ollama:qwen3:1.7b", think=True)
    reply = finished(session.send("**bold** please"))
    shown = reply_markdown(reply)
    assert shown.startswith("<details><summary>Thinking</summary>\n\n")
    # An HTML block runs to the next blank line: without one, "**bold**" would show raw.
    assert "\n\n</details>\n\nYou said: **bold** please" in shown
    assert reply.message is not None and shown == message_markdown(reply.message)


def test_a_stopped_reply_keeps_its_text_and_says_it_was_stopped(
    session: ChatSession, server: OllamaTestServer
) -> None:
    server.chunk_count, server.chunk_delay_s = 300, 0.01
    reply = session.send("count")
    for _ in reply:
        break  # the first chunk arrived
    session.stop()
    finished(reply)
    assert reply_markdown(reply).endswith("\n\n*(stopped)*") and reply_markdown(reply).startswith("w0")
    assert reply.message is not None and reply_markdown(reply) == message_markdown(reply.message)


def test_a_reply_cut_off_by_max_new_tokens_says_so(session: ChatSession) -> None:
    session.configure(max_new_tokens=2)
    reply = finished(session.send("one two three four five"))
    assert reply_markdown(reply) == "You said: \n\n*(cut off at max new tokens)*"
    assert reply.message is not None and message_markdown(reply.message) == reply_markdown(reply)


def test_an_engine_error_follows_the_partial_text(session: ChatSession, server: OllamaTestServer) -> None:
    server.fault = "midstream_error"
    reply = finished(session.send("one two three four"))
    assert reply.error is not None
    assert reply_markdown(reply).endswith(f"\n\n**Error:** {reply.error}")
    assert reply.message is not None and message_markdown(reply.message) == reply_markdown(reply)


def test_before_the_first_token_the_loading_status_shows_then_only_the_text_so_far(
    session: ChatSession, server: OllamaTestServer
) -> None:
    server.first_chunk_delay_s, server.chunk_count, server.chunk_delay_s = 0.5, 300, 0.01
    reply = session.send("count")
    reply.set_status("Loading the model…")
    assert reply_markdown(reply) == "*Loading the model…*"
    wait_until(lambda: "w3" in reply.text)
    shown = reply_markdown(reply)
    session.stop()
    assert shown.startswith("w0 w1 w2 w3") and "*" not in shown  # no ending until it ends
    finished(reply)


def test_why_a_reply_is_not_saved_comes_after_its_error() -> None:
    assert ending_markdown("stop", None, "the disk is full") == "\n\n**Not saved:** the disk is full"
    assert ending_markdown("cancelled", "boom", "full") == "\n\n**Error:** boom\n\n**Not saved:** full"
    assert ending_markdown("cancelled") == "\n\n*(stopped)*"
    assert ending_markdown("stop") == ""


def test_blank_thinking_is_not_shown() -> None:
    assert thinking_markdown("  \n") == thinking_markdown(None) == ""
    assert message_markdown(Message("assistant", "42", thinking=" ")) == "42"


def test_the_footer_names_the_model_tokens_and_speed(session: ChatSession) -> None:
    reply = finished(session.send("hello"))
    stats = reply.stats
    assert stats is not None and stats.completion_tokens and stats.tokens_per_s
    assert stats_footer(reply) == (
        f"\n\n<sub>`{MODEL}` · {stats.completion_tokens} tokens · {stats.tokens_per_s:.1f} tokens/s</sub>"
    )


def test_counted_tokens_are_marked_as_an_estimate() -> None:
    stats = GenerationStats("stop", completion_tokens=12, tokens_per_s=30.0, tokens_estimated=True)
    assert token_facts(stats) == ["12 tokens (estimated)", "30.0 tokens/s (estimated)"]
    assert token_facts(GenerationStats("stop", completion_tokens=12)) == ["12 tokens"]
