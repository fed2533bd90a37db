"""``%chat`` and ``%%chat`` in a real IPython shell, against the loopback Ollama server.

Each test runs cells through ``InteractiveShell.run_cell`` exactly as a notebook
would send them, and reads what the cell showed (text and rich Markdown) with
IPython's own output capture.
"""

from __future__ import annotations

import _thread
import threading

import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import CapturedIO, capture_output
from polling import wait_until

import nbchat
import nbchat.session
from conftest import PASSWORD
from nbchat import ChatSession
from nbchat.magic import PARSER, ChatAnswer, interpolate, split_line
from nbchat.testing.ollama_server import OllamaTestServer

MODEL = "ollama:llama3.2:1b"


@pytest.fixture
def session(kernel_session: ChatSession) -> ChatSession:
    return kernel_session


def run(shell: InteractiveShell, cell: str) -> CapturedIO:
    with capture_output() as captured:
        shell.run_cell(cell, store_history=True)
    return captured


def markdown_shown(captured: CapturedIO) -> list[str]:
    return [o.data["text/markdown"] for o in captured.outputs if "text/markdown" in o.data]


def logged_in_chat(shell: InteractiveShell, passwords: list[str], model: str = MODEL) -> None:
    passwords.append(PASSWORD)
    run(shell, "%chat --login alice")
    run(shell, f'%chat --new "Chat" -m {model}')


# -- help and usage -----------------------------------------------------------------------------


def test_help_documents_every_option(shell: InteractiveShell) -> None:
    captured = run(shell, "%chat --help")
    for action in PARSER._actions:
        for option in action.option_strings:
            assert option in captured.stdout, option
    assert "{name}" in captured.stdout and "%%chat" in captured.stdout
    assert "@name" in captured.stdout and "@@name" in captured.stdout and "%%bash" in captured.stdout


def test_an_unknown_option_says_so_in_one_line(shell: InteractiveShell) -> None:
    captured = run(shell, "%chat --frobnicate hello")
    assert "nbchat: unrecognized arguments: --frobnicate" in captured.stderr
    assert "see %chat --help" in captured.stderr
    assert "Traceback" not in captured.stdout + captured.stderr


def test_options_come_first_and_the_rest_of_the_line_is_the_prompt_verbatim() -> None:
    argv, prompt = split_line("-t 0.5 --new what's a 'monad' -t?", PARSER)
    assert argv == ["-t", "0.5", "--new"]
    assert prompt == "what's a 'monad' -t?"
    assert split_line('--new "My title" hi', PARSER) == (["--new", "My title"], "hi")
    assert split_line("-- -1 is negative", PARSER) == ([], "-1 is negative")


@pytest.mark.parametrize(
    ("line", "argv", "prompt"),
    [
        ("--new Plans -m qwen3 what next?", ["--new", "Plans", "-m", "qwen3"], "what next?"),
        ("--new Plans --think -t 0.2 go", ["--new", "Plans", "--think", "-t", "0.2"], "go"),
        ("--new Plans --model=qwen3 hi", ["--new", "Plans", "--model=qwen3"], "hi"),
        ("--new Plans -t0.2 hi", ["--new", "Plans", "-t0.2"], "hi"),
        ("--new Plans -- -1 is negative", ["--new", "Plans"], "-1 is negative"),
        ("--new Plans --list", ["--new", "Plans", "--list"], ""),
        ("--new what is x?", ["--new"], "what is x?"),
        ("--new what's -t up", ["--new"], "what's -t up"),
        ("--new what -x means", ["--new"], "what -x means"),
        ("--new -m qwen3 hi", ["--new", "-m", "qwen3"], "hi"),
    ],
)
def test_an_unquoted_word_after_new_is_the_title_when_options_follow_it(
    line: str, argv: list[str], prompt: str
) -> None:
    assert split_line(line, PARSER) == (argv, prompt)


def test_an_abbreviated_option_is_refused_not_half_read(shell: InteractiveShell) -> None:
    captured = run(shell, "%chat --temp 0.5 hello")
    assert "nbchat: unrecognized arguments: --temp" in captured.stderr


