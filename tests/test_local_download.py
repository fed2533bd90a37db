"""A hub model's first use: downloaded with its bytes reported, resumed after a cut, refused clearly.

``HF_ENDPOINT`` points at a loopback Hugging Face hub (``HubTestServer``, proved
faithful to huggingface_hub in test_hub_server.py) serving the tiny Qwen3 as a
repo; ``HF_HUB_CACHE`` is this test's own directory. The load is the one users
run: ``TransformersBackend.load("<repo id>")`` starts a model process that finds
the files in the cache or downloads them with ``snapshot_download``, reporting
``download`` steps, then loads the tokenizer and the weights from the folder.
"""

from __future__ import annotations

import shutil
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hub_repo import repo_bytes, serving
from polling import wait_until

from conftest import chatting
from nbchat import ChatSession
from nbchat.backends.base import LoadProgress
from nbchat.backends.local import download
from nbchat.backends.transformers import TransformersBackend, loaded, unload
from nbchat.errors import ModelLoadError, ModelNotDownloaded
from nbchat.testing.hub_server import HubTestServer
from nbchat.testing.ollama_server import OllamaTestServer
from nbchat.testing.tiny_qwen3 import tiny_qwen3
from nbchat.types import GenerationParams, Message

pytestmark = pytest.mark.slow

HELLO = [Message("user", "Hello there! How are you?")]
GREEDY = GenerationParams(temperature=0.0, max_new_tokens=12)
WEIGHTS = "model.safetensors"
PIECE = download.PIECE_BYTES  # the weights reach the disk in pieces of this size: a resume starts at one


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_qwen3(tmp_path_factory.mktemp("qwen3") / "tiny", seed=0)


@pytest.fixture(scope="module")
def big_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """27 MB of weights: many pieces, so a cut or a Stop lands in the middle."""
    return tiny_qwen3(
        tmp_path_factory.mktemp("qwen3-big") / "big", seed=0, hidden_size=128, vocab_size=50_000
    )


@pytest.fixture
def served(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[HubTestServer, str]]:
    """The loopback hub with a repo of the tiny Qwen3 (never loaded yet), this test's own empty cache."""
    with serving(checkpoint, tmp_path / "hub-cache", monkeypatch) as (hub, repo):
        yield hub, repo
        unload(repo)


@pytest.fixture
def hub(served: tuple[HubTestServer, str]) -> HubTestServer:
    return served[0]


@pytest.fixture
def repo(served: tuple[HubTestServer, str]) -> str:
    return served[1]


@pytest.fixture
def big_repo(hub: HubTestServer, big_checkpoint: Path) -> Iterator[str]:
    name = f"tiny/Qwen3-big-{uuid.uuid4().hex[:8]}"
    hub.add_repo(name, big_checkpoint)
    yield name
    unload(name)


def downloads(events: list[LoadProgress]) -> list[LoadProgress]:
    return [step for step in events if step.phase == "download"]


def weights_gets(hub: HubTestServer) -> list[str | None]:
    """The Range header of every GET of the weights file (None: from the first byte)."""
    return [rng for method, _, name, rng in hub.file_requests if method == "GET" and name == WEIGHTS]


def test_a_model_not_on_this_machine_is_downloaded_with_its_bytes_reported_then_loaded(
    hub: HubTestServer, repo: str, checkpoint: Path
) -> None:
    hub.bytes_per_s = 400_000  # about 1.5 s for the tiny model: several steps to see
    events: list[LoadProgress] = []
    TransformersBackend().load(repo, on_progress=events.append)

    steps = downloads(events)
    assert len(steps) >= 3
    total = repo_bytes(checkpoint)
    assert {step.total_bytes for step in steps} == {total}
    done = [step.done_bytes or 0 for step in steps]
    assert done == sorted(done) and done[0] < total and done[-1] == total
    assert any(step.bytes_per_s for step in steps)
    assert steps[-1].download_text().startswith(f"{total / 1e3:.1f} kB of {total / 1e3:.1f} kB (100%)")
    assert [step.phase for step in events if step.phase != "download"] == ["tokenizer", "weights", "ready"]
    assert events.index(steps[-1]) < [step.phase for step in events].index("tokenizer")

    # It is the very model: the same greedy reply as the checkpoint loaded from its directory.
    local = str(checkpoint)
    try:
        from_hub = TransformersBackend().stream(repo, HELLO, GREEDY).wait().text
        assert from_hub and from_hub == TransformersBackend().stream(local, HELLO, GREEDY).wait().text
    finally:
        unload(local)


