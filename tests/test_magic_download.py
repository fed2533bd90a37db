"""``%chat`` before the first token: what the reply is waiting for (a local model downloading, with a
text bar, loading, or busy with another reply), redrawn in place; then the reply as it streams.

The statuses are the session's (``reply.set_status``), set by a thread of the test on the live reply
while the loopback Ollama server holds back its first chunk, so the magic runs exactly as in a kernel.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from hub_repo import repo_bytes, serving
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import CapturedIO, capture_output
from polling import wait_until

import nbchat.session
from conftest import CHEAP_KDF, PASSWORD, chatting
from nbchat import Accounts, ChatSession, Config
from nbchat.backends.base import LoadProgress
from nbchat.magic import REDRAW_INTERVAL_S, text_bar
from nbchat.reply import Reply
from nbchat.testing.ollama_server import OllamaTestServer
from nbchat.testing.tiny_qwen3 import tiny_qwen3

MODEL = "ollama:llama3.2:1b"
TOTAL = 3_400_000_000


@pytest.fixture
def session(kernel_session: ChatSession) -> ChatSession:
    return kernel_session


def step(done: int) -> LoadProgress:
    return LoadProgress("qwen3", "download", 1.0, done_bytes=done, total_bytes=TOTAL, bytes_per_s=25_000_000)


def say_download(reply: Reply, progress: LoadProgress) -> None:
    """What the session says on a download step (``session._prepare_with_progress``)."""
    reply.set_status(f"Downloading {reply.model}: {progress.download_text()}", download=progress)


def run(shell: InteractiveShell, cell: str) -> CapturedIO:
    with capture_output() as captured:
        shell.run_cell(cell, store_history=True)
    return captured


def markdown_shown(captured: CapturedIO) -> list[str]:
    return [o.data["text/markdown"] for o in captured.outputs if "text/markdown" in o.data]


class Meanwhile:
    """Runs ``script(reply)`` in a thread once the session has a reply; its failure fails the test."""

    def __init__(self, session: ChatSession, script: Callable[[Reply], None]) -> None:
        self.failure: BaseException | None = None

        def run_script() -> None:
            try:
                wait_until(lambda: session.reply is not None, 10)
                assert session.reply is not None
                script(session.reply)
            except BaseException as exc:  # seen by check(), in the test's thread
                self.failure = exc

        self.thread = threading.Thread(target=run_script, daemon=True)
        self.thread.start()

    def check(self) -> None:
        self.thread.join(10)
        if self.failure is not None:
            raise self.failure


@pytest.fixture
def chat_shell(
    shell: InteractiveShell, server: OllamaTestServer, passwords: list[str]
) -> Iterator[InteractiveShell]:
    passwords.append(PASSWORD)
    run(shell, "%chat --login alice")
    run(shell, f'%chat --new "Chat" -m {MODEL}')
    server.reply_words = ["Hello ", "there."]
    server.first_chunk_delay_s = 3.0  # the time the test's "download" takes
    yield shell


def test_the_text_bar_fills_with_the_fraction() -> None:
    assert text_bar(0.0) == "[░░░░░░░░░░░░░░░░░░░░] 0%"
    assert text_bar(0.35) == "[███████░░░░░░░░░░░░░] 35%"
    assert text_bar(1.0) == "[████████████████████] 100%"


def test_a_download_is_shown_with_a_bar_then_the_load_then_the_reply_in_the_same_output(
    chat_shell: InteractiveShell, session: ChatSession
) -> None:
    def download(reply: Reply) -> None:
        for done in (1_190_000_000, 2_380_000_000):
            say_download(reply, step(done))
            time.sleep(3 * REDRAW_INTERVAL_S)
        reply.set_status("Loading ollama:llama3.2:1b: the tokenizer…")
        time.sleep(3 * REDRAW_INTERVAL_S)

    meanwhile = Meanwhile(session, download)
    captured = run(chat_shell, "%chat hello")
    meanwhile.check()
    shown = markdown_shown(captured)
    assert shown[0] == "…"
    at_35 = next(text for text in shown if "(35%)" in text)
    said = "Downloading ollama:llama3.2:1b: 1.2 GB of 3.4 GB (35%), 25.0 MB/s, about 1 min 28 s left"
    assert f"*{said}*" in at_35
    assert "[███████░░░░░░░░░░░░░] 35%" in at_35
    assert any("(70%)" in text and "] 70%" in text for text in shown)
    loading = next(text for text in shown if "the tokenizer" in text)
    assert "░" not in loading and "█" not in loading  # the download is over: no bar
    assert shown[-1].startswith("Hello there.") and "░" not in shown[-1]
    assert shown.index(at_35) < shown.index(loading) < len(shown) - 1
    first, *redraws = captured.outputs
    handle = first.transient["display_id"]
    assert redraws and all(o.update and o.transient["display_id"] == handle for o in redraws)


def test_a_reply_waiting_for_its_turn_says_so_in_the_cell(
    chat_shell: InteractiveShell, session: ChatSession
) -> None:
    meanwhile = Meanwhile(
        session, lambda reply: reply.set_status("Waiting for qwen3: another reply is using it…")
    )
    shown = markdown_shown(run(chat_shell, "%chat hello"))
    meanwhile.check()
    assert "*Waiting for qwen3: another reply is using it…*" in shown
    assert shown[-1].startswith("Hello there.")


def test_a_burst_of_download_steps_is_redrawn_at_a_bounded_rate(
    chat_shell: InteractiveShell, session: ChatSession, server: OllamaTestServer
) -> None:
    server.first_chunk_delay_s = 1.5

    def burst(reply: Reply) -> None:
        for index in range(1, 101):  # 100 steps in half a second
            say_download(reply, step(TOTAL * index // 100))
            time.sleep(0.005)
        reply.set_status("Loading ollama:llama3.2:1b: the tokenizer…")

    meanwhile = Meanwhile(session, burst)
    started = time.monotonic()
    shown = markdown_shown(run(chat_shell, "%chat hello"))
    elapsed = time.monotonic() - started
    meanwhile.check()
    downloads = [text for text in shown if "Downloading" in text]
    assert 1 <= len(downloads) <= 0.6 / REDRAW_INTERVAL_S + 2, downloads
    assert len(shown) <= elapsed / REDRAW_INTERVAL_S + 3
    assert shown[-1].startswith("Hello there.")


def test_interrupting_the_kernel_during_a_download_stops_the_reply(
    chat_shell: InteractiveShell, session: ChatSession, server: OllamaTestServer, interruptible: None
) -> None:
    import _thread

    server.first_chunk_delay_s = 30.0

    def download_then_interrupt(reply: Reply) -> None:
        say_download(reply, step(500_000_000))
        time.sleep(3 * REDRAW_INTERVAL_S)
        _thread.interrupt_main()  # Jupyter's Interrupt button

    meanwhile = Meanwhile(session, download_then_interrupt)
    started = time.monotonic()
    shown = markdown_shown(run(chat_shell, "%chat hello"))
    meanwhile.check()
    assert time.monotonic() - started < 10
    assert any("Downloading" in text for text in shown)
    assert "Downloading" not in shown[-1] and "stopped" in shown[-1]
    reply = session.reply
    assert reply is not None and reply.done and reply.cancelled


def test_in_a_terminal_ipython_the_status_redraws_do_not_fail() -> None:
    """No front end keeps display handles there: IPython prints each redraw, and nothing breaks."""
    script = textwrap.dedent(
        """
        import threading, time
        from IPython.terminal.interactiveshell import TerminalInteractiveShell
        from nbchat.backends.base import LoadProgress
        from nbchat.magic import stream_into_cell
        from nbchat.reply import Reply
        from nbchat.types import Message

        shell = TerminalInteractiveShell.instance()
        reply = Reply("c1", "qwen3", Message("user", "hi"), lambda r: None, lambda r: None)

        def download():
            step = LoadProgress("qwen3", "download", 1.0, done_bytes=5, total_bytes=10, bytes_per_s=2.0)
            reply.set_status("Downloading qwen3: " + step.download_text(), download=step)
            time.sleep(0.5)
            reply.end_now()

        threading.Thread(target=download).start()
        answer = stream_into_cell(reply)
        print("ended:", answer.reply.done)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "TERM": "dumb"},
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    assert "ended: True" in done.stdout
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_the_first_use_of_qwen3_downloads_it_with_a_bar_in_the_cell_then_answers(
    shell: InteractiveShell,
    config: Config,
    server: OllamaTestServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The real thing: the kernel's model process downloads the tiny Qwen3 from a loopback hub."""
    from nbchat.backends.transformers import unload

    checkpoint = tiny_qwen3(tmp_path / "small", hidden_size=256, num_layers=4)  # 13 MB: MiB pieces
    size = repo_bytes(checkpoint)
    rate = size / 3.0  # about three seconds: several redraws
    with serving(checkpoint, tmp_path / "hub-cache", monkeypatch, bytes_per_s=rate) as (_, repo):
        local = replace(config, ollama_host=server.url, qwen_model=repo)
        session = ChatSession(local, accounts=Accounts(local, bcrypt_rounds=4, kdf=CHEAP_KDF))
        session.register("carol", PASSWORD)
        monkeypatch.setattr(nbchat.session, "_session", chatting(session, "carol", "qwen3"))
        try:
            shown = markdown_shown(run(shell, "%chat -n 4 Hello there! How are you?"))
        finally:
            unload(repo)
    downloading = [text for text in shown if text.startswith("*Downloading qwen3: ")]
    assert len(downloading) >= 2, shown
    assert all(re.search(r"\n\n`\[█*░*\] \d+%`$", text) for text in downloading), downloading
    bars = {text.rsplit("`[", 1)[1] for text in downloading}
    assert len(bars) >= 2, downloading  # the bar grew while the cell watched
    assert "Downloading" not in shown[-1] and "░" not in shown[-1]
    assert "`qwen3`" in shown[-1]  # the reply's footer: it answered
    assert session.history()[-1].role == "assistant"
