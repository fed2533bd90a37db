"""``%chat`` and ``%%chat``: the chat in one line of any cell (``%load_ext nbchat``).

The line magic reads its options first and takes the rest of the line,
verbatim, as the prompt, so apostrophes and quotes need no escaping::

    %chat --new -m ollama:qwen3:1.7b what is a monad?
    %chat explain {err}                  # {name}: a variable's value, written into the prompt
    %chat what is the mean of @nums?     # @name: a bounded summary of the object goes along
    %chat --cells 2 why is this slow?    # the last 2 cells, with their results, go along
    %chat --error why did this fail?     # the last traceback goes along
    %chat --cell plot @df by month       # the reply's code becomes the next cell
    %chat --regenerate                   # another reply to the last question (the old one is kept)
    %chat --search monad functor         # find words in all your conversations, ranked
    %chat --export chat.ipynb            # the conversation as .md, .ipynb or .json, next to the notebook
    answer = %chat -t 0.2 give me a haiku

``{name}`` is filled first; ``@name`` mentions are then the session's (it
attaches the summaries). An ``@`` inside a filled-in value is text, never a
mention: the value is written with ``@@`` there, which the model reads as ``@``.

The cell magic takes options on its first line and the prompt as its body.
The reply streams into the cell as Markdown and is saved in the current
conversation of the logged-in user; ``%chat --help`` lists every option.
Expected errors (no model chosen, not logged in, ...) print one clear line,
never a traceback.
"""

from __future__ import annotations

import argparse
import getpass
import re
import shlex
import string
import sys
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from IPython.core.magic import Magics, line_cell_magic, magics_class, no_var_expand

from nbchat.errors import InvalidValue, NbchatError, NoConversation, NotLoggedIn
from nbchat.export import format_names
from nbchat.notebook import CodeBlock, cell_for, code_blocks
from nbchat.render import stats_footer
from nbchat.reply import Reply
from nbchat.session import ChatSession, get_session
from nbchat.types import Conversation

#: How often the streamed Markdown is redrawn (a redraw per token would flood the browser).
REDRAW_INTERVAL_S = 0.1
DEFAULT_ERROR_QUESTION = "Why did this fail, and how do I fix it?"
SHORT_ID = 12  # how much of an id --search prints: unambiguous in practice, short enough to type