def test_a_downloaded_model_loads_again_from_the_cache_without_the_hub(hub: HubTestServer, repo: str) -> None:
    TransformersBackend().load(repo)
    unload(repo)
    requests_before = len(hub.file_requests)
    hub.stop()  # nothing answers at HF_ENDPOINT any more
    events: list[LoadProgress] = []
    TransformersBackend().load(repo, on_progress=events.append)
    assert downloads(events) == [] and events[-1].phase == "ready"
    assert len(hub.file_requests) == requests_before


def test_a_connection_dropped_half_way_is_resumed_from_the_last_piece_on_disk(
    hub: HubTestServer, big_repo: str, big_checkpoint: Path
) -> None:
    dropped_at = 15_000_000
    hub.drop_after[WEIGHTS] = dropped_at
    TransformersBackend().load(big_repo)
    kept = dropped_at // PIECE * PIECE  # what had reached the disk when the connection broke
    first, again = weights_gets(hub)
    assert first is None and again == f"bytes={kept}-"
    # Exactly the files once, plus what was in flight when the connection broke.
    assert hub.body_bytes_sent == repo_bytes(big_checkpoint) + dropped_at - kept


def test_a_download_stopped_half_way_resumes_next_time_and_keeps_what_it_had(
    hub: HubTestServer, big_repo: str, big_checkpoint: Path
) -> None:
    hub.bytes_per_s = 8_000_000  # about 3.5 s for the whole
    stop = threading.Event()
    first: list[LoadProgress] = []

    def watch(step: LoadProgress) -> None:
        first.append(step)
        if step.phase == "download" and (step.done_bytes or 0) >= 3 * PIECE:
            stop.set()  # Stop, a few pieces in: the model process is killed mid-download

    TransformersBackend().prepare(big_repo, on_progress=watch, cancel=stop)
    assert f"transformers:{big_repo}" not in loaded() and stop.is_set()
    had = max(step.done_bytes or 0 for step in downloads(first))
    sent_before = hub.body_bytes_sent
    assert 3 * PIECE <= had < repo_bytes(big_checkpoint)

    hub.bytes_per_s = None
    again: list[LoadProgress] = []
    TransformersBackend().load(big_repo, on_progress=again.append)
    assert (downloads(again)[0].done_bytes or 0) >= had  # it starts from what is on disk
    resumed = weights_gets(hub)[-1]
    assert resumed is not None and resumed.startswith("bytes=")
    start = int(resumed.removeprefix("bytes=").rstrip("-"))
    assert start >= had and start % PIECE == 0
    # The rest of the weights and the small files, once; give or take what the server was still
    # writing into the killed connection's buffers when ``sent_before`` was read.
    expected = repo_bytes(big_checkpoint) - start
    assert expected <= hub.body_bytes_sent - sent_before <= expected + PIECE


def test_a_repo_the_hub_does_not_have_is_a_clear_error(hub: HubTestServer) -> None:
    with pytest.raises(ModelLoadError) as error:
        TransformersBackend().load("nobody/no-such-model")
    message = str(error.value)
    assert "There is no model 'nobody/no-such-model'" in message and hub.url in message
    assert "Qwen/Qwen3-1.7B" in message  # what a right name looks like


def test_a_gated_repo_says_to_log_in(hub: HubTestServer, checkpoint: Path) -> None:
    hub.add_repo("org/gated", checkpoint, gated=True)
    with pytest.raises(ModelLoadError) as error:
        TransformersBackend().load("org/gated")
    assert "gated" in str(error.value) and "hf auth login" in str(error.value)