def test_help_explains_when_the_word_after_new_is_a_title(shell: InteractiveShell) -> None:
    help_text = " ".join(run(shell, "%chat --help").stdout.split())
    assert "--new Plans -m MODEL" in help_text and "--new what is x?" in help_text


# -- accounts -----------------------------------------------------------------------------------


def test_without_a_login_a_prompt_says_how_to_log_in(shell: InteractiveShell) -> None:
    captured = run(shell, "%chat hello")
    assert "nbchat: Log in first" in captured.stderr and "%chat --login NAME" in captured.stderr
    assert "Traceback" not in captured.stderr + captured.stdout


def test_login_asks_for_the_password_and_keeps_it_out_of_history(
    shell: InteractiveShell, session: ChatSession, passwords: list[str]
) -> None:
    passwords.append(PASSWORD)
    captured = run(shell, "%chat --login alice")
    assert "Logged in as alice." in captured.stdout
    assert session.user == "alice"
    history = "\n".join(source for _, _, source in shell.history_manager.get_range())
    assert "%chat --login alice" in history and PASSWORD not in history
    assert PASSWORD not in repr(shell.user_ns.get("In", []))


def test_a_wrong_password_is_one_clear_line(
    shell: InteractiveShell, session: ChatSession, passwords: list[str]
) -> None:
    passwords.append("not the password")
    captured = run(shell, "%chat --login alice")
    assert captured.stderr.startswith("nbchat: ") and "Traceback" not in captured.stderr
    assert session.user is None


def test_register_asks_twice_and_logs_in(
    shell: InteractiveShell, session: ChatSession, passwords: list[str]
) -> None:
    passwords.extend(["battery staple", "battery staple"])
    captured = run(shell, "%chat --register carol")
    assert "Registered and logged in as carol." in captured.stdout
    assert session.user == "carol"


def test_register_with_two_different_passwords_creates_nothing(
    shell: InteractiveShell, session: ChatSession, passwords: list[str]
) -> None:
    passwords.extend(["battery staple", "battery stapler"])
    captured = run(shell, "%chat --register carol")
    assert "nbchat: The two passwords differ; nothing was created." in captured.stderr
    with pytest.raises(nbchat.AuthenticationFailed):
        session.login("carol", "battery staple")


def test_logout_leaves_the_next_user_nothing(
    shell: InteractiveShell, session: ChatSession, passwords: list[str]
) -> None:
    logged_in_chat(shell, passwords)
    run(shell, "%chat alice's secret plan")
    run(shell, "%chat --logout")
    assert session.user is None and session.reply is None
    passwords.append(PASSWORD)
    run(shell, "%chat --login bob")
    captured = run(shell, "%chat --list")
    assert "No conversations yet" in markdown_shown(captured)[0]


# -- chatting -----------------------------------------------------------------------------------


def test_a_prompt_streams_into_the_cell_as_markdown_and_is_saved(
    shell: InteractiveShell, session: ChatSession, passwords: list[str]
) -> None:
    logged_in_chat(shell, passwords)
    captured = run(shell, "%chat what is a monad?")
    final = markdown_shown(captured)[-1]
    assert final.startswith("You said: what is a monad?")
    assert f"`{MODEL}`" in final and "tokens/s" in final
    user_message, answer = session.history()
    assert user_message.content == "what is a monad?"
    assert answer.content == "You said: what is a monad?" and answer.model == MODEL


def test_the_reply_is_redrawn_at_a_bounded_rate_not_once_per_token(
    shell: InteractiveShell, server: OllamaTestServer, passwords: list[str]
) -> None:
    logged_in_chat(shell, passwords)
    server.chunk_count = 30
    server.chunk_delay_s = 0.02
    captured = run(shell, "%chat count")
    redraws = markdown_shown(captured)
    assert redraws[-1].startswith("w0 w1 w2 ") and "w29" in redraws[-1]
    assert 2 <= len(redraws) < 30


