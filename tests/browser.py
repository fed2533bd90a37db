"""What the browser suites share: Debian's Chromium, JupyterLab selectors, screenshots."""

from __future__ import annotations

import socket
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
KERNEL_IDLE = "#jp-main-statusbar span[title^='Change kernel']:has-text('| Idle')"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def shot(page: object, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)  # type: ignore[attr-defined]


def selected_label(page: object, css: str) -> str:
    label = page.locator(f"{css} select").evaluate(  # type: ignore[attr-defined]
        "el => el.selectedIndex < 0 ? '' : el.options[el.selectedIndex].text"
    )
    return label.replace("\xa0", " ")  # ipywidgets shows option labels with no-break spaces


def option_labels(page: object, css: str) -> list[str]:
    texts = page.locator(f"{css} select option").all_inner_texts()  # type: ignore[attr-defined]
    return [text.replace("\xa0", " ") for text in texts]


def choose(page: object, css: str, label: str) -> None:
    """Pick a dropdown entry by the label a person reads."""
    index = option_labels(page, css).index(label)
    page.locator(f"{css} select").select_option(index=index)  # type: ignore[attr-defined]