def test_an_unreachable_hub_is_a_clear_error(
    hub: HubTestServer, repo: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = hub.url
    hub.stop()
    with pytest.raises(ModelLoadError) as error:
        TransformersBackend().load(repo)
    message = str(error.value)
    assert "unreachable" in message and "127.0.0.1" in message and "NBCHAT_QWEN_MODEL" in message
    assert url.startswith("http://127.0.0.1")


def test_a_disk_too_small_for_the_model_is_refused_before_downloading(
    hub: HubTestServer, checkpoint: Path, small_disk: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    big = tmp_path / "big"
    shutil.copytree(checkpoint, big)
    (big / "model-extra.safetensors").write_bytes(b"\0" * 3_000_000)  # more than the 2 MiB disk holds
    hub.add_repo("tiny/too-big", big)
    monkeypatch.setenv("HF_HUB_CACHE", str(small_disk / "hub"))
    with pytest.raises(ModelLoadError) as error:
        TransformersBackend().load("tiny/too-big")
    message = str(error.value)
    assert "Not enough disk space" in message and "HF_HUB_CACHE" in message
    assert weights_gets(hub) == []  # refused before a byte of weights was fetched


def test_a_warm_start_never_downloads_but_says_the_first_message_will(
    hub: HubTestServer, repo: str, checkpoint: Path
) -> None:
    backend = TransformersBackend()
    with pytest.raises(ModelNotDownloaded) as error:
        backend.prepare(repo, download=False)
    assert f"{repo} is not on this machine yet" in str(error.value)
    assert f"({repo_bytes(checkpoint) / 1e3:.1f} kB)" in str(error.value)
    assert weights_gets(hub) == []
    backend.load(repo)  # a message (or load()) does download it
    assert weights_gets(hub) == [None]


def test_a_send_that_joins_a_warm_start_of_a_model_not_downloaded_downloads_it(
    hub: HubTestServer, repo: str
) -> None:
    hub.bytes_per_s = 200_000
    backend = TransformersBackend()
    results: dict[str, BaseException | None] = {}

    def warm() -> None:
        try:
            backend.prepare(repo, download=False)
            results["warm"] = None
        except ModelNotDownloaded as exc:
            results["warm"] = exc

    warming = threading.Thread(target=warm)
    warming.start()
    backend.load(repo)  # joins the warm start's load (or follows it): either way it gets the model
    warming.join(30)
    assert f"transformers:{repo}" in loaded()
    assert isinstance(results["warm"], ModelNotDownloaded | None)


def test_the_panels_warm_start_says_a_model_not_downloaded_yet_comes_with_the_first_message(
    hub: HubTestServer,
    repo: str,
    checkpoint: Path,
    make_session: Callable[..., ChatSession],
    server: OllamaTestServer,
) -> None:
    session = chatting(make_session(server, "alice"), "alice", f"transformers:{repo}")
    session.configure(max_new_tokens=4)
    said: list[str] = []
    session.warm_up(on_status=said.append)
    wait_until(lambda: any("not on this machine yet" in text for text in said), 30)
    assert said[-1] == (
        f"{repo} is not on this machine yet: the first message to it downloads it "
        f"({repo_bytes(checkpoint) / 1e3:.1f} kB)."
    )
    assert weights_gets(hub) == [] and f"transformers:{repo}" not in loaded()

    statuses: list[str] = []
    reply = session.send("hello")
    reply.subscribe(lambda r: statuses.append(r.status) if r.download is not None else None)
    reply.wait(120)
    assert reply.error is None and reply.text
    assert statuses and all(status.startswith(f"Downloading transformers:{repo}: ") for status in statuses)


def test_a_warm_start_that_joins_a_download_under_way_says_how_far_it_got(
    hub: HubTestServer,
    big_repo: str,
    make_session: Callable[..., ChatSession],
    server: OllamaTestServer,
) -> None:
    hub.bytes_per_s = 10_000_000  # about 3 s
    session = chatting(make_session(server, "alice"), "alice", f"transformers:{big_repo}")
    session.configure(max_new_tokens=4)
    reply = session.send("hello")  # its load downloads
    wait_until(lambda: reply.download is not None, 30)
    said: list[str] = []
    session.warm_up(on_status=said.append)  # the panel reopened: it joins the load under way
    reply.wait(120)
    wait_until(lambda: said[-1:] == [f"transformers:{big_repo} ready"], 30)
    assert any(text.startswith(f"Downloading transformers:{big_repo}: ") for text in said), said
