"""The bridge in a real kernel that no JupyterLab is watching (what nbval, papermill or a headless
client is): the front end never answers, so ``available`` is False at once and Insert/Run refuse
with a message the user can act on; nothing hangs the kernel."""

from __future__ import annotations

import os
import queue
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from jupyter_client.manager import KernelManager

CODE = """
import time
import nbchat.notebook as nb
bridge = nb.notebook_bridge()
started = time.monotonic()
print('available:', bridge.available(timeout=5))
print('waited under 0.1 s:', time.monotonic() - started < 0.1)
try:
    bridge.insert(nb.CodeBlock('python', 'x = 1'))
except nb.FrontEndUnavailable as exc:
    print('refused:', exc)
"""


@pytest.fixture
def kernel(tmp_path: Any) -> Iterator[Any]:
    manager = KernelManager(kernel_name="python3")
    env = dict(os.environ, IPYTHONDIR=str(tmp_path / "ipython"), JUPYTER_RUNTIME_DIR=str(tmp_path / "rt"))
    manager.kernel_cmd = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    manager.start_kernel(env=env)
    client = manager.client()
    client.start_channels()
    client.wait_for_ready(timeout=60)
    yield client
    client.stop_channels()
    manager.shutdown_kernel(now=True)


def _run(client: Any, code: str) -> str:
    """Execute ``code`` and return its stdout; the bridge's widget comms are simply ignored here."""
    msg_id = client.execute(code)
    printed = []
    while True:
        try:
            message = client.get_iopub_msg(timeout=30)
        except queue.Empty:
            raise AssertionError("the kernel stopped answering") from None
        if message["parent_header"].get("msg_id") != msg_id:
            continue
        kind, content = message["msg_type"], message["content"]
        if kind == "stream":
            printed.append(content["text"])
        elif kind == "error":
            raise AssertionError("\n".join(content["traceback"]))
        elif kind == "status" and content["execution_state"] == "idle":
            return "".join(printed)


def test_where_no_front_end_answers_the_kernel_is_told_so_at_once(kernel: Any) -> None:
    printed = _run(kernel, CODE)
    assert "available: False" in printed
    assert "waited under 0.1 s: True" in printed
    assert "refused: Insert needs JupyterLab 4 or Notebook 7" in printed
    assert "VS Code, the classic notebook and nbval" in printed
    # Later cells still see no front end (nothing answered between cells either).
    assert "available: False" in _run(kernel, "print('available:', bridge.available())")
