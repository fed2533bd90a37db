"""Write data/examples/conversation.jsonl and conversation-interrupted.jsonl again, through nbchat.

Run it when what nbchat writes changes: ``python data/examples/make_conversation.py [FOLDER]``
(default: this folder). Every line goes through a real ``ConversationStore`` (appends, a branch
switch, a rename, drafts), and the summaries are what ``nbchat.context`` makes in a real IPython
shell, so the examples are byte for byte what nbchat writes. Ids and times are fixed (the store's
clock is set for each step), so only what nbchat now writes differently changes. It needs pandas
and IPython (the test dependencies). The version 1 and 2 examples are not written here: they are
what earlier releases wrote, and stay as they were.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from IPython.core.interactiveshell import InteractiveShell

import nbchat.store
from nbchat import records
from nbchat.context import install_cell_recorder, recent_cells, summarize
from nbchat.store import ConversationStore
from nbchat.types import DEFAULT_TITLE, ContextItem, Conversation, ConversationSettings, Message

HERE = Path(__file__).resolve().parent
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
SETTINGS = ConversationSettings(
    model=MODEL,
    temperature=0.6,
    max_new_tokens=1024,
    think=True,
    system="You are a concise cooking assistant. Use metric units.",
)


def at(clock: str) -> datetime:
    return datetime.fromisoformat(f"2025-05-03T{clock}+00:00")


@contextmanager
def clock_at(moment: str) -> Iterator[None]:
    """The store stamps select records and renames with its clock: fix it, so reruns match."""
    real = nbchat.store.utcnow
    nbchat.store.utcnow = lambda: at(moment)
    try:
        yield
    finally:
        nbchat.store.utcnow = real


def egg_context() -> tuple[ContextItem, ContextItem]:
    """What ``@df`` and the 2 cells before the question attach, made by nbchat in a real shell."""
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
    return summarize("df", shell.user_ns["df"]), cells


def stats(prompt: int, completion: int, speed: float) -> dict[str, object]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "tokens_per_s": speed,
        "finish_reason": "stop",
    }


def started(store: ConversationStore, conversation: Conversation) -> None:
    """The header ``store.create`` writes, with a fixed id and times."""
    store.directory.mkdir(parents=True, exist_ok=True)
    (store.directory / f"{conversation.id}.jsonl").write_bytes(records.header_line(conversation))


def branched(store: ConversationStore) -> str:
    """Four turns, the last reply regenerated, the second question edited, then the user goes back
    to the regenerated reply (a select line) and renames the conversation."""
    frame, cells = egg_context()
    conversation = Conversation(
        id="9d3f6c0e2a7b4f1e8c5d2b7a6e4f1c08",
        title=DEFAULT_TITLE,
        created=at("09:29:40.264117"),
        updated=at("09:29:40.264117"),
        settings=SETTINGS,
    )
    started(store, conversation)
    cid = conversation.id
    store.append(
        cid,
        Message(
            "user",
            "Which boiling time in @df gives a runny yolk and a set white?",
            id="5e0b8a3c1f9d4c2ea7b6d5c4e3f2a1b0",
            time=at("09:30:12.040561"),
            context=(frame, cells),
        ),
    )
    answer = store.append(
        cid,
        Message(
            "assistant",
            ANSWER,
            id="b7c2e9f4a1d84e6f9a3c5b2d8e7f6a41",
            time=at("09:30:21.873310"),
            model=MODEL,
            thinking=THINKING,
            stats=stats(412, 138, 40.9),
        ),
    )
    question = store.append(
        cid,
        Message(
            "user",
            "And for six eggs at once?",
            id="0f4e8d2c6b1a4e9d8c7b3a5f2e1d0c96",
            time=at("09:31:02.661029"),
        ),
    )
    store.append(
        cid,
        Message(
            "assistant",
            "The same times, if the pan holds them in one layer and the water is back at the boil within "
            "a minute. In a small pan, add 30 seconds.",
            id="e3a9c7b5d1f24a8e96c0b4d2f8a6e1c7",
            time=at("09:31:06.204418"),
            model=MODEL,
            stats=stats(571, 31, 43.2),
        ),
    )
    regenerated = store.append(  # Regenerate: a second answer to the same question
        cid,
        Message(
            "assistant",
            "Six cold eggs cool the water more than one: bring it back to the boil, then give them "
            "**6½ minutes** (7 from the fridge), in one layer.",
            id="a4d6f8b0c2e44f6a8b0d2f4a6c8e0b13",
            time=at("09:31:41.518930"),
            model=MODEL,
            stats=stats(571, 36, 42.8),
            parent=question.id,
        ),
    )
    store.append(  # Edit and resend the second question: a branch after the first answer
        cid,
        Message(
            "user",
            "And for six eggs straight from the fridge?",
            id="c1e3a5b7d9f14b3d8e5a7c9b1d3f5a28",
            time=at("09:32:15.007342"),
            parent=answer.id,
        ),
    )
    store.append(  # its reply continues the active path, now the edited branch
        cid,
        Message(
            "assistant",
            "**7 minutes**: fridge-cold eggs need about 30 seconds more, and six of them slow the "
            "return to the boil.",
            id="f2b4d6e8a0c24e6b9d1f3a5c7e9b0d47",
            time=at("09:32:19.884105"),
            model=MODEL,
            stats=stats(569, 27, 43.0),
        ),
    )
    with clock_at("09:33:05.730261"):  # the user goes back to the regenerated answer ("‹ 2 / 2 ›")
        store.select(cid, regenerated.id)
    with clock_at("09:33:41.502877"):
        store.rename(cid, "Egg timings from the kitchen log")
    return cid


def interrupted(store: ConversationStore) -> str:
    """A reply streamed in drafts then saved whole, and a second one whose kernel died mid-reply."""
    conversation = Conversation(
        id="3c8e1a5f7b9d4e2c86a0f4b2d6e8c1a5",
        title="Poaching eggs",
        created=at("10:02:11.405822"),
        updated=at("10:02:11.405822"),
        settings=SETTINGS,
    )
    started(store, conversation)
    cid = conversation.id
    question = store.append(
        cid,
        Message(
            "user",
            "How do I poach an egg?",
            id="7a1c3e5b9d2f4a6c8e0b1d3f5a7c9e20",
            time=at("10:02:30.118734"),
        ),
    )
    reply = "Bring water to a bare simmer, add a splash of vinegar, slip the egg in and cook it 3 minutes."
    first_id = "d8f0b2a4c6e84a1c9e3b5d7f0a2c4e61"
    for moment, text, thinking in (
        ("10:02:31.902456", "Bring water to a bare simmer, ", "A fresh egg holds together best. "),
        ("10:02:33.910388", "add a splash of vinegar, ", ""),
    ):
        store.append_draft(cid, records.Draft(first_id, question.id, MODEL, at(moment), text, thinking))
    answer = store.append(  # ended normally: its message replaces the drafts
        cid,
        Message(
            "assistant",
            reply,
            id=first_id,
            time=at("10:02:35.064127"),
            model=MODEL,
            thinking="A fresh egg holds together best. Vinegar firms the white.",
            stats=stats(96, 24, 41.3),
        ),
    )
    follow_up = store.append(
        cid,
        Message(
            "user",
            "And for eight eggs at once?",
            id="5b7d9f1a3c5e4b7d9f2a4c6e8b0d1f39",
            time=at("10:03:02.551209"),
        ),
    )
    second_id = "e9a1c3e5f7b94d2a8c0e2b4d6f8a1c72"
    for moment, text in (  # then the kernel was killed: no message line follows
        ("10:03:04.213560", "Poach them in two batches of four, "),
        ("10:03:06.220917", "in the widest pan you have, "),
        ("10:03:08.227401", "and keep the cooked ones in warm water while"),
    ):
        store.append_draft(cid, records.Draft(second_id, follow_up.id, MODEL, at(moment), text, ""))
    assert answer.parent == question.id
    return cid


def main(folder: Path = HERE) -> None:
    with tempfile.TemporaryDirectory() as data_dir:
        store = ConversationStore(Path(data_dir), "alice")
        for name, write in (
            ("conversation.jsonl", branched),
            ("conversation-interrupted.jsonl", interrupted),
        ):
            cid = write(store)
            shutil.copyfile(store.directory / f"{cid}.jsonl", folder / name)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
