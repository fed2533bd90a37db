"""The JSON Schemas in data/ describe the files nbchat writes, and refuse what nbchat refuses.

Four kinds of evidence hold the schemas and nbchat/records.py together: the schemas are valid
draft 2020-12 schemas; the examples in data/examples/ validate and load (and
data/examples/make_conversation.py writes the current ones again byte for byte); files written
by nbchat itself validate line by line; and hand-made bad records are refused by both the
schemas and the parser. Property tests do the same for generated values.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
import unicodedata
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, reject
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from referencing import Registry
from referencing.jsonschema import DRAFT202012

import nbchat
from conftest import CHEAP_KDF, file_records
from nbchat import migrations, records
from nbchat.config import Policy
from nbchat.errors import (
    AuthenticationFailed,
    CorruptFile,
    InvalidUsername,
    InvalidValue,
    UnsupportedVersion,
)
from nbchat.records import RecordError
from nbchat.types import (
    CONTEXT_KINDS,
    MAX_CONTEXT_ITEMS,
    ROLES,
    ContextItem,
    Conversation,
    ConversationSettings,
    Message,
    Role,
    check_model_id,
    check_text,
    check_title,
)
from nbchat.usernames import check_username, username_key

DATA = Path(__file__).resolve().parent.parent / "data"
EXAMPLES = DATA / "examples"
LINE_SCHEMAS = ("message.schema.json", "draft.schema.json", "select.schema.json")  # lines after the header
SEALED_SCHEMA = "sealed-line.schema.json"  # each line of an encrypted account's file, before opening
SCHEMA_FILES = ("users.schema.json", "conversation-header.schema.json", *LINE_SCHEMAS, SEALED_SCHEMA)
EXAMPLE = EXAMPLES / "conversation.jsonl"  # format version 3, what nbchat writes now: branches, a select
EXAMPLE_INTERRUPTED = EXAMPLES / "conversation-interrupted.jsonl"  # version 3 with drafts: a dead kernel
EXAMPLE_V2 = EXAMPLES / "conversation-v2.jsonl"  # format version 2, as nbchat wrote it before branches
EXAMPLE_V1 = EXAMPLES / "conversation-v1.jsonl"  # format version 1, as nbchat wrote it before context
# The example accounts' passwords, as data/README.md gives them.
EXAMPLE_PASSWORDS = {"Alice": "alice-example-pw", "Bob.Smith": "bob-example-pw"}


@cache
def schema(name: str) -> dict[str, Any]:
    return json.loads((DATA / name).read_text(encoding="utf-8"))


@cache
def validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(schema(name), format_checker=Draft202012Validator.FORMAT_CHECKER)


def users_validator() -> Draft202012Validator:
    return validator("users.schema.json")


def header_validator() -> Draft202012Validator:
    return validator("conversation-header.schema.json")


def message_validator() -> Draft202012Validator:
    return validator("message.schema.json")


def draft_validator() -> Draft202012Validator:
    return validator("draft.schema.json")


def select_validator() -> Draft202012Validator:
    return validator("select.schema.json")


@cache
def message_definition_validator(definition: str) -> Draft202012Validator:
    """message.schema.json#/$defs/<definition>, referenced as data/README.md shows."""
    uri = "urn:nbchat:message.schema.json"
    registry: Registry[Any] = Registry().with_resource(
        uri, DRAFT202012.create_resource(schema("message.schema.json"))
    )
    return Draft202012Validator(
        {"$ref": f"{uri}#/$defs/{definition}"},
        registry=registry,
        format_checker=Draft202012Validator.FORMAT_CHECKER,
    )


def version1_message_validator() -> Draft202012Validator:
    """message.schema.json#/$defs/version1Message: a message line of a version 1 file."""
    return message_definition_validator("version1Message")


def version2_message_validator() -> Draft202012Validator:
    """message.schema.json#/$defs/version2Message: a message line of a version 2 file."""
    return message_definition_validator("version2Message")


def message_validator_for(version: int) -> Draft202012Validator:
    """The schema a message line of a file of format ``version`` follows."""
    if version == 1:
        return version1_message_validator()
    return version2_message_validator() if version == 2 else message_validator()


def line_validator_for(version: int, record: dict[str, Any]) -> Draft202012Validator:
    """The schema a line after the header follows: in version 3 its kind is told by its first field."""
    if version >= records.TREE_VERSION and "draft" in record:
        return draft_validator()
    if version >= records.TREE_VERSION and "select" in record:
        return select_validator()
    return message_validator_for(version)  # an older file holds messages only


def assert_valid(check: Draft202012Validator, instance: object) -> None:
    problems = [
        f"{'/'.join(map(str, error.absolute_path)) or '(record)'}: {error.message}"
        for error in check.iter_errors(instance)
    ]
    assert not problems, "\n".join(problems)


def lines_of(path: Path) -> list[bytes]:
    """A conversation file's lines, split as the store splits them (on b"\\n" only)."""
    data = path.read_bytes()
    assert data.endswith(b"\n"), f"{path.name} does not end with a line feed"
    return [line + b"\n" for line in data[:-1].split(b"\n")]


def assert_conversation_file_valid(path: Path) -> None:
    """The header against its schema, each later line against that of its kind and of the header's version."""
    assert_records_valid([json.loads(line) for line in lines_of(path)])


def assert_records_valid(records_: list[dict[str, Any]]) -> None:
    """A file's clear records (an encrypted file's lines once opened), each against its schema."""
    header, *lines = records_
    assert_valid(header_validator(), header)
    for record in lines:
        assert_valid(line_validator_for(header["version"], record), record)


def assert_sealed_file_valid(path: Path) -> None:
    """Every line of an encrypted file is the envelope sealed-line.schema.json describes."""
    envelope = validator(SEALED_SCHEMA)
    for line in lines_of(path):
        assert_valid(envelope, json.loads(line))


def example_lines(path: Path = EXAMPLE) -> list[bytes]:
    return lines_of(path)


def encode(record: object) -> bytes:
    """A record as one line, with ASCII escapes so that lone surrogates survive."""
    return json.dumps(record).encode("ascii") + b"\n"


# -- the schemas themselves -------------------------------------------------------------------


