"""NotebookBridge in a real JupyterLab, driven from a notebook cell in headless Chromium.

A cell of the notebook makes the bridge and inserts and runs blocks; the test reads
the notebook back as JupyterLab saved it (the contents API), so what it checks is
the file a user gets: the cells' exact sources, types and the run cell's output.
Screenshots go to ``test-artifacts/``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from browser import KERNEL_IDLE, cell_text, notebook, run_cell, running_lab, saved_cells, saved_count, shot
from polling import wait_until

from conftest import PASSWORD
from nbchat.testing.ollama_server import OllamaTestServer

#: The cells of the notebook in view (JupyterLab may keep an earlier test's notebook open, hidden).
CELLS = ".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell"
SETUP = "import nbchat.notebook as nb\nbridge = nb.notebook_bridge()\nprint('made the bridge')"
INSERTS = (
    "print('available:', bridge.available())\n"
    "bridge.insert(nb.CodeBlock('python', 'x = 6 * 7\\nprint(\"inserted\", x)\\n'))\n"
    "bridge.insert(nb.CodeBlock('markdown', '# Heading from the bridge\\n'))\n"
    "bridge.run(nb.CodeBlock('bash', 'echo ran-by-bridge\\n'))"
)
WAIT_IN_A_THREAD = (
    "import threading\n"
    "import nbchat.notebook as nb\n"
    "answers = []\n"
    "waiter = threading.Thread(target=lambda: answers.append(nb.NotebookBridge().available(timeout=20)))\n"
    "waiter.start()  # the front end's answer is read once this cell ends; the thread waits for it"
)
CHAT_SETUP = (
    "import nbchat\n"
    "session = nbchat.get_session()\n"
    f"session.register('carol', {PASSWORD!r})\n"
    f"session.login('carol', {PASSWORD!r})\n"
    "%load_ext nbchat"
)
CHAT_CELL = "%chat --new Code -m ollama:llama3.2:1b --cell how do I add two numbers?"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, ollama: OllamaTestServer) -> Iterator[dict[str, Any]]:
    """JupyterLab on loopback (token, scratch dirs) with this module's notebooks; kernels reach ``ollama``."""
    scratch = tmp_path_factory.mktemp("lab-bridge")
    notebooks = {
        "bridge.ipynb": notebook(SETUP, INSERTS),
        "bridge-thread.ipynb": notebook(WAIT_IN_A_THREAD, "print('answered:', answers)"),
        "cell-magic.ipynb": notebook(CHAT_SETUP, CHAT_CELL),
    }
    env = {"NBCHAT_DATA_DIR": str(scratch / "nbchat-data"), "OLLAMA_HOST": ollama.url}
    with running_lab(scratch, notebooks, env) as running:
        yield running


def _open(browser: Any, lab: dict[str, Any], name: str) -> Any:
    """A new page on notebook ``name``, its kernel idle (reset: no tabs of an earlier test)."""
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.set_default_timeout(30_000)
    page.goto(f"{lab['url']}/lab/tree/{name}?reset&token={lab['token']}")
    page.wait_for_selector(KERNEL_IDLE, timeout=90_000)
    return page


