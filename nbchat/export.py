"""A conversation written out for sharing: Markdown, a Jupyter notebook, or JSON as stored.

``export_conversation`` writes one file and returns its path. Rules, because an export lands
next to the user's notebook among files they care about:

- **Never overwrite.** With no ``path``, the name is the sanitised title, and ``name (2).md``,
  ``name (3).md``... when it is taken; an explicit ``path`` that exists is refused
  (``ExportError``). The file is made complete under a temporary name and then *hard-linked*
  to its name, which the OS refuses if anything is there (a file, a folder, a symlink, even a
  dangling one): no race with another writer, and a symlink at the target is never followed.
  On a filesystem without hard links it is created with ``O_EXCL | O_NOFOLLOW`` instead.
- **All or nothing.** A failed write (a full disk) leaves no file and no temporary file;
  disk errors are ``StorageFailed`` saying what to do.
- **Mode**: the umask's default (``0o666 & ~umask``, usually 0644), as Jupyter saves the
  notebook beside it: an export is for sharing, unlike the 0600 files of the data dir, and a
  user whose umask asks for privacy gets it.

Formats: ``markdown`` (the active path: what is shown and sent), ``ipynb`` (the same, a
Markdown cell per message and each Python block of a reply also as a code cell) and
``json`` (everything stored: the header, the active path, every message of every branch).
"""

from __future__ import annotations

import contextlib
import errno
import html
import json
import os
import re
import secrets
import unicodedata
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from nbchat import records
from nbchat.errors import ExportError
from nbchat.files import fsync_dir, os_errors
from nbchat.notebook import code_blocks
from nbchat.render import context_heading, ending_markdown, thinking_markdown
from nbchat.types import Conversation, Message

#: Format → the extension a file of it gets.
FORMATS: dict[str, str] = {"markdown": ".md", "ipynb": ".ipynb", "json": ".json"}
_ALIASES = {"md": "markdown"}
_BY_EXTENSION = {".md": "markdown", ".markdown": "markdown", ".ipynb": "ipynb", ".json": "json"}
#: The languages of a reply's fenced blocks that become code cells of an ``.ipynb`` (``""``: none named).
PYTHON_LANGUAGES = frozenset({"", "python", "py", "python3", "py3", "ipython", "ipython3"})

FALLBACK_NAME = "conversation"
MAX_NAME_BYTES = 120  # of the stem: room for " (999)" and the extension within any filesystem's 255
MAX_NUMBERED = 999
_RESERVED_CHARS = frozenset('<>:"/\\|?*')  # Windows refuses these in names; "/" and "\\" are separators
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cs", "Co", "Cn", "Zl", "Zp"})
_WINDOWS_DEVICES = frozenset(
    {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}
)
#: What can start Markdown or HTML inside a line of text (or end a heading, ``#``); ``\\`` escapes it.
_MARKDOWN_PUNCTUATION = re.compile(r"([\\`*_\[\]<>&~|!#])")
_BACKTICK_RUN = re.compile(r"`+")
_NO_HARD_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EMLINK, errno.ENOSYS}


def format_names() -> str:
    """``markdown (.md), ipynb (.ipynb), json (.json)``: for error messages and help."""
    return ", ".join(f"{name} ({extension})" for name, extension in FORMATS.items())


def export_conversation(
    conversation: Conversation,
    format: str | None,
    path: str | os.PathLike[str] | None = None,
    *,
    directory: Path,
) -> Path:
    """Write ``conversation`` as ``format`` to ``path`` (relative to ``directory``) or, with no
    ``path``, to ``<sanitised title><extension>`` in ``directory``; return where it went.

    ``format`` may be None when ``path``'s extension names one. Never overwrites anything.
    """
    given = Path(os.path.expanduser(os.fspath(path))) if path is not None else None
    chosen = resolve_format(format, given)
    data = RENDERERS[chosen](conversation, datetime.now(timezone.utc))
    if given is not None:
        target = Path(directory) / given
        _refuse_existing(target)
        return _absolute(_write_new([target], data, explicit=True))
    stem = safe_name(conversation.title)
    extension = FORMATS[chosen]
    names = [f"{stem}{extension}"] + [f"{stem} ({n}){extension}" for n in range(2, MAX_NUMBERED + 1)]
    return _absolute(_write_new([Path(directory) / name for name in names], data, explicit=False))


