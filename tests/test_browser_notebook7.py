"""The code actions in Notebook 7 (``jupyter notebook``), not only in JupyterLab.

Notebook 7 is JupyterLab's shell with fewer parts: its notebook page takes the
notebook commands from JupyterLab's notebook extension, which is why
``NotebookBridge`` claims to drive it. These tests prove it there: a cell makes the
bridge and inserts a Python block, a Markdown block and runs a ``%%bash`` block;
then the panel's Insert and Run buttons put a reply's code below the panel, and
``%chat --cell`` puts it in the next cell. Each
check reads the notebook back as Notebook 7 saved it (the contents API). Notebook 7
has no status bar; the kernel is ready once the top bar shows the kernel's logo
(drawn after the session is ready) and the toolbar's indicator says idle.
Screenshots go to ``test-artifacts/nb7-*.png``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from browser import cell_text, choose, log_in, notebook, run_cell, running_lab, saved_cells, saved_count, shot
from polling import wait_until

from conftest import PASSWORD
from nbchat.testing.ollama_server import OllamaTestServer

#: Notebook 7's page: one notebook, its kernel's logo in the top bar once its session is ready.
NB7_SHELL = "#main-panel .jp-NotebookPanel"
KERNEL_READY = ".jp-NotebookKernelLogo img"
KERNEL_IDLE = ".jp-Notebook-ExecutionIndicator[data-status='idle']"
CELLS = ".jp-NotebookPanel .jp-Notebook .jp-Cell"
SETUP = "import nbchat.notebook as nb\nbridge = nb.notebook_bridge()\nprint('made the bridge')"
INSERTS = (
    "print('available:', bridge.available())\n"
    "bridge.insert(nb.CodeBlock('python', 'x = 6 * 7\\nprint(\"inserted\", x)\\n'))\n"
    "bridge.insert(nb.CodeBlock('markdown', '# Heading from the bridge\\n'))\n"
    "bridge.run(nb.CodeBlock('bash', 'echo ran-by-bridge\\n'))"
)
MODEL = "ollama:llama3.2:1b"
CHAT_SETUP = (
    "import nbchat\n"
    "session = nbchat.get_session()\n"
    f"session.register('dave', {PASSWORD!r})\n"
    f"session.login('dave', {PASSWORD!r})\n"
    "%load_ext nbchat"
)
CHAT_CELL = f"%chat --new Code -m {MODEL} --cell how do I add up 0 to 4?"
CODE = "total = sum(range(5))\nprint(f'total={total}')"
REPLY = ["Add ", "them:\n\n", "```python\n", *(line + "\n" for line in CODE.split("\n")), "```\n"]


@pytest.fixture(scope="module")
def nb7(tmp_path_factory: pytest.TempPathFactory, ollama: OllamaTestServer) -> Iterator[dict[str, Any]]:
    """Notebook 7 on loopback (token, scratch dirs) with this module's notebooks; kernels reach ``ollama``."""
    scratch = tmp_path_factory.mktemp("nb7")
    notebooks = {
        "bridge.ipynb": notebook(SETUP, INSERTS),
        "panel.ipynb": notebook("import nbchat\nnbchat.panel()", ids=["panel"]),
        "cell-magic.ipynb": notebook(CHAT_SETUP, CHAT_CELL),
    }
    env = {"NBCHAT_DATA_DIR": str(scratch / "nbchat-data"), "OLLAMA_HOST": ollama.url}
    with running_lab(scratch, notebooks, env, app="notebook") as running:
        yield running


def _open(browser: Any, server: dict[str, Any], name: str) -> tuple[Any, Any]:
    """A new browser context and page on Notebook 7's page for ``name``, its kernel ready."""
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.goto(f"{server['url']}/notebooks/{name}?token={server['token']}")
    page.wait_for_selector(NB7_SHELL, timeout=90_000)
    assert page.locator("#jp-NotebookLogo").count() == 1  # Notebook 7's own page, not JupyterLab
    assert page.locator(".jp-LabShell").count() == 0
    page.wait_for_selector(KERNEL_READY, timeout=90_000)
    page.wait_for_selector(KERNEL_IDLE, timeout=90_000)
    return context, page


def _save(page: Any, server: dict[str, Any], name: str, count: int) -> list[dict[str, Any]]:
    page.keyboard.press("Escape")
    page.keyboard.press("Control+s")
    wait_until(lambda: saved_count(server, name) == count, seconds=20)
    return saved_cells(server, name)