def test_the_reply_is_returned_to_code(
    shell: InteractiveShell, session: ChatSession, passwords: list[str]
) -> None:
    logged_in_chat(shell, passwords)
    captured = run(shell, "answer = %chat hello there")
    answer = shell.user_ns["answer"]
    assert isinstance(answer, ChatAnswer) and answer == "You said: hello there"
    assert answer.reply.stats is not None and answer.reply.stats.finish_reason == "stop"
    assert nbchat.last_reply() is answer.reply
    assert captured.stdout == ""  # a magic's value is not echoed: the reply is already shown


def test_the_cell_magic_takes_the_body_as_the_prompt_and_options_on_its_line(
    shell: InteractiveShell, session: ChatSession, server: OllamaTestServer, passwords: list[str]
) -> None:
    logged_in_chat(shell, passwords)
    shell.user_ns["n"] = 7
    run(shell, "%%chat -t 0.3 -n 64 --system 'Be brief.'\nline one {n}\nline two {{literal}}")
    body = [r["body"] for r in server.requests if r["path"] == "/api/chat"][-1]
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}
    assert body["messages"][-1]["content"] == "line one 7\nline two {literal}"
    assert body["options"]["temperature"] == 0.3 and body["options"]["num_predict"] == 64
    assert session.settings.temperature == 0.3 and session.settings.max_new_tokens == 64


def test_settings_stay_with_the_conversation(
    shell: InteractiveShell, session: ChatSession, passwords: list[str]
) -> None:
    logged_in_chat(shell, passwords)
    run(shell, "%chat -t 0.2 -n 50 --think hi")
    run(shell, '%chat --new "Other" -m ollama:qwen3:1.7b')
    assert session.settings.model == "ollama:qwen3:1.7b" and session.settings.temperature != 0.2
    run(shell, "%chat -c Chat")
    settings = session.settings
    assert (settings.model, settings.temperature, settings.max_new_tokens, settings.think) == (
        MODEL,
        0.2,
        50,
        True,
    )


def test_conversations_are_listed_and_switched_by_title(
    shell: InteractiveShell, session: ChatSession, passwords: list[str]
) -> None:
    logged_in_chat(shell, passwords)
    run(shell, '%chat --new "Second one" -m ollama:qwen3:1.7b')
    table = markdown_shown(run(shell, "%chat -c chat --list"))[0]
    assert "| ▶ | Chat |" in table and "|  | Second one |" in table
    assert session.current is not None and session.current.title == "Chat"
    captured = run(shell, "%chat -c nowhere")
    assert "No conversation of yours is called 'nowhere'" in captured.stderr


def test_new_with_a_one_word_title_then_options_titles_the_conversation_and_sends_the_rest(
    shell: InteractiveShell, session: ChatSession, server: OllamaTestServer, passwords: list[str]
) -> None:
    logged_in_chat(shell, passwords)
    captured = run(shell, f"%chat --new Plans -m {MODEL} what next?")
    assert "Traceback" not in captured.stderr and captured.stderr == ""
    current = session.current
    assert current is not None and current.title == "Plans" and current.model == MODEL
    assert [m.content for m in session.history()] == ["what next?", "You said: what next?"]
    run(shell, "%chat --new what is x?")  # no option after the word: untitled, the whole line asked
    assert session.current is not None and session.current.title != "what"
    sent = [r["body"]["messages"][-1]["content"] for r in server.requests if r["path"] == "/api/chat"]
    assert sent == ["what next?"]  # the untitled conversation has no model yet: nothing sent


def test_a_new_conversation_has_no_model_until_one_is_chosen(
    shell: InteractiveShell, session: ChatSession, passwords: list[str]
) -> None:
    logged_in_chat(shell, passwords)
    captured = run(shell, "%chat --new hello")
    assert "nbchat: Choose a model for this conversation first" in captured.stderr
    assert "Traceback" not in captured.stderr
    assert session.settings.model is None
    assert [m.content for m in session.history()] == []


