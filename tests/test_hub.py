"""nbchat on a real JupyterHub: two hub users, each recognised without an nbchat password.

The hub gives each user's server ``NBCHAT_HUB_SECRET``, an HMAC of the user's name under a master
secret only the hub reads (the README's recipe), so each hub account is encrypted at rest: the
conversation file holds no word of the chat, and a restarted server's panel still reads it.

The hub (JupyterHub with configurable-http-proxy, all on 127.0.0.1) uses the
dummy authenticator and the simple local-process spawner: every user's server
runs as this OS user with its own home directory, so nbchat's default data
dir (platformdirs, under ``$HOME``) is per user, as on a real hub where each
server runs as its own OS user. Separation is then checked the two ways open
here: through nbchat (B's kernel cannot select A's conversation by id) and by
permissions (A's data dir is 0700, its files 0600). Headless Debian Chromium,
driven by Playwright, logs into the hub as a person would.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from browser import KERNEL_IDLE, choose, free_port, shot

from nbchat.testing.ollama_server import OllamaTestServer

HUB_PASSWORD = "hub password"
MODEL = "ollama:llama3.2:1b"
PROBE_CELL = """\
from pathlib import Path
probe = Path("other-users-conversation.txt")
if probe.exists():
    try:
        nbchat.get_session().select(probe.read_text().strip())
        print("PROBE: reached another user's conversation")
    except nbchat.NbchatError as exc:
        print(f"PROBE: refused: {type(exc).__name__}")
"""


def notebook() -> str:
    cells = [
        {
            "cell_type": "code",
            "execution_count": None,
            "id": "panel",
            "metadata": {},
            "outputs": [],
            "source": ["import nbchat\n", "nbchat.panel()"],
        },
        {
            "cell_type": "code",
            "execution_count": None,
            "id": "probe",
            "metadata": {},
            "outputs": [],
            "source": PROBE_CELL.splitlines(keepends=True),
        },
    ]
    return json.dumps(
        {
            "cells": cells,
            "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}},
            "nbformat": 4,
            "nbformat_minor": 5,
        }
    )


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory, ollama: OllamaTestServer) -> Iterator[dict[str, object]]:
    """A JupyterHub on loopback; yields its URL and the users' home directory root."""
    proxy = shutil.which("configurable-http-proxy")
    assert proxy, (
        "configurable-http-proxy is missing: `npm install -g configurable-http-proxy` (make test does)"
    )
    scratch = tmp_path_factory.mktemp("hub")
    homes, settings = scratch / "home", scratch / "lab-settings"
    notification = settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    notification.parent.mkdir(parents=True)
    notification.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    master = scratch / "nbchat-master"
    master.write_text(secrets.token_hex(32) + "\n")
    master.chmod(0o600)
    for user in ("ann", "ben"):
        (homes / user).mkdir(parents=True)
        (homes / user / "chat.ipynb").write_text(notebook())
    bin_dir = Path(sys.executable).parent
    for attempt in range(2):  # ports picked and released can be taken in between: retry once
        port, hub_port, api_port = free_port(), free_port(), free_port()
        config = scratch / "jupyterhub_config.py"
        config.write_text(
            f"""
import hmac
from pathlib import Path

MASTER = Path({str(master)!r}).read_text().strip().encode()
c = get_config()  # noqa
c.JupyterHub.bind_url = "http://127.0.0.1:{port}"
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {hub_port}
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{api_port}"
c.ConfigurableHTTPProxy.command = [{proxy!r}]
c.JupyterHub.db_url = "sqlite:///{scratch}/hub.sqlite"
c.JupyterHub.cookie_secret_file = "{scratch}/cookie_secret"
c.JupyterHub.authenticator_class = "dummy"
c.DummyAuthenticator.password = {HUB_PASSWORD!r}
c.Authenticator.allow_all = True
c.JupyterHub.spawner_class = "simple"
c.SimpleLocalProcessSpawner.home_dir_template = "{homes}/{{username}}"
c.Spawner.cmd = [{str(bin_dir / "jupyterhub-singleuser")!r}]
c.Spawner.args = ["--allow-root"]
c.Spawner.default_url = "/lab"
c.Spawner.start_timeout = 90
c.Spawner.http_timeout = 90
c.Spawner.environment = {{
    "OLLAMA_HOST": {ollama.url!r},
    "JUPYTERLAB_SETTINGS_DIR": {str(settings)!r},
    "NBCHAT_HUB_SECRET": lambda spawner: hmac.new(MASTER, spawner.user.name.encode(), "sha256").hexdigest(),
}}
"""
        )
        log = (scratch / f"hub-{attempt}.log").open("w")
        env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
        env.pop("NBCHAT_DATA_DIR", None)
        process = subprocess.Popen(
            [str(bin_dir / "jupyterhub"), "-f", str(config)],
            cwd=scratch,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # the proxy and the users' servers go with it at the end
        )
        url = f"http://127.0.0.1:{port}"
        if _wait_for_hub(url, process):
            break
        _stop(process)
    else:
        raise RuntimeError(f"JupyterHub did not start; see {scratch}/hub-*.log")
    try:
        yield {"url": url, "homes": homes}
    finally:
        _stop(process)


