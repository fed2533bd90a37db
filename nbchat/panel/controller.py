"""``ChatPanel``: wires the panel's parts to the kernel's session; the parts know nothing of each other.

Every action a part reports goes to the session; every change of the session
(from this panel, another one, the magic or user code) redraws the parts from
the session. Errors and warnings of an action go to the status line, never a
traceback.
"""

from __future__ import annotations

import html
import threading
import warnings
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ipywidgets as widgets

from nbchat.errors import NbchatError, NbchatWarning, NotLoggedIn
from nbchat.notebook import CodeBlock
from nbchat.panel.composer import Composer
from nbchat.panel.context_row import ContextRow
from nbchat.panel.conversation_bar import ConversationBar
from nbchat.panel.export_control import ExportControl
from nbchat.panel.kit import STYLE, classed, close_widgets
from nbchat.panel.live_reply import LiveReply, ended_status, generating_status, unsaved
from nbchat.panel.login_form import LoginForm
from nbchat.panel.message_list import MessageList
from nbchat.panel.message_view import BranchActions
from nbchat.panel.pull_row import PullRow
from nbchat.panel.search_box import SearchBox
from nbchat.panel.settings_row import SettingsRow
from nbchat.render import reply_markdown
from nbchat.reply import Reply
from nbchat.session import ChatSession, get_session
from nbchat.types import ConversationSettings

#: How often a panel looks whether another kernel changed the conversation it shows (one ``stat``).
WATCH_S = 2.0


