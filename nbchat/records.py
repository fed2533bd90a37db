"""The on-disk format of a conversation: JSON Lines, a header line then one line per message.

This module is the only place that knows the field names on disk and the
format ``version``; the JSON Schemas in the repository's ``data/`` directory
describe the same format and the tests hold the two together.
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, TypeVar

from nbchat import migrations
from nbchat.errors import ConversationEncrypted, DamagedLine, InvalidValue, UnsupportedVersion
from nbchat.types import (
    MAX_CONTENT_CHARS,
    MAX_MODEL_ID_CHARS,
    MAX_SYSTEM_CHARS,
    MAX_TITLE_CHARS,
    ContextItem,
    Conversation,
    ConversationSettings,
    Message,
    check_model_id,
    check_text,
    is_valid_id,
)

if TYPE_CHECKING:
    from nbchat.crypto import LineCipher

FORMAT_VERSION = migrations.LATEST  # what nbchat writes; every older version is read (nbchat.migrations)
OLDEST_VERSION = 1
MESSAGE_KEYS = frozenset({"id", "role", "content", "thinking", "time", "model", "stats", "parent"})
OPTIONAL_MESSAGE_KEYS = frozenset({"context"})  # written only when there is some
DRAFT_KEYS = frozenset({"draft", "parent", "model", "time", "text", "thinking"})
SELECT_KEYS = frozenset({"select", "time"})
#: The first version whose files may hold ``draft`` and ``select`` lines.
TREE_VERSION = 3
#: The version in the clear header of an encrypted file (one with a ``sealed`` field, which is
#: what marks it: see ``seal_header``), so that an nbchat from before encryption refuses the
#: file untouched, as from a newer nbchat. Every line inside is one of the format the sealed
#: header names (``FORMAT_VERSION`` today).
SEALED_VERSION = 4
# No header nbchat writes is longer: each character takes at most 6 bytes (a \u escape), plus
# room for the field names, times and numbers; sealed, base64 adds a third, and the envelope a
# little. Readers stop there instead of reading a huge line.
MAX_CLEAR_HEADER_BYTES = 6 * (MAX_SYSTEM_CHARS + MAX_TITLE_CHARS + MAX_MODEL_ID_CHARS) + 4096
MAX_HEADER_BYTES = MAX_CLEAR_HEADER_BYTES * 4 // 3 + 1024
HEADER_TOO_LONG = f"the first line is longer than any header nbchat writes ({MAX_HEADER_BYTES:,} bytes)"


MAX_REASON_CHARS = 200  # a reason quotes the bad value; a megabyte of it helps nobody


class RecordError(ValueError):
    """A line is not a valid record; the caller decides whether it is torn or corrupt."""


class NotJSON(RecordError):
    """The bytes are not JSON at all, which is what an interrupted append leaves behind.

    A prefix of a JSON object is never a JSON object, so an unterminated last
    line that *is* JSON was written whole (an editor dropped its newline) and
    is not torn; one that is not JSON is.
    """


@dataclass(frozen=True)
class Draft:
    """A streaming reply's text since its previous draft line (``draft`` is the reply's message id).

    The reply's saved message, when it ends, has the same id and replaces its drafts; drafts
    with no saved message are a reply whose kernel died: shown as interrupted.
    """

    id: str
    parent: str | None
    model: str | None
    time: datetime
    text: str
    thinking: str


@dataclass(frozen=True)
class Select:
    """The user switched to the branch through message ``id`` (it becomes the most recently used)."""

    id: str
    time: datetime


Line = Message | Draft | Select


def header_line(conversation: Conversation) -> bytes:
    record = {
        "version": FORMAT_VERSION,
        "id": conversation.id,
        "title": conversation.title,
        "created": _time(conversation.created),
        "updated": _time(conversation.updated),
        "settings": conversation.settings.to_dict(),
    }
    return _line(record)


def message_line(message: Message) -> bytes:
    record: dict[str, Any] = {
        "id": message.id,
        "role": message.role,
        "content": message.content,
        "thinking": message.thinking,
        "time": _time(message.time),
        "model": message.model,
        "stats": None if message.stats is None else dict(message.stats),
        "parent": message.parent,
    }
    if message.context:
        record["context"] = [item.to_dict() for item in message.context]
    return _line(record)


def draft_line(draft: Draft) -> bytes:
    return _line(
        {
            "draft": draft.id,
            "parent": draft.parent,
            "model": draft.model,
            "time": _time(draft.time),
            "text": draft.text,
            "thinking": draft.thinking,
        }
    )


def select_line(select: Select) -> bytes:
    return _line({"select": select.id, "time": _time(select.time)})


# -- encrypted files ---------------------------------------------------------------------------
#
# An encrypted file has the same lines in the same order, each sealed on its own by
# ``crypto.LineCipher`` under the conversation id and the line's position in the file (the
# header is 0), so a line copied from another file, or moved within one, does not open. Only
# what ``SEALED_VERSION`` shows stays in clear: the header's version, the conversation id and
# which key sealed the file; every other line is ``{"sealed": <token>}``.

SEALED_HEADER_KEYS = frozenset({"version", "id", "key", "sealed"})
SEALED_LINE_KEYS = frozenset({"sealed"})
# Blinded like a search word, but no tokenizer makes a word with a NUL in it.
_KEY_ID_LABEL = "\x00nbchat data key id v1"


def key_id(cipher: LineCipher) -> str:
    """Names the data key without revealing it: a wrong key is told apart from a damaged header."""
    known = _KEY_IDS.get(cipher)
    if known is None:  # once per cipher: listing checks it for every file
        known = _KEY_IDS[cipher] = cipher.blind(_KEY_ID_LABEL)
    return known


_KEY_IDS: weakref.WeakKeyDictionary[LineCipher, str] = weakref.WeakKeyDictionary()


def seal_header(clear: bytes, cipher: LineCipher, conversation_id: str) -> bytes:
    """The encrypted file's first line, holding ``clear`` (a ``header_line``) at position 0."""
    token = cipher.seal(clear.rstrip(b"\n"), conversation_id=conversation_id, position=0)
    record = {"version": SEALED_VERSION, "id": conversation_id, "key": key_id(cipher), "sealed": token}
    return _line(record)