def test_a_bad_setting_is_refused_with_its_range(
    shell: InteractiveShell, session: ChatSession, passwords: list[str]
) -> None:
    logged_in_chat(shell, passwords)
    captured = run(shell, "%chat -t 5 hello")
    assert captured.stderr.startswith("nbchat: ") and "0" in captured.stderr and "2" in captured.stderr
    assert session.settings.temperature != 5 and session.history() == []
    captured = run(shell, "%chat -m gpt4 hello")
    assert "gpt4" in captured.stderr and session.settings.model == MODEL


def test_interrupting_the_kernel_stops_the_reply_and_keeps_the_partial_text(
    shell: InteractiveShell,
    session: ChatSession,
    server: OllamaTestServer,
    passwords: list[str],
    interruptible: None,
) -> None:
    logged_in_chat(shell, passwords)
    server.chunk_count = 200
    server.chunk_delay_s = 0.05

    def interrupt_after_some_text() -> None:
        wait_until(lambda: session.reply is not None and len(session.reply.text) > 8)
        _thread.interrupt_main()  # what Jupyter's Interrupt button does to the kernel

    threading.Thread(target=interrupt_after_some_text, daemon=True).start()
    captured = run(shell, "%chat count slowly")
    assert "*(stopped)*" in markdown_shown(captured)[-1]
    saved = session.history()[-1]
    assert saved.role == "assistant" and saved.stats["partial"] is True
    assert saved.stats["finish_reason"] == "cancelled" and 0 < len(saved.content.split()) < 200
    wait_until(lambda: server.active_streams == 0)


def test_an_engine_error_shows_under_the_partial_text(
    shell: InteractiveShell, session: ChatSession, server: OllamaTestServer, passwords: list[str]
) -> None:
    logged_in_chat(shell, passwords)
    server.fault = "midstream_error"
    final = markdown_shown(run(shell, "%chat hello there friend"))[-1]
    assert final.startswith("You said: hello ") and "**Error:**" in final
    assert session.history()[-1].stats["partial"] is True


# -- prompts from the notebook ------------------------------------------------------------------


def test_braces_are_filled_from_the_notebooks_variables(
    shell: InteractiveShell, server: OllamaTestServer, passwords: list[str]
) -> None:
    logged_in_chat(shell, passwords)
    run(shell, "err = ValueError('bad shape (3, 4)')\nrows = [10, 20]")
    run(shell, "%chat explain {err!r} at {rows[1]} and keep {{braces}}")
    sent = [r["body"] for r in server.requests if r["path"] == "/api/chat"][-1]["messages"][-1]
    assert sent["content"] == "explain ValueError('bad shape (3, 4)') at 20 and keep {braces}"


def test_an_unknown_name_in_braces_is_a_clear_error_and_nothing_is_sent(
    shell: InteractiveShell, session: ChatSession, server: OllamaTestServer, passwords: list[str]
) -> None:
    logged_in_chat(shell, passwords)
    captured = run(shell, "%chat explain {nothing_here}")
    assert "{nothing_here} in the prompt names nothing defined in this notebook" in captured.stderr
    assert session.history() == []
    assert not [r for r in server.requests if r["path"] == "/api/chat"]


def test_raw_sends_braces_as_written(
    shell: InteractiveShell, server: OllamaTestServer, passwords: list[str]
) -> None:
    logged_in_chat(shell, passwords)
    run(shell, "%chat --raw what does {x: 1} mean in JS?")
    sent = [r["body"] for r in server.requests if r["path"] == "/api/chat"][-1]["messages"][-1]
    assert sent["content"] == "what does {x: 1} mean in JS?"


def test_interpolation_reads_attributes_and_items_but_not_undefined_names() -> None:
    namespace = {"frame": {"cols": ["a", "b"]}, "n": 3}
    assert interpolate("{frame[cols]} x {n}", namespace) == "['a', 'b'] x 3"
    with pytest.raises(nbchat.InvalidValue, match="names nothing"):
        interpolate("{missing}", namespace)
    with pytest.raises(nbchat.InvalidValue, match="literal braces"):
        interpolate("{n", namespace)


