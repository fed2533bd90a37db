"""What the browser suites share: Debian's Chromium, a scratch JupyterLab, its selectors, screenshots."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

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


def notebook(*cells: str, ids: Sequence[str] = ()) -> dict[str, Any]:
    """A notebook of code cells (``ids`` names them; the rest are numbered), with a Python kernelspec
    so no "Select Kernel" dialog blocks."""
    names = [*ids, *(f"cell{i}" for i in range(len(ids), len(cells)))]
    return {
        "cells": [
            {
                "cell_type": "code",
                "execution_count": None,
                "id": name,
                "metadata": {},
                "outputs": [],
                "source": source.splitlines(keepends=True),
            }
            for name, source in zip(names, cells, strict=True)
        ],
        "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }


@contextlib.contextmanager
def running_lab(
    scratch: Path, notebooks: Mapping[str, dict[str, Any]], env: Mapping[str, str], *, app: str = "jupyterlab"
) -> Iterator[dict[str, Any]]:
    """JupyterLab on loopback with token auth, scratch Jupyter dirs and ``notebooks`` in its root;
    ``env`` reaches its kernels. ``app="notebook"`` starts Notebook 7 instead (same server, same
    settings dir). Yields its ``url``, ``token`` and ``root``."""
    root, jupyter = scratch / "root", scratch / "jupyter"
    root.mkdir()
    for name, content in notebooks.items():
        (root / name).write_text(json.dumps(content))
    settings = jupyter / "lab-settings"
    notification = settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    notification.parent.mkdir(parents=True)
    notification.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    token = secrets.token_hex(16)
    lab_env = dict(
        os.environ,
        JUPYTER_CONFIG_DIR=str(jupyter / "config"),
        JUPYTER_DATA_DIR=str(jupyter / "data"),
        JUPYTER_RUNTIME_DIR=str(jupyter / "runtime"),
        IPYTHONDIR=str(jupyter / "ipython"),
        JUPYTERLAB_SETTINGS_DIR=str(settings),
        JUPYTERLAB_WORKSPACES_DIR=str(jupyter / "workspaces"),
        **env,
    )
    lab_env.pop("JUPYTERHUB_USER", None)
    for attempt in range(2):  # a port picked and released can be taken in between: retry once
        port = free_port()
        log = (scratch / f"lab-{attempt}.log").open("w")
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                app,
                "--no-browser",
                "--allow-root",
                "--ip",
                "127.0.0.1",
                f"--port={port}",
                "--ServerApp.port_retries=0",
                f"--IdentityProvider.token={token}",
                f"--ServerApp.root_dir={root}",
            ],
            env=lab_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        if _wait_for_lab(url, token, process):
            break
        process.kill()
        process.wait()
    else:
        raise RuntimeError(f"{app} did not start; see {scratch}/lab-*.log")
    try:
        yield {"url": url, "token": token, "root": root}
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_for_lab(url: str, token: str, process: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"{url}/api/status", params={"token": token}, timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    return False


# -- shared steps of the browser suites ------------------------------------------------------


#: Each front end: its page for a notebook (``{name}``), and what shows its kernel connected and idle.
FRONT_ENDS = {
    "jupyterlab": ("/lab/tree/{name}", (KERNEL_IDLE,)),
    "notebook": (
        "/notebooks/{name}",
        (".jp-NotebookKernelLogo img", ".jp-Notebook-ExecutionIndicator[data-status='idle']"),
    ),
}


def open_seeded(
    page: Any,
    lab: Mapping[str, Any],
    name: str,
    seeded: str,
    *,
    app: str = "jupyterlab",
    timeout_ms: int = 90_000,
) -> None:
    """Open notebook ``name``, run its first cell (the seed, which prints ``seeded``) and, once it has,
    the panel cell below it (Shift+Enter moves on to it)."""
    from playwright.sync_api import expect

    path, ready = FRONT_ENDS[app]
    page.goto(f"{lab['url']}{path.format(name=name)}?token={lab['token']}")
    for selector in ready:
        page.wait_for_selector(selector, timeout=timeout_ms)
    page.click(".jp-Notebook .jp-Cell >> nth=0 >> .jp-InputArea-editor")
    page.keyboard.press("Shift+Enter")
    expect(page.locator(".jp-Cell").nth(0).locator(".jp-OutputArea-output")).to_have_text(
        seeded, timeout=timeout_ms
    )
    page.keyboard.press("Shift+Enter")


def log_in(page: Any, name: str, *, register: bool) -> None:
    """Log ``name`` in through the panel's form (registering first when ``register``)."""
    from conftest import PASSWORD

    page.fill(".nbchat-username input", name)
    page.fill(".nbchat-password input", PASSWORD)
    page.click("button.nbchat-register" if register else "button.nbchat-login")
    page.wait_for_selector(".nbchat-user:has-text('Logged in as')")


def run_cell(page: Any, cells: str, index: int) -> None:
    """Run one cell with Ctrl+Enter (run, stay): it stays the active cell, as a clicked panel's does."""
    page.locator(cells).nth(index).locator(".jp-InputArea-editor").click()
    page.keyboard.press("Control+Enter")


def saved_cells(server: Mapping[str, Any], name: str) -> list[dict[str, Any]]:
    """The cells of notebook ``name`` as the server has it saved (the contents API)."""
    response = httpx.get(
        f"{server['url']}/api/contents/{name}", params={"token": server["token"], "content": 1}, timeout=10
    )
    response.raise_for_status()
    return list(response.json()["content"]["cells"])


def saved_count(server: Mapping[str, Any], name: str) -> int:
    """How many cells the saved file has; -1 while it cannot be read (the server is writing it)."""
    try:
        return len(saved_cells(server, name))
    except httpx.HTTPStatusError:
        return -1


def cell_text(source: str | list[str]) -> str:
    """A saved cell's source (or an output's text) as one string, however the file stores it."""
    return source if isinstance(source, str) else "".join(source)