@pytest.mark.parametrize("name", SCHEMA_FILES)
def test_each_schema_is_a_valid_draft_2020_12_schema(name: str) -> None:
    """check_schema also compiles every pattern, as Python's re sees it."""
    assert schema(name)["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema(name))


def documented_subschemas(node: object, path: str = "#") -> list[tuple[str, dict[str, Any]]]:
    """Every named property and every definition, anywhere in a schema."""
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        for keyword in ("properties", "$defs"):
            for name, sub in node.get(keyword, {}).items():
                found.append((f"{path}/{keyword}/{name}", sub))
        for key, sub in node.items():
            found.extend(documented_subschemas(sub, f"{path}/{key}"))
    elif isinstance(node, list):
        for index, sub in enumerate(node):
            found.extend(documented_subschemas(sub, f"{path}/{index}"))
    return found


@pytest.mark.parametrize("name", SCHEMA_FILES)
def test_every_property_and_definition_has_a_title_and_a_description(name: str) -> None:
    """A schema is documentation: no field or definition goes unexplained."""
    subschemas = documented_subschemas(schema(name))
    assert subschemas
    undocumented = [path for path, sub in subschemas if not (sub.get("title") and sub.get("description"))]
    assert not undocumented
    assert schema(name)["title"] and schema(name)["description"]


def test_the_conversation_schemas_share_one_set_of_definitions() -> None:
    """The header, message, draft and select schemas repeat their definitions; they must not drift
    apart. Only the message schema has the ones the header has no use for: the message's fields,
    context, and the lines of versions 1 and 2."""
    header_defs = schema("conversation-header.schema.json")["$defs"]
    message_defs = schema("message.schema.json")["$defs"]
    assert {name: message_defs[name] for name in header_defs} == header_defs
    assert message_defs.keys() - header_defs.keys() == {
        "message",
        "contextItem",
        "version2Message",
        "version1Message",
    }
    for name in ("draft.schema.json", "select.schema.json"):
        defs = schema(name)["$defs"]
        assert defs.keys() <= header_defs.keys()
        assert {key: header_defs[key] for key in defs} == defs
    users_defs = schema("users.schema.json")["$defs"]
    assert users_defs["id"] == header_defs["id"]
    assert users_defs["time"]["pattern"] == header_defs["time"]["pattern"]


def test_the_schemas_refuse_unknown_fields_exactly_where_nbchat_does() -> None:
    """Header, settings, message, draft and select refuse unknown fields; users.json tolerates them,
    as nbchat does."""
    header = schema("conversation-header.schema.json")
    assert header["additionalProperties"] is False
    assert header["properties"]["settings"]["additionalProperties"] is False
    assert schema("message.schema.json")["$defs"]["message"]["additionalProperties"] is False
    assert schema("message.schema.json")["$defs"]["contextItem"]["additionalProperties"] is False
    assert schema("draft.schema.json")["additionalProperties"] is False
    assert schema("select.schema.json")["additionalProperties"] is False
    users = schema("users.schema.json")
    assert "additionalProperties" not in users
    assert "additionalProperties" not in users["$defs"]["account"]


def test_the_schemas_know_every_format_version_nbchat_reads_and_the_limits_it_keeps() -> None:
    """Versions 1 to FORMAT_VERSION, the fields of each kind of line, the context kinds and the most
    context items, as nbchat/ has them."""
    header = schema("conversation-header.schema.json")
    assert header["properties"]["version"]["enum"] == list(
        range(records.OLDEST_VERSION, records.FORMAT_VERSION + 1)
    )
    assert records.FORMAT_VERSION == migrations.LATEST == records.TREE_VERSION == 3
    message = schema("message.schema.json")
    fields = message["$defs"]["message"]
    assert fields["properties"]["context"]["maxItems"] == MAX_CONTEXT_ITEMS
    item = message["$defs"]["contextItem"]
    assert item["properties"]["kind"]["enum"] == list(CONTEXT_KINDS)
    assert set(item["required"]) == set(ContextItem.__dataclass_fields__)
    assert set(fields["properties"]) == records.MESSAGE_KEYS | records.OPTIONAL_MESSAGE_KEYS
    assert set(fields["required"]) | set(message["required"]) == records.MESSAGE_KEYS
    assert message["required"] == ["parent"]  # what version 3 adds to the fields every version has
    kinds = (("draft.schema.json", records.DRAFT_KEYS), ("select.schema.json", records.SELECT_KEYS))
    for name, keys in kinds:
        assert set(schema(name)["properties"]) == set(schema(name)["required"]) == keys


def pattern(schema_name: str, definition: str) -> Callable[[str], bool]:
    """A definition's pattern as jsonschema applies it (re.search)."""
    compiled = re.compile(schema(schema_name)["$defs"][definition]["pattern"])
    return lambda text: compiled.search(text) is not None


def nbchat_accepts_on_one_line(text: str) -> bool:
    try:
        check_text("text", text, max_chars=len(text), single_line=True)
    except InvalidValue:
        return False
    return True


@pytest.mark.slow
def test_the_one_line_rule_refuses_exactly_the_characters_nbchat_refuses() -> None:
    """Checked for every code point. The schema's class comes from Unicode 15.1, so it may
    also refuse characters still unassigned in this Python's Unicode database."""
    one_line = pattern("message.schema.json", "oneLineText")
    schema_only, nbchat_only = [], []
    for code in range(sys.maxunicode + 1):
        char = chr(code)
        by_schema, by_nbchat = one_line(char), nbchat_accepts_on_one_line(char)
        if by_nbchat and not by_schema and unicodedata.category(char) != "Cn":
            schema_only.append(f"U+{code:04X}")
        if by_schema and not by_nbchat:
            nbchat_only.append(f"U+{code:04X}")
    assert not schema_only, "the schema refuses characters nbchat accepts"
    assert not nbchat_only, "nbchat refuses characters the schema accepts: regenerate the class"


@pytest.mark.slow
def test_the_title_rule_refuses_exactly_the_characters_nbchat_refuses_in_a_title() -> None:
    """Checked for every code point inside a title: the one-line rule, less the joiners and
    direction marks nbchat keeps in titles (emoji sequences, right-to-left text)."""
    title = validator("conversation-header.schema.json").evolve(
        schema=schema("conversation-header.schema.json")["properties"]["title"]
    )
    wrong = [
        f"U+{code:04X}"
        for code in range(sys.maxunicode + 1)
        if title.is_valid(text := f"x{chr(code)}x") != title_is_canonical(text)
        and unicodedata.category(chr(code)) != "Cn"
    ]
    assert not wrong


@pytest.mark.slow
def test_a_trimmed_line_may_neither_begin_nor_end_with_what_str_strip_removes() -> None:
    """Checked for every code point allowed on a line, at either end of a title."""
    one_line = pattern("message.schema.json", "oneLineText")
    trimmed = pattern("message.schema.json", "trimmedOneLineText")
    wrong = [
        f"U+{code:04X}"
        for code in range(sys.maxunicode + 1)
        if one_line(char := chr(code))
        and not (trimmed(char + "x") == trimmed("x" + char) == (not char.isspace()))
    ]
    assert not wrong


# -- the examples -----------------------------------------------------------------------------


def test_the_example_accounts_file_validates() -> None:
    """data/examples/users.json follows users.schema.json."""
    users = json.loads((EXAMPLES / "users.json").read_text(encoding="utf-8"))
    assert_valid(users_validator(), users)
    assert [account["name"] for account in users["users"].values()] == list(EXAMPLE_PASSWORDS)


def test_the_readme_gives_the_example_passwords() -> None:
    """data/README.md names each example account and its password."""
    readme = (DATA / "README.md").read_text(encoding="utf-8")
    for name, password in EXAMPLE_PASSWORDS.items():
        assert f"`{name}`" in readme and f"`{password}`" in readme


def test_the_example_accounts_open_with_their_example_passwords(tmp_path: Path) -> None:
    """Real cost-12 hashes: nbchat's own login accepts each password for its own account only."""
    shutil.copy(EXAMPLES / "users.json", tmp_path / "users.json")
    accounts = nbchat.Accounts(nbchat.Config(data_dir=tmp_path), bcrypt_rounds=4, kdf=CHEAP_KDF)
    assert accounts.usernames() == list(EXAMPLE_PASSWORDS)
    for name, password in EXAMPLE_PASSWORDS.items():
        login = accounts.login(name, password)
        assert login.display_name == name
    with pytest.raises(AuthenticationFailed):
        accounts.login("alice", "bob-example-pw")


def test_the_example_conversation_validates_line_by_line() -> None:
    """The header against the header schema, messages and the select record against theirs."""
    assert json.loads(example_lines()[0])["version"] == records.FORMAT_VERSION
    assert_conversation_file_valid(EXAMPLE)
    kinds = [next(iter(json.loads(line))) for line in example_lines()[1:]]
    assert kinds == ["id"] * 7 + ["select"]


def example_items(path: Path = EXAMPLE) -> tuple[Conversation, list[records.Line]]:
    header, *lines = example_lines(path)
    return records.parse_header(header), [records.parse_line(line) for line in lines]


def example_messages(path: Path = EXAMPLE) -> list[Message]:
    """The message lines of an example, parsed (drafts and select records left out)."""
    return [item for item in example_items(path)[1] if isinstance(item, Message)]


def example_drafts(path: Path) -> list[records.Draft]:
    return [item for item in example_items(path)[1] if isinstance(item, records.Draft)]


def test_the_example_conversation_loads_through_the_parser() -> None:
    """Four turns, the last reply regenerated and the second question edited (with its own reply),
    then a switch back to the regenerated reply. The first question attaches @df and 2 cells, the
    first answer has thinking and stats."""
    conversation, items = example_items()
    messages, select = example_messages(), items[-1]
    assert len(messages) == len(items) - 1 and isinstance(select, records.Select)
    assert conversation.title == "Egg timings from the kitchen log"
    assert conversation.settings.model == "ollama:qwen3:1.7b"
    assert "".join(m.role[0] for m in messages) == "uauaaua"  # user, assistant, ...
    question, answer, second, _, regenerated, edited, _ = messages
    assert [m.parent for m in messages] == [
        None,
        question.id,
        answer.id,
        second.id,
        second.id,  # regenerated: the same question's second answer
        answer.id,  # edited: the second question's alternative
        edited.id,
    ]
    assert select.id == regenerated.id
    assert "@df" in question.content
    assert [(item.kind, item.name, item.label) for item in question.context] == [
        ("object", "df", "DataFrame 6 × 4"),
        ("cells", "cells", "2 cells"),
    ]
    assert "| 0 | 5.0 | False | very runny | False |" in question.context[0].summary
    assert 'df = pd.read_csv("eggs.csv")' in question.context[1].summary
    assert all(not m.context for m in messages[1:])
    assert answer.thinking and answer.model == conversation.settings.model
    assert answer.stats is not None
    assert set(answer.stats) == {"prompt_tokens", "completion_tokens", "tokens_per_s", "finish_reason"}
    times = [m.time for m in messages] + [select.time]
    assert all(t.tzinfo is not None for t in times) and times == sorted(times)
    assert conversation.created < times[0] and times[-1] < conversation.updated


def canonical_line(item: records.Line) -> bytes:
    if isinstance(item, records.Draft):
        return records.draft_line(item)
    if isinstance(item, records.Select):
        return records.select_line(item)
    return records.message_line(item)


@pytest.mark.parametrize("path", [EXAMPLE, EXAMPLE_INTERRUPTED], ids=["branched", "interrupted"])
def test_the_version_3_examples_are_byte_for_byte_what_nbchat_writes(path: Path) -> None:
    """Parsing a line and writing it again gives the same bytes: the examples are canonical."""
    header, *lines = example_lines(path)
    assert records.header_line(records.parse_header(header)) == header
    for line in lines:
        assert canonical_line(records.parse_line(line)) == line


def test_make_conversation_writes_the_version_3_examples_again_byte_for_byte(tmp_path: Path) -> None:
    """The script's every line goes through a real store and nbchat's own summaries: the committed
    examples are what nbchat writes today (rerun the script when this fails on purpose)."""
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "make_conversation.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    for path in (EXAMPLE, EXAMPLE_INTERRUPTED):
        assert (tmp_path / path.name).read_bytes() == path.read_bytes(), path.name
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([EXAMPLE.name, EXAMPLE_INTERRUPTED.name])


def placed(tmp_path: Path, path: Path) -> tuple[nbchat.ConversationStore, str, Path]:
    """An example at conversations/alice/<id>.jsonl, and Alice's store."""
    conversation_id = records.parse_header(example_lines(path)[0]).id
    folder = tmp_path / "conversations" / "alice"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{conversation_id}.jsonl"
    shutil.copy(path, target)
    return nbchat.ConversationStore(tmp_path, "alice"), conversation_id, target


def test_the_example_conversation_opens_in_a_store_on_the_branch_the_user_chose(tmp_path: Path) -> None:
    """Placed at conversations/alice/<id>.jsonl, the example lists and loads like any other: the
    active path runs through the selected reply, and both alternatives of each fork are kept."""
    store, conversation_id, target = placed(tmp_path, EXAMPLE)
    assert [summary.id for summary in store.list()] == [conversation_id]
    conversation = store.get(conversation_id)
    question, answer, second, reply, regenerated, edited, edited_reply = example_messages()
    assert conversation.messages == (question, answer, second, regenerated)
    assert len(conversation.tree) == 7
    assert conversation.alternatives(regenerated.id) == (reply, regenerated)
    assert conversation.alternatives(second.id) == (second, edited)
    assert conversation.tree.path_through(edited.id) == (question, answer, edited, edited_reply)
    assert [item.name for item in conversation.messages[0].context] == ["df", "cells"]
    assert target.read_bytes() == EXAMPLE.read_bytes()
    # Without its select line the same file shows the branch used last: the edited question.
    target.write_bytes(b"".join(example_lines()[:-1]))
    fresh = nbchat.ConversationStore(tmp_path, "alice").get(conversation_id)
    assert fresh.messages == (question, answer, edited, edited_reply)


def test_the_interrupted_example_validates_line_by_line() -> None:
    """A question, a reply streamed in two drafts then saved, a question, and three drafts of a reply
    cut off by a dead kernel."""
    assert_conversation_file_valid(EXAMPLE_INTERRUPTED)
    kinds = [next(iter(json.loads(line))) for line in example_lines(EXAMPLE_INTERRUPTED)[1:]]
    assert kinds == ["id", "draft", "draft", "id", "id", "draft", "draft", "draft"]


def test_the_interrupted_example_shows_one_saved_reply_and_one_interrupted_reply(tmp_path: Path) -> None:
    """The saved reply replaces its drafts; the drafts with no message read as the reply so far,
    marked interrupted, with its first draft's time and model. Reading changes nothing."""
    store, conversation_id, target = placed(tmp_path, EXAMPLE_INTERRUPTED)
    question, answer, follow_up = example_messages(EXAMPLE_INTERRUPTED)
    first_drafts, drafts = example_drafts(EXAMPLE_INTERRUPTED)[:2], example_drafts(EXAMPLE_INTERRUPTED)[2:]
    assert {d.id for d in first_drafts} == {answer.id} and {d.id for d in drafts} == {drafts[0].id}
    conversation = store.get(conversation_id)
    assert [m.id for m in conversation.messages] == [question.id, answer.id, follow_up.id, drafts[0].id]
    assert len(conversation.tree) == 4  # one message per reply, drafts or not
    assert conversation.messages[1] == answer
    cut = conversation.messages[-1]
    assert cut.role == "assistant" and cut.parent == follow_up.id
    assert cut.content == (
        "Poach them in two batches of four, in the widest pan you have, "
        "and keep the cooked ones in warm water while"
    )
    assert cut.content == "".join(d.text for d in drafts)
    assert cut.stats == {"partial": True, "interrupted": True}
    assert (cut.time, cut.model, cut.thinking) == (drafts[0].time, drafts[0].model, None)
    assert target.read_bytes() == EXAMPLE_INTERRUPTED.read_bytes()


def test_the_version_2_example_validates_line_by_line() -> None:
    """A file written before branches existed: its header says 2 and its messages follow version2Message."""
    header, *lines = example_lines(EXAMPLE_V2)
    assert json.loads(header)["version"] == 2
    assert_conversation_file_valid(EXAMPLE_V2)
    assert all(b'"parent"' not in line for line in lines)
    assert not message_validator().is_valid(json.loads(lines[0]))  # no parent: not a version 3 line


def upgraded_lines(path: Path, version: int) -> None:
    """What nbchat would write for an older example now: the header's version and each message's parent."""
    header, *lines = example_lines(path)
    conversation = records.parse_header(header)
    assert records.header_line(conversation) == header.replace(
        b'{"version":%d,' % version, b'{"version":%d,' % records.FORMAT_VERSION, 1
    )
    previous = None
    for line in lines:
        message = records.parse_message(line, version, previous)
        assert message.parent == previous
        assert json.loads(records.message_line(message)) == {**json.loads(line), "parent": previous}
        previous = message.id


def test_the_version_2_example_loads_through_the_parser_as_one_branch() -> None:
    """The parser reads a version 2 file's messages, each following the one on the line before."""
    header, *lines = example_lines(EXAMPLE_V2)
    conversation = records.parse_header(header)
    assert conversation.title == "Egg timings from the kitchen log"
    messages = [records.parse_message(line, 2) for line in lines]  # no previous given: the first line's view
    assert [m.role for m in messages] == ["user", "assistant", "user", "assistant"]
    assert [item.name for item in messages[0].context] == ["df", "cells"]
    upgraded_lines(EXAMPLE_V2, 2)


def test_the_version_1_example_validates_line_by_line() -> None:
    """A file written before context existed: its header says 1 and its messages follow version1Message."""
    header, *lines = example_lines(EXAMPLE_V1)
    assert json.loads(header)["version"] == 1
    assert_conversation_file_valid(EXAMPLE_V1)
    assert all(version1_message_validator().is_valid(json.loads(line)) for line in lines)


def test_the_version_1_example_loads_through_the_parser_as_version_1() -> None:
    """The parser reads a version 1 header and its messages, which carry no context."""
    header, *lines = example_lines(EXAMPLE_V1)
    conversation = records.parse_header(header)
    messages = [records.parse_message(line, 1) for line in lines]
    assert conversation.title == "Soft-boiled eggs"
    assert [m.role for m in messages] == ["user", "assistant", "user", "assistant"]
    assert all(not m.context for m in messages)
    assert messages[1].stats == {
        "prompt_tokens": 38,
        "completion_tokens": 112,
        "tokens_per_s": 41.7,
        "finish_reason": "stop",
    }
    # What nbchat would write for it now differs only in the version and the parents.
    upgraded_lines(EXAMPLE_V1, 1)


@pytest.mark.parametrize("path", [EXAMPLE_V1, EXAMPLE_V2], ids=["version 1", "version 2"])
def test_an_older_example_opens_in_a_store_as_one_branch_and_is_left_as_it_is(
    tmp_path: Path, path: Path
) -> None:
    """Listing and reading an old file neither fails nor rewrites it; its messages form one path."""
    store, conversation_id, target = placed(tmp_path, path)
    assert [summary.id for summary in store.list()] == [conversation_id]
    conversation = store.get(conversation_id)
    assert len(conversation.messages) == len(conversation.tree) == 4
    assert [m.parent for m in conversation.messages] == [None, *(m.id for m in conversation.messages[:-1])]
    assert target.read_bytes() == path.read_bytes()


# -- files written by nbchat itself -------------------------------------------------------------


@pytest.fixture
def written(tmp_path: Path) -> Path:
    """A data dir after a realistic session, its accounts in clear (a site with the policy off)."""
    return write_a_session(tmp_path / "data", encrypt=False)


@pytest.fixture
def written_encrypted(tmp_path: Path) -> Path:
    """The same session with encrypted accounts (the default policy)."""
    return write_a_session(tmp_path / "data", encrypt=True)


def write_a_session(data_dir: Path, *, encrypt: bool) -> Path:
    """Two accounts, a failed and a good login, two conversations with thinking, statistics and
    context, a rename, a settings change, a reply streamed in drafts, a regenerated reply, a
    branch switch, a new password."""
    config = nbchat.Config(data_dir=data_dir, policy=Policy(encrypt_local_accounts=encrypt))
    accounts = nbchat.Accounts(config, bcrypt_rounds=4, kdf=CHEAP_KDF)
    accounts.register("Alice", "alice-secret-1")
    accounts.register("bob.smith", "bob-secret-12")
    with pytest.raises(AuthenticationFailed):
        accounts.login("alice", "not her password")
    store = accounts.login("ALICE", "alice-secret-1").conversations

    eggs = store.create("Soft-boiled eggs", ConversationSettings(model="ollama:qwen3:1.7b", think=True))
    store.append(eggs.id, Message("user", "How long for a runny yolk?"))
    store.append(
        eggs.id,
        Message(
            "assistant",
            "About **6 minutes**,\nthen ice water.",
            thinking="A large egg, water already boiling.",
            model="ollama:qwen3:1.7b",
            stats={
                "prompt_tokens": 38,
                "completion_tokens": 12,
                "tokens_per_s": 41.7,
                "finish_reason": "stop",
                "truncated": False,
                "seed": None,
            },
        ),
    )
    store.rename(eggs.id, "  Eggs, soft-boiled  ")
    store.update_settings(eggs.id, temperature=0.2, max_new_tokens=2048, system="Be brief.\nUse grams.")
    eggs_list = ContextItem("object", "eggs", "list of 6", "list, 6 items: ['œuf 1', 'œuf 2', …]")
    error = ContextItem(
        "error", "KeyError", "KeyError", "Traceback (most recent call last):\n  …\nKeyError: 'yolk'"
    )
    question = store.append(
        eggs.id, Message("user", "Et pour 6 œufs ? 🥚\u2028Merci\x85 @eggs", context=(eggs_list, error))
    )
    streamed = Message("assistant", "Les mêmes 6 minutes.", model="ollama:qwen3:1.7b", thinking="Six œufs…")
    for text, thinking in (("Les mêmes ", "Six "), ("6 minutes.", "œufs…")):
        store.append_draft(
            eggs.id, records.Draft(streamed.id, question.id, streamed.model, streamed.time, text, thinking)
        )
    store.append(eggs.id, streamed)
    store.append(eggs.id, Message("assistant", "6½ minutes.", parent=question.id))  # regenerated
    store.select(eggs.id, streamed.id)
    store.create()  # a new conversation: no model chosen yet

    accounts.change_password("bob.smith", "bob-secret-12", "bob-secret-34")
    return data_dir


def test_the_accounts_file_written_by_nbchat_validates(written: Path) -> None:
    """users.json after registrations and a password change follows the schema."""
    users = json.loads((written / "users.json").read_text(encoding="utf-8"))
    assert_valid(users_validator(), users)
    assert set(users["users"]) == {"alice", "bob.smith"}


def test_encrypted_files_validate_as_sealed_lines_and_what_they_seal_as_clear_ones(
    written_encrypted: Path,
) -> None:
    """Every line of an encrypted account's file is an envelope of sealed-line.schema.json; opened,
    each is the clear line of its kind, the same lines as in a clear account's files."""
    envelope = validator(SEALED_SCHEMA)
    users = json.loads((written_encrypted / "users.json").read_text(encoding="utf-8"))
    assert_valid(users_validator(), users)
    assert all("data_key" in record for record in users["users"].values())
    files = sorted((written_encrypted / "conversations" / "alice").glob("*.jsonl"))
    assert len(files) == 2
    kinds = []
    for path in files:
        assert_sealed_file_valid(path)
        sealed = [json.loads(line) for line in lines_of(path)]
        assert sealed[0]["version"] == 4 and sealed[0]["id"] == path.stem
        assert all(set(record) == {"sealed"} for record in sealed[1:])
        header, *lines = file_records(written_encrypted, "alice", path, password="alice-secret-1")
        assert_records_valid([header, *lines])
        assert header["version"] == records.FORMAT_VERSION
        for record in lines:
            kinds.append(next(iter(record)) if next(iter(record)) in ("draft", "select") else "message")
        raw = path.read_bytes().lower()
        # Phrases with spaces or letters base64 never holds: a 4-letter word alone would turn up in
        # lower-cased base64 by chance now and then.
        phrases = ("runny yolk", "soft-boiled", "ice water", "œuf", "be brief")
        assert not [phrase for phrase in phrases if phrase.encode() in raw]
    assert kinds.count("draft") == 2 and kinds.count("select") == 1 and kinds.count("message") == 5
    assert list(envelope.iter_errors({"sealed": "A" * 40, "role": "user"})), "nothing else is in clear"
    assert list(envelope.iter_errors({"sealed": "A+/" * 20})), "the token is URL-safe base64"


def test_conversation_files_written_by_nbchat_validate_line_by_line(written: Path) -> None:
    """After appends, drafts, a branch, a select, a rename and a settings change, every line follows
    the schema of its kind."""
    files = sorted((written / "conversations" / "alice").glob("*.jsonl"))
    assert len(files) == 2
    for path in files:
        assert_conversation_file_valid(path)
        assert json.loads(lines_of(path)[0])["version"] == records.FORMAT_VERSION
    every_line = [line for path in files for line in lines_of(path)]
    assert sum(b'"context":[' in line for line in every_line) == 1
    assert sum(line.startswith(b'{"draft":') for line in every_line) == 2
    assert sum(line.startswith(b'{"select":') for line in every_line) == 1
    line_counts = sorted(len(lines_of(path)) for path in files)
    assert line_counts == [1, 9]


def test_every_line_nbchat_writes_parses_back_as_the_conversation_the_store_returns(written: Path) -> None:
    """What is on disk is exactly what the store hands out: its message lines are the whole tree, in
    file order (a reply's drafts replaced by its message), and the select record chose the path."""
    store = nbchat.ConversationStore(written, "alice")
    for summary in store.list():
        header, *lines = lines_of(store.directory / f"{summary.id}.jsonl")
        conversation = store.get(summary.id)
        assert records.parse_header(header) == conversation.without_messages()
        items = [records.parse_line(line) for line in lines]
        assert tuple(item for item in items if isinstance(item, Message)) == conversation.tree.messages
        for item in items:
            if isinstance(item, records.Select):
                assert conversation.messages[-1].id == item.id


def test_the_data_dir_is_laid_out_as_the_readme_says(written: Path) -> None:
    """0700 directories, 0600 files, the lock files and the .account marker; no temp files left."""
    user_dir = written / "conversations" / "alice"
    private_dirs = [written, written / "conversations", user_dir]
    private_files = [
        written / "users.json",
        written / "login-failures.json",
        written / ".users.lock",
        user_dir / ".account",
        user_dir / ".lock",
        *user_dir.glob("*.jsonl"),
    ]
    assert all(path.stat().st_mode & 0o777 == 0o700 for path in private_dirs)
    assert all(path.stat().st_mode & 0o777 == 0o600 for path in private_files)
    users = json.loads((written / "users.json").read_text(encoding="utf-8"))
    assert (user_dir / ".account").read_text() == users["users"]["alice"]["account_id"] + "\n"
    assert not list(written.rglob("*.tmp"))


# -- records nbchat refuses are refused by the schemas too ---------------------------------------


def changed(record: dict[str, Any], change: Callable[[dict[str, Any]], object]) -> object:
    """``change`` edits the record in place (returning None) or returns a replacement."""
    replacement = change(record)
    return record if replacement is None else replacement


def drop(record: dict[str, Any], key: str) -> None:
    del record[key]


def header_with(change: Callable[[dict[str, Any]], object]) -> object:
    return changed(json.loads(example_lines()[0]), change)


def message_with(change: Callable[[dict[str, Any]], object]) -> object:
    return changed(json.loads(example_lines()[2]), change)  # the assistant turn: every field is set


def question_with(change: Callable[[dict[str, Any]], object]) -> object:
    return changed(json.loads(example_lines()[1]), change)  # the first question: it carries context


def first_item(record: dict[str, Any]) -> dict[str, Any]:
    item: dict[str, Any] = record["context"][0]
    return item


AN_ITEM = {"kind": "object", "name": "nums", "label": "list of 3", "summary": "list, 3 items: [1, 2, 3]"}


HEADER_FAULTS: dict[str, tuple[Callable[[dict[str, Any]], object], type[Exception]]] = {
    "an unknown field": (lambda r: r.update(colour="blue"), RecordError),
    "a missing field": (lambda r: drop(r, "updated"), RecordError),
    "an unknown setting": (lambda r: r["settings"].update(top_p=0.9), RecordError),
    "a missing setting": (lambda r: drop(r["settings"], "think"), RecordError),
    "no settings object": (lambda r: r.update(settings=None), RecordError),
    "an id in capitals": (lambda r: r.update(id=r["id"].upper()), RecordError),
    "an id of 31 digits": (lambda r: r.update(id=r["id"][:31]), RecordError),
    "an id with a line feed": (lambda r: r.update(id=r["id"][:31] + "\n"), RecordError),
    "temperature 3": (lambda r: r["settings"].update(temperature=3), RecordError),
    "a negative temperature": (lambda r: r["settings"].update(temperature=-0.1), RecordError),
    "temperature as text": (lambda r: r["settings"].update(temperature="0.7"), RecordError),
    "temperature true": (lambda r: r["settings"].update(temperature=True), RecordError),
    "max_new_tokens 0": (lambda r: r["settings"].update(max_new_tokens=0), RecordError),
    "max_new_tokens 131073": (lambda r: r["settings"].update(max_new_tokens=131_073), RecordError),
    "think as text": (lambda r: r["settings"].update(think="yes"), RecordError),
    "a blank model": (lambda r: r["settings"].update(model="   "), RecordError),
    "a model on two lines": (lambda r: r["settings"].update(model="ollama:\nqwen3"), RecordError),
    "a model of 301 characters": (lambda r: r["settings"].update(model="m" * 301), RecordError),
    "a system prompt over 100000 characters": (
        lambda r: r["settings"].update(system="s" * 100_001),
        RecordError,
    ),
    "an empty title": (lambda r: r.update(title=""), RecordError),
    "a title of spaces": (lambda r: r.update(title="   "), RecordError),
    "a title on two lines": (lambda r: r.update(title="Eggs\nand toast"), RecordError),
    "a title with a zero-width space": (lambda r: r.update(title="Eggs\u200b"), RecordError),
    "a title of 201 characters": (lambda r: r.update(title="t" * 201), RecordError),
    "a time without a timezone": (lambda r: r.update(created="2025-05-03T09:30:00.118204"), RecordError),
    "a time that is not a time": (lambda r: r.update(updated="yesterday"), RecordError),
    "a time as a number": (lambda r: r.update(updated=1746264600), RecordError),
    "a version newer than nbchat's": (
        lambda r: r.update(version=records.FORMAT_VERSION + 1),
        UnsupportedVersion,
    ),
    "version 0": (lambda r: r.update(version=0), RecordError),
    "version as text": (lambda r: r.update(version="1"), RecordError),
    "no version": (lambda r: drop(r, "version"), RecordError),
    "a list, not an object": (lambda r: [r], RecordError),
}

MESSAGE_FAULTS: dict[str, tuple[Callable[[dict[str, Any]], object], type[Exception]]] = {
    "an unknown field": (lambda r: r.update(tool_calls=[]), RecordError),
    "a missing field": (lambda r: drop(r, "thinking"), RecordError),
    "role tool": (lambda r: r.update(role="tool"), RecordError),
    "a role in capitals": (lambda r: r.update(role="User"), RecordError),
    "a bad id": (lambda r: r.update(id="not-an-id"), RecordError),
    "a time without a timezone": (lambda r: r.update(time="2025-05-03T09:30:19.873310"), RecordError),
    "a date without a time": (lambda r: r.update(time="2025-05-03"), RecordError),
    "content null": (lambda r: r.update(content=None), RecordError),
    "content over 4000000 characters": (lambda r: r.update(content="c" * 4_000_001), RecordError),
    "content with a lone surrogate": (lambda r: r.update(content="half \ud83e"), RecordError),
    "thinking as a number": (lambda r: r.update(thinking=42), RecordError),
    "a model with a line feed": (lambda r: r.update(model="ollama:qwen3\n"), RecordError),
    "stats as a list": (lambda r: r.update(stats=[38, 112]), RecordError),
    "a nested stat": (lambda r: r.update(stats={"usage": {"prompt_tokens": 38}}), RecordError),
    "a list stat": (lambda r: r.update(stats={"tokens": [38, 112]}), RecordError),
    "context on an assistant message": (lambda r: r.update(context=[AN_ITEM]), RecordError),
    "context on a system message": (
        lambda r: r.update(role="system", model=None, context=[AN_ITEM]),
        RecordError,
    ),
}

# Faults in the context of the example's first question (a user message, where context belongs).
CONTEXT_FAULTS: dict[str, Callable[[dict[str, Any]], object]] = {
    "context that is not a list": lambda r: r.update(context=AN_ITEM),
    "an item that is not an object": lambda r: r["context"].append("@nums"),
    "an item without a summary": lambda r: drop(first_item(r), "summary"),
    "an item without a kind": lambda r: drop(first_item(r), "kind"),
    "an item with an unknown field": lambda r: first_item(r).update(rows=6),
    "kind 'variable'": lambda r: first_item(r).update(kind="variable"),
    "a kind in capitals": lambda r: first_item(r).update(kind="Object"),
    "kind null": lambda r: first_item(r).update(kind=None),
    "a name on two lines": lambda r: first_item(r).update(name="df\nimport os"),
    "a name of 301 characters": lambda r: first_item(r).update(name="n" * 301),
    "a name as a number": lambda r: first_item(r).update(name=42),
    "a label with a bidi override": lambda r: first_item(r).update(label="DataFrame \u202e5 × 6"),
    "a label of 201 characters": lambda r: first_item(r).update(label="l" * 201),
    "a summary over 100000 characters": lambda r: first_item(r).update(summary="s" * 100_001),
    "a summary with a lone surrogate": lambda r: first_item(r).update(summary="half \ud83e"),
    "a summary null": lambda r: first_item(r).update(summary=None),
    f"{MAX_CONTEXT_ITEMS + 1} items": lambda r: r.update(context=[AN_ITEM] * (MAX_CONTEXT_ITEMS + 1)),
}


@pytest.mark.parametrize(("change", "error"), HEADER_FAULTS.values(), ids=HEADER_FAULTS.keys())
def test_a_header_nbchat_refuses_is_refused_by_the_schema(
    change: Callable[[dict[str, Any]], object], error: type[Exception]
) -> None:
    """Each fault is refused twice: by the schema and by records.parse_header."""
    record = header_with(change)
    assert not header_validator().is_valid(record)
    with pytest.raises(error):
        records.parse_header(encode(record))


@pytest.mark.parametrize(("change", "error"), MESSAGE_FAULTS.values(), ids=MESSAGE_FAULTS.keys())
def test_a_message_nbchat_refuses_is_refused_by_the_schema(
    change: Callable[[dict[str, Any]], object], error: type[Exception]
) -> None:
    """Each fault is refused twice: by the schema and by records.parse_message."""
    record = message_with(change)
    assert not message_validator().is_valid(record)
    with pytest.raises(error):
        records.parse_message(encode(record))


@pytest.mark.parametrize("change", CONTEXT_FAULTS.values(), ids=CONTEXT_FAULTS.keys())
def test_a_context_nbchat_refuses_is_refused_by_the_schema(
    change: Callable[[dict[str, Any]], object],
) -> None:
    """A user message's context: a list of whole, well-formed items of a known kind, refused twice."""
    record = question_with(change)
    assert not message_validator().is_valid(record)
    with pytest.raises(RecordError):
        records.parse_message(encode(record))


def test_the_example_question_with_its_context_is_valid_and_so_is_a_full_context() -> None:
    """The positive side of the faults above: the question itself, and 50 items, pass both."""
    for record in (question_with(lambda r: None), question_with(lambda r: r.update(context=[AN_ITEM] * 50))):
        assert_valid(message_validator(), record)
        assert len(records.parse_message(encode(record)).context) in (2, MAX_CONTEXT_ITEMS)


def without_parent(record: dict[str, Any]) -> dict[str, Any]:
    """The record as a version 1 or 2 file holds it: no parent field."""
    record.pop("parent")
    return record


def old_message_with(change: Callable[[dict[str, Any]], object]) -> object:
    return changed(without_parent(json.loads(example_lines()[2])), change)


def old_question_with(change: Callable[[dict[str, Any]], object]) -> object:
    return changed(without_parent(json.loads(example_lines()[1])), change)


def test_a_version_1_message_with_context_is_refused_by_the_parser_and_the_version_1_schema() -> None:
    """Version 1 had no context: such a line is damage in a version 1 file, valid in a version 2 one."""
    question = old_question_with(lambda r: None)
    assert not version1_message_validator().is_valid(question)
    with pytest.raises(RecordError, match="version 1"):
        records.parse_message(encode(question), 1)
    assert version2_message_validator().is_valid(question)
    assert records.parse_message(encode(question), 2).context


def test_a_version_1_or_2_message_with_a_parent_is_refused_by_the_parser_and_the_old_schemas() -> None:
    """Only version 3 knows parent: in an older file it is damage, not a branch to follow."""
    for version, old_validator in ((1, version1_message_validator()), (2, version2_message_validator())):
        answer = json.loads(example_lines()[2])  # the first answer, with its parent
        assert not old_validator.is_valid(answer)
        with pytest.raises(RecordError, match=f"version {version} message has a parent"):
            records.parse_message(encode(answer), version)
        assert old_validator.is_valid(without_parent(answer))
    assert message_validator().is_valid(message_with(lambda r: None))


@pytest.mark.parametrize("kind", ["draft", "select"])
def test_a_draft_or_select_line_in_a_version_1_or_2_file_is_refused_by_the_parser_and_the_schemas(
    kind: str,
) -> None:
    """Older files hold messages only; such a line in one is damage, whatever else it says."""
    line = {"draft": example_lines(EXAMPLE_INTERRUPTED)[2], "select": example_lines()[-1]}[kind]
    record = json.loads(line)
    for version in (1, 2):
        assert not message_validator_for(version).is_valid(record)
        with pytest.raises(RecordError, match=f"version {version} file holds a draft or select line"):
            records.parse_line(line, version)
    assert line_validator_for(3, record).is_valid(record)
    assert canonical_line(records.parse_line(line, 3)) == line


def test_the_version_1_and_2_schemas_refuse_whatever_the_message_schema_refuses() -> None:
    """version1Message and version2Message are the message's fields and more rules, not looser copies."""
    for version, old_validator in ((1, version1_message_validator()), (2, version2_message_validator())):
        for change, _ in MESSAGE_FAULTS.values():
            record = old_message_with(change)
            assert not old_validator.is_valid(record)
            with pytest.raises(RecordError):
                records.parse_message(encode(record), version)
        assert old_validator.is_valid(old_message_with(lambda r: None))


PARENT_FAULTS: dict[str, Callable[[dict[str, Any]], object]] = {
    "no parent": lambda r: drop(r, "parent"),
    "a parent that is not an id": lambda r: r.update(parent="the question"),
    "a parent in capitals": lambda r: r.update(parent=r["parent"].upper()),
    "a parent of 33 digits": lambda r: r.update(parent=r["parent"] + "0"),
    "a parent as a number": lambda r: r.update(parent=42),
    "a parent as a list": lambda r: r.update(parent=[r["parent"]]),
}


@pytest.mark.parametrize("change", PARENT_FAULTS.values(), ids=PARENT_FAULTS.keys())
def test_a_parent_nbchat_refuses_is_refused_by_the_version_3_schema(
    change: Callable[[dict[str, Any]], object],
) -> None:
    """Version 3 requires parent: a message id or null, refused twice otherwise."""
    record = message_with(change)
    assert not message_validator().is_valid(record)
    with pytest.raises(RecordError):
        records.parse_message(encode(record))


def draft_with(change: Callable[[dict[str, Any]], object]) -> object:
    return changed(json.loads(example_lines(EXAMPLE_INTERRUPTED)[2]), change)  # thinking and text both set


def select_with(change: Callable[[dict[str, Any]], object]) -> object:
    return changed(json.loads(example_lines()[-1]), change)


DRAFT_FAULTS: dict[str, Callable[[dict[str, Any]], object]] = {
    "an unknown field": lambda r: r.update(role="assistant"),
    "no parent": lambda r: drop(r, "parent"),
    "no text": lambda r: drop(r, "text"),
    "no thinking": lambda r: drop(r, "thinking"),
    "no model": lambda r: drop(r, "model"),
    "no time": lambda r: drop(r, "time"),
    "a reply id that is not an id": lambda r: r.update(draft="reply-1"),
    "a reply id null": lambda r: r.update(draft=None),
    "a parent that is not an id": lambda r: r.update(parent="q1"),
    "thinking null": lambda r: r.update(thinking=None),
    "text null": lambda r: r.update(text=None),
    "text as a number": lambda r: r.update(text=3),
    "text with a lone surrogate": lambda r: r.update(text="half \ud83e"),
    "text over 4000000 characters": lambda r: r.update(text="t" * 4_000_001),
    "a blank model": lambda r: r.update(model="  "),
    "a model on two lines": lambda r: r.update(model="ollama:\nqwen3"),
    "a time without a timezone": lambda r: r.update(time="2025-05-03T10:02:31.902456"),
    "a time as a number": lambda r: r.update(time=1746266551),
}
SELECT_FAULTS: dict[str, Callable[[dict[str, Any]], object]] = {
    "an unknown field": lambda r: r.update(branch=2),
    "no time": lambda r: drop(r, "time"),
    "a message id that is not an id": lambda r: r.update(select="the second answer"),
    "a message id null": lambda r: r.update(select=None),
    "a message id as a number": lambda r: r.update(select=2),
    "a time without a timezone": lambda r: r.update(time="2025-05-03T09:33:05.730261"),
    "a time that is not a time": lambda r: r.update(time="later"),
}


@pytest.mark.parametrize("change", DRAFT_FAULTS.values(), ids=DRAFT_FAULTS.keys())
def test_a_draft_nbchat_refuses_is_refused_by_the_schema(change: Callable[[dict[str, Any]], object]) -> None:
    """Each fault is refused twice: by draft.schema.json and by records.parse_line."""
    record = draft_with(change)
    assert not draft_validator().is_valid(record)
    with pytest.raises(RecordError):
        records.parse_line(encode(record))


@pytest.mark.parametrize("change", SELECT_FAULTS.values(), ids=SELECT_FAULTS.keys())
def test_a_select_record_nbchat_refuses_is_refused_by_the_schema(
    change: Callable[[dict[str, Any]], object],
) -> None:
    """Each fault is refused twice: by select.schema.json and by records.parse_line."""
    record = select_with(change)
    assert not select_validator().is_valid(record)
    with pytest.raises(RecordError):
        records.parse_line(encode(record))


def test_the_example_draft_and_select_and_a_first_draft_are_valid() -> None:
    """The positive side of the faults above, with a draft of empty text answering nothing."""
    for check, record in (
        (draft_validator(), draft_with(lambda r: None)),
        (draft_validator(), draft_with(lambda r: r.update(parent=None, model=None, text="", thinking=""))),
        (select_validator(), select_with(lambda r: None)),
    ):
        assert_valid(check, record)
        records.parse_line(encode(record))


def test_a_newer_format_is_reported_as_such_not_as_damage() -> None:
    """A higher version wins over any other fault: the file is left for a newer nbchat."""
    record = header_with(lambda r: r.update(version=records.FORMAT_VERSION + 1, something_new=True))
    with pytest.raises(UnsupportedVersion, match="newer nbchat"):
        records.parse_header(encode(record))


def write_users(data_dir: Path, change: Callable[[dict[str, Any]], object]) -> object:
    users = json.loads((EXAMPLES / "users.json").read_text(encoding="utf-8"))
    users = changed(users, change)
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "users.json").write_text(json.dumps(users), encoding="utf-8")
    return users


