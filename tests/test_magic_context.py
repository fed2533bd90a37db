"""``%chat`` with the kernel's context (``@name``, ``--cells``, ``--error``) and its code back out
(``--cell``), in a real IPython shell against the loopback Ollama server: what the server received
is what the model was given."""

from __future__ import annotations

import sys

import pytest
from IPython.core.interactiveshell import InteractiveShell
from test_magic import logged_in_chat, markdown_shown, run, session  # noqa: F401

from nbchat import ChatSession
from nbchat.magic import interpolate, next_cell_code
from nbchat.notebook import CodeBlock
from nbchat.testing.ollama_server import OllamaTestServer

FENCED_REPLY = [
    "Try this:\n\n",
    "```python\n",
    "import statistics\n",
    "print(statistics.mean(nums))\n",
    "```\n",
]


def sent_contents(server: OllamaTestServer) -> list[str]:
    return [r["body"]["messages"][-1]["content"] for r in server.requests if r["path"] == "/api/chat"]


# -- @name ----------------------------------------------------------------------------------------


def test_a_mention_sends_the_objects_summary_with_the_question(
    shell: InteractiveShell,
    session: ChatSession,  # noqa: F811
    server: OllamaTestServer,
    passwords: list[str],
) -> None:
    logged_in_chat(shell, passwords)
    run(shell, "import numpy as np\nnums = np.arange(1, 101, dtype=np.int64)")
    captured = run(shell, "%chat @nums what is the mean?")
    assert captured.stderr == ""
    question, _, context = sent_contents(server)[-1].partition("\n\n---\n")
    assert question == "@nums what is the mean?"
    assert "#### @nums (" in context and "int64" in context and "100" in context
    saved = session.history()[0]
    assert saved.content == "@nums what is the mean?"
    assert [(item.kind, item.name) for item in saved.context] == [("object", "nums")]


def test_an_unknown_mention_is_one_clear_line_naming_close_names_and_nothing_is_sent(
    shell: InteractiveShell,
    session: ChatSession,  # noqa: F811
    server: OllamaTestServer,
    passwords: list[str],
) -> None:
    logged_in_chat(shell, passwords)
    shell.user_ns["df"] = {"a": 1}
    captured = run(shell, "%chat describe @dff")
    assert "nbchat: No variable named 'dff' in this kernel (did you mean df?)" in captured.stderr
    assert "Write @@dff for a literal @dff." in captured.stderr and "Traceback" not in captured.stderr
    assert session.history() == [] and sent_contents(server) == []


def test_braces_are_filled_first_and_the_users_own_mentions_then_attach(
    shell: InteractiveShell,
    session: ChatSession,  # noqa: F811
    server: OllamaTestServer,
    passwords: list[str],
) -> None:
    logged_in_chat(shell, passwords)
    shell.user_ns.update(n=3, nums=[4, 5, 6])
    run(shell, "%chat are the first {n} of @nums sorted?")
    question, _, context = sent_contents(server)[-1].partition("\n\n---\n")
    assert question == "are the first 3 of @nums sorted?"
    assert "#### @nums (" in context
    assert [item.name for item in session.history()[0].context] == ["nums"]


def test_an_at_sign_inside_a_filled_in_value_is_text_not_a_mention(
    shell: InteractiveShell,
    session: ChatSession,  # noqa: F811
    server: OllamaTestServer,
    passwords: list[str],
) -> None:
    logged_in_chat(shell, passwords)
    shell.user_ns.update(note="ask @bob or @carol.smith", deco="@property", nums=[1])
    captured = run(shell, "%chat reply to: {note} about `{deco}` and @nums")
    assert captured.stderr == ""  # bob and carol are not variables: had they been mentions, refused
    question = sent_contents(server)[-1].partition("\n\n---\n")[0]
    assert question == "reply to: ask @bob or @carol.smith about `@property` and @nums"
    assert [item.name for item in session.history()[0].context] == ["nums"]


def test_interpolation_escapes_only_mentions_that_a_value_brings() -> None:
    namespace = {"who": "@bob", "mail": "bob@example.com", "code": "`@dec`"}
    assert interpolate("@x {who}", namespace) == "@x @@bob"
    assert interpolate("{mail}", namespace) == "bob@example.com"  # no mention there to escape
    assert interpolate("{code}", namespace) == "`@dec`"  # code: never a mention, left as written
    assert interpolate("@{who}", namespace) == "@@bob"  # "@@" is no mention: nothing to escape
    assert interpolate("{who!r}", namespace) == "'@@bob'"


def test_a_doubled_at_sign_is_sent_as_a_literal_at_and_attaches_nothing(
    shell: InteractiveShell,
    session: ChatSession,  # noqa: F811
    server: OllamaTestServer,
    passwords: list[str],
) -> None:
    logged_in_chat(shell, passwords)
    run(shell, "%chat what does @@dataclass do?")
    assert sent_contents(server)[-1] == "what does @dataclass do?"
    assert session.history()[0].context == ()


# -- --cells and --error ---------------------------------------------------------------------------


