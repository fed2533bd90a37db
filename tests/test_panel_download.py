"""The panel while a local model downloads: a progress bar by the status line, which says how far it is.

Views read ``reply.download`` (the latest ``LoadProgress`` of phase ``download``) and ``reply.status``
(the session's words for it); the session sets both with ``reply.set_status(text, download=step)``.
These tests make those calls themselves on real replies: an unstarted ``Reply`` followed by a
``LiveReply``, and a real session's reply while the loopback Ollama server holds back its first chunk.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from hub_repo import repo_bytes, serving
from polling import wait_until

from conftest import CHEAP_KDF, PASSWORD, chatting
from nbchat import Accounts, ChatSession, Config
from nbchat.backends.base import LoadProgress
from nbchat.panel import ChatPanel
from nbchat.panel.composer import Composer
from nbchat.panel.download_bar import DOWNLOAD_REDRAW_INTERVAL_S
from nbchat.panel.live_reply import LiveReply
from nbchat.reply import Reply
from nbchat.testing.ollama_server import OllamaTestServer
from nbchat.testing.tiny_qwen3 import tiny_qwen3
from nbchat.types import Message

TOTAL = 3_400_000_000


def step(done: int, speed: float | None = 25_000_000.0) -> LoadProgress:
    return LoadProgress("qwen3", "download", 1.0, done_bytes=done, total_bytes=TOTAL, bytes_per_s=speed)


def say_download(reply: Reply, progress: LoadProgress) -> None:
    """What the session says on a download step (``session._prepare_with_progress``)."""
    reply.set_status(f"Downloading {reply.model}: {progress.download_text()}", download=progress)


def unstarted_reply() -> Reply:
    """A real reply whose engine never answers: its status is set by hand, as the session sets it."""
    return Reply("c1", "qwen3", Message("user", "hi"), lambda _reply: None, lambda _reply: None)


class Followed:
    """A composer showing one reply through a ``LiveReply``, as the panel wires them."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        self.composer = Composer(on_send=lambda _text: None, on_stop=lambda: None)
        self.bar = self.composer.download_bar.progress
        self.ended: list[Reply] = []
        self.live = LiveReply(
            reply,
            on_status=self.composer.say,
            on_download=self.composer.show_download,
            on_end=self.ended.append,
        )

    @property
    def bar_shown(self) -> bool:
        return self.bar.layout.display != "none"


@pytest.fixture
def followed() -> Iterator[Followed]:
    shown = Followed(unstarted_reply())
    yield shown
    shown.live.close()
    shown.composer.close()
    shown.reply.end_now()


def test_the_bar_is_hidden_until_a_download_starts(followed: Followed) -> None:
    assert "nbchat-download-progress" in followed.bar._dom_classes
    followed.reply.set_status("Loading qwen3: the tokenizer…")
    wait_until(lambda: "the tokenizer" in followed.composer.status.value)
    assert not followed.bar_shown


def test_a_download_shows_its_fraction_in_the_bar_and_bytes_speed_and_time_left_in_the_status(
    followed: Followed,
) -> None:
    say_download(followed.reply, step(1_190_000_000))
    wait_until(lambda: followed.bar_shown)
    assert followed.bar.value == pytest.approx(0.35)
    status = followed.composer.status.value
    assert status == "Downloading qwen3: 1.2 GB of 3.4 GB (35%), 25.0 MB/s, about 1 min 28 s left"
    say_download(followed.reply, step(2_380_000_000))
    wait_until(lambda: followed.bar.value == pytest.approx(0.7))
    assert "(70%)" in followed.composer.status.value
    assert followed.bar_shown


def test_the_bar_goes_away_when_the_next_phase_begins(followed: Followed) -> None:
    say_download(followed.reply, step(3_300_000_000))
    wait_until(lambda: followed.bar_shown)
    followed.reply.set_status("Loading qwen3: the weights (the first use of a model takes a while)…")
    wait_until(lambda: not followed.bar_shown)
    assert followed.composer.status.value.startswith("Loading qwen3: the weights")


def test_the_bar_goes_away_when_the_reply_ends_during_the_download(followed: Followed) -> None:
    say_download(followed.reply, step(500_000_000))
    wait_until(lambda: followed.bar_shown)
    followed.reply.end_now()  # what Stop comes to once the grace period is over
    wait_until(lambda: followed.ended == [followed.reply])
    assert not followed.bar_shown
    assert followed.reply.download is None


def test_the_bar_goes_away_when_the_panel_stops_following_the_reply(followed: Followed) -> None:
    say_download(followed.reply, step(500_000_000))
    wait_until(lambda: followed.bar_shown)
    followed.live.stop()  # another conversation was opened: the reply goes on unseen
    assert not followed.bar_shown
    say_download(followed.reply, step(600_000_000))
    time.sleep(3 * DOWNLOAD_REDRAW_INTERVAL_S)
    assert not followed.bar_shown, "a stopped view drew again"


