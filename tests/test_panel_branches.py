"""Branches and long chats in the panel, widget by widget (the browser's view of them is in
``test_browser_branches.py``): Regenerate on the last reply, Edit on each question, ‹ 2 / 3 ›
among alternatives, *Show earlier* for a long path, an interrupted reply marked."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import ipywidgets as widgets
import pytest
from polling import wait_until

from conftest import CHEAP_KDF, PASSWORD, chatting
from nbchat import Accounts, ChatSession
from nbchat.panel import ChatPanel
from nbchat.panel.branch_bar import BranchBar
from nbchat.panel.message_list import PAGE, MessageList
from nbchat.panel.message_view import BranchActions, MessageView, QuestionView, ReplyView
from nbchat.records import Draft
from nbchat.render import INTERRUPTED_NOTE, message_markdown
from nbchat.testing.ollama_server import OllamaTestServer
from nbchat.tree import MessageTree
from nbchat.types import Message, utcnow

MODEL = "ollama:llama3.2:1b"


def chat(turns: int) -> list[Message]:
    """``turns`` questions, each followed by its reply: one branch."""
    messages: list[Message] = []
    for i in range(turns):
        messages.append(Message("user", f"question {i}"))
        messages.append(Message("assistant", f"answer {i}"))
    return list(MessageTree.linear(messages).messages)


def views(messages: MessageList) -> list[MessageView]:
    return [child for child in messages.view.children if isinstance(child, MessageView)]


def texts(messages: MessageList) -> list[str]:
    return [view.message.content for view in views(messages)]


def bar(view: MessageView) -> BranchBar:
    """The bar holding ``view``'s tools: a question is its own; a reply's is under its Markdown."""
    if isinstance(view, QuestionView):
        return view
    assert isinstance(view, ReplyView) and view.tools is not None, f"{view.message.content!r} has no tools"
    return view.tools


def counter(view: MessageView) -> str:
    return bar(view).counter


def can_regenerate(view: MessageView) -> bool:
    if isinstance(view, QuestionView):
        return bool(view.can_regenerate)
    return isinstance(view, ReplyView) and view.tools is not None and view.tools.can_regenerate


class Heard:
    """What the branch tools reported, in order; ``edits_accepted`` is what ``edit`` answers."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.edits_accepted = True

    def actions(self) -> BranchActions:
        return BranchActions(
            switch=lambda message_id: self.calls.append(("switch", message_id)),
            edit=self._edit,
            regenerate=lambda: self.calls.append(("regenerate",)),
        )

    def _edit(self, message_id: str, text: str) -> bool:
        self.calls.append(("edit", message_id, text))
        return self.edits_accepted


# -- Show earlier ---------------------------------------------------------------------------------


def test_a_long_path_shows_its_newest_50_and_show_earlier_reveals_50_more_a_click() -> None:
    path = chat(500)
    messages = MessageList()
    messages.show(path, tree=MessageTree(path), conversation_id="c")
    assert texts(messages) == [m.content for m in path[-PAGE:]] and PAGE == 50
    assert len(messages._shown) == PAGE  # no widget for a hidden message
    button = messages.view.children[0]
    assert button is messages.show_earlier_button and "nbchat-show-earlier" in button._dom_classes
    assert button.description == "Show 50 earlier (950 more)" and messages.hidden == 950
    first = views(messages)[0]

    messages.show_earlier_button.click()
    assert texts(messages) == [m.content for m in path[-100:]]
    assert button.description == "Show 50 earlier (900 more)"
    assert views(messages)[50] is first  # the ones shown keep their widgets


def test_once_everything_is_shown_show_earlier_goes_away() -> None:
    path = chat(60)
    messages = MessageList()
    messages.show(path)
    messages.show_earlier_button.click()
    assert messages.hidden == 20 and messages.show_earlier_button.description == "Show 20 earlier (20 more)"
    messages.show_earlier_button.click()
    assert len(views(messages)) == 120 and messages.view.children[0] is not messages.show_earlier_button


def test_the_rest_of_a_short_hidden_part_is_offered_as_it_is() -> None:
    path = chat(30)
    messages = MessageList()
    messages.show(path)
    assert messages.show_earlier_button.description == "Show 10 earlier (10 more)"


