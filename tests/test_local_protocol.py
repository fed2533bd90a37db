"""What the session asks of the local engine without knowing it is local, and how its process starts.

``known_context_window`` answers from what is loaded and never loads;
``prepare`` loads with progress and is free once loaded. The model process is
``python -m nbchat.backends.local.child``: it imports the very nbchat the
kernel imported, wherever the kernel's working directory is.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import nbchat
from nbchat.backends.base import LoadProgress
from nbchat.backends.transformers import TransformersBackend, loaded, unload
from nbchat.testing.tiny_qwen3 import tiny_qwen3

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_qwen3(tmp_path_factory.mktemp("qwen3") / "tiny", seed=0)


@pytest.fixture
def own(checkpoint: Path, tmp_path: Path) -> Iterator[str]:
    path = str(shutil.copytree(checkpoint, tmp_path / "own"))
    yield path
    unload(path)


def test_the_context_window_is_known_once_the_model_is_loaded_and_asking_never_loads_it(own: str) -> None:
    backend = TransformersBackend()
    assert backend.known_context_window(own) is None
    assert f"transformers:{own}" not in loaded()  # asking did not load it
    backend.load(own)
    assert backend.known_context_window(own) == 2048 == backend.context_window(own)


def test_prepare_loads_reporting_each_phase_then_is_free(own: str) -> None:
    backend = TransformersBackend()
    events: list[LoadProgress] = []
    backend.prepare(own, on_progress=events.append)
    assert [e.phase for e in events] == ["tokenizer", "weights", "ready"]
    assert {e.model for e in events} == {f"transformers:{own}"}
    assert f"transformers:{own}" in loaded()
    pid = backend.load(own)["pid"]
    again: list[LoadProgress] = []
    backend.prepare(own, on_progress=again.append)
    assert again == [] and backend.load(own)["pid"] == pid  # already loaded: nothing happened


def test_the_model_process_imports_the_kernels_nbchat_from_any_working_directory(
    checkpoint: Path, tmp_path: Path
) -> None:
    # A kernel whose nbchat is importable only through its sys.path: a copy of the package, which
    # announces every process that imports it. The model process must be one of them.
    source = Path(nbchat.__file__).parent
    elsewhere = tmp_path / "packages"
    shutil.copytree(source, elsewhere / "nbchat", ignore=shutil.ignore_patterns("__pycache__"))
    marker = tmp_path / "imported-by"
    with (elsewhere / "nbchat" / "__init__.py").open("a") as init:
        init.write(
            "\nimport os as _os\n"
            "with open(_os.environ['NBCHAT_TEST_MARKER'], 'a') as _f:\n"
            "    _f.write(f'{_os.getpid()}\\n')\n"
        )
    notebook_dir = tmp_path / "notebooks"
    notebook_dir.mkdir()
    kernel = textwrap.dedent(
        """
        import os, sys
        sys.path.insert(0, sys.argv[1])
        import nbchat
        from nbchat.backends.transformers import TransformersBackend, unload
        assert nbchat.__file__.startswith(sys.argv[1]), nbchat.__file__
        info = TransformersBackend().load(sys.argv[2])
        pid = info["pid"]
        print(pid, os.readlink(f"/proc/{pid}/cwd"), open(f"/proc/{pid}/cmdline").read().split("\\0")[1:3])
        unload()
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["NBCHAT_TEST_MARKER"] = str(marker)
    result = subprocess.run(
        [sys.executable, "-c", kernel, str(elsewhere), str(checkpoint)],
        cwd=notebook_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    pid, cwd, command = result.stdout.split(maxsplit=2)
    assert pid in marker.read_text().split()  # the model process imported the kernel's copy
    assert cwd == str(notebook_dir)  # and works in the kernel's directory (relative paths keep meaning)
    assert command.strip() == "['-m', 'nbchat.backends.local.child']"
