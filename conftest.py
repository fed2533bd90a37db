"""The notebooks under test (nbval) get engines the way a user configures them: environment variables."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from nbchat.testing.ollama_server import OllamaTestServer

_notebook_engines: list[OllamaTestServer] = []
_scratch_dirs: list[str] = []


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Before the first notebook's kernel starts: the engines it will find, as a user configures them.

    The notebooks read only the usual variables (``OLLAMA_HOST``,
    ``NBCHAT_QWEN_MODEL``), so they run unchanged against a real Ollama and
    Qwen3; under test those point at the loopback Ollama server and a tiny
    real Qwen3 checkpoint. Set here, not at start-up, so the other tests see
    the environment they were written for (notebooks run last).
    """
    if item.path.suffix != ".ipynb" or _notebook_engines:
        return
    os.environ.setdefault("NBCHAT_DATA_DIR", tempfile.mkdtemp(prefix="nbchat-test-data-"))
    from nbchat.testing.tiny_qwen3 import tiny_qwen3

    server = OllamaTestServer().start()
    _notebook_engines.append(server)
    os.environ["OLLAMA_HOST"] = server.url
    scratch = tempfile.mkdtemp(prefix="nbchat-qwen3-")
    _scratch_dirs.append(scratch)
    os.environ["NBCHAT_QWEN_MODEL"] = str(tiny_qwen3(Path(scratch) / "qwen3"))


def pytest_unconfigure(config: pytest.Config) -> None:
    for server in _notebook_engines:
        server.stop()
    for scratch in _scratch_dirs:
        shutil.rmtree(scratch, ignore_errors=True)