def resolve_format(format: str | None, path: Path | None) -> str:
    """The format asked for, or the one ``path``'s extension names; ``ExportError`` when neither does."""
    from_extension = _BY_EXTENSION.get(path.suffix.lower()) if path is not None else None
    if format is None:
        if from_extension is not None:
            return from_extension
        if path is None:
            raise ExportError(f"Say which format to export: {format_names()}.")
        raise ExportError(
            f"Cannot tell the format from the name {path.name!r}: end it in one of "
            f"{', '.join(FORMATS.values())}, or name the format ({format_names()})."
        )
    wanted = format.strip().lower().lstrip(".")
    wanted = _ALIASES.get(wanted, wanted)
    if wanted not in FORMATS:
        raise ExportError(f"Unknown export format {format!r}: use one of {format_names()}.")
    if from_extension is not None and from_extension != wanted and path is not None:
        raise ExportError(
            f"The name {path.name!r} says {from_extension} but the format asked for is {wanted}: "
            f"end the name in {FORMATS[wanted]}, or leave the format out."
        )
    return wanted


def safe_name(title: str) -> str:
    """A file name stem from a title: one name (no separators), no control, invisible or
    Windows-reserved characters, no leading dot (a hidden file) or trailing dot or space, at most
    ``MAX_NAME_BYTES`` bytes of UTF-8; ``"conversation"`` when nothing is left."""
    chars = []
    for char in unicodedata.normalize("NFC", title):
        category = unicodedata.category(char)
        if category == "Cf":
            continue  # joiners and bidi marks: invisible, and a name's direction must not be flipped
        if char.isspace():
            chars.append(" ")  # tabs and odd spaces: a plain space (runs are joined below)
        else:
            chars.append("_" if char in _RESERVED_CHARS or category in _UNSAFE_CATEGORIES else char)
    name = " ".join("".join(chars).split())
    name = name.lstrip(". ")
    cut = name.encode("utf-8")[:MAX_NAME_BYTES].decode("utf-8", errors="ignore")
    name = cut.rstrip(". ")
    if not name.strip("_"):
        return FALLBACK_NAME
    if name.split(".", 1)[0].upper() in _WINDOWS_DEVICES:
        name = "_" + name  # CON.md cannot be created on Windows
    return name


# -- writing --------------------------------------------------------------------------------------


def _refuse_existing(target: Path) -> None:
    if os.path.lexists(target):
        raise _taken(target)


def _taken(target: Path) -> ExportError:
    if target.is_dir() and not target.is_symlink():
        return ExportError(f"{target} is a folder: name a file in it, such as {target / 'chat.md'}.")
    suggestion = f"{target.stem} (2){target.suffix}"
    return ExportError(
        f"{target} already exists; nbchat never overwrites on export. "
        f"Choose another name, such as {suggestion!r}, or move that one away first."
    )


def _write_new(candidates: list[Path], data: bytes, *, explicit: bool) -> Path:
    """Create the first of ``candidates`` that is free, holding exactly ``data``; replace nothing."""
    first = candidates[0]
    folder = first.parent
    temp = folder / f".nbchat-export-{secrets.token_hex(8)}.tmp"
    with os_errors(first, "export to"):
        _write_file(temp, data)
        try:
            for target in candidates:
                try:
                    os.link(temp, target, follow_symlinks=False)
                except FileExistsError:
                    if explicit:
                        raise _taken(target) from None
                    continue
                except OSError as exc:
                    if exc.errno not in _NO_HARD_LINKS:
                        raise
                    return _write_without_links(candidates, data, explicit=explicit)
                fsync_dir(folder)
                return target
        finally:
            with contextlib.suppress(OSError):
                os.unlink(temp)
    raise ExportError(
        f"{first} and {MAX_NUMBERED - 1} numbered names after it are all taken: give the file a name."
    )