USERS_FAULTS: dict[str, tuple[Callable[[dict[str, Any]], object], type[Exception]]] = {
    "version 2": (lambda u: u.update(version=2), UnsupportedVersion),
    "no version": (lambda u: drop(u, "version"), CorruptFile),
    "no users object": (lambda u: u.update(users=[]), CorruptFile),
    "a key in capitals": (lambda u: u["users"].update(Carol=u["users"].pop("alice")), CorruptFile),
    "a key that is a device name": (lambda u: u["users"].update(nul=u["users"].pop("alice")), CorruptFile),
    "a key ending in a dot": (lambda u: u["users"].update({"alice.": u["users"].pop("alice")}), CorruptFile),
    "a missing account_id": (lambda u: drop(u["users"]["alice"], "account_id"), CorruptFile),
    "a bad account_id": (lambda u: u["users"]["alice"].update(account_id="42"), CorruptFile),
    "a missing password hash": (lambda u: drop(u["users"]["alice"], "password_hash"), CorruptFile),
    "a hash that is not bcrypt": (
        lambda u: u["users"]["alice"].update(password_hash="pbkdf2:sha256:600000$x$y"),
        CorruptFile,
    ),
    "a creation time that is not a time": (lambda u: u["users"]["alice"].update(created="May"), CorruptFile),
    "an account that is not an object": (lambda u: u["users"].update(alice="Alice"), CorruptFile),
}