class UsageError(NbchatError):
    """The magic's options were not understood."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse would exit the kernel's process
        raise UsageError(f"{message} (see %chat --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="%chat",
        add_help=False,
        allow_abbrev=False,  # "--temp 0.5" would be half read: the line splitter knows whole options only
        # argparse %-formats usage (and help strings): every literal % is written %%.
        usage="%%chat [options] [prompt]   or   %%%%chat [options] + the prompt as the cell's body",
        description=(
            "Chat with a model from any cell; the reply streams in as Markdown and is saved in the "
            "current conversation. {name} in a prompt is replaced by the notebook's variable name "
            "({{ and }} for literal braces). @name (or @name.attr) attaches a bounded summary of that "
            "object of the notebook (a DataFrame's shape, dtypes and head, an array's statistics, ...); "
            "@@name is a literal @name. The reply is also returned: answer = %chat ..."
        ),
        epilog=(
            "Examples:  %chat --login alice   |   %chat --new -m ollama:qwen3:1.7b what is a monad?   |   "
            "%chat explain {err}   |   %chat what is the mean of @nums?   |   %chat --cells 2 why so slow?"
            "   |   %chat --error   |   %chat --cell plot @df   |   %chat -c Ideas --list   |   "
            "%chat --regenerate   |   %chat --search monad   |   %chat --export chat.ipynb"
        ),
    )
    parser.add_argument("-h", "--help", action="store_true", help="show this help")
    who = parser.add_argument_group("account")
    who.add_argument("--login", metavar="USER", help="log in (the password is asked for, never echoed)")
    who.add_argument("--register", metavar="USER", help="create an account, then log in")
    who.add_argument(
        "--logout",
        action="store_true",
        help="log out; of the user's data only the answers' text stays in memory (in Out[n])",
    )
    chats = parser.add_argument_group("conversations")
    chats.add_argument("-c", "--conversation", metavar="ID-OR-TITLE", help="switch to a conversation")
    chats.add_argument(
        "--new",
        nargs="?",
        const="",
        metavar="TITLE",
        help=(
            'start a new conversation titled TITLE: quote the title (--new "My plans"), or leave one '
            "word unquoted when options follow it (--new Plans -m MODEL what next?); otherwise the "
            "words after --new are the prompt of an untitled conversation (--new what is x?)"
        ),
    )
    chats.add_argument("--list", action="store_true", help="list your conversations")
    chats.add_argument(
        "--at",
        metavar="MESSAGE-ID",
        help="show the branch holding that message (an id or its first 6+ characters, as --search "
        "prints them); with -c, in that conversation",
    )
    chats.add_argument(
        "--regenerate",
        action="store_true",
        help="a new reply to the last question, with the settings now; the old reply is kept as an "
        "alternative",
    )
    chats.add_argument(
        "--search",
        action="store_true",
        help="find the rest of the line's words in all your conversations (titles and every message, "
        "every branch), best first: %%chat --search monad functor",
    )
    chats.add_argument(
        "--export",
        metavar="FILE",
        help="write the conversation to FILE next to the notebook; its extension says the format: "
        f"{format_names()}; an existing file is never overwritten",
    )
    settings = parser.add_argument_group("settings of the conversation (kept for its next messages)")
    settings.add_argument(
        "-m", "--model", metavar="ID", help="ollama:<name>, transformers:<id or path>, qwen3"
    )
    settings.add_argument("-t", "--temperature", type=float, metavar="T", help="0 to 2")
    settings.add_argument("-n", "--max-tokens", type=int, metavar="N", help="max new tokens of a reply")
    settings.add_argument("--think", action=argparse.BooleanOptionalAction, help="let the model think first")
    settings.add_argument("--system", metavar="TEXT", help="the system prompt ('' to clear it)")
    prompt = parser.add_argument_group("prompt")
    prompt.add_argument(
        "--error", action="store_true", help="attach this kernel's last traceback to the question"
    )
    prompt.add_argument(
        "--cells",
        type=int,
        metavar="N",
        help="attach the last N cells run (their source, results and errors; %%chat cells not counted)",
    )
    prompt.add_argument(
        "--raw",
        action="store_true",
        help="send the prompt as written: no {name} filling (@name still attaches; @@name is a literal @)",
    )
    prompt.add_argument(
        "--cell",
        action="store_true",
        help="put the reply's code blocks into a new cell below this one (bash blocks run as %%%%bash)",
    )
    other = parser.add_argument_group("information")
    other.add_argument("--models", action="store_true", help="list the models available now")
    other.add_argument("--pull", metavar="NAME", help="have Ollama download a model, e.g. qwen3:1.7b")
    other.add_argument("--health", action="store_true", help="check Ollama, the local model and storage")
    return parser


PARSER = build_parser()


class ChatAnswer(str):
    """What ``answer = %chat ...`` holds: the reply's text; ``.reply`` has thinking and stats.

    It shows nothing when it is a cell's last value: the reply has already
    streamed into the cell above. Once its user logs out (or another user logs
    in) it keeps only its text and ``.reply`` is None: an answer in ``Out[n]``
    must not keep the user's question and saved messages alive in the kernel.
    """

    reply: Reply | None

    def __new__(cls, reply: Reply) -> ChatAnswer:
        answer = super().__new__(cls, reply.text)
        answer.reply = reply
        return answer

    def _ipython_display_(self) -> None:
        pass


#: The answers handed out, per session, held weakly: they let go of their replies when their user leaves.
_ANSWERS: weakref.WeakKeyDictionary[ChatSession, dict[str | None, weakref.WeakSet[ChatAnswer]]] = (
    weakref.WeakKeyDictionary()
)
_ANSWERS_LOCK = threading.Lock()


def _hand_out(session: ChatSession, answer: ChatAnswer) -> ChatAnswer:
    """Remember ``answer`` (weakly) as the current user's, to forget its reply when they leave."""
    with _ANSWERS_LOCK:
        if session not in _ANSWERS:
            _ANSWERS[session] = {}
            session.on_change(_forget_replies_of_users_gone)
        _ANSWERS[session].setdefault(session.user, weakref.WeakSet()).add(answer)
    return answer


