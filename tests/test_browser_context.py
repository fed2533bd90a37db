"""Notebook-native in a real JupyterLab and Chromium: the kernel's data into a question, a reply's
code back into the notebook.

A notebook defines ``df`` (pandas) and ``nums`` (numpy) in a cell and shows the
panel in the next. The question "what is in @df and @nums?" must reach the
loopback Ollama server with both summaries and show them folded under the
question; the server answers with a fenced Python block, whose Insert makes a
new cell holding exactly that code, whose Run makes one that ran in this kernel
with its output, and whose Copy puts it on the clipboard (the browser context is
granted the clipboard permissions). Screenshots of each step go to
``test-artifacts/context-*.png``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from browser import KERNEL_IDLE, choose, log_in, notebook, running_lab, shot

from nbchat.testing.ollama_server import OllamaTestServer

MODEL = "ollama:llama3.2:1b"
DATA = (
    "import numpy as np\n"
    "import pandas as pd\n"
    "\n"
    "df = pd.DataFrame({'city': ['Oslo', 'Lima', 'Pune'], 'temp': [4.5, 19.0, 31.25]})\n"
    "nums = np.arange(10) * 1.5"
)
FAILING = "units = {'celsius': 1}\nunits['kelvin']"
CODE = "total = float(nums.sum())\nprint(f'total={total:.1f} over {len(df)} cities')"
REPLY = [
    "Sum ",
    "them ",
    "like ",
    "this:\n\n",
    "```python\n",
    *(line + "\n" for line in CODE.split("\n")),
    "```\n",
]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, ollama: OllamaTestServer) -> Iterator[dict[str, Any]]:
    scratch = tmp_path_factory.mktemp("lab-context")
    data = scratch / "nbchat-data"
    book = notebook(DATA, "import nbchat\nnbchat.panel()", ids=["data", "panel"])
    env = {"NBCHAT_DATA_DIR": str(data), "OLLAMA_HOST": ollama.url}
    with running_lab(scratch, {"context.ipynb": book}, env) as lab:
        yield lab


def cell_texts(page: Any) -> list[str]:
    """Each cell's source as its editor shows it (CodeMirror draws one element per line)."""
    return page.eval_on_selector_all(
        ".jp-Notebook .jp-Cell",
        "cells => cells.map(c => [...c.querySelectorAll('.jp-InputArea-editor .cm-line')]"
        ".map(l => l.textContent).join('\\n'))",
    )


def saved_cells(lab: dict[str, Any]) -> list[dict[str, Any]]:
    return json.loads((lab["root"] / "context.ipynb").read_text())["cells"]