def test_what_the_user_revealed_stays_shown_as_the_chat_goes_on_and_another_conversation_opens_new() -> None:
    path = chat(60)
    messages = MessageList()
    messages.show(path, conversation_id="long")
    messages.show_earlier()
    oldest = views(messages)[0].message
    assert oldest is path[-100]
    more = list(MessageTree.linear([*path, Message("user", "next"), Message("assistant", "reply")]).messages)
    messages.show(more, conversation_id="long")
    assert views(messages)[0].message is oldest and len(views(messages)) == 102  # nothing revealed went away
    messages.show(more, conversation_id="other")
    assert len(views(messages)) == PAGE  # another conversation opens at its newest
    messages.show(more, conversation_id="long")
    assert len(views(messages)) == PAGE and texts(messages)[-1] == "reply"


def test_without_show_earlier_the_newest_50_follow_the_chat() -> None:
    path = chat(40)
    messages = MessageList()
    messages.show(path, conversation_id="c")
    more = [Message("user", "next"), Message("assistant", "reply")]
    longer = list(MessageTree.linear([*path, *more]).messages)
    messages.show(longer, conversation_id="c")
    assert len(views(messages)) == PAGE and texts(messages)[-2:] == ["next", "reply"]
    assert messages.show_earlier_button.description == "Show 32 earlier (32 more)"


def test_showing_1000_messages_costs_what_showing_50_does() -> None:
    """What makes a long conversation open fast: widgets only for what is shown."""

    def seconds(turns: int) -> float:
        path = chat(turns)
        tree = MessageTree(path)
        best = float("inf")
        for _ in range(3):
            messages = MessageList()
            started = time.perf_counter()
            messages.show(tree.path(), tree=tree, conversation_id="c")
            best = min(best, time.perf_counter() - started)
            messages.close()
        return best

    short, long = seconds(25), seconds(500)
    print(f"show 50 messages: {short * 1000:.1f} ms; 1,000 messages: {long * 1000:.1f} ms")
    assert long < 2 * short + 0.02, (short, long)


def test_a_search_hit_deep_in_a_long_conversation_is_shown_when_it_opens() -> None:
    path = chat(100)
    messages = MessageList()
    messages.show(path[:10], conversation_id="other")
    messages.reveal("long", path[20].id)
    messages.show(path[:10], conversation_id="other")  # a redraw before the hit's conversation opens
    messages.show(path, conversation_id="long")
    assert views(messages)[0].message is path[20] and messages.hidden == 20
    question, reply = views(messages)[:2]
    assert (
        isinstance(question, QuestionView) and question.message_id == path[20].id
    )  # its text: nbchat-msg-<id>
    assert isinstance(reply, ReplyView) and f"nbchat-msg-{path[21].id}" in reply._dom_classes
    messages.show(path, conversation_id="long")
    assert messages.hidden == 20  # revealed, it stays shown
    messages.reveal("long", path[-3].id)  # already shown: nothing more to reveal
    assert messages.hidden == 20


# -- the branch tools -----------------------------------------------------------------------------


def branched() -> tuple[list[Message], Message, Message, Message]:
    """A question with two replies (the second shown) and a follow-up question, unanswered."""
    question = Message("user", "what is 2+2?")
    first = Message("assistant", "5", parent=question.id)
    second = Message("assistant", "4", parent=question.id)
    return [question, first, second], question, first, second


def test_a_reply_with_alternatives_shows_which_it_is_and_switches_to_its_neighbours() -> None:
    every, question, first, second = branched()
    tree = MessageTree(every)
    assert [m.id for m in tree.path()] == [question.id, second.id]
    heard = Heard()
    messages = MessageList(branches=heard.actions())
    messages.show(tree.path(), tree=tree, conversation_id="c")
    shown_question, shown_reply = views(messages)
    assert isinstance(shown_reply, ReplyView) and counter(shown_reply) == "2 / 2"
    assert (shown_reply.tools.position, shown_reply.tools.total) == (2, 2)  # type: ignore[union-attr]
    assert bar(shown_question).total == 1 and counter(shown_question) == ""  # one question: no switcher
    bar(shown_reply).switch(1)  # › at the end: nothing to switch to (the page shows it disabled)
    assert heard.calls == []
    bar(shown_reply).switch(-1)
    assert heard.calls == [("switch", first.id)]

    other = MessageTree(every, last_used={first.id: 10})  # the user switched: the first reply is shown
    messages.show(other.path(), tree=other, conversation_id="c")
    shown = views(messages)[1]
    assert shown.message is first and counter(shown) == "1 / 2" and bar(shown).position == 1
    bar(shown).switch(-1)
    assert len(heard.calls) == 1
    bar(shown).switch(1)
    assert heard.calls[-1] == ("switch", second.id)