class ChatPanel(widgets.VBox):
    """The chat app for one cell; all panels of a kernel share its one session.

    The controls are attributes (``panel.send_button``, ``panel.model``, ...)
    for scripts and tests; ``close()`` lets the panel go for good.
    """

    def __init__(self, session: ChatSession | None = None) -> None:
        super().__init__()
        self.session = session or get_session()
        self._lock = threading.RLock()
        self._closed = False
        self._following: LiveReply | None = None
        # What the shown conversation's file was when drawn, and whether it showed a reply another
        # kernel is writing: the watcher redraws when either says the view may be out of date.
        self._drawn_stamp: tuple[int, int] | None = None
        self._shows_live = False
        self._stop_watching = threading.Event()
        self._retired: list[widgets.Widget] = []  # widgets of replies followed before, to close
        self._unsaved: dict[str, dict[str, str]] = {}  # conversation id -> question id -> Markdown
        self._style = widgets.HTML(STYLE)  # one per panel: a new widget per redraw would pile up
        self.login_form = LoginForm(self._log_in)
        self.conversation_bar = ConversationBar(
            on_logout=lambda: self._act(self.session.logout),
            on_pick=self._pick,
            on_new=self._new_conversation,
            on_rename=lambda conversation_id, title: bool(
                self._act(lambda: self.session.rename(conversation_id, title))
            ),
            on_delete=lambda conversation_id: self._act(lambda: self.session.delete(conversation_id)),
        )
        self.search_box = SearchBox(on_search=self._search, on_open=self._open_hit)
        self.export_control = ExportControl(on_export=self._export)
        self.settings_row = SettingsRow(
            on_model=self._choose_model, on_setting=self._change_setting, on_refresh_models=self._load_models
        )
        self.pull_row = PullRow(self._pull)
        self.message_list = MessageList(
            on_insert=lambda block: self._to_notebook(block, run=False),
            on_run=lambda block: self._to_notebook(block, run=True),
            on_copied=self._copied,
            branches=BranchActions(
                switch=self._switch_branch, edit=self._edit_question, regenerate=self._regenerate
            ),
        )
        self.context_row = ContextRow(on_explain=self._explain_last_error)
        self.composer = Composer(on_send=self._send_prompt, on_stop=lambda: self.session.stop())
        self.login_view = self.login_form.view
        self.chat_view = classed(
            widgets.VBox(
                [
                    *self.conversation_bar.rows,
                    *self.search_box.rows,
                    *self.export_control.rows,
                    *self.settings_row.rows,
                    *self.pull_row.rows,
                    *self.message_list.rows,
                    *self.context_row.rows,
                    *self.composer.rows,
                ]
            ),
            "nbchat-chat-view",
        )
        self._expose_controls()
        classed(self, "nbchat-panel")
        _connect_notebook()
        self._listener = _weak_listener(self)
        self.session.on_change(self._listener)
        self.refresh()
        watcher = (weakref.ref(self), self._stop_watching)
        threading.Thread(target=_watch, args=watcher, name="nbchat-panel-watch", daemon=True).start()

    def _expose_controls(self) -> None:
        """Each part's controls as the panel's own attributes, the names scripts and tests use."""
        login, bar, settings = self.login_form, self.conversation_bar, self.settings_row
        self.username = login.username
        self.password = login.password
        self.login_button = login.login_button
        self.register_button = login.register_button
        self.login_message = login.message
        self.user_label = bar.user_label
        self.logout_button = bar.logout_button
        self.conversations = bar.conversations
        self.new_button = bar.new_button
        self.rename_button = bar.rename_button
        self.delete_button = bar.delete_button
        self.rename_row = bar.rename_row
        self.rename_text = bar.rename_text
        self.rename_ok = bar.rename_ok
        self.rename_cancel = bar.rename_cancel
        self.delete_row = bar.delete_row
        self.delete_question = bar.delete_question
        self.delete_ok = bar.delete_ok
        self.delete_cancel = bar.delete_cancel
        self.model = settings.model
        self.refresh_models_button = settings.refresh_models_button
        self.models_note = settings.models_note
        self.temperature = settings.temperature
        self.max_tokens = settings.max_tokens
        self.think = settings.think
        self.system = settings.system
        self.system_box = settings.system_box
        self.pull_name = self.pull_row.name
        self.pull_button = self.pull_row.button
        self.pull_progress = self.pull_row.progress
        self.messages = self.message_list.view
        self.prompt = self.composer.prompt
        self.send_button = self.composer.send_button
        self.stop_button = self.composer.stop_button
        self.status = self.composer.status
        self.download_progress = self.composer.download_bar.progress
        self.include_cells = self.context_row.include_cells
        self.explain_button = self.context_row.explain_button
        self.search = self.search_box.query
        self.search_button = self.search_box.search_button
        self.search_hits = self.search_box.hit_list
        self.search_close = self.search_box.close_button
        self.export_format = self.export_control.format
        self.export_button = self.export_control.button

    @property
    def _live(self) -> widgets.Output | None:
        """The streaming reply's widget, while this panel follows one."""
        following = self._following
        return following.output if following is not None else None

    # -- lifetime ------------------------------------------------------------------------------

    def close(self) -> None:
        """Let the panel go: it stops listening to the session and following a reply, and every
        widget of it is closed (ipywidgets keeps a widget until then). Closing twice is harmless."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            following, self._following = self._following, None
            self._stop_watching.set()
            if following is not None:
                following.stop()
                self._retired.append(following.output)
            self._unsaved.clear()
        self.session.off_change(self._listener)  # outside our lock: the session calls in under its own
        self.message_list.close()  # with the bars shown inside replies, which no box holds
        close_widgets(self, self.login_view, self.chat_view, *self._retired)
        self._retired.clear()

    # -- redrawing from the session ------------------------------------------------------------

    def refresh(self) -> None:
        """Show exactly what the session holds now (any thread)."""
        with self._lock:
            if self._closed:
                return
            if self.session.user is None:
                self._show_logged_out()
            else:
                try:
                    self._show_logged_in()
                except NotLoggedIn:  # logged out (by another thread, or another kernel) meanwhile
                    self._show_logged_out()
            self._close_retired()

    def _show_logged_out(self) -> None:
        self.children = [self._style, self.login_view]
        hub_error = self.session.hub_error
        self.login_form.show(
            allow_registration=self.session.config.policy.allow_registration,
            encrypted=self.session.config.policy.encrypt_local_accounts,
            hub_error=str(hub_error) if hub_error is not None else None,
        )
        self._unfollow()
        self._unsaved.clear()
        self.message_list.clear()
        self.conversation_bar.clear()
        self.search_box.clear()
        self.export_control.clear()
        self.settings_row.clear()
        self.pull_row.clear()
        self.composer.clear()
        self.context_row.clear()

    def _show_logged_in(self) -> None:
        session = self.session
        if self.children[-1:] != (self.chat_view,):
            self.children = [self._style, self.chat_view]
            self.login_form.clear_message()
            self.conversation_bar.ask_rename(False)
            self.conversation_bar.ask_delete(False)
            self._load_models()
        self._drawn_stamp = session.current_stamp  # before reading: a change meanwhile shows next time
        current = session.current
        self.conversation_bar.show(
            session.user or "", hub=session.hub_login, summaries=session.conversations(), current=current
        )
        settings = current.settings if current is not None else ConversationSettings()
        self.settings_row.show(settings)
        reply = session.reply
        streaming = (
            reply is not None
            and not reply.done
            and current is not None
            and reply.conversation_id == current.id
        )
        if reply is not None:
            if streaming and (self._following is None or self._following.reply is not reply):
                self._follow(reply)
            self._keep_if_unsaved(reply)
        self.message_list.show(
            current.messages if current is not None else (),
            unsaved=self._unsaved.get(current.id) if current is not None else None,
            live=self._live if streaming else None,
            live_after=reply.prompt.id if streaming and reply is not None else None,
            tree=current.tree if current is not None else None,
            conversation_id=current.id if current is not None else None,
            busy=streaming,
        )
        self._shows_live = current is not None and any((m.stats or {}).get("live") for m in current.messages)
        self.composer.set_busy(streaming, settings.model)
        self.context_row.set_busy(streaming, settings.model)
        self.conversation_bar.set_busy(streaming)
        self.search_box.set_busy(streaming)
        self.export_control.show(current.id if current is not None else None)
        self.settings_row.set_busy(streaming)

    def _redraw_if_changed_elsewhere(self) -> None:
        """Redraw when another kernel changed the shown conversation (a message, a reply it is
        writing, a rename), or while such a reply shows (its kernel may have died). A reply
        streaming here redraws itself; reading again costs only the lines added since."""
        session = self.session
        reply = session.reply
        if self._closed or session.user is None or (reply is not None and not reply.done):
            return
        try:
            stamp = session.current_stamp
        except NbchatError:  # logged out meanwhile
            return
        if stamp != self._drawn_stamp or self._shows_live:
            self.refresh()

    def _keep_if_unsaved(self, reply: Reply) -> None:
        """A reply that could not be saved stays shown (it is in no history) and the status says why."""
        if not unsaved(reply):
            return
        kept = self._unsaved.setdefault(reply.conversation_id, {})
        if reply.prompt.id not in kept:
            kept[reply.prompt.id] = reply_markdown(reply)
            self.composer.say(ended_status(reply))

    def _load_models(self) -> None:
        """Ask the engines what can be chosen now (the Ollama server's tags and the local Qwen3)."""
        models, problem = self.session.model_choices()
        current = self.session.current
        self.settings_row.offer(models, problem, current.settings.model if current is not None else None)

    # -- following a reply ---------------------------------------------------------------------

    def _follow(self, reply: Reply) -> None:
        """Show ``reply`` as it streams, redrawn at a bounded rate by a thread of its own."""
        self._unfollow()
        self._following = LiveReply(
            reply,
            on_status=self.composer.say,
            on_download=self.composer.show_download,
            on_end=self._reply_ended,
        )
        self.composer.say(generating_status(reply))

    def _unfollow(self) -> None:
        following, self._following = self._following, None
        if following is not None:
            following.stop()
            self._retired.append(following.output)  # closed once no longer shown

    def _reply_ended(self, reply: Reply) -> None:
        with self._lock:
            if self._closed or self._following is None or self._following.reply is not reply:
                return
            self.composer.say(ended_status(reply))
            self._unfollow()
        self.refresh()  # the saved message (or the unsaved reply) takes the live widget's place

    def _close_retired(self) -> None:
        retired, self._retired = self._retired, []
        close_widgets(*retired)

    # -- actions -------------------------------------------------------------------------------

    def _act(self, action: Callable[[], Any]) -> Any:
        """Run a session action; its errors and warnings go to the status line, never a traceback."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", NbchatWarning)
            try:
                result = action()
            except NbchatError as exc:
                self.composer.error(str(exc))
                return None
        notes = [str(w.message) for w in caught if issubclass(w.category, NbchatWarning)]
        if notes:
            self.composer.say(html.escape(" ".join(notes)))
        return result

    def _log_in(self, name: str, password: str, register: bool) -> None:
        try:
            if register:
                self.session.register(name, password)
            self.session.login(name, password)
        except NbchatError as exc:
            self.login_form.refused(str(exc))
            return
        self.login_form.accepted()

    def _pick(self, conversation_id: str) -> None:
        current = self.session.current
        if current is None or current.id != conversation_id:
            self.message_list.jump()
            if self._act(lambda: self.session.select(conversation_id)) is not None:
                self._warm_up(None)  # a conversation on a local model: load it before the first send

    def _new_conversation(self) -> None:
        self.message_list.jump()
        self._act(self.session.new_conversation)

    def _search(self, query: str) -> None:
        """The user's conversations holding ``query``'s words; a query the search refuses says why."""
        try:
            hits = self.session.search(query)
        except NbchatError as exc:
            self.search_box.failed(str(exc))
            return
        self.search_box.show_hits(query, hits)

    def _open_hit(self, conversation_id: str, message_id: str | None) -> None:
        """Open a hit's conversation on the branch holding its message, and show that message."""
        try:
            if message_id is None:  # only the title matched: the conversation, newest text first
                self.message_list.jump()
                self.session.select(conversation_id)
            else:
                self.message_list.reveal(conversation_id, message_id)  # shown however old it is
                self.session.open_at(conversation_id, message_id)
        except NbchatError as exc:  # deleted since the search, or a reply streams there
            self.search_box.failed(str(exc))
            return
        if message_id is not None:
            self.search_box.reveal(message_id)

    def _export(self, format: str) -> None:
        """Write the conversation shown next to the notebook (the kernel's working directory)."""
        current = self.session.current
        if current is None:
            return
        try:
            path = self.session.export(current.id, format)
        except NbchatError as exc:
            self.export_control.failed(str(exc))
            return
        self.export_control.exported(path, Path.cwd())

    def _choose_model(self, model: str | None) -> None:
        def choose() -> bool:
            if self.session.current is None:
                if model is None:
                    return False
                self.session.new_conversation()
            self.session.configure(model=model)
            return True

        if self._act(choose) and model is not None:
            self._warm_up(model)
        if self.session.user is not None:
            self.refresh()  # after a refusal, the stored choice shows again

    def _warm_up(self, model: str | None) -> None:
        """A local model (``model``, or the current conversation's) starts loading as soon as it is
        chosen (warm start); until a reply starts, the status line says how far it got."""

        def say(text: str) -> None:
            reply = self.session.reply
            if not self._closed and (reply is None or reply.done):
                self.composer.say(html.escape(text))

        self.session.warm_up(model, on_status=say)

    def _change_setting(self, name: str, value: Any) -> None:
        if self.session.current is None:
            return
        if self._act(lambda: self.session.configure(**{name: value})) is None:
            self.refresh()  # refused: the stored value shows again

    def _send_prompt(self, text: str) -> None:
        """Send with the recent cells asked for; ``@name`` mentions are the session's to resolve
        (an unknown one is refused before anything is saved, and the prompt stays to fix it)."""
        cells = self.context_row.cells
        self.message_list.jump()  # the user wants to see the question and its reply, even if scrolled up
        if self._act(lambda: self.session.send(text, cells=cells)) is not None:
            self.composer.sent()

    def _explain_last_error(self) -> None:
        self.message_list.jump()
        self._act(self.session.explain_last_error)

    def _regenerate(self) -> None:
        """A new reply to the last question; the one it replaces stays an alternative (‹ 1 / 2 ›)."""
        self.message_list.jump()
        self._act(self.session.regenerate)

    def _edit_question(self, message_id: str, text: str) -> bool:
        """Send an earlier question changed: a branch from there; True when it was accepted."""
        self.message_list.jump()
        return self._act(lambda: self.session.edit(message_id, text)) is not None

    def _switch_branch(self, message_id: str) -> None:
        """Show the branch through an alternative: the controller redraws on the session's change."""
        self._act(lambda: self.session.switch_to(message_id))

    def _to_notebook(self, block: CodeBlock, *, run: bool) -> None:
        """Insert (and run) a reply's code block as a new cell below the active one; where the front
        end cannot be reached (VS Code, the classic notebook, nbval), the status line says so."""
        from nbchat.notebook import notebook_bridge  # ipylab only once someone asks for a cell

        try:
            bridge = notebook_bridge()
            if run:
                bridge.run(block)
            else:
                bridge.insert(block)
        except NbchatError as exc:
            self.composer.error(str(exc))
            return
        except Exception as exc:  # a widget callback must not raise: the traceback would be lost
            self.composer.error(
                f"Could not {'run' if run else 'insert'} the code: {type(exc).__name__}: {exc}"
            )
            return
        kind = "Markdown" if block.language.lower() in ("markdown", "md") else "code"
        running = " and running it" if run else ""
        self.composer.say(f"Inserted a new {kind} cell below the active one{running}.")

    def _copied(self, ok: bool) -> None:
        if ok:
            self.composer.say("Copied the code to the clipboard.")
        else:
            self.composer.error("The browser refused the clipboard: select the code and press Ctrl+C.")

    def _pull(self, name: str) -> None:
        """Ask Ollama to download a model, in a thread (it can take minutes), with a progress bar."""
        if not name:
            self.composer.error("Type the name of an Ollama model to pull, e.g. qwen3:1.7b.")
            return
        self.pull_row.started()
        self.composer.say(f"Pulling <code>{html.escape(name)}</code>…")

        def progress(step: Any) -> None:
            self.pull_row.advanced(step.fraction)
            self.composer.say(f"Pulling <code>{html.escape(name)}</code>: {html.escape(step.status)}")

        def work() -> None:
            try:
                model_id = self.session.pull(name, progress)
            except NbchatError as exc:
                self.composer.error(str(exc))
            else:
                self.pull_row.succeeded()
                if not self._closed:
                    self._load_models()
                self.composer.say(f"Pulled <code>{html.escape(model_id)}</code>: choose it above.")
            finally:
                self.pull_row.ended()

        threading.Thread(target=work, name="nbchat-pull", daemon=True).start()


def _connect_notebook() -> None:
    """Make the kernel's notebook bridge now: the front end answers it only once this cell is done,
    so Insert and Run are ready by the time a person clicks them."""
    from nbchat.notebook import notebook_bridge

    try:
        notebook_bridge()
    except Exception as exc:  # no ipylab front end here: Insert and Run will say so, Copy still works
        warnings.warn(f"Insert and Run are unavailable: {exc}", NbchatWarning, stacklevel=3)


def _watch(ref: weakref.ref[ChatPanel], stop: threading.Event) -> None:
    """Every ``WATCH_S`` until the panel closes (or is forgotten): show what other kernels changed."""
    while not stop.wait(WATCH_S):
        panel = ref()
        if panel is None:
            return
        try:
            panel._redraw_if_changed_elsewhere()
        except Exception as exc:  # a watcher never takes the kernel down; the next user action says why
            warnings.warn(f"nbchat could not redraw the panel: {exc}", NbchatWarning, stacklevel=1)
        del panel


def _weak_listener(panel: ChatPanel) -> Callable[[ChatSession], None]:
    """A session listener that does not keep a forgotten panel alive (``close()`` removes it)."""
    ref = weakref.ref(panel)

    def listener(_session: ChatSession) -> None:
        alive = ref()
        if alive is not None:
            alive.refresh()

    return listener
