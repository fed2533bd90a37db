"""Warm start: a local model chosen in a panel (or ``warm_up()``) loads before the first send.

The model process is started and loaded in the background as soon as the
model is chosen, so the first reply does not also pay for it, and the status
line says how far it got. A warm-up that fails changes nothing: the send
reports the error as it always did. Real loads of the tiny Qwen3, a real panel.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from polling import wait_until

from conftest import CHEAP_KDF, PASSWORD, chatting
from nbchat import Accounts, ChatSession, Config
from nbchat.backends.local import registry
from nbchat.backends.transformers import loaded, unload
from nbchat.errors import ModelLoadError
from nbchat.panel import ChatPanel
from nbchat.reply import Reply
from nbchat.testing.ollama_server import OllamaTestServer
from nbchat.testing.tiny_qwen3 import tiny_qwen3

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_qwen3(tmp_path_factory.mktemp("qwen3") / "tiny", seed=0)


@pytest.fixture
def fresh(checkpoint: Path, tmp_path: Path) -> Iterator[Callable[[str], str]]:
    """``fresh(name)``: a copy of the checkpoint at a path of its own (never loaded yet), unloaded after."""
    made: list[str] = []

    def copy(name: str) -> str:
        made.append(str(shutil.copytree(checkpoint, tmp_path / name)))
        return made[-1]

    yield copy
    for path in made:
        unload(path)


def session_on(config: Config, server: OllamaTestServer, qwen_model: str) -> ChatSession:
    """A session whose ``qwen3`` is ``qwen_model``, alice registered."""
    config = replace(config, ollama_host=server.url, qwen_model=qwen_model)
    session = ChatSession(config, accounts=Accounts(config, bcrypt_rounds=4, kdf=CHEAP_KDF))
    session.register("alice", PASSWORD)
    return session


def answered(reply: Reply) -> tuple[float, list[str]]:
    """Seconds until ``reply`` ended, and every status it showed on the way."""
    statuses: list[str] = []
    started = time.monotonic()
    reply.subscribe(lambda r: statuses.append(r.status) if r.status and r.status not in statuses else None)
    reply.wait(120)
    return time.monotonic() - started, statuses


def test_a_warmed_up_local_model_answers_the_first_message_without_loading_first(
    make_session: Callable[..., ChatSession], server: OllamaTestServer, fresh: Callable[[str], str]
) -> None:
    warm, cold = fresh("warm"), fresh("cold")
    session = chatting(make_session(server, "alice"), "alice", f"transformers:{warm}")
    session.configure(max_new_tokens=4)
    said: list[str] = []
    asked = time.monotonic()
    session.warm_up(on_status=said.append)
    assert time.monotonic() - asked < 0.5  # it returns at once: the load runs in the background
    wait_until(lambda: said[-1:] == [f"transformers:{warm} ready"], 120)
    assert said[0] == f"transformers:{warm} is loading in the background…"
    assert f"transformers:{warm}" in loaded()

    warm_s, warm_statuses = answered(session.send("hello"))
    assert warm_statuses == []  # no load phase: the model was ready

    session.configure(model=f"transformers:{cold}")
    cold_s, cold_statuses = answered(session.send("hello"))
    assert any("loaded in" in status for status in cold_statuses)  # without warm-up it loads first
    assert warm_s < cold_s / 2, (warm_s, cold_s)


def test_a_message_sent_while_the_warm_up_still_loads_joins_that_load_and_hears_its_progress(
    make_session: Callable[..., ChatSession], server: OllamaTestServer, fresh: Callable[[str], str]
) -> None:
    path = fresh("joined")
    session = chatting(make_session(server, "alice"), "alice", f"transformers:{path}")
    session.configure(max_new_tokens=4)
    session.warm_up()
    wait_until(lambda: path in registry._LOADING, 10)  # the warm-up's load is under way
    _, statuses = answered(session.send("hello"))

    # The load was started by the warm-up, yet this reply heard it end (before, only its starter did).
    assert any(status.startswith(f"transformers:{path} loaded in") for status in statuses), statuses
    assert session.reply is not None and session.reply.text and session.reply.error is None
    assert [h.model_id for h in registry.handles()].count(path) == 1  # one process, not two


def test_a_warm_up_that_fails_raises_nothing_and_the_send_reports_the_error_as_without_it(
    make_session: Callable[..., ChatSession], server: OllamaTestServer, tmp_path: Path
) -> None:
    missing = f"transformers:{tmp_path / 'no-such-model'}"
    session = chatting(make_session(server, "alice"), "alice", missing)
    said: list[str] = []
    session.warm_up(on_status=said.append)
    wait_until(lambda: len(said) == 1, 10)
    assert said[0].startswith(f"{missing} could not be loaded: No model directory at")

    reply = session.send("hello")
    with pytest.raises(ModelLoadError, match="No model directory at") as raised:
        reply.wait(30)
    assert said[0] == f"{missing} could not be loaded: {raised.value}"
    assert session.history()[-2].content == "hello"  # then the failed reply, saved as always


def test_warm_up_does_nothing_for_a_server_model_a_refused_model_or_no_conversation(
    make_session: Callable[..., ChatSession], server: OllamaTestServer
) -> None:
    session = make_session(server, "alice")
    said: list[str] = []
    session.warm_up(on_status=said.append)  # logged out: no conversation, no model
    chatting(session, "alice", "ollama:qwen3:1.7b")
    session.warm_up(on_status=said.append)
    session.warm_up("not a model id", on_status=said.append)
    time.sleep(0.3)
    assert said == [] and not [t for t in threading.enumerate() if t.name == "nbchat-warm-up"]


def test_choosing_qwen3_in_the_panel_loads_it_in_the_background_and_the_status_line_says_so(
    config: Config, server: OllamaTestServer, fresh: Callable[[str], str]
) -> None:
    path = fresh("panel")
    panel = ChatPanel(session_on(config, server, path))
    panel.username.value, panel.password.value = "alice", PASSWORD
    panel.login_button.click()
    panel.new_button.click()
    panel.model.value = "qwen3"
    wait_until(lambda: "qwen3 is loading in the background…" in panel.status.value, 10)
    wait_until(lambda: panel.status.value == "qwen3 ready", 120)
    assert f"transformers:{path}" in loaded() and not panel.send_button.disabled

    panel.prompt.value = "hello"
    panel.send_button.click()
    reply = panel.session.reply
    assert reply is not None
    reply.wait(60)
    assert reply.status == "" and reply.text  # it never had to load the model
    panel.close()


def test_a_panel_whose_qwen3_cannot_load_says_so_at_once_and_the_send_reports_it_as_before(
    config: Config, server: OllamaTestServer, tmp_path: Path
) -> None:
    missing = str(tmp_path / "no-such-model")
    panel = ChatPanel(session_on(config, server, missing))
    panel.username.value, panel.password.value = "alice", PASSWORD
    panel.login_button.click()
    panel.new_button.click()
    panel.model.value = "qwen3"
    wait_until(lambda: "qwen3 could not be loaded: No model directory at" in panel.status.value, 10)
    assert panel.model.value == "qwen3" and not panel.send_button.disabled  # the panel goes on

    panel.prompt.value = "hello"
    panel.send_button.click()
    reply = panel.session.reply
    assert reply is not None
    reply.join(30)
    assert isinstance(reply.error, ModelLoadError)
    status = panel.status
    wait_until(lambda: "nbchat-error" in status.value and "No model directory" in status.value, 10)
    panel.close()


def test_opening_a_conversation_on_qwen3_in_the_panel_loads_the_model_before_the_first_send(
    config: Config, server: OllamaTestServer, fresh: Callable[[str], str]
) -> None:
    path = fresh("picked")
    session = session_on(config, server, path)
    session.login("alice", PASSWORD)
    local = session.new_conversation("On qwen3")
    session.configure(model="qwen3")
    session.new_conversation("On Ollama")
    session.configure(model="ollama:qwen3:1.7b")  # a server's model: nothing to load
    panel = ChatPanel(session)
    assert f"transformers:{path}" not in loaded()

    panel.conversations.value = local.id
    wait_until(lambda: panel.status.value == "qwen3 ready", 120)
    assert f"transformers:{path}" in loaded()
    panel.close()


def test_choosing_another_model_while_one_warms_up_stops_that_load_and_frees_it(
    make_session: Callable[..., ChatSession], server: OllamaTestServer, fresh: Callable[[str], str]
) -> None:
    first, second = fresh("first"), fresh("second")
    session = chatting(make_session(server, "alice"), "alice", f"transformers:{first}")
    said: list[str] = []
    session.warm_up(on_status=said.append)
    wait_until(lambda: first in registry._LOADING, 10)  # its model process is starting
    session.warm_up(f"transformers:{second}", on_status=said.append)  # the user picked another model
    wait_until(lambda: said[-1:] == [f"transformers:{second} ready"], 120)
    wait_until(lambda: first not in registry._LOADING, 10)
    assert f"transformers:{first}" not in loaded()  # nobody waited for it any more: ended, not kept
    assert f"transformers:{first} ready" not in said


def test_warming_up_the_same_model_again_joins_its_load_instead_of_restarting_it(
    make_session: Callable[..., ChatSession], server: OllamaTestServer, fresh: Callable[[str], str]
) -> None:
    path = fresh("again")
    session = chatting(make_session(server, "alice"), "alice", f"transformers:{path}")
    said: list[str] = []
    session.warm_up(on_status=said.append)
    wait_until(lambda: path in registry._LOADING, 10)
    job = registry._LOADING[path]
    session.warm_up(on_status=said.append)  # a conversation of the same model opened
    wait_until(lambda: said.count(f"transformers:{path} ready") == 2, 120)
    assert not job.abort.is_set()  # one load, never ended half-way
    assert [h.model_id for h in registry.handles()].count(path) == 1