def test_regenerate_is_on_the_last_reply_only_and_every_tool_waits_while_a_reply_streams() -> None:
    heard = Heard()
    messages = MessageList(branches=heard.actions())
    path = chat(3)
    messages.show(path, tree=MessageTree(path))
    shown = views(messages)
    assert [can_regenerate(view) for view in shown] == [False] * 5 + [True]
    assert [isinstance(view, QuestionView) and view.editable for view in shown] == [True, False] * 3
    assert [isinstance(view, ReplyView) and view.tools is None for view in shown] == [False, True] * 2 + [
        False,
        False,
    ]  # a reply gets a bar only once it has something to show
    bar(shown[-1]).regenerate()
    assert heard.calls == [("regenerate",)]

    longer = list(MessageTree.linear([*path, Message("user", "more?")]).messages)
    messages.show(longer, tree=MessageTree(longer))
    assert views(messages)[5] is shown[-1] and not can_regenerate(shown[-1])


def test_a_question_left_without_an_answer_offers_regenerate_to_answer_it() -> None:
    """Its kernel died before a word of the reply was saved, or saving failed: the path ends in it."""
    heard = Heard()
    messages = MessageList(branches=heard.actions())
    path = list(MessageTree.linear([*chat(1), Message("user", "unanswered")]).messages)
    messages.show(path, tree=MessageTree(path))
    shown = views(messages)
    assert [can_regenerate(view) for view in shown] == [False, False, True]
    bar(shown[-1]).regenerate()
    assert heard.calls == [("regenerate",)]
    messages.show(path, tree=MessageTree(path), live=widgets.Output())  # a reply to it is streaming
    assert not can_regenerate(views(messages)[-1])


def test_while_a_reply_streams_the_list_says_so_once_for_every_bar() -> None:
    """The page disables every tool under the list's class ``nbchat-busy``: one change at a
    reply's start and end, however many messages are shown (the session refuses the rest)."""
    messages = MessageList()
    path = chat(25)
    messages.show(path, tree=MessageTree(path))
    assert "nbchat-busy" not in messages.view._dom_classes
    changes: list[object] = []
    for view in views(messages):
        view_bar = view if isinstance(view, QuestionView) else view.tools  # type: ignore[attr-defined]
        if view_bar is not None:
            view_bar.observe(changes.append)
    messages.show(path, tree=MessageTree(path), busy=True)
    assert "nbchat-busy" in messages.view._dom_classes and changes == []
    messages.show(path, tree=MessageTree(path))
    assert "nbchat-busy" not in messages.view._dom_classes and changes == []


def test_edit_opens_an_inline_editor_with_the_question_and_send_reports_the_new_text() -> None:
    heard = Heard()
    messages = MessageList(branches=heard.actions())
    path = chat(2)
    messages.show(path, tree=MessageTree(path))
    question = views(messages)[2]
    assert isinstance(question, QuestionView) and question.text == "question 1" and not question.editing
    question.edit()  # what Edit does: the page opens the editor holding ``text``
    assert question.editing

    heard.edits_accepted = False  # refused (the status line says why): the editor stays to fix it
    question.send_edit("question one, better")
    assert heard.calls == [("edit", path[2].id, "question one, better")] and question.editing
    heard.edits_accepted = True
    question.send_edit("question one, better")
    assert not question.editing and len(heard.calls) == 2
    question.send_edit("not while closed")
    assert len(heard.calls) == 2

    question.edit()
    question.cancel()
    assert not question.editing and len(heard.calls) == 2


def test_a_question_is_one_widget_holding_its_text_and_its_tools() -> None:
    messages = MessageList()
    question = Message("user", "<b>bold?</b> & more")
    messages.show([question])
    (view,) = messages.view.children
    assert isinstance(view, QuestionView) and view._dom_classes == ("nbchat-message", "nbchat-message-user")
    assert "&lt;b&gt;bold?&lt;/b&gt; &amp; more" in view.value and view.message_id == question.id


def test_while_a_regenerated_reply_streams_the_reply_it_replaces_is_not_shown_under_it() -> None:
    path = chat(2)
    live = widgets.Output()
    messages = MessageList()
    messages.show(path, live=live, live_after=path[2].id)
    assert texts(messages) == ["question 0", "answer 0", "question 1"]
    assert messages.view.children[-1] is live
    messages.show(path)
    assert texts(messages) == ["question 0", "answer 0", "question 1", "answer 1"]


