"""A panel's life: ``close()`` lets it go for good, and re-running its cell replaces it.

ipywidgets keeps every widget (and its comm) until ``close()``; a panel that
is not closed keeps listening to the session and redrawing. These tests drive
a real session on the loopback Ollama server, and for the cell tracking a
real IPython kernel that receives execute requests as JupyterLab sends them
(with ``metadata.cellId`` and ``metadata.deletedCells``).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import pytest
from polling import wait_until

from conftest import PASSWORD
from nbchat import ChatSession
from nbchat.panel import ChatPanel
from nbchat.testing.ollama_server import OllamaTestServer

MODEL = "ollama:llama3.2:1b"


@pytest.fixture
def session(make_session: Callable[..., ChatSession], server: OllamaTestServer) -> ChatSession:
    session = make_session(server, "alice")
    session.login("alice", PASSWORD)
    session.new_conversation()
    session.configure(model=MODEL)
    return session


def count_refreshes(panel: ChatPanel) -> list[int]:
    """Every redraw of ``panel`` from now on appends to the returned list."""
    calls: list[int] = []
    refresh = panel.refresh

    def counted() -> None:
        calls.append(1)
        refresh()

    panel.refresh = counted  # type: ignore[method-assign]
    return calls


def redraw_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "nbchat-panel-redraw" and t.is_alive()]


def every_widget(root: widgets.Widget) -> list[widgets.Widget]:
    """``root`` and every widget it refers to (children, layouts, styles), once each."""
    seen: dict[int, widgets.Widget] = {}
    todo: list[Any] = [root]
    while todo:
        item = todo.pop()
        if isinstance(item, (list, tuple)):
            todo.extend(item)
        elif isinstance(item, widgets.Widget) and id(item) not in seen:
            seen[id(item)] = item
            todo.extend(getattr(item, name) for name in item.keys)
    return list(seen.values())


def test_a_panel_whose_account_another_kernel_deleted_shows_the_login_form_on_its_next_redraw(
    session: ChatSession,
) -> None:
    """The login ends underneath it (the same race as a logout in another thread): no traceback."""
    panel = ChatPanel(session)
    other = ChatSession(session.config, accounts=session.accounts)
    other.login("alice", PASSWORD)
    other.delete_account(PASSWORD)
    panel.refresh()
    assert panel.login_view in panel.children and panel.chat_view not in panel.children
    panel.close()


def test_a_closed_panel_no_longer_redraws_on_session_changes(session: ChatSession) -> None:
    panel = ChatPanel(session)
    refreshes = count_refreshes(panel)
    session.configure(temperature=0.3)
    assert refreshes, "an open panel redraws when the session changes"
    panel.close()
    refreshes.clear()
    session.configure(temperature=0.4)
    session.new_conversation()
    session.logout()
    assert refreshes == []


def test_a_closed_panel_does_not_follow_a_new_reply(session: ChatSession, server: OllamaTestServer) -> None:
    panel = ChatPanel(session)
    panel.close()
    refreshes = count_refreshes(panel)
    server.chunk_count, server.chunk_delay_s = 20, 0.01
    session.send("count").wait(10)
    assert refreshes == [] and redraw_threads() == []
    assert panel.messages.children == ()  # nothing was drawn into the closed panel either


def test_closing_a_panel_while_a_reply_streams_ends_its_redraw_thread(
    session: ChatSession, server: OllamaTestServer
) -> None:
    panel = ChatPanel(session)
    server.chunk_count, server.chunk_delay_s = 300, 0.02
    reply = session.send("count")
    wait_until(lambda: len(redraw_threads()) == 1)
    panel.close()
    wait_until(lambda: redraw_threads() == [], seconds=1.0)  # long before the reply ends
    assert not reply.done
    session.stop()
    reply.join(10)


def test_close_closes_every_widget_of_the_panel(session: ChatSession) -> None:
    panel = ChatPanel(session)
    session.send("hello").wait(10)
    wait_until(lambda: len(panel.messages.children) == 2 and panel.stop_button.disabled)
    parts = every_widget(panel) + every_widget(panel.login_view) + every_widget(panel.chat_view)
    assert all(widget.comm is not None for widget in parts)
    panel.close()
    assert [widget for widget in parts if widget.comm is not None] == []
    panel.close()  # closing twice is harmless


def test_messages_the_panel_stops_showing_are_closed(session: ChatSession) -> None:
    panel = ChatPanel(session)
    first = session.current
    assert first is not None
    session.send("hello").wait(10)
    wait_until(lambda: len(panel.messages.children) == 2 and panel.stop_button.disabled)
    shown = list(panel.messages.children)
    session.new_conversation()  # the panel now shows another (empty) conversation
    assert panel.messages.children == ()
    assert [widget for widget in shown if widget.comm is not None] == []


# -- re-running the cell that shows the panel ------------------------------------------------------


class Kernel:
    """A real IPython kernel, sent execute requests the way JupyterLab sends them."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def run(self, code: str, cell_id: str | None = None, deleted: tuple[str, ...] = ()) -> None:
        metadata = {} if cell_id is None else {"cellId": cell_id, "deletedCells": list(deleted)}
        content = {"code": code, "silent": False, "store_history": True, "user_expressions": {}}
        reply = self._request(content, metadata)
        assert reply["content"]["status"] == "ok", "\n".join(reply["content"].get("traceback", []))

    def open_panels(self) -> int:
        """How many ChatPanels the kernel's ipywidgets still hold open."""
        expression = (
            "sum(type(w).__name__ == 'ChatPanel' "
            "for w in list(__import__('ipywidgets').widgets.widget._instances.values()))"
        )
        content = {"code": "", "silent": True, "store_history": False, "user_expressions": {"n": expression}}
        result = self._request(content, {})["content"]["user_expressions"]["n"]
        assert result["status"] == "ok", result
        return int(result["data"]["text/plain"])

    def _request(self, content: dict[str, Any], metadata: dict[str, Any]) -> dict[str, Any]:
        content = {**content, "allow_stdin": False, "stop_on_error": True}
        message = self.client.session.msg("execute_request", content, metadata=metadata)
        self.client.shell_channel.send(message)
        while True:
            reply: dict[str, Any] = self.client.get_shell_msg(timeout=60)
            if reply["parent_header"].get("msg_id") == message["header"]["msg_id"]:
                return reply


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kernel]:
    from jupyter_client.manager import start_new_kernel

    scratch: Path = tmp_path_factory.mktemp("kernel")
    env = dict(os.environ, NBCHAT_DATA_DIR=str(scratch / "data"), IPYTHONDIR=str(scratch / "ipython"))
    env.pop("JUPYTERHUB_USER", None)
    manager, client = start_new_kernel(kernel_name="python3", env=env)
    try:
        yield Kernel(client)
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)


