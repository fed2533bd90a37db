"""What the bench modules share: the command line that prints (and saves) figures, a scratch
directory, and running code in a real kernel."""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from collections.abc import Callable, Mapping
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