def _write_without_links(candidates: list[Path], data: bytes, *, explicit: bool) -> Path:
    """The same, where the filesystem has no hard links: created exclusively, removed if the write fails."""
    for target in candidates:
        try:
            _write_file(target, data)
        except FileExistsError:
            if explicit:
                raise _taken(target) from None
            continue
        fsync_dir(target.parent)
        return target
    raise ExportError(f"{candidates[0]} and the numbered names after it are all taken: give the file a name.")


def _write_file(path: Path, data: bytes) -> None:
    """Create ``path`` (never an existing one, never through a symlink), write, fsync; no trace on failure."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags, 0o666)  # the umask decides: what the user's other files get
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    os.close(fd)


def _absolute(path: Path) -> Path:
    return Path(os.path.abspath(path))


# -- markdown -------------------------------------------------------------------------------------


def to_markdown(conversation: Conversation, now: datetime) -> bytes:
    """The active path as one Markdown document."""
    parts = [title_markdown(conversation, now)]
    parts.extend(message_section(conversation, message) for message in conversation.messages)
    return ("\n\n".join(parts) + "\n").encode("utf-8")


def title_markdown(conversation: Conversation, now: datetime) -> str:
    """The title, what was exported and when, and the system prompt (folded)."""
    shown, stored = len(conversation.messages), len(conversation.tree)
    counts = f"{shown} message{'s' if shown != 1 else ''}"
    if stored != shown:
        counts += f" shown, {stored} in all branches (the JSON export has every one)"
    about = [
        f"model {conversation.model}" if conversation.model else "no model chosen",
        counts,
        f"exported from nbchat on {now.astimezone(timezone.utc):%Y-%m-%d %H:%M} UTC",
    ]
    text = f"# {inline(conversation.title)}\n\n*{inline(' · '.join(about))}*"
    system = conversation.settings.system
    if system:
        text += "\n\n" + folded("System prompt", fence(system, "text"))
    return text


def message_section(conversation: Conversation, message: Message) -> str:
    """One message: a heading saying who (and which alternative), then its text."""
    return f"## {inline(message_heading(conversation, message))}\n\n{message_body(message)}"


def message_heading(conversation: Conversation, message: Message) -> str:
    """``User``, ``Assistant · ollama:qwen3 · reply 2 of 3``, ``Assistant · interrupted``."""
    words = [{"user": "User", "assistant": "Assistant"}.get(message.role, "System")]
    if message.role == "assistant" and message.model:
        words.append(message.model)
    alternatives = conversation.alternatives(message.id)
    if len(alternatives) > 1:
        number = [m.id for m in alternatives].index(message.id) + 1
        kind = "reply" if message.role == "assistant" else "version"
        words.append(f"{kind} {number} of {len(alternatives)}")
    if (message.stats or {}).get("interrupted"):
        words.append("interrupted")
    elif (message.stats or {}).get("live"):
        words.append("still being written")
    return " · ".join(words)


def message_body(message: Message) -> str:
    """A reply's Markdown as written (its code blocks exactly); the user's text fenced, as typed."""
    if message.role == "assistant":
        stats = message.stats or {}
        text = close_open_fence(message.content.rstrip("\n")) or "*(no text)*"
        ending = ending_markdown(stats.get("finish_reason"), stats.get("error"))
        return thinking_markdown(message.thinking) + text + ending
    body = fence(message.content, "text")
    if message.context:
        body += "\n\n" + context_markdown(message)
    return body


def context_markdown(message: Message) -> str:
    """What a question attached, folded: each item's heading and its summary as plain text."""
    from nbchat.context import context_label

    items = [
        f"**{inline(context_heading(item))}**\n\n{fence(item.summary, 'text')}" for item in message.context
    ]
    return folded(context_label(message.context), "\n\n".join(items))


def folded(summary: str, markdown: str) -> str:
    """``markdown`` inside ``<details>`` (the blank lines let it render as Markdown there)."""
    return f"<details><summary>{html.escape(summary)}</summary>\n\n{markdown}\n\n</details>"


def fence(text: str, language: str = "") -> str:
    """``text`` exactly, in a fence longer than any backtick run in it: its Markdown is shown, not read."""
    longest = max((len(run) for run in _BACKTICK_RUN.findall(text)), default=0)
    marks = "`" * max(3, longest + 1)
    body = text[:-1] if text.endswith("\n") else text
    return f"{marks}{language}\n{body}\n{marks}"