@pytest.mark.parametrize(("change", "error"), USERS_FAULTS.values(), ids=USERS_FAULTS.keys())
def test_an_accounts_file_nbchat_refuses_is_refused_by_the_schema(
    tmp_path: Path, change: Callable[[dict[str, Any]], object], error: type[Exception]
) -> None:
    """Each fault is refused by the schema, and nbchat reports the file instead of reading it."""
    users = write_users(tmp_path, change)
    assert not users_validator().is_valid(users)
    with pytest.raises(error):
        nbchat.Accounts(nbchat.Config(data_dir=tmp_path)).usernames()


# -- where the schemas and the parser knowingly differ -----------------------------------------


def test_nbchat_strips_spaces_around_a_title_while_the_schema_wants_the_stripped_form() -> None:
    """nbchat never writes them, but tolerates them in a hand-edited file."""
    record = header_with(lambda r: r.update(title="  Soft-boiled eggs "))
    assert not header_validator().is_valid(record)
    assert records.parse_header(encode(record)).title == "Soft-boiled eggs"


@pytest.mark.parametrize("empty", [None, []], ids=["null", "an empty list"])
def test_nbchat_reads_an_empty_context_as_none_while_the_schema_wants_it_left_out(empty: object) -> None:
    """nbchat writes context only when there is some, but takes null or [] in a hand-edited file
    as none, on any role; the schema keeps to what nbchat writes."""
    for record in (
        question_with(lambda r: r.update(context=empty)),
        message_with(lambda r: r.update(context=empty)),
    ):
        assert not message_validator().is_valid(record)
        message = records.parse_message(encode(record))
        assert message.context == ()
        assert b'"context"' not in records.message_line(message)


