"""The chat panel: a whole chat app in a notebook cell, built from ipywidgets on the kernel's session.

``nbchat.panel()`` (or ``display(nbchat.ChatPanel())``) shows it. The panel
holds no state of its own that matters: every action goes to the session, and
every change of the session (from this panel, another one, the ``%chat``
magic or user code) redraws every panel from the session, so several panels
in one kernel always agree. Logged out it is a login form; logged in, a
conversation picker, the conversation's settings, its messages and a prompt.

The original app's safety rules hold: a new conversation starts on
"— choose a model —", creating or deleting one shows that again, Send stays
disabled until a model is chosen, the settings belong to the conversation and
come back when switching to it, and logging out empties every widget.

Replies stream in from the session's reply thread and are redrawn at most
every ``REDRAW_INTERVAL_S`` (not once per token), as Markdown rendered by
Jupyter itself (code blocks highlighted). Every control has a stable CSS class
(``nbchat-send``, ...; listed in the README) for tests and users' own styles.
"""

from __future__ import annotations

import html
import sys
import threading
import types
import warnings
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import ipywidgets as widgets

from nbchat.errors import NbchatError, NbchatWarning
from nbchat.reply import Reply
from nbchat.session import ChatSession, get_session
from nbchat.types import MAX_NEW_TOKENS_CEILING, ConversationSettings, Message

#: The first entry of the model dropdown: nothing can be sent while it is selected.
CHOOSE_MODEL = "— choose a model —"
#: At most about 12 redraws a second while a reply streams.
REDRAW_INTERVAL_S = 0.08

_STYLE = """
<style>
.nbchat-panel { max-width: 920px; }
.nbchat-messages { max-height: 560px; overflow-y: auto; padding: 4px 0; }
.nbchat-message-user .nbchat-bubble {
  background: var(--jp-brand-color3, #e3f2fd); border-radius: 8px; padding: 6px 10px;
  margin: 4px 0 4px 15%; white-space: pre-wrap; }
.nbchat-message-assistant { border-left: 3px solid var(--jp-brand-color1, #1976d2);
  padding-left: 8px; margin: 4px 15% 4px 0; }
.nbchat-status { color: var(--jp-ui-font-color2, #616161); font-size: 90%; }
.nbchat-status .nbchat-error, .nbchat-login-message .nbchat-error { color: var(--jp-error-color1, #d32f2f); }
.nbchat-role { font-size: 80%; color: var(--jp-ui-font-color2, #757575); }
</style>
"""


def _classed(widget: widgets.DOMWidget, *names: str) -> Any:
    for name in names:
        widget.add_class(name)
    return widget


def _markdown_output(markdown: str) -> tuple[dict[str, Any], ...]:
    """Output-widget outputs that Jupyter renders as Markdown (its own renderer, code highlighted)."""
    return ({"output_type": "display_data", "data": {"text/markdown": markdown}, "metadata": {}},)


def message_markdown(message: Message) -> str:
    """A saved assistant message as the panel shows it: thinking folded, then text, then how it ended."""
    parts = []
    if message.thinking and message.thinking.strip():
        parts.append(f"<details><summary>Thinking</summary>\n\n{message.thinking.strip()}\n\n</details>\n\n")
    parts.append(message.content)
    stats = dict(message.stats or {})
    if stats.get("error"):
        parts.append(f"\n\n**Error:** {stats['error']}")
    elif stats.get("finish_reason") == "cancelled":
        parts.append("\n\n*(stopped)*")
    elif stats.get("finish_reason") == "length":
        parts.append("\n\n*(cut off at max new tokens)*")
    return "".join(parts)


