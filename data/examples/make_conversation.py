"""Write data/examples/conversation.jsonl again, with nbchat's own writer and summaries.

Run it when the summaries nbchat makes change: ``python data/examples/make_conversation.py``.
The ids and times are fixed, so only what nbchat now writes differently changes. It needs
pandas and IPython (the test dependencies).
"""

from __future__ import annotations

import os
import tempfile
from datetime import datetime
from pathlib import Path

from IPython.core.interactiveshell import InteractiveShell

from nbchat import records
from nbchat.context import install_cell_recorder, recent_cells, summarize
from nbchat.types import Conversation, ConversationSettings, Message

EXAMPLE = Path(__file__).resolve().parent / "conversation.jsonl"
MODEL = "ollama:qwen3:1.7b"
EGGS_CSV = """minutes,from_fridge,yolk,white_set
5.0,False,very runny,False
5.5,False,runny,True
6.0,False,runny,True
6.5,True,runny,True
7.0,True,jammy,True
8.0,True,,True
"""
ANSWER = (
    "**6 minutes** for eggs at room temperature, **6½ minutes** straight from the fridge.\n\n"
    "In `df` the runny yolks with a set white are rows 1 to 3: 5½ and 6 minutes for eggs not "
    "from the fridge, 6½ for one from the fridge. 5½ is the edge (at 5 the white was not set), "
    "so 6 is the safer time. To see it yourself:\n\n"
    "```python\n"
    'done = df[(df.yolk == "runny") & df.white_set]\n'
    'done.groupby("from_fridge")["minutes"].agg(["min", "max"])\n'
    "```"
)
THINKING = (
    "Rows with yolk 'runny' and white_set true: 5.5 and 6.0 minutes (not from the fridge) "
    "and 6.5 (from the fridge). 5.0 left the white unset, so 5.5 is borderline: recommend 6, "
    "and 6.5 from the fridge. Give a line of pandas to check."
)


def at(clock: str) -> datetime:
    return datetime.fromisoformat(f"2025-05-03T{clock}+00:00")


def main() -> None:
    shell = InteractiveShell.instance()
    install_cell_recorder(shell)
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "eggs.csv").write_text(EGGS_CSV, encoding="utf-8")
        cwd = os.getcwd()
        os.chdir(folder)
        try:
            shell.run_cell('import pandas as pd\ndf = pd.read_csv("eggs.csv")\nlen(df)', store_history=True)
            shell.run_cell('df.groupby("from_fridge")["minutes"].median()', store_history=True)
        finally:
            os.chdir(cwd)
    cells = recent_cells(2, shell)
    assert cells is not None, "IPython recorded no cells"
    frame = summarize("df", shell.user_ns["df"])

    conversation = Conversation(
        id="9d3f6c0e2a7b4f1e8c5d2b7a6e4f1c08",
        title="Egg timings from the kitchen log",
        created=at("09:29:40.264117"),
        updated=at("09:33:41.502877"),
        settings=ConversationSettings(
            model=MODEL,
            temperature=0.6,
            max_new_tokens=1024,
            think=True,
            system="You are a concise cooking assistant. Use metric units.",
        ),
    )
    messages = [
        Message(
            "user",
            "Which boiling time in @df gives a runny yolk and a set white?",
            id="5e0b8a3c1f9d4c2ea7b6d5c4e3f2a1b0",
            time=at("09:30:12.040561"),
            context=(frame, cells),
        ),
        Message(
            "assistant",
            ANSWER,
            id="b7c2e9f4a1d84e6f9a3c5b2d8e7f6a41",
            time=at("09:30:21.873310"),
            model=MODEL,
            thinking=THINKING,
            stats={
                "prompt_tokens": 412,
                "completion_tokens": 138,
                "tokens_per_s": 40.9,
                "finish_reason": "stop",
            },
        ),
        Message(
            "user",
            "And for six eggs at once?",
            id="0f4e8d2c6b1a4e9d8c7b3a5f2e1d0c96",
            time=at("09:31:02.661029"),
        ),
        Message(
            "assistant",
            "The same times, if the pan holds them in one layer and the water is back at the boil within "
            "a minute. In a small pan, add 30 seconds.",
            id="e3a9c7b5d1f24a8e96c0b4d2f8a6e1c7",
            time=at("09:31:06.204418"),
            model=MODEL,
            stats={
                "prompt_tokens": 571,
                "completion_tokens": 31,
                "tokens_per_s": 43.2,
                "finish_reason": "stop",
            },
        ),
    ]
    EXAMPLE.write_bytes(records.header_line(conversation) + b"".join(map(records.message_line, messages)))


if __name__ == "__main__":
    main()
