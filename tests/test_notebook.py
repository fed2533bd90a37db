"""A reply's code blocks (CommonMark, by markdown-it-py), the cells they become, and the bridge where no
JupyterLab answers (a real IPython shell: no kernel, no front end)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable

import pytest
from IPython.core.interactiveshell import InteractiveShell
from polling import wait_until

import nbchat.notebook
from conftest import chatting
from nbchat import ChatSession
from nbchat.errors import FrontEndUnavailable, NbchatError
from nbchat.notebook import CodeBlock, NotebookBridge, cell_for, code_blocks, notebook_bridge
from nbchat.testing.ollama_server import OllamaTestServer
from nbchat.types import Message

REPLY = """Here is how:

```python
import math
print(math.pi)
```

Then in a shell:

~~~bash
ls -l
~~~
"""


def test_fenced_blocks_come_in_order_with_their_language() -> None:
    assert code_blocks(REPLY) == [
        CodeBlock("python", "import math\nprint(math.pi)\n"),
        CodeBlock("bash", "ls -l\n"),
    ]


def test_a_fence_without_a_language_has_an_empty_one_and_info_words_after_it_are_ignored() -> None:
    text = "```\nplain\n```\n\n``` Python title=x.py\nx = 1\n```\n"
    assert code_blocks(text) == [CodeBlock("", "plain\n"), CodeBlock("python", "x = 1\n")]


def test_a_fence_inside_a_list_item_is_a_block_without_the_items_indent() -> None:
    text = "1. Install it:\n\n   ```sh\n   pip install x\n   ```\n2. Done.\n"
    assert code_blocks(text) == [CodeBlock("sh", "pip install x\n")]


def test_indented_code_is_not_a_fenced_block() -> None:
    assert code_blocks("Some text.\n\n    x = 1\n    y = 2\n") == []


def test_a_longer_fence_holds_a_shorter_one_as_code() -> None:
    text = "````markdown\n```python\nx = 1\n```\n````\n"
    assert code_blocks(text) == [CodeBlock("markdown", "```python\nx = 1\n```\n")]


def test_backticks_inline_are_not_blocks() -> None:
    assert code_blocks("Use `print(x)` or ``` `a` ``` inline.") == []


def test_an_open_fence_at_the_end_of_text_closes_with_the_text() -> None:
    assert code_blocks("Try:\n```python\nx = 1\n") == [CodeBlock("python", "x = 1\n")]


def test_an_open_fence_at_the_end_of_a_stopped_message_is_left_out() -> None:
    text = "```python\nfinished = True\n```\n\n```python\nhalf = ("
    partial = Message("assistant", text, stats={"partial": True, "finish_reason": "cancelled"})
    assert code_blocks(partial) == [CodeBlock("python", "finished = True\n")]
    closed = Message("assistant", text + "\n```", stats={"partial": True, "finish_reason": "cancelled"})
    assert [b.code for b in code_blocks(closed)] == ["finished = True\n", "half = (\n"]
    assert len(code_blocks(Message("assistant", text))) == 2  # finished: CommonMark closes it


def test_a_fence_closed_inside_a_quote_counts_as_closed() -> None:
    text = "> ```python\n> x = 1\n> ```"
    stopped = Message("assistant", text, stats={"partial": True})
    assert code_blocks(stopped) == [CodeBlock("python", "x = 1\n")]


def test_code_blocks_refuses_what_is_not_text_a_reply_or_a_message() -> None:
    with pytest.raises(TypeError, match="text, a Reply or a Message"):
        code_blocks(42)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("block", "cell"),
    [
        (CodeBlock("python", "x = 1\n"), ("code", "x = 1")),
        (CodeBlock("", "x = 1\n\n"), ("code", "x = 1")),
        (CodeBlock("bash", "ls\n"), ("code", "%%bash\nls")),
        (CodeBlock("sh", "echo hi\n"), ("code", "%%bash\necho hi")),
        (CodeBlock("shell", "pwd\n"), ("code", "%%bash\npwd")),
        (CodeBlock("markdown", "# Title\n"), ("markdown", "# Title")),
        (CodeBlock("md", "*x*\n"), ("markdown", "*x*")),
        (CodeBlock("sql", "select 1\n"), ("code", "select 1")),
        (CodeBlock("python", "  indented = 1\n"), ("code", "  indented = 1")),
    ],
)
def test_each_block_becomes_the_cell_its_language_needs(block: CodeBlock, cell: tuple[str, str]) -> None:
    assert cell_for(block) == cell


def test_code_blocks_is_light_it_imports_no_widgets() -> None:
    code = (
        "import sys, nbchat.notebook as n\n"
        "n.code_blocks('```py\\nx\\n```')\n"
        "print(sorted(m for m in ('ipywidgets', 'ipylab') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# -- the bridge where nothing can answer ---------------------------------------------------------


@pytest.fixture
def plain_shell(monkeypatch: pytest.MonkeyPatch) -> InteractiveShell:
    """A real IPython shell (no kernel: the terminal's case), and a fresh bridge singleton."""
    monkeypatch.setattr(nbchat.notebook, "_bridge", None)
    return InteractiveShell.instance()


def test_in_a_plain_ipython_shell_the_bridge_is_unavailable_at_once(plain_shell: InteractiveShell) -> None:
    bridge = notebook_bridge()
    assert notebook_bridge() is bridge
    started = time.monotonic()
    assert bridge.available() is False
    assert time.monotonic() - started < 0.1


@pytest.mark.parametrize(("action", "word"), [("insert", "Insert"), ("run", "Run")])
def test_insert_and_run_say_what_they_need_where_no_front_end_answers(
    plain_shell: InteractiveShell, action: str, word: str
) -> None:
    bridge = notebook_bridge()
    with pytest.raises(FrontEndUnavailable) as caught:
        getattr(bridge, action)(CodeBlock("python", "x = 1\n"))
    message = str(caught.value)
    assert message.startswith(f"{word} needs JupyterLab 4 or Notebook 7")
    assert "%chat --cell" in message and "Copy" in message
    assert isinstance(caught.value, NbchatError)


def test_the_bridge_from_another_thread_does_not_wait_where_there_is_no_kernel(
    plain_shell: InteractiveShell,
) -> None:
    results: list[bool] = []
    worker = threading.Thread(target=lambda: results.append(NotebookBridge().available(timeout=5)))
    started = time.monotonic()
    worker.start()
    worker.join(10)
    assert results == [False] and time.monotonic() - started < 1


# -- a reply as it streams -------------------------------------------------------------------------


def test_a_streaming_replys_open_fence_is_left_out_until_the_reply_ends(
    make_session: Callable[..., ChatSession], server: OllamaTestServer
) -> None:
    session = chatting(make_session(server, "alice"), model="ollama:llama3.2:1b")
    server.reply_words = ["```python\n", "done = 1\n", "```\n\n", "```python\n", "half = ", "2\n", "```\n"]
    server.chunk_delay_s = 0.15
    reply = session.send("two blocks please")
    wait_until(lambda: "half = " in reply.text, seconds=10)
    assert code_blocks(reply) == [CodeBlock("python", "done = 1\n")]  # the second is still being written
    reply.wait(10)
    assert code_blocks(reply) == [CodeBlock("python", "done = 1\n"), CodeBlock("python", "half = 2\n")]
    assert code_blocks(session.history()[-1]) == code_blocks(reply)  # the saved message: the same blocks


def test_a_reply_stopped_inside_a_block_never_offers_that_half_block(
    make_session: Callable[..., ChatSession], server: OllamaTestServer
) -> None:
    session = chatting(make_session(server, "alice"), model="ollama:llama3.2:1b")
    server.reply_words = ["```python\n", "done = 1\n", "```\n\n", "```python\n", "rm_all(", *["x, "] * 40]
    server.chunk_delay_s = 0.05
    reply = session.send("two blocks please")
    wait_until(lambda: "rm_all(" in reply.text, seconds=10)
    session.stop()
    reply.wait(10)
    assert reply.partial
    assert code_blocks(reply) == [CodeBlock("python", "done = 1\n")]
    assert code_blocks(session.history()[-1]) == [CodeBlock("python", "done = 1\n")]
