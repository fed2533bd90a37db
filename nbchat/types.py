"""Plain value types shared by every layer: messages, settings, conversations.

They validate themselves on construction, so a bad value is refused with a
clear ``InvalidValue`` wherever it comes from (a widget, the magic, user code,
or a hand-edited file). They are frozen: a caller can never change a stored
conversation behind the store's back.
"""

from __future__ import annotations

import math
import re
import unicodedata
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Literal

from nbchat.errors import InvalidValue

if TYPE_CHECKING:
    from nbchat.tree import MessageTree

Role = Literal["system", "user", "assistant"]
ROLES: tuple[str, ...] = ("system", "user", "assistant")

MAX_TEMPERATURE = 2.0
MAX_NEW_TOKENS_CEILING = 131_072  # the session narrows this to the model's context
MAX_TITLE_CHARS = 200
MAX_MODEL_ID_CHARS = 300
MAX_SYSTEM_CHARS = 100_000
MAX_CONTENT_CHARS = 4_000_000
MAX_STAT_TEXT_CHARS = 10_000
DEFAULT_TITLE = "New conversation"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def new_id() -> str:
    """A random 32-hex-digit id: unguessable, and safe as a file name."""
    return uuid.uuid4().hex


def is_valid_id(value: object) -> bool:
    return isinstance(value, str) and len(value) == 32 and all(c in "0123456789abcdef" for c in value)


#: Invisible format characters that are ordinary parts of text: joiners inside emoji sequences
#: (👩‍💻 is three code points joined by U+200D) and in Indic scripts, and the directional marks of
#: right-to-left writing. Other format characters (BOM, bidi overrides that can disguise text,
#: soft hyphens) stay out of one-line names.
TEXT_FORMAT_CHARS = frozenset("\u200c\u200d\u200e\u200f\u061c")


def check_text(
    what: str,
    value: object,
    *,
    max_chars: int,
    single_line: bool = False,
    allowed: frozenset[str] = frozenset(),
) -> str:
    """Refuse non-strings, over-long text, text UTF-8 cannot hold, and (optionally) control chars.

    ``single_line`` refuses control, format and line/paragraph separator characters
    except those in ``allowed``.
    """
    if not isinstance(value, str):
        raise InvalidValue(f"{what} must be text, not {type(value).__name__}.")
    if len(value) > max_chars:
        raise InvalidValue(f"{what} is {len(value):,} characters long; the limit is {max_chars:,}.")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidValue(
            f"{what} contains characters that are not valid Unicode (lone surrogates)."
        ) from None
    if single_line:
        bad = next(
            (c for c in value if c not in allowed and unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp")),
            None,
        )
        if bad is not None:
            raise InvalidValue(
                f"{what} contains the control character U+{ord(bad):04X}; use plain text on one line."
            )
    return value


def check_title(value: object) -> str:
    """A conversation title: one line of 1–200 characters, surrounding spaces removed.

    Emoji sequences and right-to-left marks are text (``TEXT_FORMAT_CHARS``); control
    characters, a BOM or bidi overrides are refused.
    """
    title = check_text("A conversation title", value, max_chars=10 * MAX_TITLE_CHARS).strip()
    check_text(
        "A conversation title", title, max_chars=MAX_TITLE_CHARS, single_line=True, allowed=TEXT_FORMAT_CHARS
    )
    if not title:
        raise InvalidValue("A conversation title cannot be empty.")
    return title


#: Terminal colour and cursor codes (CSI and OSC sequences), pasted from a console's output.
_ANSI_ESCAPE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])")


def title_from_text(text: str, max_chars: int) -> str:
    """An automatic title from free text (a first prompt): always a valid title, never a refusal.

    Control and format characters go (those of ``TEXT_FORMAT_CHARS`` stay), any run of
    whitespace becomes one space, and the result is cut at a word to ``max_chars`` with "…";
    text with nothing left gives ``DEFAULT_TITLE``.
    """
    plain = _ANSI_ESCAPE.sub(" ", text[: 20 * max_chars])
    kept = "".join(
        c if c in TEXT_FORMAT_CHARS or unicodedata.category(c) not in ("Cc", "Cf", "Cs", "Co", "Cn") else " "
        for c in plain
    )
    line = " ".join(kept.split())
    if len(line) > max_chars:
        line = line[: max_chars - 1].rstrip() + "…"
    line = line.strip("".join(TEXT_FORMAT_CHARS) + " ")
    return line if line and line != "…" else DEFAULT_TITLE


def check_model_id(what: str, value: object) -> str | None:
    """A model id stripped to one non-empty line, or None for "no model"."""
    if value is None:
        return None
    model = check_text(what, value, max_chars=MAX_MODEL_ID_CHARS, single_line=True).strip()
    if not model:
        raise InvalidValue(f"{what} cannot be empty; use None for 'no model'.")
    return model