def seal_line(clear: bytes, cipher: LineCipher, conversation_id: str, position: int) -> bytes:
    """``clear`` (any line after the header, with or without its newline) sealed at ``position``."""
    token = cipher.seal(clear.rstrip(b"\n"), conversation_id=conversation_id, position=position)
    return b'{"sealed":"' + token.encode("ascii") + b'"}\n'  # base64url needs no JSON escapes


def _is_sealed(record: dict[str, Any]) -> bool:
    return "sealed" in record  # no clear header has the field


def open_header(line: bytes, cipher: LineCipher, conversation_id: str) -> tuple[Conversation, int, bool]:
    """The conversation, its content version, and whether the file is sealed: either form is read.

    A file sealed under another key is ``ConversationEncrypted`` (left untouched); one that does
    not open under this key is damage (``RecordError``).
    """
    record = _object(line)
    if not _is_sealed(record):
        return (*parse_header_and_version(line), False)
    _expect_keys(record, SEALED_HEADER_KEYS, "encrypted header")
    version = record["version"]
    if type(version) is int and version > SEALED_VERSION:
        raise UnsupportedVersion(
            f"This conversation was encrypted by a newer nbchat (format version {version}; this one "
            f"reads up to {SEALED_VERSION}). Upgrade nbchat to open it; the file was left untouched."
        )
    if type(version) is not int or version != SEALED_VERSION:
        raise RecordError(_brief(f"the encrypted header's version is {version!r}, not {SEALED_VERSION}"))
    if record["id"] != conversation_id:
        raise RecordError(_brief(f"the header's id {record['id']!r} does not match the file name"))
    if record["key"] != key_id(cipher):
        raise ConversationEncrypted(
            "This conversation is encrypted with another key than this login's: it belongs to "
            "another account (or the account's key was replaced). The file was left untouched."
        )
    clear = _open(record, cipher, conversation_id, 0)
    conversation, version = _inner(parse_header_and_version, clear)
    return conversation, version, True


def open_line(
    line: bytes,
    cipher: LineCipher,
    conversation_id: str,
    position: int,
    version: int = FORMAT_VERSION,
    previous: str | None = None,
) -> Line:
    """The line at ``position`` of a sealed file; ``NotJSON`` only when the envelope is torn."""
    record = _object(line)
    _expect_keys(record, SEALED_LINE_KEYS, "encrypted line")
    clear = _open(record, cipher, conversation_id, position)
    return _inner(lambda inner: parse_line(inner, version, previous), clear)