class ChatPanel(widgets.VBox):
    """The chat app for one cell; all panels of a kernel share its one session."""

    def __init__(self, session: ChatSession | None = None) -> None:
        super().__init__()
        self.session = session or get_session()
        # Set while this thread copies the session into the widgets, so their observers stay
        # quiet; per thread, so a person's change arriving meanwhile (main thread) is not lost.
        self._sync_state = threading.local()
        self._shown: tuple[str | None, int] = (None, 0)  # conversation id, messages shown
        self._streaming: Reply | None = None
        self._live: widgets.Output | None = None  # the streaming reply's widget
        self._stop_following = threading.Event()  # set: the redraw thread of the reply shown ends
        self._lock = threading.RLock()
        self._closed = False
        self._style = widgets.HTML(_STYLE)  # one per panel: a new widget per redraw would pile up
        self._build_login_view()
        self._build_chat_view()
        _classed(self, "nbchat-panel")
        self._listener = _weak_listener(self)
        self.session.on_change(self._listener)
        self.refresh()

    def close(self) -> None:
        """Let the panel go: it stops listening to the session and following a reply, and every
        widget of it is closed (ipywidgets keeps a widget until then). Closing twice is harmless."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._stop_following.set()
            self._streaming = self._live = None
        self.session.off_change(self._listener)  # outside our lock: the session calls in under its own
        close_widgets(self, self.login_view, self.chat_view)

    @property
    def _syncing(self) -> bool:
        return getattr(self._sync_state, "on", False)

    @_syncing.setter
    def _syncing(self, value: bool) -> None:
        self._sync_state.on = value

    # -- building ------------------------------------------------------------------------------

    def _build_login_view(self) -> None:
        self.username = _classed(widgets.Text(placeholder="username", description="User"), "nbchat-username")
        self.password = _classed(
            widgets.Password(placeholder="password", description="Password"), "nbchat-password"
        )
        self.login_button = _classed(
            widgets.Button(description="Log in", button_style="primary", icon="sign-in"), "nbchat-login"
        )
        self.register_button = _classed(widgets.Button(description="Register"), "nbchat-register")
        self.login_message = _classed(widgets.HTML(), "nbchat-login-message")
        self.login_button.on_click(lambda _: self._log_in(register=False))
        self.register_button.on_click(lambda _: self._log_in(register=True))
        self.login_view = _classed(
            widgets.VBox(
                [
                    widgets.HTML("<b>nbchat</b>: log in, or register a new account."),
                    self.username,
                    self.password,
                    widgets.HBox([self.login_button, self.register_button]),
                    self.login_message,
                ]
            ),
            "nbchat-login-view",
        )

    def _build_chat_view(self) -> None:
        self.user_label = _classed(widgets.HTML(), "nbchat-user")
        self.logout_button = _classed(
            widgets.Button(description="Log out", icon="sign-out", layout={"width": "auto"}), "nbchat-logout"
        )
        self.logout_button.on_click(lambda _: self._act(self.session.logout))

        self.conversations = _classed(
            widgets.Dropdown(description="Chat", options=[], layout={"width": "360px"}),
            "nbchat-conversations",
        )
        self.conversations.observe(self._on_pick_conversation, names="value")
        self.new_button = _classed(
            widgets.Button(description="New", icon="plus", layout={"width": "auto"}), "nbchat-new"
        )
        self.rename_button = _classed(
            widgets.Button(description="Rename", layout={"width": "auto"}), "nbchat-rename"
        )
        self.delete_button = _classed(
            widgets.Button(description="Delete", icon="trash", layout={"width": "auto"}), "nbchat-delete"
        )
        self.new_button.on_click(lambda _: self._act(self.session.new_conversation))
        self.rename_button.on_click(lambda _: self._show_rename(True))
        self.delete_button.on_click(lambda _: self._show_delete(True))

        self.rename_text = _classed(widgets.Text(placeholder="new title"), "nbchat-rename-text")
        self.rename_ok = _classed(
            widgets.Button(description="Save title", button_style="primary"), "nbchat-rename-ok"
        )
        self.rename_cancel = _classed(widgets.Button(description="Cancel"), "nbchat-rename-cancel")
        self.rename_ok.on_click(lambda _: self._rename())
        self.rename_cancel.on_click(lambda _: self._show_rename(False))
        self.rename_row = widgets.HBox([self.rename_text, self.rename_ok, self.rename_cancel])

        self.delete_question = widgets.HTML()
        self.delete_ok = _classed(
            widgets.Button(description="Delete for good", button_style="danger"), "nbchat-delete-confirm"
        )
        self.delete_cancel = _classed(widgets.Button(description="Keep it"), "nbchat-delete-cancel")
        self.delete_ok.on_click(lambda _: self._delete())
        self.delete_cancel.on_click(lambda _: self._show_delete(False))
        self.delete_row = widgets.HBox([self.delete_question, self.delete_ok, self.delete_cancel])

        self.model = _classed(
            widgets.Dropdown(description="Model", options=[(CHOOSE_MODEL, "")], layout={"width": "360px"}),
            "nbchat-model",
        )
        self.model.observe(self._on_pick_model, names="value")
        self.refresh_models_button = _classed(
            widgets.Button(
                icon="refresh", tooltip="Ask Ollama for its models again", layout={"width": "auto"}
            ),
            "nbchat-refresh-models",
        )
        self.refresh_models_button.on_click(lambda _: self._load_models())
        self.models_note = _classed(widgets.HTML(), "nbchat-models-note")
        self.pull_name = _classed(
            widgets.Text(placeholder="e.g. qwen3:1.7b", description="Pull", layout={"width": "260px"}),
            "nbchat-pull-name",
        )
        self.pull_button = _classed(
            widgets.Button(description="Pull from Ollama", icon="download", layout={"width": "auto"}),
            "nbchat-pull",
        )
        self.pull_progress = _classed(
            widgets.FloatProgress(value=0.0, min=0.0, max=1.0, layout={"width": "200px", "display": "none"}),
            "nbchat-pull-progress",
        )
        self.pull_button.on_click(lambda _: self._pull())
        self.temperature = _classed(
            widgets.FloatSlider(
                value=0.7,
                min=0.0,
                max=2.0,
                step=0.05,
                description="Temperature",
                continuous_update=False,
                style={"description_width": "initial"},
            ),
            "nbchat-temperature",
        )
        self.max_tokens = _classed(
            widgets.BoundedIntText(
                value=512,
                min=1,
                max=MAX_NEW_TOKENS_CEILING,
                description="Max new tokens",
                style={"description_width": "initial"},
                layout={"width": "220px"},
            ),
            "nbchat-max-tokens",
        )
        self.think = _classed(
            widgets.Checkbox(value=False, description="Think first", indent=False), "nbchat-think"
        )
        self.system = _classed(
            widgets.Textarea(placeholder="e.g. Be brief.", continuous_update=False, layout={"width": "100%"}),
            "nbchat-system",
        )
        self.system_box = widgets.Accordion(children=[self.system], titles=("System prompt",))
        self.system_box.selected_index = None
        for widget, name in (
            (self.temperature, "temperature"),
            (self.max_tokens, "max_new_tokens"),
            (self.think, "think"),
            (self.system, "system"),
        ):
            widget.observe(self._setting_observer(name), names="value")

        self.messages = _classed(widgets.VBox(), "nbchat-messages")
        self.prompt = _classed(
            _prompt_widget(placeholder="Message… (Ctrl+Enter or Cmd+Enter sends)"), "nbchat-prompt"
        )
        self.send_button = _classed(
            widgets.Button(description="Send", button_style="primary", icon="paper-plane"), "nbchat-send"
        )
        self.stop_button = _classed(
            widgets.Button(description="Stop", icon="stop", disabled=True), "nbchat-stop"
        )
        self.send_button.on_click(lambda _: self._send_prompt())
        self.stop_button.on_click(lambda _: self.session.stop())
        if hasattr(self.prompt, "on_submit"):
            self.prompt.on_submit(lambda _: self._send_prompt())
        self.status = _classed(widgets.HTML(), "nbchat-status")

        self.chat_view = _classed(
            widgets.VBox(
                [
                    widgets.HBox([self.user_label, self.logout_button]),
                    widgets.HBox(
                        [self.conversations, self.new_button, self.rename_button, self.delete_button]
                    ),
                    self.rename_row,
                    self.delete_row,
                    widgets.HBox([self.model, self.refresh_models_button, self.models_note]),
                    widgets.HBox([self.temperature, self.max_tokens, self.think]),
                    self.system_box,
                    widgets.HBox([self.pull_name, self.pull_button, self.pull_progress]),
                    self.messages,
                    self.prompt,
                    widgets.HBox([self.send_button, self.stop_button, self.status]),
                ]
            ),
            "nbchat-chat-view",
        )
        self._model_ids: list[str] = []

    # -- redrawing from the session ------------------------------------------------------------

    def refresh(self) -> None:
        """Show exactly what the session holds now (any thread)."""
        with self._lock:
            if self._closed:
                return
            self._syncing = True
            try:
                if self.session.user is None:
                    self._show_logged_out()
                else:
                    self._show_logged_in()
            finally:
                self._syncing = False

    def _show_logged_out(self) -> None:
        self.children = [self._style, self.login_view]
        self.register_button.layout.display = (
            None if self.session.config.policy.allow_registration else "none"
        )
        hub_error = self.session.hub_error
        if hub_error is not None and not self.login_message.value:
            self.login_message.value = (
                f"<span class='nbchat-error'>JupyterHub login failed: {html.escape(str(hub_error))}</span>"
            )
        self._stop_following.set()
        self._set_messages(())
        self._shown = (None, 0)
        self._streaming = self._live = None
        self.prompt.value = ""
        self.password.value = ""
        self.pull_name.value = ""
        self.rename_text.value = ""
        self.conversations.options = []
        self.model.options = [(CHOOSE_MODEL, "")]
        self._model_ids = []
        self.models_note.value = ""
        self.system.value = ""
        self.status.value = ""
        self.user_label.value = ""
        self.rename_row.layout.display = "none"
        self.delete_row.layout.display = "none"

    def _show_logged_in(self) -> None:
        session = self.session
        if self.children[-1:] != (self.chat_view,):
            self.children = [self._style, self.chat_view]
            self.login_message.value = ""
            self._show_rename(False)
            self._show_delete(False)
            self._load_models()
        hub = " (JupyterHub)" if session.hub_login else ""
        self.logout_button.layout.display = "none" if session.hub_login else None  # the hub logs out
        self.user_label.value = f"Logged in as <b>{html.escape(session.user or '')}</b>{hub}"
        summaries = session.conversations()
        self.conversations.options = [(s.title, s.id) for s in summaries]
        current = session.current
        self.conversations.value = current.id if current is not None else None
        settings = current.settings if current is not None else ConversationSettings()
        self._set_model_options(settings.model)
        self.model.value = settings.model or ""
        self.temperature.value = settings.temperature
        self.max_tokens.value = settings.max_new_tokens
        self.think.value = settings.think
        self.system.value = settings.system
        self.rename_button.disabled = self.delete_button.disabled = current is None
        reply = session.reply
        streaming = (
            reply is not None
            and not reply.done
            and current is not None
            and reply.conversation_id == current.id
        )
        if streaming and reply is not self._streaming:
            self._follow(reply)  # type: ignore[arg-type]
        self._show_messages(
            current.id if current is not None else None,
            current.messages if current is not None else (),
            self._live if streaming else None,
        )
        self._set_busy(streaming, settings.model)

    def _set_busy(self, streaming: bool, model: str | None) -> None:
        self.send_button.disabled = streaming or not model
        self.stop_button.disabled = not streaming
        self.prompt.disabled = streaming
        for widget in (self.conversations, self.new_button, self.delete_button, self.model):
            widget.disabled = streaming
        if not streaming and not model:
            self.status.value = "Choose a model to start chatting."
        elif not streaming and self.status.value.startswith("Choose a model"):
            self.status.value = f"Model: <code>{html.escape(model or '')}</code>"

    def _show_messages(
        self, conversation_id: str | None, messages: Sequence[Message], live: widgets.Output | None
    ) -> None:
        """Saved messages (only new ones are added), then the reply streaming now, if any."""
        shown_id, shown_count = self._shown
        children = [child for child in self.messages.children if "nbchat-streaming" not in child._dom_classes]
        if conversation_id == shown_id and len(messages) >= shown_count:
            children.extend(map(_message_widget, messages[shown_count:]))
        else:
            children = list(map(_message_widget, messages))
        if live is not None:
            children.append(live)
        self._set_messages(tuple(children))
        self._shown = (conversation_id, len(messages))

    def _set_messages(self, children: tuple[widgets.Widget, ...]) -> None:
        """Show ``children``; a message widget no longer shown is closed, not left in ipywidgets."""
        dropped = [child for child in self.messages.children if child not in children]
        if children != self.messages.children:
            self.messages.children = children
        close_widgets(*dropped)

    def _set_model_options(self, current: str | None) -> None:
        ids = list(self._model_ids)
        if current and current not in ids:
            ids.append(current)  # a model no longer listed (or a local path) still shows
        options = [(CHOOSE_MODEL, ""), *((model, model) for model in ids)]
        if list(self.model.options) != options:
            self.model.options = options

    def _load_models(self) -> None:
        """Ask the engines what can be chosen now (the Ollama server's tags and the local Qwen3)."""
        models, problem = self.session.model_choices()
        self._model_ids = models
        self.models_note.value = (
            f"<span class='nbchat-error'>{html.escape(problem)}</span>" if problem else ""
        )
        current = self.session.current
        was_syncing = self._syncing
        self._syncing = True
        try:
            self._set_model_options(current.settings.model if current is not None else None)
            self.model.value = (current.settings.model if current is not None else None) or ""
        finally:
            self._syncing = was_syncing

    # -- streaming ---------------------------------------------------------------------------

    def _follow(self, reply: Reply) -> None:
        """Show ``reply`` as it streams, redrawn at a bounded rate by a thread of its own."""
        self._stop_following.set()  # the thread of a reply shown before ends
        self._stop_following = stop = threading.Event()
        self._streaming = reply
        output = _classed(widgets.Output(), "nbchat-message", "nbchat-message-assistant", "nbchat-streaming")
        output.outputs = _markdown_output("…")
        self._live = output
        local = reply.model == "qwen3" or reply.model.startswith("transformers:")
        first_use = " (the local model loads on first use: this can take a minute)" if local else ""
        self.status.value = f"Generating with <code>{html.escape(reply.model)}</code>…{first_use}"
        threading.Thread(
            target=self._redraw, args=(reply, output, stop), name="nbchat-panel-redraw", daemon=True
        ).start()

    def _redraw(self, reply: Reply, output: widgets.Output, stop: threading.Event) -> None:
        shown, said = "", ""
        while not reply.join(REDRAW_INTERVAL_S):
            if stop.is_set():  # closed, logged out, or following another reply
                return
            text = reply.markdown()
            if text != shown and text.strip():
                output.outputs = _markdown_output(text)
                shown = text
            if reply.status and reply.status != said:  # loading a local model: say how far
                self.status.value = html.escape(reply.status)
                said = reply.status
        if stop.is_set():
            return
        output.outputs = _markdown_output(reply.markdown())
        self.status.value = _reply_status(reply)
        if self._streaming is reply:
            self._streaming = self._live = None
            self.refresh()

    # -- actions -------------------------------------------------------------------------------

    def _act(self, action: Callable[[], Any]) -> Any:
        """Run a session action; its errors and warnings go to the status line, never a traceback."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", NbchatWarning)
            try:
                result = action()
            except NbchatError as exc:
                self._error(str(exc))
                return None
        notes = [str(w.message) for w in caught if issubclass(w.category, NbchatWarning)]
        if notes:
            self.status.value = html.escape(" ".join(notes))
        return result

    def _error(self, message: str) -> None:
        self.status.value = f"<span class='nbchat-error'>{html.escape(message)}</span>"

    def _log_in(self, *, register: bool) -> None:
        name, password = self.username.value.strip(), self.password.value
        self.password.value = ""  # cleared after every attempt, whatever happens
        try:
            if register:
                self.session.register(name, password)
            self.session.login(name, password)
        except NbchatError as exc:
            self.login_message.value = f"<span class='nbchat-error'>{html.escape(str(exc))}</span>"
            return
        self.username.value = ""

    def _on_pick_conversation(self, change: dict[str, Any]) -> None:
        if self._syncing or change["new"] is None:
            return
        current = self.session.current
        if current is None or current.id != change["new"]:
            self._act(lambda: self.session.select(change["new"]))

    def _on_pick_model(self, change: dict[str, Any]) -> None:
        if self._syncing:
            return
        model = change["new"] or None

        def choose() -> None:
            if self.session.current is None:
                if model is None:
                    return
                self.session.new_conversation()
            self.session.configure(model=model)

        self._act(choose)
        if self.session.user is not None:
            self.refresh()  # after a refusal, the stored choice shows again

    def _setting_observer(self, name: str) -> Callable[[dict[str, Any]], None]:
        def changed(change: dict[str, Any]) -> None:
            if self._syncing or self.session.current is None:
                return
            if self._act(lambda: self.session.configure(**{name: change["new"]})) is None:
                self.refresh()  # refused: the stored value shows again

        return changed

    def _send_prompt(self) -> None:
        text = self.prompt.value
        if self.send_button.disabled:
            return
        if not text.strip():
            self._error("Type a message first.")
            return
        if self._act(lambda: self.session.send(text)) is not None:
            self.prompt.value = ""

    def _pull(self) -> None:
        """Ask Ollama to download a model, in a thread (it can take minutes), with a progress bar."""
        name = self.pull_name.value.strip()
        if not name:
            self._error("Type the name of an Ollama model to pull, e.g. qwen3:1.7b.")
            return
        self.pull_button.disabled = True
        self.pull_progress.value = 0.0
        self.pull_progress.layout.display = None
        self.status.value = f"Pulling <code>{html.escape(name)}</code>…"

        def progress(step: Any) -> None:
            if step.fraction is not None:
                self.pull_progress.value = step.fraction
            self.status.value = f"Pulling <code>{html.escape(name)}</code>: {html.escape(step.status)}"

        def work() -> None:
            try:
                model_id = self.session.pull(name, progress)
            except NbchatError as exc:
                self._error(str(exc))
            else:
                self.pull_progress.value = 1.0
                self.pull_name.value = ""
                self._load_models()
                self.status.value = f"Pulled <code>{html.escape(model_id)}</code>: choose it above."
            finally:
                self.pull_button.disabled = False
                self.pull_progress.layout.display = "none"

        threading.Thread(target=work, name="nbchat-pull", daemon=True).start()

    def _show_rename(self, show: bool) -> None:
        current = self.session.current if show else None
        if show and current is None:
            return
        self.rename_text.value = current.title if current is not None else ""
        self.rename_row.layout.display = "flex" if show else "none"

    def _rename(self) -> None:
        current = self.session.current
        if current is not None and self._act(lambda: self.session.rename(current.id, self.rename_text.value)):
            self._show_rename(False)

    def _show_delete(self, show: bool) -> None:
        current = self.session.current if show else None
        if show and current is None:
            return
        title = html.escape(current.title) if current is not None else ""
        self.delete_question.value = f"Delete <b>{title}</b> and all its messages?" if show else ""
        self.delete_row.layout.display = "flex" if show else "none"

    def _delete(self) -> None:
        current = self.session.current
        if current is not None:
            self._act(lambda: self.session.delete(current.id))
        self._show_delete(False)


def _prompt_widget(placeholder: str) -> Any:
    """The Ctrl/Cmd+Enter prompt box; a plain Textarea where anywidget is missing."""
    try:
        from nbchat.prompt_box import PromptBox
    except ImportError:
        return widgets.Textarea(placeholder=placeholder, layout={"width": "100%"})
    return PromptBox(placeholder=placeholder, layout={"width": "100%"})


def _message_widget(message: Message) -> widgets.Widget:
    if message.role == "assistant":
        output = _classed(widgets.Output(), "nbchat-message", "nbchat-message-assistant")
        output.outputs = _markdown_output(message_markdown(message))
        return output
    role = "You" if message.role == "user" else message.role.capitalize()
    body = html.escape(message.content)
    return _classed(
        widgets.HTML(f"<div class='nbchat-role'>{role}</div><div class='nbchat-bubble'>{body}</div>"),
        "nbchat-message",
        f"nbchat-message-{message.role}",
    )


def _reply_status(reply: Reply) -> str:
    model = f"<code>{html.escape(reply.model)}</code>"
    if reply.error is not None:
        return f"<span class='nbchat-error'>{html.escape(str(reply.error))}</span>"
    stats = reply.stats
    parts = [model]
    if stats is not None:
        if stats.finish_reason == "cancelled":
            parts.append("stopped")
        if stats.completion_tokens:
            parts.append(f"{stats.completion_tokens} tokens")
        if stats.tokens_per_s:
            parts.append(f"{stats.tokens_per_s:.1f} tokens/s")
    if reply.dropped_messages:
        parts.append(f"{reply.dropped_messages} older messages left out to fit the context")
    return " · ".join(parts)


def close_widgets(*roots: widgets.Widget) -> None:
    """Close ``roots`` and every widget they hold (children, layouts, styles), each once."""
    seen: set[int] = set()
    todo: list[Any] = list(roots)
    while todo:
        item = todo.pop()
        if isinstance(item, (list, tuple)):
            todo.extend(item)
        elif isinstance(item, widgets.Widget) and id(item) not in seen:
            seen.add(id(item))
            if item.comm is not None:
                todo.extend(getattr(item, name) for name in item.keys)
                widgets.Widget.close(item)  # not ChatPanel.close, which calls this


def _weak_listener(panel: ChatPanel) -> Callable[[ChatSession], None]:
    """A session listener that does not keep a closed or forgotten panel alive."""
    ref = weakref.ref(panel)

    def listener(_session: ChatSession) -> None:
        alive = ref()
        if alive is not None:
            alive.refresh()

    return listener


#: The panel each cell showed last (by JupyterLab's cell id; None: a front end that sends none).
_shown_by_cell: weakref.WeakValueDictionary[str | None, ChatPanel] = weakref.WeakValueDictionary()


def panel(session: ChatSession | None = None) -> None:
    """Show the chat panel in this cell (``nbchat.ChatPanel()`` gives you the widget itself).

    Re-running the cell closes the panel it showed before, and so do cells deleted since the
    last run; where the front end does not say which cell runs, the panel shown last this way.
    """
    from IPython.display import display

    cell, deleted = running_cell()
    for gone in (*deleted, cell):
        previous = _shown_by_cell.pop(gone, None)
        if previous is not None:
            previous.close()
    shown = ChatPanel(session)
    _shown_by_cell[cell] = shown
    display(shown)


def running_cell() -> tuple[str | None, tuple[str, ...]]:
    """The id of the cell being run and of the cells deleted since the last run.

    JupyterLab and Notebook 7 send both in the execute request's metadata
    (``cellId``, ``deletedCells``), which ipykernel keeps as the parent message.
    """
    try:
        from IPython import get_ipython
    except ImportError:
        return None, ()
    kernel = getattr(get_ipython(), "kernel", None)
    parent = kernel.get_parent() if kernel is not None else None
    metadata = parent.get("metadata") if isinstance(parent, dict) else None
    if not isinstance(metadata, dict):
        return None, ()
    cell = metadata.get("cellId")
    deleted = metadata.get("deletedCells")
    return (
        cell if isinstance(cell, str) else None,
        tuple(d for d in deleted if isinstance(d, str)) if isinstance(deleted, list) else (),
    )


class _CallableModule(types.ModuleType):
    """``nbchat.panel()`` keeps working once this module is imported (importing a submodule
    makes it the package's attribute ``panel``, in place of the function of that name)."""

    def __call__(self, session: ChatSession | None = None) -> None:
        panel(session)


sys.modules[__name__].__class__ = _CallableModule
