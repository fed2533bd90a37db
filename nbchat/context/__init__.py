"""The kernel's own objects, recent cells and last error, as context for a question.

``@name`` in a prompt (``@df``, ``@model.coef_``) attaches a bounded summary of that object
from the user's namespace; ``recent_cells`` and ``last_error`` attach what the kernel ran and
how it failed. Each item is a ``ContextItem`` (``nbchat.types``), saved with the user's
message; ``with_context`` is what the model is sent for it. The bounds:

- ``MAX_SUMMARY_CHARS`` (3,000) per object, ``MAX_CELLS_CHARS`` (6,000) for recent cells,
  ``MAX_ERROR_CHARS`` (6,000) for a traceback, ``MAX_CONTEXT_CHARS`` (12,000) for all of one
  message's context (``bound_context`` shares it out);
- ``SUMMARY_TIME_S`` (0.5 s) for the object's own code one summary runs, ``CONTEXT_TIME_S``
  (2 s) for all mentions of one prompt;
- nothing is ever imported to summarise: pandas, polars and numpy objects are recognised only
  when those libraries are already in ``sys.modules``.
"""

from __future__ import annotations

import difflib
import inspect
import sys
import time
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

from nbchat.context.cells import (
    MAX_CELLS_CHARS,
    MAX_ERROR_CHARS,
    MAX_RECENT_CELLS,
    current_shell,
    install_cell_recorder,
    last_error,
    recent_cells,
)
from nbchat.context.guard import call_capped
from nbchat.context.mentions import find_mentions, unescape_mentions
from nbchat.context.summaries import MAX_SUMMARY_CHARS, SUMMARY_TIME_S, summarize, type_name
from nbchat.context.text import CUT_MARK
from nbchat.errors import InvalidValue, UnknownMention
from nbchat.types import ContextItem

__all__ = [
    "CONTEXT_TIME_S",
    "MAX_CELLS_CHARS",
    "MAX_CONTEXT_CHARS",
    "MAX_ERROR_CHARS",
    "MAX_MENTIONS",
    "MAX_RECENT_CELLS",
    "MAX_SUMMARY_CHARS",
    "SUMMARY_TIME_S",
    "bound_context",
    "context_label",
    "find_mentions",
    "install_cell_recorder",
    "last_error",
    "recent_cells",
    "resolve_mentions",
    "summarize",
    "unescape_mentions",
    "user_namespace",
    "with_context",
]

#: All of one message's context at most (about 3,000 tokens).
MAX_CONTEXT_CHARS = 12_000
#: The most distinct objects one prompt may mention, and the time all their summaries may take.
MAX_MENTIONS = 10
CONTEXT_TIME_S = 2.0

_MISSING = object()


def user_namespace() -> Mapping[str, Any]:
    """The namespace ``@name`` is looked up in: IPython's ``user_ns``, else ``__main__``'s."""
    shell = current_shell()
    if shell is not None:
        return shell.user_ns
    return vars(sys.modules["__main__"])


def _suggestions(wanted: str, names: Sequence[str]) -> tuple[str, ...]:
    visible = [n for n in names if isinstance(n, str) and (wanted.startswith("_") or not n.startswith("_"))]
    return tuple(difflib.get_close_matches(wanted, visible, n=3, cutoff=0.6))


def _did_you_mean(suggestions: Sequence[str]) -> str:
    if not suggestions:
        return ""
    if len(suggestions) == 1:
        return f" (did you mean {suggestions[0]}?)"
    return f" (did you mean {', '.join(suggestions[:-1])} or {suggestions[-1]}?)"


def _unknown(mention: str, what: str, suggestions: tuple[str, ...]) -> UnknownMention:
    return UnknownMention(
        f"{what}{_did_you_mean(suggestions)}. Write @@{mention} for a literal @{mention}.",
        mention,
        suggestions,
    )