def _forget_replies_of_users_gone(session: ChatSession) -> None:
    """A session listener: after a logout or another user's login, old answers keep only their text."""
    with _ANSWERS_LOCK:
        by_user = _ANSWERS.get(session, {})
        gone = [by_user.pop(user) for user in list(by_user) if user != session.user]
    for answers in gone:
        for answer in list(answers):
            answer.reply = None


@magics_class
class ChatMagics(Magics):
    """The ``%chat`` line magic and ``%%chat`` cell magic."""

    @no_var_expand  # nbchat fills {name} itself, with {{ }} escapes and clear errors
    @line_cell_magic
    def chat(self, line: str, cell: str | None = None) -> ChatAnswer | None:
        """Chat from any cell: %chat [options] prompt, or %%chat [options] with the prompt below.

        Run ``%chat --help`` for every option.
        """
        try:
            return run(line, cell, self.shell.user_ns if self.shell is not None else {})
        except NotLoggedIn as exc:
            _say(f"{exc} In a cell: %chat --login NAME (or --register NAME).")
        except NbchatError as exc:
            _say(str(exc))
        return None


def load_ipython_extension(ipython: Any) -> None:
    from nbchat.context import install_cell_recorder

    ipython.register_magics(ChatMagics)
    install_cell_recorder(ipython)  # from now on --cells knows which cells failed
    cleanup = ipython.input_transformers_cleanup
    if keep_questions not in cleanup:
        cleanup.append(keep_questions)


def unload_ipython_extension(ipython: Any) -> None:
    cleanup = ipython.input_transformers_cleanup
    if keep_questions in cleanup:
        cleanup.remove(keep_questions)


#: ``%chat ...`` alone on a line, or assigned: ``answer = %chat ...``.
_CHAT_LINE = re.compile(
    r"(?P<indent>[ \t]*)(?:(?P<target>[A-Za-z_][\w.]*)\s*=\s*)?%chat(?P<rest>(?:[ \t].*)?)",
    re.DOTALL,
)


def keep_questions(lines: list[str]) -> list[str]:
    """Let ``%chat what is a monad?`` reach the magic: IPython reads a line ending in ``?`` as help.

    An input transformer run before IPython's own: a ``%chat`` line that ends
    in ``?`` becomes the explicit magic call IPython would have made, so the
    question is sent instead of IPython looking up an object called ``monad``.
    ``%chat?`` itself still shows the magic's help.
    """
    if not lines or lines[0].lstrip().startswith("%%"):
        return lines  # a cell magic's body is its own business
    result = []
    for line in lines:
        body = line.rstrip("\r\n")
        match = _CHAT_LINE.fullmatch(body)
        rest = match["rest"].strip() if match else ""
        if match is None or not rest.endswith("?") or rest in ("?", "??"):
            result.append(line)
            continue
        call = f"get_ipython().run_line_magic('chat', {rest!r})"
        target = f"{match['target']} = " if match["target"] else ""
        result.append(f"{match['indent']}{target}{call}{line[len(body) :]}")
    return result


