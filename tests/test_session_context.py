"""What a question attaches, through the session: ``@name`` summaries, recent cells, the last error.

Against the loopback Ollama server, whose log shows exactly what the model was given.
The attached context is saved with the question (``message.context``), shown nowhere in
``content`` (that stays what the user typed), sent with it now and as history later, and
counted against the context window.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import chatting
from nbchat import ChatSession, ContextOverflow, records
from nbchat.errors import UnknownMention
from nbchat.testing.ollama_server import FakeModel, OllamaTestServer


@pytest.fixture
def session(make_session: Callable[..., ChatSession], server: OllamaTestServer) -> ChatSession:
    server.add_model(FakeModel("tiny:ctx", thinking=False, context_length=300))
    return chatting(make_session(server, "alice"))


def sent_user_messages(server: OllamaTestServer) -> list[list[str]]:
    """For each chat request the server got, the content of its user messages."""
    return [
        [m["content"] for m in request["body"]["messages"] if m["role"] == "user"]
        for request in server.requests
        if request["path"] == "/api/chat"
    ]


def test_a_mention_attaches_a_summary_that_is_saved_and_sent(
    session: ChatSession, server: OllamaTestServer
) -> None:
    scores = {"alice": 91, "bob": 78}
    session.send("Who scored best in @scores?", namespace={"scores": scores}).wait(30)
    (question, _answer) = session.history()
    assert question.content == "Who scored best in @scores?"  # what the user typed, unchanged
    (item,) = question.context
    assert (item.kind, item.name) == ("object", "scores") and "alice" in item.summary
    ((sent,),) = sent_user_messages(server)
    assert sent.startswith("Who scored best in @scores?") and item.summary in sent


def test_the_context_stays_with_the_question_in_later_history(
    session: ChatSession, server: OllamaTestServer
) -> None:
    session.send("Look at @data", namespace={"data": [3, 1, 4, 1, 5, 9, 2, 6]}).wait(30)
    session.send("And its largest value?", namespace={}).wait(30)
    first, second = sent_user_messages(server)
    assert second[0] == first[0] and "3, 1, 4, 1, 5" in second[0]
    assert second[1] == "And its largest value?"


def test_the_context_survives_a_new_login(session: ChatSession) -> None:
    session.send("Look at @data", namespace={"data": (1, 2, 3)}).wait(30)
    attached = session.history()[0].context
    session.logout()
    session.login("alice", "correct horse")
    session.select(session.conversations()[0].id)
    assert session.history()[0].context == attached


def test_an_unknown_mention_is_refused_with_close_matches_and_nothing_is_saved_or_sent(
    session: ChatSession, server: OllamaTestServer
) -> None:
    with pytest.raises(UnknownMention, match="did you mean df") as refused:
        session.send("What is in @dff?", namespace={"df": [1], "other": 2})
    assert "@@dff" in str(refused.value)  # how to write a literal @dff
    assert session.history() == [] and session.reply is None and sent_user_messages(server) == []


def test_a_doubled_at_sign_is_sent_as_a_literal_at_sign_and_attaches_nothing(
    session: ChatSession, server: OllamaTestServer
) -> None:
    session.send("Reply to @@alice, or mail bob@example.com", namespace={}).wait(30)
    assert session.history()[0].context == ()
    assert sent_user_messages(server) == [["Reply to @alice, or mail bob@example.com"]]


FRESH_KERNEL = """
import json, sys
from pathlib import Path
from nbchat import Accounts, ChatSession, Config
from nbchat.errors import InvalidValue, NoContext

config = Config(data_dir=Path(sys.argv[1]), max_users=10, ollama_host=sys.argv[2])
session = ChatSession(config, accounts=Accounts(config, bcrypt_rounds=4))
session.register("alice", "correct horse")
session.login("alice", "correct horse")
session.new_conversation()
session.configure(model="ollama:qwen3:1.7b")
said = []
for attempt in (lambda: session.send("What did I just do?", cells=2), session.explain_last_error,
                lambda: session.send("hm", cells=-1)):
    try:
        attempt()
        said.append("sent")
    except InvalidValue as exc:
        said.append(f"{type(exc).__name__}: {exc}")
print(json.dumps({"said": said, "saved": len(session.history())}))
"""


def test_asking_for_cells_or_the_last_error_when_there_is_none_is_refused_before_saving(
    server: OllamaTestServer, tmp_path: Path
) -> None:
    """In a fresh interpreter, where no cell has run and nothing has failed yet."""
    done = subprocess.run(
        [sys.executable, "-c", FRESH_KERNEL, str(tmp_path / "data"), server.url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    cells, error, negative = result["said"]
    assert cells.startswith("NoContext: No cell has run")
    assert error.startswith("NoContext: No error has happened")
    assert negative.startswith("InvalidValue:") and "whole number" in negative
    assert result["saved"] == 0 and sent_user_messages(server) == []


def test_context_too_big_for_the_model_says_what_it_took(session: ChatSession) -> None:
    session.configure(model="ollama:tiny:ctx", max_new_tokens=100)
    big = {f"key{i}": "some fairly long value " * 4 for i in range(200)}
    took = r"What was attached \(@big .*\) took about [\d,]+ of those tokens"
    with pytest.raises(ContextOverflow, match=took):
        session.send("Summarise @big", namespace={"big": big}).wait(30)
    question = session.history()[0]
    assert question.content == "Summarise @big" and question.context  # saved, so the user sees why


def test_a_question_with_context_upgrades_an_old_conversation_file_once(
    make_session: Callable[..., ChatSession], server: OllamaTestServer
) -> None:
    """A version 1 file takes a question with context by being rewritten at the newest version.

    Version 1 files predate encryption: the account is a clear one (a site with the policy off).
    """
    session = chatting(make_session(server, "alice", encrypted=False))
    session.send("plain question", namespace={}).wait(30)
    conversation = session.current
    assert conversation is not None
    path = Path(session.config.data_dir) / "conversations" / "alice" / f"{conversation.id}.jsonl"
    lines = path.read_bytes().splitlines()
    header = json.loads(lines[0])
    header["version"] = 1  # as an earlier nbchat wrote it: no parents, each follows the line before

    def compact(record: dict[str, object]) -> bytes:
        return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode()

    old_messages = [
        compact({k: v for k, v in json.loads(line).items() if k != "parent"}) for line in lines[1:]
    ]
    path.write_bytes(b"\n".join([compact(header), *old_messages]) + b"\n")
    session.select(conversation.id)
    session.send("now with @x", namespace={"x": 42}).wait(30)
    assert json.loads(path.read_bytes().splitlines()[0])["version"] == records.FORMAT_VERSION
    contents = [m.content for m in session.history()]
    assert contents[:3] == ["plain question", "You said: plain question", "now with @x"]


def test_a_reply_says_how_full_the_context_was(session: ChatSession) -> None:
    session.configure(model="ollama:tiny:ctx", max_new_tokens=100)
    for n in range(8):
        reply = session.send(f"question {n}: " + "words " * 30, namespace={}).wait(30)
    assert reply.context_window == 300
    assert reply.prompt_tokens is not None and 0 < reply.prompt_tokens <= 300 - 100
    assert reply.dropped_messages > 0