def inline(text: str) -> str:
    """One line of text shown as is in Markdown: whatever could be read as markup backslash-escaped."""
    return _MARKDOWN_PUNCTUATION.sub(r"\\\1", " ".join(text.split()))


def close_open_fence(markdown: str) -> str:
    """``markdown`` with a code fence it leaves open closed (a stopped reply), so it cannot swallow
    the rest of the document; anything else as it is."""
    if "```" not in markdown and "~~~" not in markdown:
        return markdown  # no fence at all: most messages, and no parse
    from markdown_it import MarkdownIt

    lines = markdown.splitlines()
    for token in MarkdownIt("commonmark").parse(markdown):
        if token.type != "fence" or token.level != 0 or token.map is None or token.map[1] < len(lines):
            continue
        start, end = token.map
        last = lines[end - 1].strip() if end - start >= 2 else ""
        closed = last and set(last) == {token.markup[0]} and len(last) >= len(token.markup)
        if not closed:
            return markdown + "\n" + token.markup
    return markdown


# -- ipynb ----------------------------------------------------------------------------------------


def to_ipynb(conversation: Conversation, now: datetime) -> bytes:
    """A notebook (nbformat 4): a Markdown cell per message of the active path, and after each
    reply its Python blocks as code cells, ready to run. Validated once, as a whole (nbformat's
    cell constructors would validate each cell again: seconds for a long conversation)."""
    try:
        import nbformat
    except ImportError:  # a plain IPython without Jupyter's packages
        raise ExportError("Exporting a notebook needs nbformat: pip install nbformat.") from None
    cells = [_cell("markdown", title_markdown(conversation, now), "nbchat-title", {})]
    for message in conversation.messages:
        about = {"nbchat": {"message_id": message.id, "role": message.role}}
        cells.append(_cell("markdown", message_section(conversation, message), f"m-{message.id}", about))
        if message.role != "assistant":
            continue
        python = [block for block in code_blocks(message) if block.language in PYTHON_LANGUAGES]
        for number, block in enumerate(python, 1):
            cells.append(_cell("code", block.code.rstrip("\n"), f"c-{message.id}-{number}", about))
    notebook = nbformat.from_dict(
        {
            "nbformat": 4,
            "nbformat_minor": 5,  # cell ids
            "cells": cells,
            "metadata": {
                "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                "language_info": {"name": "python"},
                "nbchat": {
                    "conversation_id": conversation.id,
                    "title": conversation.title,
                    "model": conversation.model,
                    "exported": _time(now),
                    "active_path": [message.id for message in conversation.messages],
                },
            },
        }
    )
    problems: dict[str, Exception] = {}
    text = nbformat.writes(notebook, capture_validation_error=problems)  # validates, as a whole
    if problems:  # a bug of nbchat's, never the user's: say so rather than write a broken file
        raise ExportError(
            f"The notebook nbchat made is not valid ({problems['ValidationError']}); nothing was written."
        )
    return text.encode("utf-8")


def _cell(kind: str, source: str, cell_id: str, metadata: dict[str, Any]) -> dict[str, Any]:
    cell: dict[str, Any] = {"cell_type": kind, "id": cell_id, "metadata": metadata, "source": source}
    if kind == "code":
        cell.update(execution_count=None, outputs=[])
    return cell


# -- json -----------------------------------------------------------------------------------------


def to_json(conversation: Conversation, now: datetime) -> bytes:
    """Everything stored: the header's fields, the active path's ids and every message of every
    branch in its on-disk record form (``records.message_line``), oldest first."""
    document: dict[str, Any] = json.loads(records.header_line(conversation))
    document["exported"] = _time(now)
    document["active_path"] = [message.id for message in conversation.messages]
    document["messages"] = [json.loads(records.message_line(message)) for message in conversation.tree]
    return (json.dumps(document, ensure_ascii=False, indent=2) + "\n").encode("utf-8")


def _time(value: datetime) -> str:
    return value.astimezone(timezone.utc).isoformat(timespec="microseconds")


RENDERERS: dict[str, Callable[[Conversation, datetime], bytes]] = {
    "markdown": to_markdown,
    "ipynb": to_ipynb,
    "json": to_json,
}