def run(line: str, cell: str | None, namespace: Mapping[str, Any]) -> ChatAnswer | None:
    """Carry out one ``%chat``/``%%chat``: options in order, then the prompt, if any."""
    if cell is None:
        argv, prompt = split_line(line, PARSER)
    else:
        argv, prompt = _split_all(line), cell
    options = PARSER.parse_args(argv)
    if options.help:
        print(PARSER.format_help())
        return None
    session = get_session()
    if options.logout:
        session.logout()
        print("Logged out.")
    if options.register:
        password = _ask_password(f"New password for {options.register}: ")
        if _ask_password("Repeat the password: ") != password:
            raise InvalidValue("The two passwords differ; nothing was created.")
        session.register(options.register, password)
        session.login(options.register, password)
        print(f"Registered and logged in as {session.user}.")
    if options.login:
        session.login(options.login, _ask_password(f"Password for {options.login}: "))
        print(f"Logged in as {session.user}.")
    if options.search and options.regenerate:
        raise UsageError("--search and --regenerate go in separate cells (see %chat --help)")
    if options.conversation is not None:
        conversation = session.select(find_conversation(session, options.conversation))
        if options.at is None:
            print(f"Conversation: {conversation.title}")
    if options.at is not None:
        conversation = session.open_at(_require_current(session).id, find_message(session, options.at))
        print(f"Conversation: {conversation.title}, at message {options.at}")
    if options.new is not None:
        session.new_conversation(options.new or None)
    changes = _setting_changes(options)
    if changes:
        if session.user is not None and session.current is None:
            session.new_conversation()
        session.configure(**changes)
    if options.list:
        _show_markdown(conversation_table(session))
    if options.pull:
        pull_into_cell(session, options.pull)
    if options.models:
        _show_markdown("\n".join(f"- `{model}`" for model in session.models()) or "No models found.")
    if options.health:
        _show(session.health())
    if options.export is not None:
        current = _require_current(session)
        path = session.export(current.id, None, options.export)
        print(f"Exported {current.title!r} to {path}")

    prompt = prompt.strip()
    if options.search:
        print(search_results(session, prompt))
        return None
    if options.regenerate:
        if prompt:
            raise InvalidValue(
                "--regenerate answers the last question again and takes no new one: "
                "%chat --regenerate alone (settings such as -t may go with it)."
            )
        _require_current(session)
        reply = session.regenerate()
        answer = _hand_out(session, stream_into_cell(reply))
        if options.cell:
            code_into_next_cell(reply)
        return answer
    if prompt and not options.raw:
        prompt = interpolate(prompt, namespace)  # the question only: the session attaches a traceback as is
    if options.error and not prompt:
        prompt = DEFAULT_ERROR_QUESTION
    if not prompt:
        if options.cells or options.cell:
            raise InvalidValue("--cells and --cell go with a question: %chat --cells 2 why is this slow?")
        if not (argv or cell is not None):
            print(status_line(session))
        return None
    _require_current(session)
    reply = session.send(prompt, cells=options.cells or 0, error=options.error, namespace=namespace)
    answer = _hand_out(session, stream_into_cell(reply))
    if options.cell:
        code_into_next_cell(reply)
    return answer


# -- parsing ------------------------------------------------------------------------------------


def split_line(line: str, parser: argparse.ArgumentParser) -> tuple[list[str], str]:
    """The leading options of a line (as argv) and the prompt after them, exactly as typed.

    ``--`` ends the options explicitly (for a prompt starting with ``-``). An
    option with an optional value (``--new``) takes the next word if it is
    quoted, or if it is one plain word followed by an option: ``--new Plans -m
    MODEL what next?`` starts "Plans" and asks "what next?", while ``--new what
    is x`` starts an untitled conversation and asks "what is x".
    """
    argv: list[str] = []
    rest = line.lstrip()
    while rest.startswith("-"):
        word, rest = _next_token(rest)
        if word == "--":
            break
        argv.append(word)
        action = parser._option_string_actions.get(word.split("=", 1)[0])
        if action is None or "=" in word or action.nargs == 0:
            continue  # a flag, or unknown (argparse reports it)
        if action.nargs == "?" and not rest.startswith(("'", '"')):
            title, after = _plain_word(rest)
            if title and _starts_with_option(after, parser):
                argv.append(title)  # --new Plans -m MODEL ...: an option follows, so Plans is the title
                rest = after
            continue
        value, rest = _next_token(rest)
        if not value and not rest:
            continue  # the value is missing: argparse says so
        argv.append(value)
    return argv, rest.strip()


def _plain_word(text: str) -> tuple[str, str]:
    """The first word of ``text`` if it is plain (no quotes, not an option), and the text after it."""
    parts = text.split(None, 1)
    if not parts or parts[0].startswith("-") or any(q in parts[0] for q in "'\"\\"):
        return "", text
    return parts[0], parts[1] if len(parts) > 1 else ""


def _starts_with_option(text: str, parser: argparse.ArgumentParser) -> bool:
    """Whether ``text`` begins with one of the parser's options (or ``--``, the end of options)."""
    word = text.split(None, 1)[0] if text.strip() else ""
    known = parser._option_string_actions
    if word == "--" or word.split("=", 1)[0] in known:
        return True
    return not word.startswith("--") and word[:2] in known  # a short option with its value: -t0.2