def test_error_attaches_the_last_traceback_to_the_question_and_fills_only_the_question(
    shell: InteractiveShell, session: ChatSession, server: OllamaTestServer, passwords: list[str]
) -> None:
    logged_in_chat(shell, passwords)
    run(shell, "def broken():\n    return {}['missing_key']\nbroken()")
    shell.user_ns["part"] = "the lookup"
    captured = run(shell, "%chat --error why did {part} fail?")
    assert captured.stderr == ""
    sent = [r["body"] for r in server.requests if r["path"] == "/api/chat"][-1]["messages"][-1]
    question, _, context = sent["content"].partition("\n\n---\n")
    assert question == "why did the lookup fail?"
    assert "#### The last error (KeyError)" in context and "KeyError: 'missing_key'" in context
    assert "return {}['missing_key']" in context  # the traceback's braces are text, never filled
    saved = session.history()[0]
    assert saved.content == "why did the lookup fail?"
    assert [(item.kind, item.name) for item in saved.context] == [("error", "KeyError")]


def test_error_without_a_question_asks_why_it_failed(
    shell: InteractiveShell, server: OllamaTestServer, passwords: list[str]
) -> None:
    logged_in_chat(shell, passwords)
    run(shell, "1 / 0")
    run(shell, "%chat --error")
    sent = [r["body"] for r in server.requests if r["path"] == "/api/chat"][-1]["messages"][-1]
    assert sent["content"].startswith("Why did this fail, and how do I fix it?\n\n---\n")
    assert "ZeroDivisionError" in sent["content"]


# -- information --------------------------------------------------------------------------------


def test_health_and_models_are_shown(
    shell: InteractiveShell, server: OllamaTestServer, passwords: list[str]
) -> None:
    logged_in_chat(shell, passwords)
    models = markdown_shown(run(shell, "%chat --models"))[0]
    assert "`ollama:qwen3:1.7b`" in models and "`qwen3`" in models
    captured = run(shell, "%chat --health")
    shown = " ".join(str(o.data) for o in captured.outputs)
    assert server.url in shown and "alice" in shown


def test_a_bare_chat_says_who_is_logged_in_and_where(shell: InteractiveShell, passwords: list[str]) -> None:
    assert "Not logged in" in run(shell, "%chat").stdout
    logged_in_chat(shell, passwords)
    assert f"Logged in as alice; conversation 'Chat' with {MODEL}." in run(shell, "%chat").stdout


# -- questions end in "?" -----------------------------------------------------------------------


def test_a_question_mark_at_the_end_is_sent_not_taken_for_ipython_help(
    shell: InteractiveShell, server: OllamaTestServer, passwords: list[str]
) -> None:
    logged_in_chat(shell, passwords)
    captured = run(shell, "x = 1\n%chat is x an int?\nanswer = %chat  and a float??")
    contents = [r["body"]["messages"][-1]["content"] for r in server.requests if r["path"] == "/api/chat"]
    assert contents == ["is x an int?", "and a float??"]
    assert "not found" not in captured.stdout
    assert shell.user_ns["answer"] == "You said: and a float??"


def test_chat_question_mark_still_shows_the_magics_help(shell: InteractiveShell) -> None:
    from nbchat.magic import keep_questions

    assert keep_questions(["%chat?\n"]) == ["%chat?\n"]
    assert keep_questions(["%%chat\n", "why?\n"]) == ["%%chat\n", "why?\n"]
    assert keep_questions(["    %chat why?\n"]) == ["    get_ipython().run_line_magic('chat', 'why?')\n"]


def test_pull_downloads_a_model_into_ollama_with_progress(
    shell: InteractiveShell, server: OllamaTestServer, passwords: list[str]
) -> None:
    logged_in_chat(shell, passwords)
    shown = markdown_shown(run(shell, "%chat --pull qwen3:0.6b"))
    assert shown[0] == "Pulling `qwen3:0.6b`…"
    assert shown[-1] == "Pulled `qwen3:0.6b`: choose it with `-m ollama:qwen3:0.6b`."
    assert "ollama:qwen3:0.6b" in markdown_shown(run(shell, "%chat --models"))[0]