SHOW = "import nbchat\nnbchat.panel()"


def test_re_running_a_cell_replaces_the_panel_it_showed(kernel: Kernel) -> None:
    kernel.run(SHOW, cell_id="cell-a")
    kernel.run(SHOW, cell_id="cell-a")
    kernel.run(SHOW, cell_id="cell-a")
    assert kernel.open_panels() == 1
    kernel.run(SHOW, cell_id="cell-b")  # another cell: a second panel, both stay
    assert kernel.open_panels() == 2
    kernel.run(SHOW, cell_id="cell-c", deleted=("cell-a", "cell-b"))  # cells deleted since the last run
    assert kernel.open_panels() == 1
    kernel.run("import nbchat.panel as p; p.ChatPanel().close()", cell_id="cell-d")
    kernel.run(SHOW, cell_id="cell-c")
    assert kernel.open_panels() == 1


def test_without_a_cell_id_the_panel_replaces_the_last_one_shown_that_way(kernel: Kernel) -> None:
    before = kernel.open_panels()
    kernel.run(SHOW)
    kernel.run(SHOW)
    assert kernel.open_panels() == before + 1


def test_logging_out_while_a_reply_streams_leaves_nothing_of_it_in_the_panel(
    session: ChatSession, server: OllamaTestServer
) -> None:
    panel = ChatPanel(session)
    server.chunk_count, server.chunk_delay_s = 300, 0.02
    session.send("count")
    wait_until(lambda: panel._live is not None and "w3" in panel._live.outputs[0]["data"]["text/markdown"])
    panel.logout_button.click()
    wait_until(lambda: redraw_threads() == [], seconds=2.0)
    assert panel.login_view in panel.children
    assert panel.status.value == "" and panel.messages.children == ()  # not the last reply's model or tokens