def _next_token(text: str) -> tuple[str, str]:
    """One shell-style word from the start of ``text`` (quotes honoured) and the text after it."""
    text = text.lstrip()
    quote: str | None = None
    end = 0
    while end < len(text):
        char = text[end]
        if quote is not None:
            if char == quote:
                quote = None
        elif char in "'\"":
            quote = char
        elif char.isspace():
            break
        end += 1
    raw, rest = text[:end], text[end:].lstrip()
    return _split_all(raw)[0] if raw else "", rest


def _split_all(text: str) -> list[str]:
    try:
        return shlex.split(text)
    except ValueError as exc:  # an unclosed quote
        raise UsageError(f"Could not read the options: {exc}.") from None


def _setting_changes(options: argparse.Namespace) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    if options.model is not None:
        changes["model"] = options.model
    if options.temperature is not None:
        changes["temperature"] = options.temperature
    if options.max_tokens is not None:
        changes["max_new_tokens"] = options.max_tokens
    if options.think is not None:
        changes["think"] = options.think
    if options.system is not None:
        changes["system"] = options.system
    return changes


# -- prompts ------------------------------------------------------------------------------------


def interpolate(prompt: str, namespace: Mapping[str, Any]) -> str:
    """Fill ``{name}`` (also ``{name.attr}``, ``{name[0]}``, ``{name!r}``) from the notebook.

    What a value brings is text: an ``@y`` in it that would read as a mention is
    written ``@@y`` (which the model is sent as ``@y``), so only the user's own
    ``@name`` attaches anything.
    """
    try:
        text, filled = _fill(prompt, _Names(namespace))
    except KeyError as exc:
        name = exc.args[0]
        raise InvalidValue(
            f"{{{name}}} in the prompt names nothing defined in this notebook: define {name} first, "
            "write {{ and }} for literal braces, or use --raw to send the prompt as written."
        ) from None
    except (IndexError, ValueError, AttributeError, TypeError) as exc:
        raise InvalidValue(
            f"Could not fill in the prompt's braces ({exc}): write {{{{ and }}}} for literal braces, "
            "or use --raw to send the prompt as written."
        ) from None
    return _keep_values_out_of_mentions(text, filled)


def _fill(prompt: str, names: Mapping[str, Any]) -> tuple[str, list[tuple[int, int]]]:
    """``str.format`` of ``prompt`` by ``names``, and where in the result each value landed."""
    formatter = string.Formatter()
    pieces: list[str] = []
    filled: list[tuple[int, int]] = []
    length = 0
    for literal, field, spec, conversion in formatter.parse(prompt):
        pieces.append(literal)
        length += len(literal)
        if field is None:
            continue
        if not field or field[0].isdigit():
            raise ValueError(f"{{{field}}} is not a variable's name")
        value, _ = formatter.get_field(field, (), names)
        value = formatter.convert_field(value, conversion)
        spec = formatter.vformat(spec, (), names) if spec and "{" in spec else (spec or "")
        text = formatter.format_field(value, spec)
        pieces.append(text)
        filled.append((length, length + len(text)))
        length += len(text)
    return "".join(pieces), filled


def _keep_values_out_of_mentions(text: str, filled: list[tuple[int, int]]) -> str:
    """``text`` with every mention that starts inside a filled-in value escaped as ``@@``."""
    if not any("@" in text[start:end] for start, end in filled):
        return text  # the common case: nbchat.context is not even imported
    from nbchat.context.mentions import mention_spans

    starts = [
        at
        for at, _ in mention_spans(text)
        if any(value_start <= at < value_end for value_start, value_end in filled)
    ]
    for at in reversed(starts):
        text = text[:at] + "@" + text[at:]
    return text


class _Names(dict[str, Any]):
    def __init__(self, namespace: Mapping[str, Any]) -> None:
        super().__init__()
        self._namespace = namespace

    def __missing__(self, key: str) -> Any:
        if key in self._namespace:
            return self._namespace[key]
        raise KeyError(key)

    def __getitem__(self, key: str) -> Any:
        return self.__missing__(key)


def _require_current(session: ChatSession) -> Conversation:
    """The current conversation, or the magic's advice on picking one (or on logging in)."""
    if session.user is None:
        raise NotLoggedIn("Log in first (or register, then log in).")
    current = session.current
    if current is None:
        raise NoConversation(
            "No conversation is selected: start one with %chat --new -m MODEL your question, "
            "or pick one with %chat -c TITLE (--list shows them)."
        )
    return current