def test_insert_and_run_make_real_cells_below_the_active_one_in_notebook_7(
    nb7: dict[str, Any], browser: Any
) -> None:
    from playwright.sync_api import expect

    name = "bridge.ipynb"
    context, page = _open(browser, nb7, name)
    cells = page.locator(CELLS)
    run_cell(page, CELLS, 0)
    expect(cells.nth(0).locator(".jp-OutputArea-output")).to_contain_text("made the bridge")
    page.wait_for_selector(KERNEL_IDLE)
    run_cell(page, CELLS, 1)
    expect(cells.nth(1).locator(".jp-OutputArea-output")).to_contain_text("available: True")
    expect(cells).to_have_count(5)
    expect(cells.nth(4).locator(".jp-OutputArea-output")).to_contain_text("ran-by-bridge")
    expect(cells.nth(3).locator(".jp-MarkdownOutput h1")).to_contain_text("Heading from the bridge")
    shot(page, "nb7-1-bridge-inserted-and-run")

    saved = _save(page, nb7, name, 5)
    assert [(c["cell_type"], cell_text(c["source"])) for c in saved] == [
        ("code", SETUP),
        ("code", INSERTS),
        ("code", 'x = 6 * 7\nprint("inserted", x)'),
        ("markdown", "# Heading from the bridge"),
        ("code", "%%bash\necho ran-by-bridge"),
    ]
    assert saved[2]["outputs"] == []  # inserted, not run
    ran = saved[4]["outputs"]
    assert [cell_text(o.get("text", "")) for o in ran] == ["ran-by-bridge\n"], json.dumps(ran)
    context.close()


def test_the_panels_insert_and_run_put_a_replys_code_below_the_panel_in_notebook_7(
    nb7: dict[str, Any], browser: Any, ollama: OllamaTestServer
) -> None:
    from playwright.sync_api import expect

    name = "panel.ipynb"
    context, page = _open(browser, nb7, name)
    cells = page.locator(CELLS)
    run_cell(page, CELLS, 0)
    page.wait_for_selector(".nbchat-username input", timeout=60_000)
    log_in(page, "carol", register=True)
    choose(page, ".nbchat-model", MODEL)
    ollama.reply_words = REPLY
    try:
        page.fill(".nbchat-prompt textarea", "how do I add up 0 to 4?")
        page.click("button.nbchat-send")
        expect(page.locator(".nbchat-message-assistant")).to_have_count(1)
        expect(page.locator(".nbchat-streaming")).to_have_count(0, timeout=30_000)
    finally:
        ollama.reply_words = None
    actions = page.locator(".nbchat-code-actions")
    expect(actions.locator(".nbchat-code-block")).to_have_count(1)

    actions.locator(".nbchat-code-insert button").click()
    expect(cells).to_have_count(2)
    expect(page.locator(".nbchat-status")).to_contain_text("Inserted a new code cell")
    actions.locator(".nbchat-code-run button").click()
    expect(cells).to_have_count(3)
    ran = cells.nth(2).locator(".jp-OutputArea-output")
    expect(ran).to_have_text("total=10")
    expect(cells.nth(1).locator(".jp-OutputArea-output")).to_have_count(0)
    ran.scroll_into_view_if_needed()
    shot(page, "nb7-2-panel-inserted-and-ran")

    saved = _save(page, nb7, name, 3)
    assert [(c["cell_type"], cell_text(c["source"])) for c in saved[1:]] == [("code", CODE), ("code", CODE)]
    assert saved[1]["outputs"] == []
    assert [cell_text(o.get("text", "")) for o in saved[2]["outputs"]] == ["total=10\n"]
    context.close()


def test_chat_cell_puts_the_replys_code_into_a_new_cell_below_in_notebook_7(
    nb7: dict[str, Any], browser: Any, ollama: OllamaTestServer
) -> None:
    from playwright.sync_api import expect

    name = "cell-magic.ipynb"
    context, page = _open(browser, nb7, name)
    cells = page.locator(CELLS)
    run_cell(page, CELLS, 0)
    expect(cells.nth(0).locator(".jp-InputPrompt")).to_contain_text("[1]")
    page.wait_for_selector(KERNEL_IDLE)
    ollama.reply_words = REPLY
    try:
        run_cell(page, CELLS, 1)
        expect(cells.nth(1).locator(".jp-OutputArea-output").first).to_contain_text("Add them:")
        expect(cells).to_have_count(3)
    finally:
        ollama.reply_words = None
    expect(cells.nth(1)).to_contain_text("The reply's code is in a new cell below.")
    shot(page, "nb7-3-chat-cell")
    saved = _save(page, nb7, name, 3)
    assert (saved[2]["cell_type"], cell_text(saved[2]["source"])) == ("code", CODE)
    assert saved[2]["outputs"] == []
    context.close()
