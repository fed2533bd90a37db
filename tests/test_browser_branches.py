"""Branches and long chats in a real JupyterLab and Chromium: Regenerate, then ‹ › between the two
replies; Edit a question, then ‹ › back to the old branch; a 1,000-message conversation opens
at its newest 50 with *Show earlier*; a reply whose kernel died shows marked interrupted.

The kernel seeds the data itself before the panel shows: three conversations of one user, the
long one and the interrupted one written by a second store (another kernel, as far as the
panel's store knows). Screenshots of each step go to ``test-artifacts/branches-*.png``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from typing import Any

import pytest
from browser import FRONT_ENDS, choose, notebook, open_seeded, running_lab
from browser import shot as page_shot

from conftest import PASSWORD
from nbchat.testing.ollama_server import OllamaTestServer

MODEL = "ollama:llama3.2:1b"
SEED = f"""
import nbchat
from nbchat import Accounts, Message
from nbchat.records import Draft
from nbchat.session import get_session
from nbchat.types import utcnow
session = get_session()
session.register("dana", {PASSWORD!r})
session.login("dana", {PASSWORD!r})
other = Accounts(session.config, bcrypt_rounds=4).login("dana", {PASSWORD!r}).conversations
long = session.new_conversation("long")
for i in range(500):
    other.append(long.id, Message("user", f"question {{i}}"))
    other.append(long.id, Message("assistant", f"answer {{i}}"))
died = session.new_conversation("died")
question = other.append(died.id, Message("user", "tell me everything"))
reply_id = Message("assistant", "-").id
for text in ("Everything began ", "with a question"):
    other.append_draft(died.id, Draft(reply_id, question.id, {MODEL!r}, utcnow(), text, ""))
