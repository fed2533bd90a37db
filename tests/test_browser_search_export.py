"""Search and Export in a real JupyterLab and Chromium.

The kernel seeds an older conversation long enough that its early messages are
far out of the message box's view (and beyond what the panel first shows), then
a newer one, which the panel opens on. Searching for a word of an early
question lists its hits; clicking one opens the older conversation with that
question scrolled into the box's view and highlighted. Exporting it as a
notebook writes a file next to the notebook that ``nbformat`` reads and
validates. Screenshots go to ``test-artifacts/search-*.png``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import nbformat
import pytest
from browser import choose, notebook, open_seeded, running_lab, selected_label, shot

from conftest import PASSWORD
from nbchat.testing.ollama_server import OllamaTestServer

MODEL = "ollama:llama3.2:1b"
QUESTIONS = 40  # 80 messages: more than the panel first shows of a conversation
SEED = f"""
from nbchat.session import get_session
session = get_session()
session.register("carol", {PASSWORD!r})
session.login("carol", {PASSWORD!r})
session.new_conversation("Zoo trip")
session.configure(model={MODEL!r})
for i in range({QUESTIONS}):
    words = "what does an okapi eat?" if i == 2 else f"question number {{i}} about nothing much"
    session.send(words).join(30)
session.new_conversation("Later")
session.configure(model={MODEL!r})
session.send("how do I sort a list?").join(30)
print("seeded", len(session.conversations()))
"""
#: Where a message is in the box: "in" when all of it is within the box's visible part.
IN_VIEW = """el => {
  const box = el.closest('.nbchat-messages').getBoundingClientRect(), r = el.getBoundingClientRect();
  const inside = r.top >= box.top - 1 && r.bottom <= box.bottom + 1 && r.height > 0;
  return inside ? 'in' : `out: ${r.top}-${r.bottom} in ${box.top}-${box.bottom}`;
}"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, ollama: OllamaTestServer) -> Iterator[dict[str, Any]]:
    scratch = tmp_path_factory.mktemp("lab-search")
    book = notebook(SEED, "import nbchat\nnbchat.panel()", ids=["seed", "panel"])
    env = {"NBCHAT_DATA_DIR": str(scratch / "nbchat-data"), "OLLAMA_HOST": ollama.url}
    with running_lab(scratch, {"search.ipynb": book}, env) as lab:
        yield lab


def test_a_search_hit_opens_the_older_conversation_at_its_message_and_export_writes_a_valid_notebook(
    lab: dict[str, Any], browser: Any, ollama: OllamaTestServer
) -> None:
    from playwright.sync_api import expect

    ollama.reply_words = None  # the server echoes each question
    page = browser.new_page(viewport={"width": 1280, "height": 1100})
    page.set_default_timeout(30_000)
    open_seeded(page, lab, "search.ipynb", "seeded 2", timeout_ms=120_000)
    page.wait_for_selector(".nbchat-user:has-text('Logged in as')", timeout=60_000)
    assert selected_label(page, ".nbchat-conversations") == "Later"

    # Search: the early question of the older conversation and its echoed reply.
    page.fill(".nbchat-search input", "okapi")
    page.keyboard.press("Enter")
    hits = page.locator(".nbchat-search-hit")
    expect(hits).to_have_count(2)
    expect(page.locator(".nbchat-search-note")).to_contain_text("2 matches for okapi")
    expect(hits.first.locator("b")).to_have_text("okapi")
    expect(hits.first).to_contain_text("Zoo trip")
    shot(page, "search-1-hits")

    question = hits.filter(has_text="your question")
    expect(question).to_have_count(1)
    question.click()
    page.wait_for_function(
        "() => { const s = document.querySelector('.nbchat-conversations select');"
        " return s.options[s.selectedIndex].text.replace(/\\u00a0/g, ' ') === 'Zoo trip'; }"
    )
    revealed = page.locator(".nbchat-messages .nbchat-revealed")
    expect(revealed).to_have_count(1)
    expect(revealed).to_contain_text("what does an okapi eat?")
    page.wait_for_timeout(800)  # the page places it again while the Markdown above renders
    assert revealed.evaluate(IN_VIEW) == "in"
    expect(page.locator(".nbchat-follow-newest")).to_be_visible()  # the box no longer follows the end
    shot(page, "search-2-opened-at-the-message")
    expect(revealed).to_have_count(0, timeout=10_000)  # the highlight is brief

    # Closing the hits folds them away.
    page.click("button.nbchat-search-close")
    expect(page.locator(".nbchat-search-hit")).to_have_count(0)

    # Export as a notebook: written next to the notebook, said so, valid by nbformat.
    choose(page, ".nbchat-export-format", "Notebook")
    page.click("button.nbchat-export-button")
    note = page.locator(".nbchat-export-note")
    expect(note).to_have_text("Exported to Zoo trip.ipynb, next to the notebook.")
    shot(page, "search-3-exported")
    book = nbformat.read(lab["root"] / "Zoo trip.ipynb", as_version=4)
    nbformat.validate(book)
    sources = [cell.source for cell in book.cells if cell.cell_type == "markdown"]
    assert any("what does an okapi eat?" in source for source in sources)
    assert sum("question number" in source for source in sources) >= QUESTIONS  # questions and echoes
    page.close()