@dataclass(frozen=True)
class ConversationSettings:
    """The settings that belong to one conversation (never to the session).

    ``model`` is ``None`` until the user chooses one: the "— choose a model —"
    rule of the original app. Nothing can be sent until it is set.
    """

    model: str | None = None
    temperature: float = 0.7
    max_new_tokens: int = 512
    think: bool = False
    system: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "model", check_model_id("The model id", self.model))
        temperature = self.temperature
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
            raise InvalidValue(f"Temperature must be a number from 0 to 2, not {temperature!r}.")
        if not math.isfinite(temperature) or not 0 <= temperature <= MAX_TEMPERATURE:
            raise InvalidValue(f"Temperature must be from 0 to 2, not {temperature!r}.")
        object.__setattr__(self, "temperature", float(temperature))
        tokens = self.max_new_tokens
        if isinstance(tokens, bool) or not isinstance(tokens, int):
            raise InvalidValue(f"Max new tokens must be a whole number, not {tokens!r}.")
        if not 1 <= tokens <= MAX_NEW_TOKENS_CEILING:
            raise InvalidValue(
                f"Max new tokens must be from 1 to {MAX_NEW_TOKENS_CEILING:,}, not {tokens:,}."
            )
        if not isinstance(self.think, bool):
            raise InvalidValue(f"Thinking must be True or False, not {self.think!r}.")
        check_text("The system prompt", self.system, max_chars=MAX_SYSTEM_CHARS)

    def updated(self, **changes: Any) -> ConversationSettings:
        """A copy with ``changes`` applied; unknown names are refused, listing the valid ones."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise InvalidValue(
                f"Unknown setting {', '.join(map(repr, unknown))}; "
                f"the settings are {', '.join(sorted(known))}."
            )
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


ContextKind = Literal["object", "cells", "error"]
CONTEXT_KINDS: tuple[str, ...] = ("object", "cells", "error")
#: One attached item's summary at most, whoever made it (nbchat.context keeps well below).
MAX_CONTEXT_ITEM_CHARS = 100_000
MAX_CONTEXT_ITEMS = 50


@dataclass(frozen=True)
class ContextItem:
    """Something of the kernel's attached to a question: an object (``@df``), recent cells, the last error.

    ``summary`` is the bounded text the model is given; ``label`` the few words a folded
    header shows ("DataFrame 1,000 × 5"); ``name`` the mention without "@", "cells", or the
    exception's type.
    """

    kind: ContextKind
    name: str
    label: str
    summary: str

    def __post_init__(self) -> None:
        if self.kind not in CONTEXT_KINDS:
            kinds = ", ".join(CONTEXT_KINDS)
            raise InvalidValue(f"A context item's kind must be one of {kinds}, not {self.kind!r}.")
        check_text("A context item's name", self.name, max_chars=MAX_MODEL_ID_CHARS, single_line=True)
        check_text("A context item's label", self.label, max_chars=MAX_TITLE_CHARS, single_line=True)
        check_text("A context item's summary", self.summary, max_chars=MAX_CONTEXT_ITEM_CHARS)

    def to_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "name": self.name, "label": self.label, "summary": self.summary}


@dataclass(frozen=True)
class Message:
    """One turn of a conversation, as saved (thinking is kept for display only).

    A user message may carry ``context``: what was attached to it (``@df``, recent cells, the
    last error). ``content`` stays what the user typed; the model is sent both. ``parent`` is
    the message it follows (``None`` for a first question): a regenerated reply and the reply
    it replaces share a parent, and so do an edited question and the original (``nbchat.tree``).
    """

    role: Role
    content: str
    id: str = field(default_factory=new_id)
    time: datetime = field(default_factory=utcnow)
    thinking: str | None = None
    model: str | None = None
    stats: Mapping[str, Any] | None = None
    context: tuple[ContextItem, ...] = ()
    parent: str | None = None

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise InvalidValue(f"A message role must be one of {', '.join(ROLES)}, not {self.role!r}.")
        check_text("A message", self.content, max_chars=MAX_CONTENT_CHARS)
        if not is_valid_id(self.id):
            raise InvalidValue(f"A message id must be 32 lowercase hex digits, not {self.id!r}.")
        if self.parent is not None and not is_valid_id(self.parent):
            raise InvalidValue(f"A message's parent must be a message id or None, not {self.parent!r}.")
        if self.parent == self.id:
            raise InvalidValue("A message cannot follow itself.")
        _check_time("A message time", self.time)
        if self.thinking is not None:
            check_text("A message's thinking", self.thinking, max_chars=MAX_CONTENT_CHARS)
        object.__setattr__(self, "model", check_model_id("A message's model", self.model))
        if self.stats is not None:
            _check_stats(self.stats)
            object.__setattr__(self, "stats", dict(self.stats))
        context = tuple(self.context)
        if context and self.role != "user":
            raise InvalidValue("Only a user's message can carry context.")
        if len(context) > MAX_CONTEXT_ITEMS:
            raise InvalidValue(
                f"A message can carry at most {MAX_CONTEXT_ITEMS} context items, not {len(context)}."
            )
        if not all(isinstance(item, ContextItem) for item in context):
            raise InvalidValue("A message's context must be ContextItem values.")
        object.__setattr__(self, "context", context)


@dataclass(frozen=True)
class ConversationSummary:
    """What the conversation list shows, read from a file's first line only."""

    id: str
    title: str
    created: datetime
    updated: datetime
    model: str | None


