"""Fit a conversation into a model's context window: ``truncate_history``.

A model sees a bounded number of tokens: the prompt (system prompt plus the
conversation) and the reply it writes must fit together. The session asks for
``context window - max new tokens`` and this module drops the oldest turns
until the prompt fits. The rules, each one checked by property tests:

- the system prompt and the newest user message are always kept;
- whole turns go, oldest first: a user message leaves with the assistant
  replies that answered it, so no reply is ever sent without its question;
- thinking is never sent back (the models are trained without it), and a
  reply that failed before writing anything is left out;
- what is kept is a subsequence of the input in the original order, and
  always a suffix of its turns;
- if even the system prompt and the newest turn do not fit, ``ContextOverflow``
  says by how many tokens.

Token counts come from a ``count_tokens(messages)`` callable that measures the
whole prompt: the local model's real tokenizer and chat template, or
``estimate_tokens`` for servers whose tokenizer is out of reach (Ollama).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace

from nbchat.errors import ContextOverflow, InvalidValue
from nbchat.types import Message

TokenCounter = Callable[[Sequence[Message]], int]

#: ``estimate_tokens``: bytes of UTF-8 per token, on the generous side. English
#: averages about 4 bytes per token with the Qwen and Llama tokenizers, code about
#: 3, and CJK text about 3 (one character): 3 over-counts rather than under.
ESTIMATE_BYTES_PER_TOKEN = 3
#: ``estimate_tokens``: the chat template's markers around each message.
ESTIMATE_TOKENS_PER_MESSAGE = 5
#: ``estimate_tokens``: the marker that opens the assistant's reply.
ESTIMATE_REPLY_PRIMER_TOKENS = 3


def estimate_tokens(messages: Sequence[Message]) -> int:
    """A deliberately generous token count for a prompt, without a tokenizer.

    ``ceil(utf8_bytes / 3) + 5`` per message, plus 3 for the reply's opening
    marker. Used for Ollama, whose tokenizer lives in the server; the server
    is also told the context size (``num_ctx``) so it never silently cuts the
    prompt itself.
    """
    total = ESTIMATE_REPLY_PRIMER_TOKENS
    for message in messages:
        total += math.ceil(len(message.content.encode("utf-8")) / ESTIMATE_BYTES_PER_TOKEN)
        total += ESTIMATE_TOKENS_PER_MESSAGE
    return total


def sendable(messages: Sequence[Message]) -> tuple[list[Message], list[list[Message]]]:
    """Split a history into its system messages and its turns, cleaned for sending.

    A turn is a user message and the assistant replies that follow it. Thinking
    is removed, empty replies (generation failed before any text) are dropped,
    and replies with no user message before them are dropped.
    """
    system: list[Message] = []
    turns: list[list[Message]] = []
    for message in messages:
        if message.role == "system":
            if message.content.strip():
                system.append(_without_thinking(message))
        elif message.role == "user":
            turns.append([_without_thinking(message)])
        elif turns and message.content:  # an assistant reply that answered something
            turns[-1].append(_without_thinking(message))
    return system, turns


def truncate_history(
    messages: Sequence[Message], max_tokens: int, count_tokens: TokenCounter
) -> list[Message]:
    """The newest part of ``messages`` whose prompt fits in ``max_tokens`` (see the module doc)."""
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
        raise InvalidValue(f"max_tokens must be a whole number, not {max_tokens!r}.")
    system, turns = sendable(messages)
    if not turns:
        raise InvalidValue("There is no user message to answer.")

    def kept(dropped: int) -> list[Message]:
        return system + [m for turn in turns[dropped:] for m in turn]

    newest_only = len(turns) - 1
    needed = count_tokens(kept(newest_only))
    if needed > max_tokens:
        raise ContextOverflow(
            f"The newest message needs {needed:,} tokens (with the system prompt), but only "
            f"{max(max_tokens, 0):,} fit: shorten it by about {needed - max(max_tokens, 0):,} tokens, "
            "shorten the system prompt, or lower max new tokens to leave more room.",
            needed=needed,
            available=max_tokens,
        )
    # The fewest turns to drop, by binary search (a prompt only grows with more turns);
    # ``high`` is only ever a count that was measured to fit, so the answer always fits.
    low, high = 0, newest_only
    while low < high:
        middle = (low + high) // 2
        if count_tokens(kept(middle)) <= max_tokens:
            high = middle
        else:
            low = middle + 1
    return kept(high)


def _without_thinking(message: Message) -> Message:
    return message if message.thinking is None else replace(message, thinking=None)
