"""A long conversation in a real JupyterLab and Notebook 7: the message box follows a streaming reply
to its end, stays where the user scrolled up to read, and "↓ newest" brings it back (headless Chromium)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest
from browser import FRONT_ENDS, notebook, open_seeded, running_lab, shot

from conftest import PASSWORD
from nbchat.testing.ollama_server import OllamaTestServer

MODEL = "ollama:llama3.2:1b"
#: A conversation of 40 messages made by the kernel itself, before the panel shows it.
SEED = f"""
import nbchat
from nbchat.session import get_session
session = get_session()
session.register("carol", {PASSWORD!r})
session.login("carol", {PASSWORD!r})
session.new_conversation("long")
session.configure(model={MODEL!r})
for i in range(20):
    session.send(f"question {{i}}").join(30)
print("seeded", len(session.current.messages))
"""
#: How far the list's bottom is from its view: 0 (within a pixel or so) when it shows the newest text.
LIST = "document.querySelector('.nbchat-messages')"
GAP = f"() => {{ const l = {LIST}; return l.scrollHeight - l.scrollTop - l.clientHeight; }}"
TOP = f"() => {LIST}.scrollTop"
HEIGHT = f"() => {LIST}.scrollHeight"


@pytest.fixture(scope="module", params=sorted(FRONT_ENDS))
def lab(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, ollama: OllamaTestServer
) -> Iterator[dict[str, object]]:
    scratch = tmp_path_factory.mktemp(request.param)
    chat = notebook(SEED, "nbchat.panel()", ids=["seed", "panel"])
    env = {"NBCHAT_DATA_DIR": str(scratch / "data"), "OLLAMA_HOST": ollama.url}
    with running_lab(scratch, {"chat.ipynb": chat}, env, app=request.param) as lab:
        yield {**lab, "app": request.param}


def streaming(page: object) -> bool:
    return bool(page.locator(".nbchat-streaming").count())  # type: ignore[attr-defined]


def test_the_message_box_follows_a_streaming_reply_unless_the_user_scrolls_up(
    lab: dict[str, object], browser: object, ollama: OllamaTestServer
) -> None:
    from playwright.sync_api import expect

    ollama.reply_words = [f"answer line {i}\n\n" for i in range(3)]
    page = browser.new_page(viewport={"width": 1280, "height": 1000})  # type: ignore[attr-defined]
    page.set_default_timeout(30_000)
    open_seeded(page, lab, "chat.ipynb", "seeded 40", app=str(lab["app"]))
    messages = page.locator(".nbchat-messages .nbchat-message")
    expect(messages).to_have_count(40, timeout=60_000)
    assert page.evaluate(HEIGHT) > 3 * page.evaluate(f"() => {LIST}.clientHeight")  # far longer than the box
    page.wait_for_function(f"() => ({GAP})() <= 2")  # opened at the newest message
    shot(page, f"scroll-{lab['app']}-1-opened")

    # A long reply streams: the box keeps showing its newest text all along.
    ollama.reply_words = [f"streamed line {i} " + ("\n\n" if i % 4 == 3 else "") for i in range(400)]
    ollama.chunk_delay_s = 0.03
    page.fill(".nbchat-prompt textarea", "tell me a long story")
    page.click("button.nbchat-send")
    streamed = page.locator(".nbchat-streaming")
    expect(streamed).to_contain_text("streamed line 20")
    gaps = []
    for _ in range(10):
        time.sleep(0.2)
        gaps.append(page.evaluate(GAP))
    assert streaming(page), "the reply ended before the check: make it longer"
    print("gaps while streaming (px):", gaps)
    assert max(gaps) <= 2, gaps  # each redraw followed before the page does anything else
    page.wait_for_function(f"() => ({GAP})() <= 2")
    expect(page.locator(".nbchat-follow-newest")).to_be_hidden()
    shot(page, f"scroll-{lab['app']}-2-following")

    # The user scrolls up to read: the box stays there while the reply grows, and "↓ newest" shows.
    page.locator(".nbchat-messages").hover()
    page.mouse.wheel(0, -1500)
    page.wait_for_function(f"() => ({GAP})() > 1000")
    top = page.evaluate(TOP)
    expect(page.locator(".nbchat-follow-newest")).to_be_visible()
    grown_from = page.evaluate(HEIGHT)
    time.sleep(1.0)
    assert streaming(page)
    assert page.evaluate(HEIGHT) > grown_from  # the reply went on growing below
    assert abs(page.evaluate(TOP) - top) <= 2  # still where the user is reading
    shot(page, f"scroll-{lab['app']}-3-reading-above")

    # "↓ newest": back at the bottom, following again to the end of the reply.
    page.click(".nbchat-follow-newest")
    page.wait_for_function(f"() => ({GAP})() <= 2")
    expect(page.locator(".nbchat-follow-newest")).to_be_hidden()
    assert streaming(page)
    expect(page.locator(".nbchat-streaming")).to_have_count(0, timeout=60_000)
    expect(page.locator(".nbchat-message-assistant").last).to_contain_text("streamed line 399")
    page.wait_for_function(f"() => ({GAP})() <= 2")  # the saved reply, at the very end
    fill = re.compile(r"context [\d,]+ / [\d,]+ tokens \(\d+%\)")
    expect(page.locator(".nbchat-status")).to_contain_text(fill)  # how full the context is
    shot(page, f"scroll-{lab['app']}-4-ended")

    # Scrolled up, the user sends again: the box jumps to the question and follows its reply.
    ollama.reply_words = [f"second story line {i}\n\n" for i in range(40)]
    page.locator(".nbchat-messages").hover()
    page.mouse.wheel(0, -3000)
    expect(page.locator(".nbchat-follow-newest")).to_be_visible()
    page.fill(".nbchat-prompt textarea", "and another")
    page.click("button.nbchat-send")
    expect(page.locator(".nbchat-message-assistant").last).to_contain_text("second story line 39")
    page.wait_for_function(f"() => ({GAP})() <= 2")
    expect(page.locator(".nbchat-follow-newest")).to_be_hidden()
    shot(page, f"scroll-{lab['app']}-5-sent-from-above")
    ollama.chunk_delay_s = 0.0
    ollama.reply_words = None
    page.close()