@dataclass(frozen=True)
class Conversation:
    """A conversation with its settings: ``messages`` is the active path (what is shown and sent),
    oldest first; ``tree`` holds every message of every branch (``nbchat.tree``).

    Given a ``tree``, ``messages`` is its active path; given only ``messages``, they are one branch.
    """

    id: str
    title: str
    created: datetime
    updated: datetime
    settings: ConversationSettings = field(default_factory=ConversationSettings)
    messages: tuple[Message, ...] = ()
    tree: MessageTree = field(default=None, compare=False, repr=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if not is_valid_id(self.id):
            raise InvalidValue(f"A conversation id must be 32 lowercase hex digits, not {self.id!r}.")
        object.__setattr__(self, "title", check_title(self.title))
        _check_time("The creation time", self.created)
        _check_time("The update time", self.updated)
        if not isinstance(self.settings, ConversationSettings):
            raise InvalidValue("Conversation settings must be a ConversationSettings.")
        from nbchat.tree import MessageTree

        tree = self.tree
        if tree is None:
            tree = MessageTree.linear(tuple(self.messages))
        elif not isinstance(tree, MessageTree):
            raise InvalidValue("A conversation's tree must be a MessageTree.")
        object.__setattr__(self, "tree", tree)
        object.__setattr__(self, "messages", tree.path())

    def without_messages(self) -> Conversation:
        """The header alone: id, title, times and settings."""
        return replace(self, messages=(), tree=None)  # type: ignore[arg-type]  # None: built empty

    def alternatives(self, message_id: str) -> tuple[Message, ...]:
        """The message and its alternatives (regenerated replies or edited questions), oldest first."""
        return self.tree.alternatives(message_id)

    @property
    def model(self) -> str | None:
        return self.settings.model

    @property
    def summary(self) -> ConversationSummary:
        last = self.tree.messages[-1].time if self.tree.messages else self.updated
        return ConversationSummary(
            self.id, self.title, self.created, max(self.updated, last), self.settings.model
        )


def _check_time(what: str, value: object) -> None:
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise InvalidValue(f"{what} must be a timezone-aware datetime, not {value!r}.")
    try:
        value.astimezone(timezone.utc)  # times are saved in UTC
    except OverflowError:
        raise InvalidValue(f"{what} {value!r} is out of range once converted to UTC.") from None


def _check_stats(stats: object) -> None:
    if not isinstance(stats, Mapping):
        raise InvalidValue(f"Message stats must be a mapping, not {type(stats).__name__}.")
    for key, value in stats.items():
        if not isinstance(key, str):
            raise InvalidValue(f"Message stats keys must be text, not {key!r}.")
        check_text("A message stat's name", key, max_chars=MAX_MODEL_ID_CHARS, single_line=True)
        if isinstance(value, str):
            check_text(f"Message stat {key!r}", value, max_chars=MAX_STAT_TEXT_CHARS)
        elif value is not None and not isinstance(value, (int, float, bool)):
            raise InvalidValue(
                f"Message stat {key!r} must be a number, text, true/false or null, not {value!r}."
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidValue(f"Message stat {key!r} must be a finite number, not {value!r}.")


# -- engines ------------------------------------------------------------------------------------

FinishReason = Literal["stop", "length", "cancelled", "error"]


@dataclass(frozen=True)
class GenerationParams:
    """How to generate one reply. ``None`` leaves a knob to the engine's default."""

    temperature: float = 0.7
    max_new_tokens: int = 512
    think: bool = False
    seed: int | None = None
    top_p: float | None = None
    top_k: int | None = None
    context_size: int | None = None

    def __post_init__(self) -> None:
        # The same rules as a conversation's settings, with the same messages.
        ConversationSettings(
            temperature=self.temperature, max_new_tokens=self.max_new_tokens, think=self.think
        )
        object.__setattr__(self, "temperature", float(self.temperature))
        for name in ("seed", "top_k", "context_size"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise InvalidValue(f"{name} must be a whole number of at least 0, not {value!r}.")
        if self.context_size is not None and self.context_size < 1:
            raise InvalidValue(f"context_size must be at least 1, not {self.context_size}.")
        top_p = self.top_p
        if top_p is not None and (
            isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1
        ):
            raise InvalidValue(f"top_p must be a number above 0 and at most 1, not {top_p!r}.")


@dataclass(frozen=True)
class Chunk:
    """A piece of a streamed reply: answer text or thinking text."""

    kind: Literal["text", "thinking"]
    text: str


@dataclass(frozen=True)
class GenerationStats:
    """What is known about a finished (or broken-off) reply."""

    finish_reason: FinishReason
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    ttft_s: float | None = None
    duration_s: float | None = None
    tokens_per_s: float | None = None
    error: str | None = None
    #: True when ``completion_tokens``/``tokens_per_s`` are estimated (counted chunks), not reported
    tokens_estimated: bool | None = None
    #: Prompt tokens a local model did not encode again (its KV cache from the previous turn)
    cached_tokens: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The form saved in a message's ``stats``: only what is known."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}