def test_json_schema_cannot_refuse_a_message_that_follows_itself() -> None:
    """A parent equal to the message's own id is a valid id to the schema; nbchat refuses it."""
    record = message_with(lambda r: r.update(parent=r["id"]))
    assert message_validator().is_valid(record)
    with pytest.raises(RecordError, match="cannot follow itself"):
        records.parse_message(encode(record))


def test_json_schema_cannot_see_that_a_parent_or_a_selected_message_is_on_an_earlier_line(
    tmp_path: Path,
) -> None:
    """Each line validates on its own; nbchat checks the file as a whole and moves a file whose
    line answers, or selects, a message no earlier line holds aside as damaged."""
    header, *lines = example_lines()
    for bad, reason in ((lines[1:], "answers message"), ([lines[-1], *lines[:-1]], "selects message")):
        for line in bad:
            record = json.loads(line)
            assert line_validator_for(3, record).is_valid(record)
        store, conversation_id, target = placed(tmp_path / reason.split()[0], EXAMPLE)
        target.write_bytes(header + b"".join(bad))
        with pytest.raises(CorruptFile, match=reason):
            store.get(conversation_id)
        assert not target.exists()


def test_json_schema_cannot_refuse_a_token_count_written_with_a_fraction() -> None:
    """In JSON Schema 512.0 is an integer; nbchat wants 512 and refuses it."""
    record = header_with(lambda r: r["settings"].update(max_new_tokens=512.0))
    assert header_validator().is_valid(record)
    with pytest.raises(RecordError, match="whole number"):
        records.parse_header(encode(record))