def test_a_burst_of_download_steps_is_drawn_a_few_times_a_second_at_most(followed: Followed) -> None:
    values: list[float] = []
    statuses: list[str] = []
    followed.bar.observe(lambda change: values.append(change["new"]), names="value")
    followed.composer.status.observe(lambda change: statuses.append(change["new"]), names="value")
    steps = 100
    started = time.monotonic()
    for index in range(1, steps + 1):  # 100 steps in one second, as a fast hub would report them
        say_download(followed.reply, step(TOTAL * index // steps))
        time.sleep(0.01)
    elapsed = time.monotonic() - started
    wait_until(lambda: followed.bar.value == 1.0)  # the last step is drawn, however late
    most = elapsed / DOWNLOAD_REDRAW_INTERVAL_S + 2
    assert 2 <= len(values) <= most, values
    assert 2 <= len(statuses) <= most, statuses
    assert "(100%)" in followed.composer.status.value
    assert DOWNLOAD_REDRAW_INTERVAL_S >= 0.2  # "a few times a second"


def test_a_download_of_unknown_size_shows_the_bytes_and_an_empty_bar(followed: Followed) -> None:
    unknown = LoadProgress("qwen3", "download", 0.5, done_bytes=42_000_000, total_bytes=None)
    say_download(followed.reply, unknown)
    wait_until(lambda: followed.bar_shown)
    assert followed.bar.value == 0.0
    assert followed.composer.status.value.startswith("Downloading qwen3: 42.0 MB")


# -- the whole panel, on a real session -------------------------------------------------------------


@pytest.fixture
def panel(make_session: Callable[..., ChatSession], server: OllamaTestServer) -> ChatPanel:
    server.reply_words, server.first_chunk_delay_s = ["Hello ", "there."], 4.0  # time to "download"
    panel = ChatPanel(make_session(server, "bob"))
    panel.username.value, panel.password.value = "alice", PASSWORD
    panel.register_button.click()
    panel.new_button.click()
    panel.session.configure(model="ollama:llama3.2:1b")
    return panel


def send(panel: ChatPanel, text: str) -> Reply:
    panel.prompt.value = text
    panel.send_button.click()
    reply = panel.session.reply
    assert reply is not None
    return reply


def bar_shown(panel: ChatPanel) -> bool:
    return bool(panel.download_progress.layout.display != "none")


def test_the_panel_shows_the_download_then_the_reply_and_no_bar(
    panel: ChatPanel, server: OllamaTestServer
) -> None:
    reply = send(panel, "hi")
    assert not bar_shown(panel)
    say_download(reply, step(1_700_000_000))
    wait_until(lambda: bar_shown(panel))
    assert panel.download_progress.value == pytest.approx(0.5)
    assert "Downloading ollama:llama3.2:1b: 1.7 GB of 3.4 GB (50%)" in panel.status.value
    live = panel._live
    assert live is not None
    # Where the reply will be: what is happening, once; the figures only on the status line.
    wait_until(lambda: "Downloading ollama:llama3.2:1b" in live.outputs[0]["data"]["text/markdown"])
    assert "GB" not in live.outputs[0]["data"]["text/markdown"]
    say_download(reply, step(TOTAL))
    wait_until(lambda: panel.download_progress.value == 1.0)
    reply.set_status("ollama:llama3.2:1b loaded in 4.0 s; generating…")
    wait_until(lambda: not bar_shown(panel))
    wait_until(lambda: reply.done and panel._live is None, seconds=15)
    assert reply.text == "Hello there."
    assert not bar_shown(panel)
    assert "Downloading" not in panel.status.value


def test_stop_during_a_download_ends_the_reply_and_takes_the_bar_away(panel: ChatPanel) -> None:
    reply = send(panel, "hi")
    say_download(reply, step(700_000_000))
    wait_until(lambda: bar_shown(panel))
    assert not panel.stop_button.disabled
    panel.stop_button.click()
    wait_until(lambda: reply.done and panel._live is None)
    assert reply.cancelled and reply.text == ""
    assert not bar_shown(panel)
    assert not panel.send_button.disabled


@pytest.mark.slow
def test_stop_during_a_real_download_ends_the_reply_takes_the_bar_away_and_stops_the_download(
    config: Config, server: OllamaTestServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first use of ``qwen3`` from a loopback hub, slow enough to press Stop half-way."""
    from nbchat.backends.transformers import unload

    checkpoint = tiny_qwen3(tmp_path / "small", hidden_size=256, num_layers=4)  # 13 MB: MiB pieces
    size = repo_bytes(checkpoint)
    with serving(checkpoint, tmp_path / "hub-cache", monkeypatch, bytes_per_s=size / 30.0) as (hub, repo):
        local = replace(config, ollama_host=server.url, qwen_model=repo)
        session = ChatSession(local, accounts=Accounts(local, bcrypt_rounds=4, kdf=CHEAP_KDF))
        session.register("carol", PASSWORD)
        panel = ChatPanel(chatting(session, "carol", "qwen3"))
        try:
            reply = send(panel, "Hello there!")
            wait_until(lambda: bar_shown(panel) and panel.download_progress.value > 0, 60)
            assert panel.status.value.startswith("Downloading qwen3: ")
            panel.stop_button.click()
            wait_until(lambda: reply.done and panel._live is None, 5)
            assert reply.cancelled and reply.text == ""
            assert not bar_shown(panel) and not panel.send_button.disabled
            assert "Downloading" not in panel.status.value
            time.sleep(1.0)  # the load notices the Stop and lets go of the hub
            sent = hub.body_bytes_sent
            time.sleep(1.0)
            assert hub.body_bytes_sent == sent < size, "the download went on after Stop"
        finally:
            panel.close()
            unload(repo)
