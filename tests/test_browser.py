"""The chat panel in a real JupyterLab, clicked through by headless Chromium (Playwright).

JupyterLab runs on 127.0.0.1 with token auth, a scratch root dir, scratch
Jupyter dirs and a scratch nbchat data dir; its kernel reaches the loopback
Ollama server of this process through ``OLLAMA_HOST``, exactly as a user's
kernel reaches a real Ollama. The browser is Debian's Chromium
(``/usr/bin/chromium``; ``make test`` installs it), never one Playwright
downloads. Screenshots of the key states go to ``test-artifacts/`` (not
committed).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser import KERNEL_IDLE, choose, log_in, notebook, option_labels, running_lab, selected_label, shot

from conftest import file_records
from nbchat.testing.ollama_server import OllamaTestServer

MODEL = "ollama:llama3.2:1b"
#: A cell added later: how many panels the kernel's ipywidgets still hold open (re-runs add none).
OPEN_PANELS = (
    "import ipywidgets\n"
    "print('open panels:', sum(type(w).__name__ == 'ChatPanel'"
    " for w in list(ipywidgets.widgets.widget._instances.values())))"
)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, ollama: OllamaTestServer) -> Iterator[dict[str, object]]:
    """JupyterLab on loopback with a notebook that shows the panel; yields its URL and data dir."""
    scratch = tmp_path_factory.mktemp("lab")
    data = scratch / "nbchat-data"
    chat = notebook("import nbchat\nnbchat.panel()", ids=["panel"])
    with running_lab(
        scratch, {"chat.ipynb": chat}, {"NBCHAT_DATA_DIR": str(data), "OLLAMA_HOST": ollama.url}
    ) as lab:
        yield {**lab, "data": data}


def conversation_header(data: Path, user: str) -> list[dict]:
    """Each conversation's header as saved (opened with the user's key: accounts are encrypted)."""
    files = sorted((data / "conversations" / user).glob("*.jsonl"))
    return [file_records(data, user, path)[0] for path in files]


def log_out(page: object) -> None:
    page.click("button.nbchat-logout")  # type: ignore[attr-defined]
    page.wait_for_selector(".nbchat-username input")  # type: ignore[attr-defined]


def test_two_users_chat_through_the_panel_in_jupyterlab(
    lab: dict[str, object], browser: object, ollama: OllamaTestServer
) -> None:
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1280, "height": 1000})  # type: ignore[attr-defined]
    page.set_default_timeout(30_000)
    page.goto(f"{lab['url']}/lab/tree/chat.ipynb?token={lab['token']}")
    page.wait_for_selector(KERNEL_IDLE, timeout=90_000)
    page.click(".jp-Notebook .jp-Cell .jp-InputArea-editor")
    page.keyboard.press("Shift+Enter")
    page.wait_for_selector(".nbchat-username input", timeout=60_000)
    shot(page, "1-login")

    # Two accounts; registering logs in, so each logs out again.
    log_in(page, "alice", register=True)
    log_out(page)
    log_in(page, "bob", register=True)
    log_out(page)
    expect(page.locator(".nbchat-password input")).to_have_value("")

    # Alice logs in: "choose a model", Send disabled.
    log_in(page, "alice", register=False)
    assert selected_label(page, ".nbchat-model") == "— choose a model —"
    expect(page.locator("button.nbchat-send")).to_be_disabled()
    assert "ollama:llama3.2:1b" in option_labels(page, ".nbchat-model")
    shot(page, "2-choose-a-model")

    # She picks a model and asks; the reply streams in and is rendered as Markdown.
    choose(page, ".nbchat-model", MODEL)
    expect(page.locator("button.nbchat-send")).to_be_enabled()
    ollama.reply_words = [
        "Here ",
        "is ",
        "**bold** ",
        "and ",
        "code:\n\n",
        "```python\n",
        "print('hi')\n",
        "```\n",
        *[f"word{i} " for i in range(40)],
    ]
    ollama.chunk_delay_s = 0.08
    page.fill(".nbchat-prompt textarea", "Show me some Markdown")
    page.click("button.nbchat-send")
    streaming = page.locator(".nbchat-streaming")
    expect(streaming).to_contain_text("Here is")
    expect(page.locator("button.nbchat-stop")).to_be_enabled()
    expect(page.locator("button.nbchat-send")).to_be_disabled()
    assert "word39" not in streaming.inner_text()  # seen mid-stream, not only at the end
    shot(page, "3-streaming")
    expect(page.locator(".nbchat-streaming")).to_have_count(0, timeout=30_000)
    answer = page.locator(".nbchat-message-assistant").last
    expect(answer.locator("strong")).to_have_text("bold")
    expect(answer.locator("pre")).to_contain_text("print('hi')")
    expect(answer).to_contain_text("word39")
    expect(page.locator(".nbchat-status")).to_contain_text("tokens/s")
    ollama.chunk_delay_s = 0.0
    ollama.reply_words = None
    shot(page, "4-reply")

    # Temperature on the fly: the slider's keyboard, then the next message uses it (Ctrl+Enter sends).
    page.locator(".nbchat-temperature .noUi-handle").focus()
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    expect(page.locator(".nbchat-temperature .widget-readout")).to_have_text("0.80")
    deadline = time.monotonic() + 10
    while (
        time.monotonic() < deadline
        and conversation_header(lab["data"], "alice")[0]["settings"]["temperature"] != 0.8
    ):
        time.sleep(0.2)
    assert conversation_header(lab["data"], "alice")[0]["settings"]["temperature"] == 0.8
    page.fill(".nbchat-prompt textarea", "and now warmer")
    page.locator(".nbchat-prompt textarea").press("Control+Enter")
    expect(page.locator(".nbchat-message-assistant")).to_have_count(2)
    chats = [r["body"] for r in ollama.requests if r["path"] == "/api/chat"]
    assert chats[-1]["options"]["temperature"] == 0.8 and chats[-1]["messages"][-1]["content"] == (
        "and now warmer"
    )

    # Rename, then a second conversation that is deleted again.
    page.click("button.nbchat-rename")
    page.fill(".nbchat-rename-text input", "Markdown demo")
    page.click("button.nbchat-rename-ok")
    page.wait_for_function(
        "() => [...document.querySelectorAll('.nbchat-conversations option')]"
        ".some(o => o.text.replace(/\\u00a0/g, ' ') === 'Markdown demo')"
    )
    page.click("button.nbchat-new")
    expect(page.locator(".nbchat-message")).to_have_count(0)
    assert selected_label(page, ".nbchat-model") == "— choose a model —"
    assert len(option_labels(page, ".nbchat-conversations")) == 2
    page.click("button.nbchat-delete")
    page.click("button.nbchat-delete-confirm")
    page.wait_for_function("() => document.querySelectorAll('.nbchat-conversations option').length === 1")
    assert selected_label(page, ".nbchat-model") == "— choose a model —"
    expect(page.locator("button.nbchat-send")).to_be_disabled()
    assert [h["title"] for h in conversation_header(lab["data"], "alice")] == ["Markdown demo"]
    shot(page, "5-after-delete")

    # Back to her conversation: its model and temperature come back with it.
    choose(page, ".nbchat-conversations", "Markdown demo")
    expect(page.locator(".nbchat-message-assistant")).to_have_count(2)
    assert selected_label(page, ".nbchat-model") == MODEL
    expect(page.locator(".nbchat-temperature .widget-readout")).to_have_text("0.80")
    shot(page, "panel")

    # Re-running the panel's cell replaces its panel: the kernel keeps one open, not three.
    cells = page.locator(".jp-Notebook .jp-Cell")
    for _ in range(2):
        cells.nth(0).locator(".jp-InputArea-editor").click()
        page.keyboard.press("Control+Enter")
        page.wait_for_selector(KERNEL_IDLE)
    expect(page.locator(".nbchat-panel")).to_have_count(1)
    expect(page.locator(".nbchat-message-assistant")).to_have_count(2)
    page.keyboard.press("Escape")
    page.keyboard.press("b")  # a new cell below, typed without the editor's auto-closing brackets
    page.keyboard.press("Enter")
    page.keyboard.insert_text(OPEN_PANELS)
    page.keyboard.press("Control+Enter")
    expect(cells.nth(1).locator(".jp-OutputArea-output")).to_have_text("open panels: 1")

    # Logging out empties everything, in the same tab.
    log_out(page)
    expect(page.locator(".nbchat-message")).to_have_count(0)
    expect(page.locator(".nbchat-chat-view")).to_have_count(0)
    shot(page, "6-logged-out")

    # Bob sees none of Alice's conversations.
    log_in(page, "bob", register=False)
    assert option_labels(page, ".nbchat-conversations") == []
    expect(page.locator(".nbchat-message")).to_have_count(0)
    assert "Markdown demo" not in page.locator(".nbchat-panel").inner_text()
    shot(page, "7-bob")
    page.close()