def find_message(session: ChatSession, wanted: str) -> str:
    """A message id of the current conversation (any branch) from its id or its first 6+ characters."""
    tree = _require_current(session).tree
    wanted = wanted.strip().lower()
    if wanted in tree:
        return wanted
    matches = [m.id for m in tree.messages if len(wanted) >= 6 and m.id.startswith(wanted)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise InvalidValue(f"{len(matches)} messages start with {wanted!r}; give more of the id.")
    raise InvalidValue(
        f"This conversation has no message {wanted!r}: give the id --search printed (with its -c)."
    )


def search_results(session: ChatSession, query: str) -> str:
    """``--search``: the hits, best first, each with its title, snippet and the line that opens it."""
    if not query:
        raise InvalidValue("--search needs words to find: %chat --search monad functor")
    hits = session.search(query)
    if not hits:
        return f"Nothing in your conversations matches {query!r}."
    lines = [f"{len(hits)} hit{'s' if len(hits) != 1 else ''} for {query!r}, best first:"]
    for number, hit in enumerate(hits, 1):
        where = f"{hit.role} message" if hit.message_id is not None else "title"
        when = hit.time.astimezone().strftime("%Y-%m-%d %H:%M")
        lines.append(f"{number}. {hit.title}  ({where}, {when})")
        lines.append(f"   {' '.join(hit.snippet.split())}")
        at = f" --at {hit.message_id[:SHORT_ID]}" if hit.message_id is not None else ""
        lines.append(f"   open it: %chat -c {hit.conversation_id[:SHORT_ID]}{at}")
    return "\n".join(lines)


def find_conversation(session: ChatSession, wanted: str) -> str:
    """A conversation id from an id, an id's start (6+ characters) or a title (any case)."""
    summaries = session.conversations()
    for summary in summaries:
        if summary.id == wanted:
            return summary.id
    by_title = [s for s in summaries if s.title.casefold() == wanted.strip().casefold()]
    by_prefix = [s for s in summaries if len(wanted) >= 6 and s.id.startswith(wanted)]
    matches = by_title or by_prefix
    if len(matches) == 1:
        return matches[0].id
    if matches:
        ids = ", ".join(s.id[:8] for s in matches)
        raise InvalidValue(f"{len(matches)} conversations are called {wanted!r} ({ids}); pick one by id.")
    raise InvalidValue(f"No conversation of yours is called {wanted!r}; %chat --list shows them.")


# -- output -------------------------------------------------------------------------------------


def stream_into_cell(reply: Reply) -> ChatAnswer:
    """Show the reply as Markdown while it streams (redrawn at most every ``REDRAW_INTERVAL_S``);
    before its first token, what it waits for: a local model downloading (with a bar) or loading,
    or another reply using it, so a first use is never minutes of a bare "…"."""
    from IPython.display import Markdown, display

    handle = display(Markdown("…"), display_id=True)
    shown_at = 0.0
    try:
        show_status_until_text(reply, lambda markdown: handle.update(Markdown(markdown)))
        for _ in reply:
            if time.monotonic() - shown_at >= REDRAW_INTERVAL_S:
                handle.update(Markdown(reply.markdown()))
                shown_at = time.monotonic()
    except KeyboardInterrupt:  # the kernel's Interrupt: stop the reply, keep what came
        reply.cancel()
        reply.join()
    except NbchatError:
        pass  # shown below, under the partial text
    handle.update(Markdown(reply.markdown() + stats_footer(reply)))
    return ChatAnswer(reply)


def show_status_until_text(reply: Reply, show: Callable[[str], object]) -> None:
    """Until the reply's first text (or its end), ``show`` its status whenever it changes, at most
    every ``REDRAW_INTERVAL_S``: iterating the reply would wake only on chunks."""
    shown = "…"
    while not reply.join(REDRAW_INTERVAL_S):
        if reply.text or reply.thinking:
            return
        markdown = status_markdown(reply)
        if markdown != shown:
            show(markdown)
            shown = markdown


def status_markdown(reply: Reply) -> str:
    """The reply's status in italics, under it a text bar while its model downloads."""
    markdown = reply.markdown() if reply.status else "…"
    step = reply.download
    fraction = step.fraction if step is not None else None
    return markdown if fraction is None else f"{markdown}\n\n`{text_bar(fraction)}`"


def text_bar(fraction: float, width: int = 20) -> str:
    """``[███████░░░░░░░░░░░░░] 35%``: a download's progress where no widget can be drawn."""
    fraction = min(1.0, max(0.0, fraction))
    filled = int(fraction * width + 1e-9)
    return f"[{'█' * filled}{'░' * (width - filled)}] {fraction:.0%}"


def code_into_next_cell(reply: Reply) -> None:
    """``--cell``: the reply's code blocks become a new cell below the magic's (IPython's next input)."""
    code = next_cell_code(code_blocks(reply))
    if code is None:
        print("The reply has no code block, so no cell was added.")
        return
    from IPython import get_ipython

    shell = get_ipython()
    if shell is None:  # pragma: no cover - the magic runs only in IPython
        print(code)
        return
    shell.set_next_input(code, replace=False)
    print("The reply's code is in a new cell below.")


def next_cell_code(blocks: list[CodeBlock]) -> str | None:
    """One cell's code from a reply's blocks, in order; None when none is code (Markdown is left out).

    A lone shell block, or shell blocks only, run as one ``%%bash`` cell; shell
    blocks among Python ones become ``!`` lines, as a notebook user writes them.
    """
    code = [(block, text) for block in blocks for kind, text in [cell_for(block)] if kind == "code"]
    if not code:
        return None
    if len(code) == 1:
        return code[0][1]
    if all(text.startswith("%%bash\n") for _, text in code):
        return "%%bash\n" + "\n\n".join(block.code.rstrip("\n") for block, _ in code)
    return "\n\n".join(
        _bang_lines(block.code) if text.startswith("%%bash\n") else text for block, text in code
    )


def _bang_lines(script: str) -> str:
    """Shell lines as IPython's ``!`` lines (blank lines and comments kept as they are)."""
    lines = script.rstrip("\n").splitlines()
    return "\n".join(
        line if not line.strip() or line.lstrip().startswith("#") else "!" + line for line in lines
    )


def pull_into_cell(session: ChatSession, name: str) -> None:
    """``--pull``: download a model into Ollama, with a progress line redrawn in the cell."""
    from IPython.display import Markdown, display

    handle = display(Markdown(f"Pulling `{name}`…"), display_id=True)
    shown_at = 0.0

    def progress(step: Any) -> None:
        nonlocal shown_at
        if time.monotonic() - shown_at >= REDRAW_INTERVAL_S:
            percent = f" {step.fraction:.0%}" if step.fraction is not None else ""
            handle.update(Markdown(f"Pulling `{name}`: {step.status}{percent}"))
            shown_at = time.monotonic()

    model_id = session.pull(name, progress)
    handle.update(Markdown(f"Pulled `{name}`: choose it with `-m {model_id}`."))


def conversation_table(session: ChatSession) -> str:
    summaries = session.conversations()
    if not summaries:
        return "No conversations yet: `%chat --new -m MODEL your question` starts one."
    current = session.current.id if session.current is not None else None
    rows = ["| | title | model | updated | id |", "|---|---|---|---|---|"]
    for s in summaries:
        mark = "▶" if s.id == current else ""
        title = s.title.replace("|", "\\|")
        updated = s.updated.astimezone().strftime("%Y-%m-%d %H:%M")
        rows.append(f"| {mark} | {title} | {s.model or '—'} | {updated} | `{s.id[:8]}` |")
    return "\n".join(rows)


def status_line(session: ChatSession) -> str:
    if session.user is None:
        return "Not logged in: %chat --login NAME (or --register NAME). %chat --help lists every option."
    current = session.current
    if current is None:
        return f"Logged in as {session.user}; no conversation selected (%chat --new, or -c TITLE)."
    model = current.model or "no model chosen yet (-m)"
    return f"Logged in as {session.user}; conversation {current.title!r} with {model}."


def _ask_password(prompt: str) -> str:
    return getpass.getpass(prompt)


def _show_markdown(text: str) -> None:
    from IPython.display import Markdown, display

    display(Markdown(text))


def _show(obj: Any) -> None:
    from IPython.display import display

    display(obj)


def _say(message: str) -> None:
    print(f"nbchat: {message}", file=sys.stderr)