def test_a_closed_list_closes_each_message_and_its_tools() -> None:
    messages = MessageList()
    path = chat(1)
    messages.show(path)
    question, reply = views(messages)
    assert isinstance(reply, ReplyView) and reply.tools is not None
    parts = [question, reply, reply.tools]
    messages.clear()
    assert [part for part in parts if part.comm is not None] == []
    messages.show(path)
    reply = views(messages)[1]
    assert isinstance(reply, ReplyView) and reply.tools is not None
    messages.close()  # the panel's close: the bar shown inside the reply too
    assert reply.comm is None and reply.tools.comm is None


# -- an interrupted reply -------------------------------------------------------------------------


def test_an_interrupted_reply_is_marked_as_such() -> None:
    reply = Message("assistant", "the first half", stats={"partial": True, "interrupted": True})
    assert message_markdown(reply) == "the first half\n\n" + INTERRUPTED_NOTE
    assert "interrupted: the kernel stopped while this reply was being written" in INTERRUPTED_NOTE
    assert "interrupted" not in message_markdown(replace(reply, stats={"partial": True}))


# -- the panel, with a real session and a loopback Ollama ------------------------------------------


@pytest.fixture
def session(make_session: Callable[..., ChatSession], server: OllamaTestServer) -> ChatSession:
    return make_session(server, "alice")


@pytest.fixture
def panel(session: ChatSession) -> ChatPanel:
    session.login("alice", PASSWORD)
    session.new_conversation()
    session.configure(model=MODEL)
    return ChatPanel(session)


def settled(panel: ChatPanel) -> None:
    """Wait until the reply has ended and the panel shows it saved."""
    wait_until(lambda: panel.session.reply is not None and panel.session.reply.done, seconds=10)
    wait_until(lambda: panel._live is None and panel.stop_button.disabled)


def shown(panel: ChatPanel) -> list[MessageView]:
    return [child for child in panel.messages.children if isinstance(child, MessageView)]


def sent_history(server: OllamaTestServer) -> list[tuple[str, str]]:
    """The messages of the last request Ollama got (role, content), the system prompt left out."""
    body = [r["body"] for r in server.requests if r["path"] == "/api/chat"][-1]
    return [(m["role"], m["content"]) for m in body["messages"] if m["role"] != "system"]


def test_regenerate_streams_a_new_reply_and_the_old_one_is_kept_behind_the_switcher(
    panel: ChatPanel, server: OllamaTestServer
) -> None:
    server.reply_words = ["first ", "answer"]
    panel.prompt.value = "hello"
    panel.send_button.click()
    settled(panel)
    server.reply_words = ["second ", "answer"]
    server.chunk_delay_s = 0.3  # streaming long enough to try things meanwhile
    bar(shown(panel)[-1]).regenerate()
    wait_until(lambda: panel._live is not None)
    assert [view.message.content for view in shown(panel)] == ["hello"]  # the old reply is not under it
    assert panel.messages.children[-1] is panel._live and panel.stop_button.disabled is False
    assert "nbchat-busy" in panel.messages._dom_classes  # the page disables every tool
    bar(shown(panel)[0]).edit()
    bar(shown(panel)[0]).send_edit("sneaked past the page")  # the session refuses it, and says so
    assert "still streaming" in panel.status.value and len(panel.session.tree()) == 2
    settled(panel)
    server.chunk_delay_s = 0.0
    assert sent_history(server) == [("user", "hello")]  # the question alone, not the reply it replaces
    _question, reply = shown(panel)
    assert reply.message.content == "second answer" and counter(reply) == "2 / 2"
    assert can_regenerate(reply)

    bar(reply).switch(-1)
    wait_until(lambda: shown(panel)[-1].message.content == "first answer")
    older = shown(panel)[-1]
    assert counter(older) == "1 / 2"
    assert [m.content for m in panel.session.history()] == ["hello", "first answer"]
    bar(older).switch(1)
    wait_until(lambda: shown(panel)[-1].message.content == "second answer")