def _lookup(mention: str, namespace: Mapping[str, Any], deadline: float) -> Any:
    """The object ``mention`` names; a ContextItem when reading an attribute failed or hung."""
    root, *path = mention.split(".")
    if root in namespace:
        obj = namespace[root]
    elif root in vars(sys.modules["builtins"]):
        obj = vars(sys.modules["builtins"])[root]
    else:
        what = f"No variable named {root!r} in this kernel"
        raise _unknown(mention, what, _suggestions(root, list(namespace)))
    reached = root
    for part in path:
        try:
            static = inspect.getattr_static(obj, part)
        except AttributeError:
            static = _MISSING
        if static is not _MISSING and not hasattr(type(static), "__get__"):
            obj = static  # a plain value: read without running any of the object's code
        else:  # a property, a method, __getattr__: the object's own code, under the time cap
            cap = min(SUMMARY_TIME_S, deadline - time.monotonic())
            outcome = call_capped(partial(getattr, obj, part), cap)
            if outcome.timed_out:
                return _failed(mention, f"reading {reached}.{part} took longer than the time cap")
            if isinstance(outcome.error, AttributeError):
                names = call_capped(partial(dir, obj), 0.1).value or []
                what = f"{reached} (a {type_name(obj)}) has no attribute {part!r}"
                raise _unknown(mention, what, _suggestions(part, names))
            if outcome.error is not None:
                return _failed(mention, f"reading {reached}.{part} raised {type(outcome.error).__name__}")
            obj = outcome.value
        reached = f"{reached}.{part}"
    return obj


def _failed(mention: str, what: str) -> ContextItem:
    return ContextItem("object", mention, "not readable", f"(nothing attached: {what})")


def resolve_mentions(prompt: str, namespace: Mapping[str, Any]) -> list[ContextItem]:
    """A summary of every object ``prompt`` mentions, in order; ``UnknownMention`` for a missing one.

    All names are checked before any summary is made, so a typo costs nothing.
    """
    mentions = find_mentions(prompt)
    if len(mentions) > MAX_MENTIONS:
        raise InvalidValue(
            f"A prompt can mention at most {MAX_MENTIONS} objects with @, not {len(mentions)}: "
            "mention fewer, or write @@name for a literal @name."
        )
    deadline = time.monotonic() + CONTEXT_TIME_S
    found = [(mention, _lookup(mention, namespace, deadline)) for mention in mentions]
    items = []
    for mention, obj in found:
        if isinstance(obj, ContextItem):
            items.append(obj)
            continue
        left = deadline - time.monotonic()
        items.append(summarize(mention, obj, timeout=max(0.05, min(SUMMARY_TIME_S, left))))
    return items


def bound_context(items: Sequence[ContextItem]) -> tuple[ContextItem, ...]:
    """``items`` with summaries cut so all of them fit ``MAX_CONTEXT_CHARS``; small ones kept whole.

    Idempotent: ``with_context`` applies it too, so the model never gets more than the cap.
    """
    items = tuple(items)
    left, waiting = MAX_CONTEXT_CHARS, sorted(range(len(items)), key=lambda i: len(items[i].summary))
    shares: dict[int, int] = {}
    for position, index in enumerate(waiting):
        share = left // (len(waiting) - position)  # a fair share of what smaller items left
        shares[index] = min(len(items[index].summary), share)
        left -= shares[index]
    cut = []
    for index, item in enumerate(items):
        if len(item.summary) <= shares[index]:
            cut.append(item)
        else:
            keep = max(0, shares[index] - len(CUT_MARK) - 1)
            cut.append(ContextItem(item.kind, item.name, item.label, item.summary[:keep] + "\n" + CUT_MARK))
    return tuple(cut)


def _heading(item: ContextItem) -> str:
    if item.kind == "object":
        return f"@{item.name} ({item.label})"
    if item.kind == "cells":
        return f"Recent cells ({item.label})"
    return f"The last error ({item.label})"


def context_label(items: Sequence[ContextItem]) -> str:
    """The folded header of a message's context: "Context: @df (DataFrame 1,000 × 5), 2 cells, last error"."""
    parts = []
    for item in items:
        if item.kind == "object":
            parts.append(f"@{item.name} ({item.label})")
        elif item.kind == "cells":
            parts.append(item.label)
        else:
            parts.append("last error")
    return "Context: " + ", ".join(parts) if parts else ""


def with_context(content: str, items: Sequence[ContextItem]) -> str:
    """The user's message as the model reads it: the prompt, then each item under a small heading."""
    if not items:
        return content
    sections = [f"#### {_heading(item)}\n{item.summary}" for item in bound_context(items)]
    return content + "\n\n---\nContext from the user's Jupyter kernel:\n\n" + "\n\n".join(sections)
