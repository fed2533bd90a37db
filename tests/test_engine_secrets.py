"""Credentials never reach an error message (nor, through it, a saved reply's ``stats.error``).

``scrub_secrets`` is the one helper every HTTP engine passes a server's words through; these tests
say what it removes and what it leaves, then check the Ollama engine's errors use it too (the
OpenAI-compatible engine's are in test_openai_backend.py, with a server echoing the header).
"""

from __future__ import annotations

import pytest

from nbchat import Message
from nbchat.backends.http import server_text
from nbchat.backends.ollama import OllamaBackend
from nbchat.errors import GenerationFailed
from nbchat.redact import scrub_secrets
from nbchat.testing.ollama_server import OllamaTestServer
from nbchat.types import GenerationParams


@pytest.mark.parametrize(
    ("text", "scrubbed"),
    [
        ("Authorization: Bearer sk-abc123def456", "Authorization: ***"),
        ('{"authorization": "Basic dXNlcjpwYXNz"}', '{"authorization": "***"}'),
        ("got bearer eyJhbGciOi.eyJzdWIi.sig here", "got bearer *** here"),
        ("key sk-proj-0123456789abcdef was revoked", "key sk-*** was revoked"),
        ("x-api-key: 5f4dcc3b5aa765d61d8327deb882cf99", "x-api-key: ***"),
        ("?api_key=hunter2&model=x", "?api_key=***&model=x"),
    ],
)
def test_anything_that_looks_like_a_credential_is_scrubbed_keeping_its_label(text, scrubbed) -> None:
    assert scrub_secrets(text) == scrubbed


@pytest.mark.parametrize(
    "text",
    [
        "token limit exceeded: 9000 > 8192",
        "Basic models cannot think",
        "the task-queue is full",
        "model 'sk-1' not found",  # too short to be a key
    ],
)
def test_ordinary_words_are_left_alone(text: str) -> None:
    assert scrub_secrets(text) == text


def test_the_configured_secret_itself_is_scrubbed_wherever_it_is() -> None:
    assert scrub_secrets("you sent 'plainsecret42'", "plainsecret42", None) == "you sent '***'"


def test_a_secret_is_scrubbed_before_the_text_is_cut() -> None:
    secret = "z" * 300
    assert "z" not in server_text(f"{'a' * 190} {secret}", [secret], limit=200)


def test_an_ollama_error_quoting_a_token_has_it_scrubbed() -> None:
    with OllamaTestServer() as server:
        server.final_fields = {"error": "proxy said: Authorization: Bearer sk-live-0123456789abcdef"}
        stream = OllamaBackend(server.url).stream("llama3.2:1b", [Message("user", "hi")], GenerationParams())
        with pytest.raises(GenerationFailed, match="proxy said") as error:
            stream.wait()
    assert "0123456789abcdef" not in str(error.value)
    assert stream.stats is not None and "0123456789abcdef" not in str(stream.stats.error)