def test_editing_a_question_starts_a_branch_and_the_old_one_stays_behind_the_switcher(
    panel: ChatPanel, server: OllamaTestServer
) -> None:
    for text in ("first question", "second question"):
        panel.prompt.value = text
        panel.send_button.click()
        settled(panel)
    question = shown(panel)[0]
    assert isinstance(question, QuestionView)
    question.edit()
    question.send_edit("first question, edited")
    settled(panel)
    assert [view.message.content for view in shown(panel)] == [
        "first question, edited",
        "You said: first question, edited",
    ]
    assert sent_history(server) == [("user", "first question, edited")]
    edited = shown(panel)[0]
    assert counter(edited) == "2 / 2" and edited is not question and question.comm is None
    bar(edited).switch(-1)
    wait_until(lambda: len(shown(panel)) == 4)
    assert [view.message.content for view in shown(panel)] == [
        "first question",
        "You said: first question",
        "second question",
        "You said: second question",
    ]
    assert counter(shown(panel)[0]) == "1 / 2"


def test_a_refused_edit_keeps_the_editor_and_says_why(panel: ChatPanel, server: OllamaTestServer) -> None:
    panel.prompt.value = "hello"
    panel.send_button.click()
    settled(panel)
    question = shown(panel)[0]
    assert isinstance(question, QuestionView)
    question.edit()
    question.send_edit("what is @nothing_by_this_name?")
    assert question.editing and "nbchat-error" in panel.status.value
    assert len(panel.session.tree()) == 2  # nothing saved


def test_a_long_conversation_opens_at_its_newest_50_messages(session: ChatSession) -> None:
    current = chatting(session, model=MODEL).current
    assert current is not None
    store = Accounts(session.config, bcrypt_rounds=4, kdf=CHEAP_KDF).login("alice", PASSWORD).conversations
    for message in chat(300):
        store.append(current.id, message)
    panel = ChatPanel(session)
    assert len(shown(panel)) == PAGE and panel.message_list.hidden == 550
    newest = shown(panel)[-1]
    assert newest.message.content == "answer 299" and can_regenerate(newest)
    panel.message_list.show_earlier_button.click()
    assert len(shown(panel)) == 2 * PAGE and shown(panel)[0].message.content == "question 250"


def test_a_reply_whose_kernel_died_shows_marked_interrupted(session: ChatSession) -> None:
    """Another kernel (its own store) drafted a reply and died before saving it."""
    current = chatting(session, model=MODEL).current
    assert current is not None
    other = Accounts(session.config, bcrypt_rounds=4, kdf=CHEAP_KDF).login("alice", PASSWORD).conversations
    question = other.append(current.id, Message("user", "tell me everything"))
    reply_id = Message("assistant", "x").id
    for text in ("Everything ", "began with "):
        other.append_draft(current.id, Draft(reply_id, question.id, MODEL, utcnow(), text, ""))
    other.close()  # its kernel died: the lease it held on the reply is gone with it
    panel = ChatPanel(session)
    _question, reply = shown(panel)
    assert reply.message.id == reply_id and reply.message.stats == {"partial": True, "interrupted": True}
    markdown = reply.outputs[0]["data"]["text/markdown"]
    assert markdown == "Everything began with \n\n" + INTERRUPTED_NOTE
    assert can_regenerate(reply)  # it can be answered again


def test_streaming_into_a_long_conversation_redraws_only_the_live_reply(
    session: ChatSession, server: OllamaTestServer
) -> None:
    current = chatting(session, model=MODEL).current
    assert current is not None
    store = Accounts(session.config, bcrypt_rounds=4, kdf=CHEAP_KDF).login("alice", PASSWORD).conversations
    for message in chat(500):
        store.append(current.id, message)
    panel = ChatPanel(session)
    redraws: list[object] = []
    panel.messages.observe(redraws.append, "children")
    saved = list(shown(panel))
    server.reply_words, server.chunk_delay_s = [f"w{i} " for i in range(80)], 0.01
    panel.prompt.value = "one more"
    panel.send_button.click()

    def live_text() -> str:
        live = panel._live
        return live.outputs[0]["data"]["text/markdown"] if live is not None else ""

    wait_until(lambda: "w5 " in live_text())
    before = len(redraws)
    wait_until(lambda: "w60 " in live_text())
    assert len(redraws) == before  # the list was not redrawn while the reply streamed: only its own widget
    settled(panel)
    server.chunk_delay_s = 0.0
    assert shown(panel)[-1].message.content.startswith("w0 w1") and len(shown(panel)) == PAGE
    assert all(view.comm is not None for view in saved[2:])  # kept, not made again