def test_json_schema_cannot_refuse_a_version_written_with_a_fraction() -> None:
    """In JSON Schema 2.0 equals 2; nbchat wants the integer and calls 2.0 damage."""
    record = header_with(lambda r: r.update(version=float(records.FORMAT_VERSION)))
    assert header_validator().is_valid(record)
    with pytest.raises(RecordError, match="version"):
        records.parse_header(encode(record))


def test_the_schema_wants_an_offset_on_account_times_which_nbchat_does_not_check() -> None:
    """nbchat writes offsets in users.json but reads times without one; the schema keeps to what it writes."""
    users = json.loads((EXAMPLES / "users.json").read_text(encoding="utf-8"))
    users["users"]["alice"]["created"] = "2025-05-01T09:12:44"
    assert not users_validator().is_valid(users)


# -- gaps the schemas revealed in nbchat, fixed since ---------------------------------------------


def test_version_true_is_refused_by_the_parser_as_by_the_schema() -> None:
    """JSON true is not the number 1, but Python's True == 1."""
    record = header_with(lambda r: r.update(version=True))
    assert not header_validator().is_valid(record)
    with pytest.raises(RecordError):
        records.parse_header(encode(record))


def test_version_true_is_refused_in_the_accounts_file_as_by_the_schema(tmp_path: Path) -> None:
    """The same True == 1 slip in the accounts reader."""
    users = write_users(tmp_path, lambda u: u.update(version=True))
    assert not users_validator().is_valid(users)
    with pytest.raises(CorruptFile):
        nbchat.Accounts(nbchat.Config(data_dir=tmp_path)).usernames()