def test_cells_attaches_the_last_n_cells_run_with_their_results(
    shell: InteractiveShell,
    session: ChatSession,  # noqa: F811
    server: OllamaTestServer,
    passwords: list[str],
) -> None:
    logged_in_chat(shell, passwords)
    run(shell, "first_cell = 'not attached'")
    run(shell, "values = [3, 1, 2]")
    run(shell, "sorted(values)")
    captured = run(shell, "%chat --cells 2 why is the result sorted?")
    assert captured.stderr == ""
    question, _, context = sent_contents(server)[-1].partition("\n\n---\n")
    assert question == "why is the result sorted?"
    assert "values = [3, 1, 2]" in context and "sorted(values)" in context and "[1, 2, 3]" in context
    assert "first_cell" not in context and "%chat" not in context
    assert [item.kind for item in session.history()[0].context] == ["cells"]


def test_cells_and_error_go_together_and_each_is_saved(
    shell: InteractiveShell,
    session: ChatSession,  # noqa: F811
    server: OllamaTestServer,
    passwords: list[str],
) -> None:
    logged_in_chat(shell, passwords)
    run(shell, "total = sum([1, 2])")
    run(shell, "total / 0")
    run(shell, "%chat --cells 1 --error")
    content = sent_contents(server)[-1]
    assert content.startswith("Why did this fail, and how do I fix it?\n\n---\n")
    assert "total / 0" in content and "ZeroDivisionError" in content
    assert [item.kind for item in session.history()[0].context] == ["cells", "error"]


def test_error_with_no_error_yet_says_so_and_sends_nothing(
    shell: InteractiveShell,
    session: ChatSession,  # noqa: F811
    server: OllamaTestServer,
    passwords: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    logged_in_chat(shell, passwords)
    for name in ("last_value", "last_exc", "last_type", "last_traceback"):
        monkeypatch.delattr(sys, name, raising=False)  # the shell is shared: forget earlier tests' errors
    captured = run(shell, "%chat --error")
    assert "nbchat: No error has happened in this kernel yet" in captured.stderr
    assert session.history() == [] and sent_contents(server) == []


@pytest.mark.parametrize("line", ["%chat --cells 2", "%chat --cell"])
def test_cells_and_cell_without_a_question_ask_for_one(
    shell: InteractiveShell,
    server: OllamaTestServer,
    passwords: list[str],
    line: str,
) -> None:
    logged_in_chat(shell, passwords)
    captured = run(shell, line)
    assert "nbchat: --cells and --cell go with a question" in captured.stderr
    assert sent_contents(server) == []


def test_a_negative_cell_count_is_refused(
    shell: InteractiveShell,
    server: OllamaTestServer,
    passwords: list[str],
) -> None:
    logged_in_chat(shell, passwords)
    captured = run(shell, "%chat --cells -1 why?")
    assert captured.stderr.startswith("nbchat: ") and "Traceback" not in captured.stderr
    assert sent_contents(server) == []


# -- --cell -------------------------------------------------------------------------------------------


def test_cell_makes_the_next_input_the_replys_code(
    shell: InteractiveShell,
    server: OllamaTestServer,
    passwords: list[str],
) -> None:
    logged_in_chat(shell, passwords)
    shell.rl_next_input = None
    server.reply_words = FENCED_REPLY
    captured = run(shell, "answer = %chat --cell how do I average nums?")
    assert markdown_shown(captured)[-1].startswith("Try this:")
    assert "The reply's code is in a new cell below." in captured.stdout
    assert shell.rl_next_input == "import statistics\nprint(statistics.mean(nums))"
    assert shell.user_ns["answer"].startswith("Try this:")  # still returned as ever


def test_the_cell_magic_with_cell_joins_every_code_block_in_order(
    shell: InteractiveShell,
    server: OllamaTestServer,
    passwords: list[str],
) -> None:
    logged_in_chat(shell, passwords)
    shell.rl_next_input = None
    server.reply_words = [
        "First:\n\n```bash\npip install tqdm\n```\n\n",
        "A note:\n\n```markdown\n# not code\n```\n\n",
        "Then:\n\n```python\nfrom tqdm import tqdm\n```\n",
    ]
    run(shell, "%%chat --cell\nshow me a progress bar")
    assert shell.rl_next_input == "!pip install tqdm\n\nfrom tqdm import tqdm"


def test_cell_with_a_reply_without_code_says_so_and_adds_no_cell(
    shell: InteractiveShell,
    server: OllamaTestServer,
    passwords: list[str],
) -> None:
    logged_in_chat(shell, passwords)
    shell.rl_next_input = None
    captured = run(shell, "%chat --cell just words please")
    assert "The reply has no code block, so no cell was added." in captured.stdout
    assert shell.rl_next_input is None


@pytest.mark.parametrize(
    ("blocks", "code"),
    [
        ([], None),
        ([CodeBlock("markdown", "# only prose\n")], None),
        ([CodeBlock("python", "x = 1\n")], "x = 1"),
        ([CodeBlock("bash", "ls\n")], "%%bash\nls"),
        ([CodeBlock("sh", "cd /tmp\n"), CodeBlock("bash", "ls\n")], "%%bash\ncd /tmp\n\nls"),
        (
            [CodeBlock("python", "a = 1\n"), CodeBlock("bash", "# list\nls -l\n\necho done\n")],
            "a = 1\n\n# list\n!ls -l\n\n!echo done",
        ),
        ([CodeBlock("", "print(1)\n"), CodeBlock("python", "print(2)\n")], "print(1)\n\nprint(2)"),
    ],
)
def test_the_next_cell_joins_code_blocks_and_runs_shell_ones_as_a_notebook_user_would(
    blocks: list[CodeBlock], code: str | None
) -> None:
    assert next_cell_code(blocks) == code