other.close()  # the other kernel is gone: nobody holds the reply's lease any more
session.new_conversation("branches")
session.configure(model={MODEL!r})
session.send("what is 2+2?").join(30)
print("seeded", len(session.current.messages))
"""
MESSAGES = ".nbchat-messages .nbchat-message"
#: The message list's last message, as the user reads it.
LAST = f"{MESSAGES}:last-child"


def shot(page: Any, app: str, name: str) -> None:
    """A screenshot with the message list in view (the notebook scrolls inside the page)."""
    page.locator(".nbchat-messages").scroll_into_view_if_needed()
    page_shot(page, f"branches-{app}-{name}")


@pytest.fixture(scope="module", params=sorted(FRONT_ENDS))
def lab(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, ollama: OllamaTestServer
) -> Iterator[dict[str, Any]]:
    scratch = tmp_path_factory.mktemp(f"branches-{request.param}")
    book = notebook(SEED, "nbchat.panel()", ids=["seed", "panel"])
    env = {"NBCHAT_DATA_DIR": str(scratch / "data"), "OLLAMA_HOST": ollama.url}
    ollama.reply_words = ["four, ", "said ", "the first reply"]
    with running_lab(scratch, {"branches.ipynb": book}, env, app=request.param) as lab:
        yield {**lab, "app": request.param}
    ollama.reply_words = None


def test_regenerate_edit_switch_show_earlier_and_an_interrupted_reply(
    lab: dict[str, Any], browser: Any, ollama: OllamaTestServer
) -> None:
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1280, "height": 1100})
    page.set_default_timeout(30_000)
    open_seeded(page, lab, "branches.ipynb", "seeded 2", app=lab["app"])
    messages = page.locator(MESSAGES)
    expect(messages).to_have_count(2, timeout=60_000)
    expect(messages.last).to_contain_text("four, said the first reply")
    expect(page.locator(".nbchat-regenerate")).to_have_count(1)
    expect(page.locator(".nbchat-alt-counter")).to_have_count(0)  # one reply: no switcher yet
    shot(page, lab["app"], "1-one-reply")

    # Regenerate: a new reply streams in place of the first; ‹ 2 / 2 › switches between them.
    ollama.reply_words, ollama.chunk_delay_s = ["four, ", "said ", "the second reply"], 0.3
    page.click("button.nbchat-regenerate")
    expect(page.locator(".nbchat-messages.nbchat-busy")).to_have_count(1)  # every tool disabled meanwhile
    expect(page.locator(".nbchat-edit")).to_have_css("pointer-events", "none")
    expect(page.locator(".nbchat-messages.nbchat-busy")).to_have_count(0, timeout=30_000)
    ollama.chunk_delay_s = 0.0
    reply = messages.last
    expect(reply.locator(".nbchat-alt-counter")).to_have_text("2 / 2", timeout=30_000)
    expect(reply).to_contain_text("four, said the second reply")
    expect(messages).to_have_count(2)
    expect(reply.locator("button.nbchat-alt-next")).to_be_disabled()
    shot(page, lab["app"], "2-regenerated")
    reply.locator("button.nbchat-alt-prev").click()
    expect(messages.last.locator(".nbchat-alt-counter")).to_have_text("1 / 2")
    expect(messages.last).to_contain_text("four, said the first reply")
    expect(messages.last.locator("button.nbchat-alt-prev")).to_be_disabled()
    shot(page, lab["app"], "3-previous-reply")
    messages.last.locator("button.nbchat-alt-next").click()
    expect(messages.last.locator(".nbchat-alt-counter")).to_have_text("2 / 2")
    expect(messages.last).to_contain_text("four, said the second reply")

    # Edit the question: an inline editor; Send starts a branch; ‹ › on the question goes back.
    ollama.reply_words = ["six, ", "said ", "the edited branch"]
    question = messages.first
    question.locator("button.nbchat-edit").click()
    editor = question.locator(".nbchat-edit-text textarea")
    expect(editor).to_have_value("what is 2+2?")
    editor.press("Escape")  # changed its mind: the editor closes, nothing is sent
    expect(page.locator(".nbchat-edit-text")).to_have_count(0)
    expect(question.locator("button.nbchat-edit")).to_be_visible()
    question.locator("button.nbchat-edit").click()
    expect(editor).to_have_value("what is 2+2?")
    shot(page, lab["app"], "4-editing")
    cells = page.locator(".jp-Notebook .jp-Cell").count()
    editor.fill("")
    editor.press_sequentially("what is 3+3?")  # real key presses: none is taken as a notebook shortcut
    assert page.locator(".jp-Notebook .jp-Cell").count() == cells
    question.locator("button.nbchat-edit-send").click()
    expect(messages.last).to_contain_text("six, said the edited branch", timeout=30_000)
    expect(messages.first.locator(".nbchat-alt-counter")).to_have_text("2 / 2")
    expect(messages.first).to_contain_text("what is 3+3?")
    expect(page.locator(".nbchat-edit-text")).to_have_count(0)  # the editor closed
    shot(page, lab["app"], "5-edited")
    messages.first.locator("button.nbchat-alt-prev").click()
    expect(messages.first).to_contain_text("what is 2+2?")
    expect(messages.first.locator(".nbchat-alt-counter")).to_have_text("1 / 2")
    expect(messages.last).to_contain_text("four, said the second reply")  # the old branch, as it was left
    expect(messages.last.locator(".nbchat-alt-counter")).to_have_text("2 / 2")
    shot(page, lab["app"], "6-old-branch")

    # A 1,000-message conversation opens at its newest 50, fast; Show earlier adds 50 a click.
    opened = []
    for name in ("long", "branches", "long", "branches", "long"):
        started = time.perf_counter()
        choose(page, ".nbchat-conversations", name)
        if name == "long":
            page.wait_for_function(
                "() => { const m = document.querySelectorAll('.nbchat-messages .nbchat-message');"
                " return m.length === 50 && m[49].textContent.includes('answer 499'); }",
                polling="raf",
            )
            opened.append(time.perf_counter() - started)
        else:
            expect(messages.first).to_contain_text("what is 2+2?")
    print("open 1,000 messages (s):", [round(s, 3) for s in opened], "median", statistics.median(opened))
    earlier = page.locator("button.nbchat-show-earlier")
    expect(earlier).to_have_text("Show 50 earlier (950 more)")
    expect(messages.first).to_contain_text("question 475")
    shot(page, lab["app"], "7-long-newest")
    earlier.click()
    expect(messages).to_have_count(100)
    expect(messages.first).to_contain_text("question 450")
    expect(earlier).to_have_text("Show 50 earlier (900 more)")
    page.locator(".nbchat-messages").evaluate("list => { list.scrollTop = 0; }")
    shot(page, lab["app"], "8-long-earlier")

    # The reply whose kernel died: its drafted text, marked interrupted.
    choose(page, ".nbchat-conversations", "died")
    expect(messages).to_have_count(2)
    expect(messages.last).to_contain_text("Everything began with a question")
    expect(messages.last).to_contain_text(
        "interrupted: the kernel stopped while this reply was being written"
    )
    expect(messages.last.locator("button.nbchat-regenerate")).to_be_visible()
    shot(page, lab["app"], "9-interrupted")
    page.close()