def test_a_stat_with_a_lone_surrogate_is_refused_as_by_the_schema() -> None:
    """Content and thinking refuse lone surrogates; stats do not, and UTF-8 cannot hold them."""
    record = message_with(lambda r: r["stats"].update(finish_reason="\udc80"))
    assert not message_validator().is_valid(record)
    with pytest.raises(RecordError):
        records.parse_message(encode(record))


def test_a_time_with_an_offset_in_seconds_is_written_as_rfc_3339() -> None:
    """An offset with seconds (+00:19:32) is outside RFC 3339; nbchat writes the time in UTC instead."""
    odd_zone = timezone(timedelta(minutes=19, seconds=32))  # Amsterdam's offset until 1937
    message = Message("user", "Hallo", time=datetime(1930, 5, 3, 9, 30, tzinfo=odd_zone))
    assert_valid(message_validator(), json.loads(records.message_line(message)))


def test_a_hash_bcrypt_cannot_read_is_reported_as_a_damaged_accounts_file(tmp_path: Path) -> None:
    """A hash that merely starts with $2 passes the reader, then bcrypt raises at login."""
    users = write_users(tmp_path, lambda u: u["users"]["alice"].update(password_hash="$2b$12$short"))
    assert not users_validator().is_valid(users)
    with pytest.raises(CorruptFile):  # not bcrypt's ValueError("Invalid salt") at login
        nbchat.Accounts(nbchat.Config(data_dir=tmp_path), bcrypt_rounds=4, kdf=CHEAP_KDF).login(
            "alice", "alice-example-pw"
        )


# -- properties: whatever nbchat accepts, it writes as a valid line and reads back equal ---------------

LINE_CHARS = st.characters(exclude_categories=("Cc", "Cf", "Zl", "Zp", "Cs"))
AWKWARD_CHARS = st.sampled_from(
    [" ", "\u00a0", "\u3000", "\t", "\n", "\r", "\x00", "\x7f", "\x85", "\u200b", "\u2028", "\ufeff"]
    + ["\U000e0001", ".", "-", "é", "🥚", "x"]
    + ["\u200c", "\u200d", "\u200e", "\u200f", "\u061c", "\u202e"]  # joiners and bidi marks: text in titles
)
# Any offset, seconds included: nbchat writes every time in UTC.
ZONES = st.integers(min_value=-(24 * 3600 - 1), max_value=24 * 3600 - 1).map(
    lambda seconds: timezone(timedelta(seconds=seconds))
)
TIMES = st.datetimes(timezones=ZONES)
IDS = st.uuids(version=4).map(lambda u: u.hex)
FINITE_FLOATS = st.floats(allow_nan=False, allow_infinity=False)
STAT_VALUES = st.none() | st.booleans() | st.integers() | FINITE_FLOATS | st.text()