def _open(record: dict[str, Any], cipher: LineCipher, conversation_id: str, position: int) -> bytes:
    token = record["sealed"]
    if not isinstance(token, str):
        raise RecordError("the encrypted line's sealed field is not a string")
    try:
        return cipher.open(token, conversation_id=conversation_id, position=position)
    except DamagedLine:
        raise RecordError(
            "it does not decrypt with this account's key: it was damaged, or copied from another "
            "file or position"
        ) from None


_T = TypeVar("_T")


def _inner(parse: Callable[[bytes], _T], clear: bytes) -> _T:
    """Parse a line that decrypted: its bytes were authenticated, so not-JSON is damage, never torn."""
    try:
        return parse(clear)
    except NotJSON as exc:
        raise RecordError(f"the decrypted line is {exc}") from None


def header_version(line: bytes) -> int:
    """The format version of a header line nbchat has already read successfully."""
    version = _object(line).get("version")
    return version if isinstance(version, int) and not isinstance(version, bool) else FORMAT_VERSION


def parse_header(line: bytes) -> Conversation:
    """A conversation with no messages, from its first line."""
    return parse_header_and_version(line)[0]


def parse_header_and_version(line: bytes) -> tuple[Conversation, int]:
    """A conversation with no messages, and the format version its file was written in."""
    try:
        return _parse_header(line)
    except RecursionError:  # a value nested deep enough to exhaust the stack while checking it
        raise RecordError(_TOO_DEEP) from None


def parse_message(line: bytes, version: int = FORMAT_VERSION, previous: str | None = None) -> Message:
    """A message line of a file of format ``version``; ``previous`` is the message on the line before."""
    parsed = parse_line(line, version, previous)
    if not isinstance(parsed, Message):
        raise RecordError(f"expected a message, found a {type(parsed).__name__.lower()} line")
    return parsed


def parse_line(line: bytes, version: int = FORMAT_VERSION, previous: str | None = None) -> Line:
    """Any line after the header: a message, or (version 3 on) a draft or a select record."""
    try:
        record = _object(line)
        if "draft" in record or "select" in record:
            if version < TREE_VERSION:
                raise RecordError(
                    f"a version {version} file holds a draft or select line, which only version 3 knows"
                )
            return _parse_draft(record) if "draft" in record else _parse_select(record)
        return _parse_message(record, version, previous)
    except RecursionError:
        raise RecordError(_TOO_DEEP) from None


_TOO_DEEP = "the line nests arrays or objects too deeply to be read"


def _parse_header(line: bytes) -> tuple[Conversation, int]:
    record = _object(line)
    version = record.get("version")
    if _is_sealed(record):
        raise ConversationEncrypted(
            "This conversation is encrypted: log in with its account's password to read it. "
            "The file was left untouched."
        )
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise UnsupportedVersion(
            f"This conversation was saved by a newer nbchat (format version {version}; "
            f"this one reads up to {FORMAT_VERSION}). Upgrade nbchat to open it; "
            "the file was left untouched."
        )
    if isinstance(version, bool) or not isinstance(version, int) or version < OLDEST_VERSION:  # true is not 1
        raise RecordError(
            _brief(f"the header's version is {version!r}, expected {OLDEST_VERSION} to {FORMAT_VERSION}")
        )
    record = migrations.upgrade_header(record, version)
    settings = record.get("settings")
    if not isinstance(settings, dict):
        raise RecordError("the header has no settings object")
    _expect_keys(settings, {"model", "temperature", "max_new_tokens", "think", "system"}, "settings")
    _expect_keys(record, {"version", "id", "title", "created", "updated", "settings"}, "header")
    try:
        conversation = Conversation(
            id=record["id"],
            title=record["title"],
            created=_parse_time(record["created"]),
            updated=_parse_time(record["updated"]),
            settings=ConversationSettings(**settings),
        )
    except InvalidValue as exc:
        raise RecordError(_brief(str(exc))) from None
    return conversation, version