def test_insert_and_run_make_real_cells_below_the_active_one_in_jupyterlab(
    lab: dict[str, Any],
    browser: Any,
) -> None:
    from playwright.sync_api import expect

    name = "bridge.ipynb"
    page = _open(browser, lab, name)
    cells = page.locator(CELLS)

    run_cell(page, CELLS, 0)
    expect(cells.nth(0).locator(".jp-OutputArea-output")).to_contain_text("made the bridge")
    page.wait_for_selector(KERNEL_IDLE)
    run_cell(page, CELLS, 1)
    expect(cells.nth(1).locator(".jp-OutputArea-output")).to_contain_text("available: True")
    expect(cells).to_have_count(5)
    # The run cell's output: %%bash ran in this kernel.
    expect(cells.nth(4).locator(".jp-OutputArea-output")).to_contain_text("ran-by-bridge")
    # The Markdown block is a rendered Markdown cell.
    expect(cells.nth(3).locator(".jp-MarkdownOutput h1")).to_contain_text("Heading from the bridge")
    shot(page, "bridge-1-inserted-and-run")

    page.keyboard.press("Escape")
    page.keyboard.press("Control+s")
    wait_until(lambda: saved_count(lab, name) == 5, seconds=20)
    saved = saved_cells(lab, name)
    assert [(c["cell_type"], cell_text(c["source"])) for c in saved[2:]] == [
        ("code", 'x = 6 * 7\nprint("inserted", x)'),
        ("markdown", "# Heading from the bridge"),
        ("code", "%%bash\necho ran-by-bridge"),
    ]
    assert saved[2]["outputs"] == []  # inserted, not run
    ran = saved[4]["outputs"]
    assert any("ran-by-bridge" in cell_text(o.get("text", "")) for o in ran), json.dumps(ran)

    # The new cells are ordinary edits: JupyterLab's undo (z) takes them back (a quick burst of edits
    # is one undo step in JupyterLab).
    page.locator(CELLS).nth(4).locator(".jp-InputPrompt").click()
    page.keyboard.press("Escape")
    page.keyboard.press("z")
    wait_until(lambda: cells.count() < 5 or "%%bash" not in cells.nth(4).inner_text(), seconds=10)
    shot(page, "bridge-2-undone")
    page.close()


def test_chat_cell_puts_the_replys_code_into_a_new_cell_below_in_jupyterlab(
    lab: dict[str, Any],
    browser: Any,
    ollama: OllamaTestServer,
) -> None:
    from playwright.sync_api import expect

    name = "cell-magic.ipynb"
    ollama.reply_words = ["Like this:\n\n", "```python\n", "total = 2 + 3\n", "print(total)\n", "```\n"]
    try:
        page = _open(browser, lab, name)
        cells = page.locator(CELLS)
        run_cell(page, CELLS, 0)
        expect(cells.nth(0).locator(".jp-InputPrompt")).to_contain_text("[1]")
        page.wait_for_selector(KERNEL_IDLE)
        run_cell(page, CELLS, 1)
        expect(cells.nth(1).locator(".jp-OutputArea-output").first).to_contain_text("Like this:")
        expect(cells).to_have_count(3)
        expect(cells.nth(1)).to_contain_text("The reply's code is in a new cell below.")
        shot(page, "bridge-3-chat-cell")
        page.keyboard.press("Escape")
        page.keyboard.press("Control+s")
        wait_until(lambda: saved_count(lab, name) == 3, seconds=20)
        new = saved_cells(lab, name)[2]
        assert (new["cell_type"], cell_text(new["source"])) == ("code", "total = 2 + 3\nprint(total)")
        page.close()
    finally:
        ollama.reply_words = None


def test_off_the_kernels_main_thread_available_waits_for_the_front_ends_answer(
    lab: dict[str, Any],
    browser: Any,
) -> None:
    from playwright.sync_api import expect

    name = "bridge-thread.ipynb"
    page = _open(browser, lab, name)
    cells = page.locator(CELLS)
    run_cell(page, CELLS, 0)
    expect(cells.nth(0).locator(".jp-InputPrompt")).to_contain_text("[1]")
    page.wait_for_selector(KERNEL_IDLE)
    # The front end's answer is a comm message, which the kernel reads only while no cell runs: so
    # the second cell must not block (a join() there starves the thread it waits for). Run it again,
    # idle in between, until the thread has its answer: True, or False after its 20 s.
    answers = cells.nth(1).locator(".jp-OutputArea-output")
    for count in range(2, 42):
        run_cell(page, CELLS, 1)
        expect(cells.nth(1).locator(".jp-InputPrompt")).to_contain_text(f"[{count}]")
        page.wait_for_selector(KERNEL_IDLE)
        if "answered: []" not in answers.inner_text():
            break
        page.wait_for_timeout(1_000)
    expect(answers).to_contain_text("answered: [True]")
    page.close()
