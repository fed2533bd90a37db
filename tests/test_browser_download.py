"""A local model's first use in real JupyterLab: the panel shows the download, then the reply.

The kernel's ``qwen3`` is a repo id (``NBCHAT_QWEN_MODEL``) on a loopback Hugging Face hub
(``HubTestServer``, ``HF_ENDPOINT``) serving the tiny Qwen3, throttled so the download takes a few
seconds; ``HF_HUB_CACHE`` is empty scratch, so the kernel's model process downloads it exactly as a
user's first use does. Headless Debian Chromium reads the bar and the status line while it runs.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser import KERNEL_IDLE, choose, log_in, notebook, option_labels, running_lab, shot

from nbchat.testing.hub_server import HubTestServer
from nbchat.testing.ollama_server import OllamaTestServer
from nbchat.testing.tiny_qwen3 import tiny_qwen3

pytestmark = pytest.mark.slow

REPO = "tiny/Qwen3-test"
DOWNLOAD_S = 7.0  # about how long the throttled download takes: time to watch the bar grow


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[HubTestServer, int]]:
    """The loopback hub serving a small Qwen3 (13 MB: the download reports whole MiB pieces written),
    throttled to about ``DOWNLOAD_S``; and its size."""
    checkpoint = tiny_qwen3(tmp_path_factory.mktemp("qwen3") / "small", hidden_size=256, num_layers=4)
    size = sum(path.stat().st_size for path in checkpoint.rglob("*") if path.is_file())
    with HubTestServer() as server:
        server.add_repo(REPO, checkpoint)
        server.bytes_per_s = size / DOWNLOAD_S
        yield server, size


@pytest.fixture(scope="module")
def lab(
    tmp_path_factory: pytest.TempPathFactory, ollama: OllamaTestServer, hub: tuple[HubTestServer, int]
) -> Iterator[dict[str, object]]:
    scratch = tmp_path_factory.mktemp("lab")
    cache: Path = scratch / "hf-cache"
    env = {
        "NBCHAT_DATA_DIR": str(scratch / "nbchat-data"),
        "OLLAMA_HOST": ollama.url,
        "HF_ENDPOINT": hub[0].url,
        "HF_HUB_CACHE": str(cache),
        "HF_HUB_OFFLINE": "0",
        "NBCHAT_QWEN_MODEL": REPO,
        "NBCHAT_QWEN_DTYPE": "float32",
    }
    chat = notebook("import nbchat\nnbchat.panel()", ids=["panel"])
    with running_lab(scratch, {"chat.ipynb": chat}, env) as running:
        yield {**running, "cache": cache}


def test_the_first_use_of_qwen3_shows_the_download_in_a_bar_then_the_reply(
    lab: dict[str, object], browser: object, hub: tuple[HubTestServer, int]
) -> None:
    from playwright.sync_api import expect

    server, size = hub
    page = browser.new_page(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
    page.set_default_timeout(30_000)
    page.goto(f"{lab['url']}/lab/tree/chat.ipynb?token={lab['token']}")
    page.wait_for_selector(KERNEL_IDLE, timeout=90_000)
    page.click(".jp-Notebook .jp-Cell .jp-InputArea-editor")
    page.keyboard.press("Shift+Enter")
    page.wait_for_selector(".nbchat-username input", timeout=60_000)
    log_in(page, "alice", register=True)
    assert "qwen3" in option_labels(page, ".nbchat-model")
    bar = page.locator(".nbchat-download-progress")
    expect(bar).to_be_hidden()

    choose(page, ".nbchat-model", "qwen3")  # the download starts now (warm start)
    page.fill(".nbchat-prompt textarea", "Hello there! How are you?")
    page.click("button.nbchat-send")

    status = page.locator(".nbchat-status")
    expect(bar).to_be_visible(timeout=20_000)
    expect(status).to_contain_text("Downloading qwen3", timeout=5_000)
    values = [bar_value(page)]
    said = [status.inner_text()]
    deadline = time.monotonic() + DOWNLOAD_S
    while time.monotonic() < deadline and bar.is_visible():
        time.sleep(0.4)
        if bar.is_visible():
            values.append(bar_value(page))
            said.append(status.inner_text())
        if len(values) == 3:
            shot(page, "download-1-progress")
    assert len(set(values)) >= 3, (values, said)  # it grew while we watched
    assert values == sorted(values) and 0.0 <= values[0] < values[-1] <= 1.0
    progress = [text for text in said if text.startswith("Downloading qwen3")]
    assert progress and re.search(r"of \d+(\.\d)? [kM]B \(\d+%\)", progress[-1]), said
    assert any(re.search(r"[kM]B/s", text) and "left" in text for text in progress), said

    expect(page.locator(".nbchat-streaming")).to_have_count(0, timeout=120_000)  # the reply arrived
    expect(bar).to_be_hidden()
    expect(status).not_to_contain_text("Downloading")
    expect(status).to_contain_text("qwen3")
    expect(page.locator(".nbchat-message-assistant")).to_have_count(1)
    assert server.body_bytes_sent >= size * 0.9  # it did come from the hub
    assert any(Path(str(lab["cache"])).rglob("model.safetensors"))
    shot(page, "download-2-reply")


def bar_value(page: object) -> float:
    """The progress bar's fill, 0 to 1, as the browser draws it (ipywidgets sets the bar's width)."""
    return float(
        page.locator(".nbchat-download-progress").evaluate(  # type: ignore[attr-defined]
            """el => {
                const bar = el.querySelector('.progress-bar');
                const track = bar.parentElement.getBoundingClientRect().width;
                return track ? bar.getBoundingClientRect().width / track : 0;
            }"""
        )
    )