def _parse_draft(record: dict[str, Any]) -> Draft:
    _expect_keys(record, DRAFT_KEYS, "draft")
    try:
        for name in ("draft", "parent"):
            value = record[name]
            if not (is_valid_id(value) or (name == "parent" and value is None)):
                raise InvalidValue(f"the draft's {name} is not a message id: {value!r}")
        model = check_model_id("The draft's model", record["model"])
        text = check_text("A draft's text", record["text"], max_chars=MAX_CONTENT_CHARS)
        thinking = check_text("A draft's thinking", record["thinking"], max_chars=MAX_CONTENT_CHARS)
    except InvalidValue as exc:
        raise RecordError(_brief(str(exc))) from None
    return Draft(record["draft"], record["parent"], model, _parse_time(record["time"]), text, thinking)


def _parse_select(record: dict[str, Any]) -> Select:
    _expect_keys(record, SELECT_KEYS, "select record")
    if not is_valid_id(record["select"]):
        raise RecordError(_brief(f"the select record names no message id: {record['select']!r}"))
    return Select(record["select"], _parse_time(record["time"]))


def _parse_message(record: dict[str, Any], version: int, previous: str | None) -> Message:
    if version < 2 and "context" in record:
        raise RecordError("a version 1 message has a context field, which only version 2 knows")
    if version < TREE_VERSION and "parent" in record:
        raise RecordError(f"a version {version} message has a parent field, which only version 3 knows")
    record = migrations.upgrade_message(record, version, previous)
    _expect_keys(record, MESSAGE_KEYS, "message", optional=OPTIONAL_MESSAGE_KEYS)
    try:
        return Message(
            id=record["id"],
            role=record["role"],
            content=record["content"],
            thinking=record["thinking"],
            time=_parse_time(record["time"]),
            model=record["model"],
            stats=record["stats"],
            context=_context(record.get("context")),
            parent=record["parent"],
        )
    except InvalidValue as exc:
        raise RecordError(_brief(str(exc))) from None


def _context(raw: object) -> tuple[ContextItem, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise RecordError("the message's context is not a list")
    items = []
    for item in raw:
        if not isinstance(item, dict):
            raise RecordError("a context item is not an object")
        _expect_keys(item, {"kind", "name", "label", "summary"}, "context item")
        items.append(ContextItem(item["kind"], item["name"], item["label"], item["summary"]))
    return tuple(items)


def _line(record: dict[str, Any]) -> bytes:
    # UTF-8, not \u escapes: readable by people, and compact for non-Latin text.
    # (Lone surrogates, which UTF-8 cannot hold, were refused by the types.)
    text = json.dumps(record, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.encode("utf-8") + b"\n"


def _object(line: bytes) -> dict[str, Any]:
    # Catch everything json.loads raises on hostile input: one bad line is one damaged file.
    try:
        record = json.loads(line)
    except RecursionError:
        raise RecordError(_TOO_DEEP) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise NotJSON(_brief(f"not valid JSON ({exc})")) from None
    except ValueError as exc:  # valid JSON Python will not read, such as an integer of 5,000 digits
        raise RecordError(_brief(f"unreadable JSON ({exc})")) from None
    if not isinstance(record, dict):
        raise RecordError(f"expected a JSON object, found {type(record).__name__}")
    return record


def _expect_keys(
    record: dict[str, Any], keys: set[str] | frozenset[str], what: str, optional: frozenset[str] = frozenset()
) -> None:
    missing = keys - record.keys()
    if missing:
        raise RecordError(f"the {what} lacks {', '.join(sorted(missing))}")
    extra = record.keys() - keys - optional
    if extra:
        raise RecordError(_brief(f"the {what} has unknown fields {', '.join(sorted(extra))}"))


def _time(value: datetime) -> str:
    # Always UTC: RFC 3339 offsets are whole minutes, and one zone keeps files comparable.
    return value.astimezone(timezone.utc).isoformat(timespec="microseconds")


def _parse_time(value: object) -> datetime:
    if not isinstance(value, str):
        raise RecordError(_brief(f"a time must be an ISO 8601 string, not {value!r}"))
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise RecordError(_brief(f"{value!r} is not an ISO 8601 time")) from None
    if parsed.tzinfo is None:
        raise RecordError(_brief(f"the time {value!r} has no timezone"))
    return parsed


def _brief(reason: str) -> str:
    if len(reason) <= MAX_REASON_CHARS:
        return reason
    return reason[: MAX_REASON_CHARS - 1] + "…"