def _wait_for_hub(url: str, process: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"{url}/hub/api", timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Stop the hub (it stops the users' servers and the proxy), then anything left in its group."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(30)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def data_dir(homes: Path, user: str) -> Path:
    return homes / user / ".local" / "share" / "nbchat"


def open_panel(page: Any, hub: dict[str, object], user: str, *, cells: int) -> None:
    """Open the chat notebook, run its first ``cells`` cells and see the hub user logged in."""
    from playwright.sync_api import expect

    page.goto(f"{hub['url']}/user/{user}/lab/tree/chat.ipynb")
    page.wait_for_selector(KERNEL_IDLE, timeout=120_000)
    page.locator(".jp-Notebook .jp-Cell").first.click()
    for _ in range(cells):
        page.keyboard.press("Shift+Enter")
    page.wait_for_selector(".nbchat-user", timeout=60_000)
    expect(page.locator(".nbchat-user")).to_contain_text(f"Logged in as {user} (JupyterHub)")
    expect(page.locator(".nbchat-username")).to_have_count(0)  # no nbchat login form
    expect(page.locator("button.nbchat-logout")).to_be_hidden()


def restart_server(page: Any, hub: dict[str, object], user: str) -> None:
    """Stop the user's server from the hub's home page and start a fresh one (new kernels)."""
    from playwright.sync_api import expect

    page.goto(f"{hub['url']}/hub/home")
    page.click("#stop")
    expect(page.locator("#start")).to_have_text("Start My Server", timeout=60_000)
    page.click("#start")
    page.wait_for_url(f"**/user/{user}/lab**", timeout=120_000)


def chat_as(browser: object, hub: dict[str, object], user: str, prompt: str) -> object:
    """Log into the hub, open the chat notebook, run it and send one prompt through the panel."""
    from playwright.sync_api import expect

    context = browser.new_context(viewport={"width": 1280, "height": 1000})  # type: ignore[attr-defined]
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(f"{hub['url']}/hub/login")
    page.fill("#username_input", user)
    page.fill("#password_input", HUB_PASSWORD)
    page.click("#login_submit")
    page.wait_for_url(f"**/user/{user}/lab**", timeout=120_000)
    open_panel(page, hub, user, cells=2)
    choose(page, ".nbchat-model", MODEL)
    page.fill(".nbchat-prompt textarea", prompt)
    page.click("button.nbchat-send")
    expect(page.locator(".nbchat-message-assistant")).to_contain_text(f"You said: {prompt}")
    expect(page.locator(".nbchat-streaming")).to_have_count(0)
    shot(page, f"hub-{user}")
    return context


def test_two_hub_users_chat_without_nbchat_passwords_and_stay_apart(
    hub: dict[str, object], browser: object
) -> None:
    from playwright.sync_api import expect

    homes = Path(str(hub["homes"]))
    ann_context = chat_as(browser, hub, "ann", "a secret of ann's")
    ann_files = list((data_dir(homes, "ann") / "conversations" / "ann").glob("*.jsonl"))
    assert len(ann_files) == 1
    assert_sealed(ann_files[0], ["a secret of ann", "you said"])  # the prompt and the reply ("You said: ...")
    users = json.loads((data_dir(homes, "ann") / "users.json").read_text())["users"]
    assert "data_key" in users["ann"]

    # A fresh server (new kernel, nothing in memory) reads the sealed file with the hub's secret.
    page = ann_context.pages[0]  # type: ignore[attr-defined]
    restart_server(page, hub, "ann")
    open_panel(page, hub, "ann", cells=1)
    page.locator(".nbchat-conversations select").select_option(index=0)
    expect(page.locator(".nbchat-message-user")).to_contain_text("a secret of ann's")
    expect(page.locator(".nbchat-message-assistant")).to_contain_text("You said: a secret of ann's")
    shot(page, "hub-ann-restarted")
    ann_context.close()  # type: ignore[attr-defined]

    # Ben's kernel is told the id of Ann's conversation and tries to open it.
    (homes / "ben" / "other-users-conversation.txt").write_text(ann_files[0].stem)
    ben_context = chat_as(browser, hub, "ben", "hello from ben")
    page = ben_context.pages[0]  # type: ignore[attr-defined]
    assert page.locator(".nbchat-conversations select option").count() == 1
    assert "a secret of ann's" not in page.locator(".nbchat-panel").inner_text()
    probe = page.locator(".jp-Cell").nth(1).locator(".jp-OutputArea-output")
    probe.wait_for()
    assert probe.inner_text().strip() == "PROBE: refused: ConversationNotFound"
    ben_context.close()  # type: ignore[attr-defined]

    # On disk each user has a private data dir of their own.
    ben_files = list((data_dir(homes, "ben") / "conversations" / "ben").glob("*.jsonl"))
    assert len(ben_files) == 1
    assert_sealed(ben_files[0], ["a secret of ann", "hello from ben", "you said"])
    for user in ("ann", "ben"):
        root = data_dir(homes, user)
        assert stat.S_IMODE(root.stat().st_mode) == 0o700
        for path in root.rglob("*"):
            expected = 0o700 if path.is_dir() else 0o600
            assert stat.S_IMODE(path.stat().st_mode) == expected, path


def assert_sealed(path: Path, words: list[str]) -> None:
    """The conversation file is encrypted: every line sealed, none of ``words`` in any byte of it
    (phrases with spaces: a short word alone turns up in lower-cased base64 by chance now and then)."""
    raw = path.read_bytes()
    lines = [json.loads(line) for line in raw.splitlines()]
    assert lines and all("sealed" in line for line in lines), path
    assert [w for w in words if w.encode() in raw.lower()] == [], path
