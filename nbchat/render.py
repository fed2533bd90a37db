"""Markdown for messages, replies and their statistics, made in one place.

The panel, the ``%chat`` magic and a ``Reply``'s own ``_repr_markdown_`` all
show the same things: thinking folded under *Thinking*, the text, how the
reply ended (error, not saved, stopped, cut off) and a line of statistics. A
reply looks the same while it streams, when it is done and once saved. What a
question attached (``@df``, recent cells, the last error) is shown folded, from
the message's own ``context``, so a reloaded conversation shows it too.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nbchat.reply import Reply
    from nbchat.types import ContextItem, GenerationStats, Message


def thinking_markdown(thinking: str | None) -> str:
    """Thinking folded away, or nothing; the blank line after it lets the text render as Markdown."""
    if not thinking or not thinking.strip():
        return ""
    return f"<details><summary>Thinking</summary>\n\n{thinking.strip()}\n\n</details>\n\n"


def ending_markdown(
    finish_reason: str | None, error: object | None = None, not_saved: object | None = None
) -> str:
    """How a reply ended, appended to its text: the error, why it is not saved, or stopped/cut off."""
    parts = []
    if error:
        parts.append(f"\n\n**Error:** {error}")
    if not_saved:
        parts.append(f"\n\n**Not saved:** {not_saved}")
    if not error and finish_reason == "cancelled":
        parts.append("\n\n*(stopped)*")
    elif not error and finish_reason == "length":
        parts.append("\n\n*(cut off at max new tokens)*")
    return "".join(parts)


#: Under a reply whose kernel died while it streamed (read back from its drafts).
INTERRUPTED_NOTE = "*(interrupted: the kernel stopped while this reply was being written)*"
#: Under a reply another kernel is still writing (read from its drafts: the text so far).
LIVE_NOTE = "*(still being written in another kernel: this is its text so far)*"


def message_markdown(message: Message) -> str:
    """A saved assistant message: thinking folded, then the text, then how it ended (an
    interrupted one says so: it is the text saved before its kernel died, maybe cut mid-word)."""
    stats: Mapping[str, Any] = message.stats or {}
    ending = ending_markdown(stats.get("finish_reason"), stats.get("error"))
    if stats.get("interrupted"):
        ending += "\n\n" + INTERRUPTED_NOTE
    elif stats.get("live"):
        ending += "\n\n" + LIVE_NOTE
    return thinking_markdown(message.thinking) + message.content + ending


def alternatives_counter(position: int, total: int) -> str:
    """Which of a message's alternatives is shown, between the panel's ‹ and ›: ``2 / 3``."""
    return f"{position} / {total}"


def earlier_label(hidden: int, page: int) -> str:
    """The *Show earlier* control of a long conversation: ``Show 50 earlier (950 more)``."""
    return f"Show {min(hidden, page):,} earlier ({hidden:,} more)"


def download_markdown(model: str) -> str:
    """Where a reply will appear while its model downloads: what is happening, in a few words (the
    figures, size, speed and time left, are on the status line beside the progress bar)."""
    return f"*Downloading {model} for its first use on this machine…*"


def reply_markdown(reply: Reply) -> str:
    """A reply streaming or done; before its first token, what is happening (loading a model)."""
    text, thinking = reply.text, reply.thinking
    if not reply.done and not text and not thinking and reply.status:
        return f"*{reply.status}*"
    if not reply.done:
        return thinking_markdown(thinking) + text
    reason = reply.stats.finish_reason if reply.stats is not None else None
    save_error = reply.save_error if reply.save_error is not reply.error else None
    return thinking_markdown(thinking) + text + ending_markdown(reason, reply.error, save_error)


def reply_facts(reply: Reply) -> list[str]:
    """Plain facts about a finished reply: tokens, speed, older messages left out."""
    facts = []
    stats = reply.stats
    if stats is not None:
        facts.extend(token_facts(stats))
    if reply.dropped_messages:
        facts.append(f"{reply.dropped_messages} older messages left out to fit the context")
    return facts


def context_facts(reply: Reply) -> list[str]:
    """How full the model's context was: ``context 1,234 / 8,192 tokens (15%)``, then how many older
    messages were left out to fit; nothing before the reply has started (neither is known yet).

    The tokens are the count the prompt was fitted by (the same while streaming and after), and
    the engine's reported count only without it: Ollama's ``prompt_eval_count`` leaves out, or in
    some versions omits, what its cache already held, so a long chat would look nearly empty.
    """
    facts = []
    reported = reply.stats.prompt_tokens if reply.stats is not None else None
    sent = reply.prompt_tokens if reply.prompt_tokens is not None else reported
    window = reply.context_window
    if sent is not None and window:
        share = round(100 * sent / window)
        percent = "<1%" if sent and not share else f"{share}%"
        facts.append(f"context {sent:,} / {window:,} tokens ({percent})")
    dropped = reply.dropped_messages
    if dropped:
        facts.append(f"{dropped:,} older message{'s' if dropped != 1 else ''} left out")
    return facts


def token_facts(stats: GenerationStats) -> list[str]:
    """``N tokens`` and ``X tokens/s``, marked when counted from the stream rather than reported."""
    estimated = " (estimated)" if stats.tokens_estimated else ""
    facts = []
    if stats.completion_tokens:
        facts.append(f"{stats.completion_tokens} tokens{estimated}")
    if stats.tokens_per_s:
        facts.append(f"{stats.tokens_per_s:.1f} tokens/s{estimated}")
    return facts


def stats_footer(reply: Reply) -> str:
    """The magic's line under a finished reply: model, tokens, speed; nothing without stats."""
    if reply.stats is None:
        return ""
    return "\n\n<sub>" + " · ".join([f"`{reply.model}`", *reply_facts(reply)]) + "</sub>"


def context_html(items: Sequence[ContextItem]) -> str:
    """What a question attached, folded: ``context_label`` as the header, each summary inside.

    Escaped throughout (a summary quotes the user's data); empty when nothing was attached.
    """
    if not items:
        return ""
    from nbchat.context import context_label

    parts = [f"<details class='nbchat-context'><summary>{html.escape(context_label(items))}</summary>"]
    for item in items:
        parts.append(
            f"<div class='nbchat-context-item nbchat-context-{item.kind}'>"
            f"<div class='nbchat-context-name'>{html.escape(context_heading(item))}</div>"
            f"<pre>{html.escape(item.summary)}</pre></div>"
        )
    parts.append("</details>")
    return "".join(parts)


def context_heading(item: ContextItem) -> str:
    """One attached item's heading: ``@df · DataFrame 1,000 × 5``, ``2 cells``, ``Last error: …``."""
    if item.kind == "object":
        return f"@{item.name} · {item.label}"
    if item.kind == "error":
        return f"Last error: {item.label}"
    return item.label