def test_mentioned_data_goes_to_the_model_and_the_reply_code_comes_back_into_the_notebook(
    lab: dict[str, Any], browser: Any, ollama: OllamaTestServer
) -> None:
    from playwright.sync_api import expect

    context = browser.new_context(
        viewport={"width": 1280, "height": 1100}, permissions=["clipboard-read", "clipboard-write"]
    )
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.goto(f"{lab['url']}/lab/tree/context.ipynb?token={lab['token']}")
    page.wait_for_selector(KERNEL_IDLE, timeout=90_000)
    page.click(".jp-Notebook .jp-Cell >> nth=0 >> .jp-InputArea-editor")
    page.keyboard.press("Shift+Enter")  # the data
    page.keyboard.press("Shift+Enter")  # the panel
    page.wait_for_selector(".nbchat-username input", timeout=60_000)
    log_in(page, "carol", register=True)
    choose(page, ".nbchat-model", MODEL)
    expect(page.locator(".nbchat-include-cells input")).to_have_value("0")

    # Context in: both summaries reach the model; the question shows them folded.
    ollama.reply_words = REPLY
    page.fill(".nbchat-prompt textarea", "what is in @df and @nums?")
    page.click("button.nbchat-send")
    expect(page.locator(".nbchat-message-assistant")).to_have_count(1)
    expect(page.locator(".nbchat-streaming")).to_have_count(0, timeout=30_000)
    chats = [r["body"] for r in ollama.requests if r["path"] == "/api/chat"]
    sent = chats[-1]["messages"][-1]["content"]
    assert sent.startswith("what is in @df and @nums?")
    assert all(word in sent for word in ("DataFrame", "city", "Oslo", "31.25", "float64", "13.5")), sent
    folded = page.locator(".nbchat-message-user details.nbchat-context")
    expect(folded).to_have_count(1)
    expect(folded.locator("summary")).to_contain_text("Context: @df")
    expect(folded.locator("summary")).to_contain_text("@nums")
    expect(folded.locator("pre").first).to_be_hidden()
    shot(page, "context-1-question")
    folded.locator("summary").click()
    expect(folded.locator("pre").first).to_be_visible()
    expect(folded).to_contain_text("Oslo")
    shot(page, "context-2-unfolded")

    # Code out: one row of actions for the reply's one block.
    actions = page.locator(".nbchat-code-actions")
    expect(actions.locator(".nbchat-code-block")).to_have_count(1)
    expect(actions.locator(".nbchat-code-run button")).to_have_count(1)
    before = len(cell_texts(page))
    actions.locator(".nbchat-code-insert button").click()
    expect(page.locator(".jp-Notebook .jp-Cell")).to_have_count(before + 1)
    expect(page.locator(".nbchat-status")).to_contain_text("Inserted a new code cell")
    texts = cell_texts(page)
    assert texts.count(CODE) == 1, texts
    inserted = texts.index(CODE)
    assert inserted == 2  # right below the panel's cell (active since the prompt was typed in it)
    page.locator(".jp-Notebook .jp-Cell").nth(inserted).scroll_into_view_if_needed()
    shot(page, "context-3-inserted")

    actions.locator(".nbchat-code-run button").click()
    expect(page.locator(".jp-Notebook .jp-Cell")).to_have_count(before + 2)
    ran = page.locator(".jp-Notebook .jp-Cell .jp-OutputArea-output", has_text="total=67.5 over 3 cities")
    expect(ran).to_have_count(1)
    expect(ran).to_have_text("total=67.5 over 3 cities")
    texts = cell_texts(page)
    assert texts.count(CODE) == 2 and texts[inserted + 1] == CODE  # below the first: the order kept
    ran.scroll_into_view_if_needed()
    shot(page, "context-4-ran")

    # Saved as an ordinary edit: the file holds both new cells, exactly the code, the output with one.
    page.keyboard.press("Escape")
    page.keyboard.press("Control+s")
    page.wait_for_function(
        "() => !document.querySelector('.jp-mod-current .jp-mod-dirty, .jp-Notebook.jp-mod-dirty')"
    )
    page.wait_for_timeout(500)
    cells = [c for c in saved_cells(lab) if "".join(c["source"]) == CODE]
    assert len(cells) == 2, saved_cells(lab)
    outputs = sorted(len(c["outputs"]) for c in cells)
    assert outputs == [0, 1]
    ran_output = next(c for c in cells if c["outputs"])["outputs"][0]
    assert "".join(ran_output["text"]) == "total=67.5 over 3 cities\n"

    # Copy: the browser's clipboard holds the block's code.
    page.evaluate("navigator.clipboard.writeText('nothing yet')")
    copy = actions.locator(".nbchat-code-copy button")
    copy.click()
    expect(copy).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == CODE + "\n"
    expect(page.locator(".nbchat-status")).to_contain_text("Copied the code")
    shot(page, "context-5-copied")

    # The last error, explained: a failing cell, then the panel's button sends its traceback.
    ollama.reply_words = None  # the server echoes the question
    page.locator(".jp-Notebook .jp-Cell").last.locator(".jp-InputArea-editor").click()
    page.keyboard.insert_text(FAILING)
    page.keyboard.press("Control+Enter")
    expect(page.locator(".jp-OutputArea-output", has_text="KeyError")).to_have_count(1)
    asked = len(ollama.requests)
    page.click("button.nbchat-explain-error")
    expect(page.locator(".nbchat-message-user details.nbchat-context")).to_have_count(2)
    expect(page.locator(".nbchat-streaming")).to_have_count(0, timeout=30_000)
    sent = [r["body"] for r in ollama.requests[asked:] if r["path"] == "/api/chat"][-1]["messages"][-1][
        "content"
    ]
    assert sent.startswith("Explain this error and how to fix it") and "KeyError: 'kelvin'" in sent, sent
    expect(page.locator(".nbchat-message-user details.nbchat-context").last).to_contain_text("last error")

    # Recent cells: the failing cell's source goes with the next question.
    page.fill(".nbchat-include-cells input", "1")
    page.fill(".nbchat-prompt textarea", "what did that cell do?")
    asked = len(ollama.requests)
    page.click("button.nbchat-send")
    expect(page.locator(".nbchat-message-user details.nbchat-context")).to_have_count(3)
    expect(page.locator(".nbchat-streaming")).to_have_count(0, timeout=30_000)
    sent = [r["body"] for r in ollama.requests[asked:] if r["path"] == "/api/chat"][-1]["messages"][-1][
        "content"
    ]
    assert sent.startswith("what did that cell do?") and FAILING in sent, sent
    expect(page.locator(".nbchat-message-user details.nbchat-context").last).to_contain_text("1 cell")
    # The earlier reply keeps its row (the echoed questions hold fenced context: rows of their own).
    expect(actions.first.locator(".nbchat-code-label")).to_contain_text("python · 2 lines")
    expect(actions.first.locator(".nbchat-code-run button")).to_be_visible()
    squashed = page.eval_on_selector_all(  # a full list scrolls; none of its items shrinks to fit
        ".nbchat-messages > *", "items => items.filter(i => i.offsetHeight < 20).map(i => i.className)"
    )
    assert squashed == []
    page.locator(".nbchat-messages").evaluate("el => { el.scrollTop = el.scrollHeight; }")
    shot(page, "context-6-error-and-cells")
    context.close()
