"""What the bench modules share: the command line that prints (and saves) figures, a scratch
directory, and running code in a real kernel."""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

Figures = Mapping[str, float]


def in_scratch(measure: Callable[[Path], Figures], prefix: str) -> Callable[[], Figures]:
    """``measure`` run in a fresh temp dir, removed afterwards."""

    def run() -> Figures:
        scratch = Path(tempfile.mkdtemp(prefix=prefix))
        try:
            return measure(scratch)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    return run


def figures_main(
    doc: str | None,
    measure: Callable[[argparse.Namespace], Figures],
    *,
    digits: int = 4,
    options: Callable[[argparse.ArgumentParser], None] = lambda parser: None,
) -> int:
    """A bench module's command line: ``options`` adds its own, ``--json FILE`` saves the figures."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    options(parser)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    figures = measure(args)
    for key, value in figures.items():
        print(f"{key:32} {value:12.{digits}f}")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(figures), indent=2) + "\n")
    return 0


def run_in_kernel(client: Any, code: str) -> list[str]:
    """Execute ``code`` in a jupyter_client kernel; return what it printed, line by line (errors raise)."""
    lines: list[str] = []

    def output(message: dict[str, Any]) -> None:
        content = message["content"]
        if message["msg_type"] == "stream":
            lines.extend(content["text"].splitlines())
        elif message["msg_type"] == "error":
            raise RuntimeError("\n".join(content["traceback"]))

    reply = client.execute_interactive(code, output_hook=output, timeout=300)
    if reply["content"]["status"] != "ok":
        raise RuntimeError(f"the kernel failed: {reply['content']}")
    return lines


@contextlib.contextmanager
def kernel_with_ollama(chunks: int, delay_s: float, prefix: str) -> Iterator[tuple[Any, str, str]]:
    """A real kernel (jupyter_client), the loopback Ollama server in a process of its own (not
    competing with the kernel or the bench) streaming ``chunks`` chunks ``delay_s`` apart, and a
    scratch data dir: yields (kernel client, server URL, data dir); all three go afterwards."""
    from jupyter_client.manager import start_new_kernel

    command = [sys.executable, "-m", "nbchat.testing.ollama_server", "--chunk-count", str(chunks)]
    server = subprocess.Popen([*command, "--chunk-delay", str(delay_s)], stdout=subprocess.PIPE, text=True)
    data = tempfile.mkdtemp(prefix=prefix)
    try:
        assert server.stdout is not None
        url = server.stdout.readline().split(" ", 1)[1].strip()
        manager, client = start_new_kernel(kernel_name="python3")
        try:
            yield client, url, data
        finally:
            client.stop_channels()
            manager.shutdown_kernel(now=True)
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(data, ignore_errors=True)