def mostly_one_line(min_size: int = 0, max_size: int = 40) -> st.SearchStrategy[str]:
    """Usually valid one-line text, sometimes with characters nbchat refuses or strips."""
    return st.text(LINE_CHARS, min_size=min_size, max_size=max_size) | st.text(
        LINE_CHARS | AWKWARD_CHARS, min_size=min_size, max_size=max_size
    )


@st.composite
def accepted_settings(draw: st.DrawFn) -> ConversationSettings:
    try:
        return ConversationSettings(
            model=draw(st.none() | mostly_one_line(max_size=310)),
            temperature=draw(st.floats(0, 2) | st.integers(0, 2) | st.floats(-1, 3)),
            max_new_tokens=draw(st.integers(1, 131_072) | st.integers(-10, 200_000)),
            think=draw(st.booleans()),
            system=draw(st.text()),
        )
    except InvalidValue:
        reject()


@st.composite
def accepted_conversations(draw: st.DrawFn) -> Conversation:
    try:
        return Conversation(
            id=draw(IDS),
            title=draw(mostly_one_line(min_size=1, max_size=210)),
            created=draw(TIMES),
            updated=draw(TIMES),
            settings=draw(accepted_settings()),
        )
    except InvalidValue:
        reject()


# Valid kinds and near misses, for the property that the schema and ContextItem agree.
KINDS = st.sampled_from([*CONTEXT_KINDS, "Object", "cell", "errors", "", " error"])


@st.composite
def context_items(draw: st.DrawFn) -> ContextItem:
    try:
        return ContextItem(
            kind=draw(st.sampled_from(CONTEXT_KINDS)),
            name=draw(mostly_one_line(max_size=310)),
            label=draw(mostly_one_line(max_size=210)),
            summary=draw(st.text()),
        )
    except InvalidValue:
        reject()


@st.composite
def accepted_messages(draw: st.DrawFn) -> Message:
    role: Role = draw(st.sampled_from(ROLES))
    try:
        return Message(
            id=draw(IDS),
            role=role,
            content=draw(st.text()),
            thinking=draw(st.none() | st.text()),
            time=draw(TIMES),
            model=draw(st.none() | mostly_one_line(max_size=310)),
            stats=draw(st.none() | st.dictionaries(st.text(), STAT_VALUES)),
            context=tuple(draw(st.lists(context_items(), max_size=3))) if role == "user" else (),
            parent=draw(st.none() | IDS),
        )
    except InvalidValue:
        reject()


@st.composite
def accepted_drafts(draw: st.DrawFn) -> records.Draft:
    try:
        model = check_model_id("model", draw(st.none() | mostly_one_line(max_size=310)))
    except InvalidValue:
        reject()
    parent = draw(st.none() | IDS)
    return records.Draft(draw(IDS), parent, model, draw(TIMES), draw(st.text()), draw(st.text()))


@given(accepted_conversations())
def test_any_conversation_nbchat_accepts_has_a_valid_header_that_reads_back_equal(
    conversation: Conversation,
) -> None:
    """Generated titles, times and settings, including ones nbchat strips or refuses."""
    line = records.header_line(conversation)
    assert line.count(b"\n") == 1 and line.endswith(b"\n")
    assert_valid(header_validator(), json.loads(line))
    assert records.parse_header(line) == conversation


@given(accepted_messages())
def test_any_message_nbchat_accepts_is_a_valid_line_that_reads_back_equal(message: Message) -> None:
    """Generated roles, text, times, models, flat stats and a user's context."""
    line = records.message_line(message)
    assert line.count(b"\n") == 1 and line.endswith(b"\n")
    assert_valid(message_validator(), json.loads(line))
    assert records.parse_message(line) == message


@given(accepted_drafts())
def test_any_draft_nbchat_accepts_is_a_valid_line_that_reads_back_equal(draft: records.Draft) -> None:
    """Generated reply ids, parents, models, times and text: each draft line is one valid line."""
    line = records.draft_line(draft)
    assert line.count(b"\n") == 1 and line.endswith(b"\n")
    assert_valid(draft_validator(), json.loads(line))
    assert records.parse_line(line) == draft  # times compare as instants, whatever the zone


@given(IDS, TIMES)
def test_any_select_record_is_a_valid_line_that_reads_back_equal(message_id: str, time: datetime) -> None:
    line = records.select_line(records.Select(message_id, time))
    assert_valid(select_validator(), json.loads(line))
    assert records.parse_line(line) == records.Select(message_id, time)


def title_is_canonical(title: str) -> bool:
    """nbchat accepts the title and would write it unchanged."""
    try:
        return check_title(title) == title
    except InvalidValue:
        return False


@given(mostly_one_line(max_size=210))
@example("t" * 200)
@example("t" * 201)
@example(" Eggs")
@example("Eggs\u3000")
@example("Eggs\n")
@example("Family 👨\u200d👩\u200d👧")
@example("\u200fשקשוקה\u200f")
def test_the_schema_accepts_a_title_exactly_when_nbchat_would_write_it_unchanged(title: str) -> None:
    """Valid titles are the fixed points of check_title: one line, 1-200 characters, trimmed."""
    record = header_with(lambda r: r.update(title=title))
    assert header_validator().is_valid(record) == title_is_canonical(title)


def context_item_accepted(item: dict[str, Any]) -> bool:
    try:
        ContextItem(item["kind"], item["name"], item["label"], item["summary"])
    except InvalidValue:
        return False
    return True


@given(
    st.fixed_dictionaries(
        {
            "kind": KINDS,
            "name": mostly_one_line(max_size=310),
            "label": mostly_one_line(max_size=210),
            "summary": st.text() | st.text().map(lambda text: text + "\udc80"),  # a lone surrogate
        }
    )
)
@example({"kind": "cells", "name": "", "label": "", "summary": ""})
@example({"kind": "object", "name": "n" * 300, "label": "l" * 200, "summary": "s" * 100_000})
@example({"kind": "object", "name": "n" * 301, "label": "l", "summary": "s"})
@example({"kind": "object", "name": "n", "label": "l" * 201, "summary": "s"})
@example({"kind": "object", "name": "n", "label": "l", "summary": "s" * 100_001})
def test_the_schema_accepts_a_context_item_exactly_when_nbchat_does(item: dict[str, Any]) -> None:
    """Kinds, one-line names and labels, lengths and surrogates: the schema and ContextItem agree."""
    record = question_with(lambda r: r.update(context=[item]))
    assert message_validator().is_valid(record) == context_item_accepted(item)
    if context_item_accepted(item):
        assert records.parse_message(encode(record)).context[0].to_dict() == item
    else:
        with pytest.raises(RecordError):
            records.parse_message(encode(record))


# Pieces that build valid names, device names (CON, com1.txt) and near misses (a Kelvin sign K).
USERNAME_PARTS = st.sampled_from(
    [*"aAbBzZ09_-.", "con", "NUL", "com1", "Lpt9", "aux", " ", "é", "\n", "\u212a"]
)


def username_accepted(name: str) -> bool:
    try:
        check_username(name)
    except InvalidUsername:
        return False
    return True


def key_accepted(key: str) -> bool:
    return username_accepted(key) and username_key(key) == key


@given(st.lists(USERNAME_PARTS, max_size=12).map("".join) | st.text(max_size=40))
@example("a" * 32)
@example("a" * 33)
@example("con.txt")
@example("com10")
@example("alice\n")
def test_the_schema_follows_the_username_rules_for_keys_and_display_names(name: str) -> None:
    """Keys are lower-case usernames; display names are usernames with their capitals."""
    users = json.loads((EXAMPLES / "users.json").read_text(encoding="utf-8"))
    as_key = copy.deepcopy(users)
    as_key["users"] = {name: users["users"]["alice"]}
    assert users_validator().is_valid(as_key) == key_accepted(name)
    as_name = copy.deepcopy(users)
    as_name["users"]["alice"]["name"] = name
    assert users_validator().is_valid(as_name) == username_accepted(name)
