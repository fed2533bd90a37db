"""What every engine shares about chat messages: the streaming ``<think>`` parser and the history as sent.

Qwen3 (local or behind an OpenAI-compatible server) writes its thinking as literal
``<think>…</think>`` text; every engine splits it out the same way, and every engine sends
past turns without their thinking. Imports nothing heavy.
"""

from __future__ import annotations

from collections.abc import Sequence

from nbchat.types import Chunk, Message

__all__ = ["THINK_CLOSE", "THINK_OPEN", "ThinkParser", "chat_messages", "strip_thinking"]

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


# -- the streaming <think> parser ------------------------------------------------------------


class ThinkParser:
    """Split streamed text into answer and thinking at ``<think>``/``</think>``, tags never shown.

    Qwen3's think tags are not special tokens: they arrive as literal text and
    may be cut anywhere between stream pieces (``"<thi"`` + ``"nk>"``), so a
    possible tag prefix at the end of a piece is held back until the next piece
    decides. The newlines Qwen puts around thinking (``<think>\\n…\\n</think>\\n\\n``)
    are dropped. A stray tag (a close without an open, an open inside
    thinking) is dropped too: nothing tag-like ever reaches the answer.
    """

    def __init__(self) -> None:
        self.in_thinking = False
        self._held = ""  # a possible partial tag at the end of the last piece
        self._newlines = ""  # newlines inside thinking, shown only if more thinking follows
        self._strip_leading = False  # just crossed a tag: drop the newlines right after it

    def feed(self, piece: str) -> list[Chunk]:
        """The chunks ``piece`` completes (possibly none, while a tag prefix is held back)."""
        text, self._held = self._held + piece, ""
        chunks: list[Chunk] = []
        while text:
            open_at, close_at = text.find(THINK_OPEN), text.find(THINK_CLOSE)
            found = [at for at in (open_at, close_at) if at >= 0]
            if not found:
                keep = _partial_tag_suffix(text)
                self._emit(text[: len(text) - keep], chunks)
                self._held = text[len(text) - keep :]
                break
            at = min(found)
            self._emit(text[:at], chunks)
            if at == open_at:
                text = text[at + len(THINK_OPEN) :]
                if not self.in_thinking:
                    self.in_thinking, self._strip_leading = True, True
            else:
                text = text[at + len(THINK_CLOSE) :]
                self.in_thinking, self._strip_leading, self._newlines = False, True, ""
        return chunks

    def flush(self) -> list[Chunk]:
        """The end of the stream: release a held-back fragment that never became a tag."""
        chunks: list[Chunk] = []
        held, self._held = self._held, ""
        self._emit(held, chunks)
        self._newlines = ""
        return chunks

    def _emit(self, text: str, chunks: list[Chunk]) -> None:
        if self._strip_leading:
            text = text.lstrip("\n")
            if not text:
                return
            self._strip_leading = False
        if not text:
            return
        if not self.in_thinking:
            chunks.append(Chunk("text", text))
            return
        body = self._newlines + text
        stripped = body.rstrip("\n")
        self._newlines = body[len(stripped) :]
        if stripped:
            chunks.append(Chunk("thinking", stripped))


def _partial_tag_suffix(text: str) -> int:
    """Length of the longest end of ``text`` that is a proper prefix of a think tag."""
    for size in range(min(len(text), len(THINK_CLOSE) - 1), 0, -1):
        tail = text[-size:]
        if THINK_OPEN.startswith(tail) or THINK_CLOSE.startswith(tail):
            return size
    return 0


# -- prompts -------------------------------------------------------------------------------------


def strip_thinking(content: str) -> str:
    """An answer without any ``<think>…</think>`` block (what Qwen's own template keeps of past turns)."""
    if THINK_CLOSE in content:
        content = content.split(THINK_CLOSE)[-1].lstrip("\n")
    return content.replace(THINK_OPEN, "")


def chat_messages(messages: Sequence[Message]) -> list[dict[str, str]]:
    """The history as the model sees it: roles and final answers only, never thinking."""
    return [
        {"role": m.role, "content": strip_thinking(m.content) if m.role == "assistant" else m.content}
        for m in messages
    ]
