"""The kernel-resident session: who is logged in, which conversation, send → stream → save.

One ``ChatSession`` per kernel (``nbchat.get_session()``) is shared by every
panel, the ``%chat`` magic and users' own code, so they all see the same
login, the same current conversation and the same loaded models. Everything a
user can do goes through it; it reaches a user's files only through the
``Login`` that accounts hand out, so a session can never return another
user's conversations, whatever ids it is given.

Under JupyterHub (``JUPYTERHUB_USER`` set in the kernel's environment) the
hub has already authenticated the user, so ``get_session()`` logs that user in
without a password. ``NBCHAT_TRUST_HUB_USER=0`` switches this off.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nbchat.accounts import Accounts, Login
from nbchat.config import Config, load_config
from nbchat.errors import (
    ConfigError,
    ContextOverflow,
    ExportError,
    InvalidValue,
    ModelNotChosen,
    ModelNotDownloaded,
    NbchatError,
    NbchatWarning,
    NoContext,
    NoConversation,
    NotLoggedIn,
    PolicyError,
    ReplyInProgress,
)
from nbchat.health import HealthReport, check_health
from nbchat.history import sendable, truncate_history
from nbchat.records import Draft
from nbchat.redact import scrub_secrets
from nbchat.reply import Reply, stats_record
from nbchat.types import (
    DEFAULT_TITLE,
    MAX_CONTENT_CHARS,
    ContextItem,
    Conversation,
    ConversationSettings,
    ConversationSummary,
    GenerationParams,
    Message,
    title_from_text,
)

if TYPE_CHECKING:
    from nbchat.backends.base import Backend, LoadProgress, ReplyStream
    from nbchat.search import SearchHit
    from nbchat.store import ConversationStore
    from nbchat.tree import MessageTree

#: How long ``logout`` waits for a stopped reply to end by itself (it ends within
#: ``CANCEL_GRACE_S`` of a stop); after that logout saves the partial reply itself.
LOGOUT_WAIT_S = 5.0
#: What the panel's *Explain error* button (and ``explain_last_error``) asks.
EXPLAIN_ERROR_PROMPT = "Explain this error and how to fix it."
#: A conversation still called "New conversation" takes its title from its first prompt.
AUTO_TITLE_CHARS = 60

Listener = Callable[["ChatSession"], None]


class ChatSession:
    """Everything one kernel's user does with nbchat; safe to call from any thread."""

    def __init__(self, config: Config | None = None, *, accounts: Accounts | None = None) -> None:
        self.config = config or (accounts.config if accounts is not None else load_config())
        self.accounts = accounts or Accounts(self.config)
        self._login: Login | None = None
        self._hub = False
        self._current: str | None = None
        self._reply: Reply | None = None
        self._mutex = threading.RLock()
        self._warming: tuple[str, threading.Event] | None = None  # the model warming up, and its stop
        self._listeners: list[Listener] = []
        self.hub_error: NbchatError | None = None  # why the JupyterHub user could not be logged in

    # -- who -------------------------------------------------------------------------------

    @property
    def user(self) -> str | None:
        """The logged-in user's name as they wrote it (hub name under JupyterHub), or None."""
        login = self._login
        return login.display_name if login is not None else None

    @property
    def username(self) -> str | None:
        """The account key (lower-case username) of the logged-in user, or None."""
        login = self._login
        return login.username if login is not None else None

    @property
    def hub_login(self) -> bool:
        """True when the user was logged in by JupyterHub's identity, not a password."""
        return self._hub and self._login is not None

    def register(self, username: str, password: str) -> None:
        """Create an account (it does not log in), unless the site policy closed registration."""
        policy = self.config.policy
        if not policy.allow_registration:
            raise PolicyError(
                f"Registration is closed on this site ({policy.source}: allow_registration = false); "
                "ask an administrator for an account."
            )
        self.accounts.register(username, password)

    def login(self, username: str, password: str) -> None:
        """Log in; a user already logged in here is logged out first (only if the password is right)."""
        login = self.accounts.login(username, password)
        self._switch_to(login, hub=False)

    def login_from_hub(self) -> None:
        """Log in the JupyterHub user of this kernel (``JUPYTERHUB_USER``) without a password."""
        config = self.config
        if config.hub_user is None:
            raise ConfigError("JUPYTERHUB_USER is not set: this kernel was not started by JupyterHub.")
        if not config.trust_hub_user:
            raise ConfigError(
                "Logging in as the JupyterHub user is switched off (NBCHAT_TRUST_HUB_USER=0); "
                "log in with a username and password."
            )
        self._switch_to(self.accounts.hub_login(config.hub_user), hub=True)

    def logout(self) -> None:
        """Stop any reply (its partial text is saved first), then forget everything of this user."""
        with self._mutex:
            reply = self._reply
        if reply is not None and not reply.done:
            reply.cancel()
            if not reply.join(LOGOUT_WAIT_S):
                reply.end_now()  # the engine has not let go: save what streamed while the login is open
        with self._mutex:
            login, self._login = self._login, None
            self._current = None
            self._reply = None
            self._hub = False
            if login is not None:
                self.accounts.logout(login)
        self._changed()

    def change_password(self, old_password: str, new_password: str) -> None:
        """Change the password; every other kernel's login of this user ends, this one goes on."""
        login = self._require_login()
        fresh = self.accounts.change_password(login.username, old_password, new_password)
        with self._mutex:
            if self._login is login:
                fresh.display_name = login.display_name
                self._login = fresh
                login.close()
            else:  # logged out (or switched) meanwhile: the new login is nobody's
                fresh.close()
        self._changed()

    def delete_account(self, password: str) -> None:
        """Delete the logged-in account and all its conversations, then log out."""
        username = self._require_login().username
        self.accounts.delete_account(username, password)
        self.logout()

    def _switch_to(self, login: Login, *, hub: bool) -> None:
        if self._login is not None:
            self.logout()
        with self._mutex:
            self._login = login
            self._hub = hub
        if login.data_key is not None:  # its index is in memory only: build it now, not at the first search
            threading.Thread(
                target=_prepare_search, args=(login,), name="nbchat-search-index", daemon=True
            ).start()
        self._changed()

    # -- conversations ---------------------------------------------------------------------

    def conversations(self) -> list[ConversationSummary]:
        """The user's conversations, most recently updated first."""
        return self._store().list()

    @property
    def current(self) -> Conversation | None:
        """The current conversation, read fresh (other kernels' messages included), or None."""
        with self._mutex:
            conversation_id = self._current
            if conversation_id is None or self._login is None:
                return None
            return self._store().get(conversation_id)

    @property
    def current_stamp(self) -> tuple[int, int] | None:
        """Changes whenever the current conversation's file does, whoever wrote it (one ``stat``):
        the panel polls it to show what another kernel adds. None without one."""
        with self._mutex:
            conversation_id = self._current
            if conversation_id is None or self._login is None:
                return None
            return self._store().stamp(conversation_id)

    def new_conversation(self, title: str | None = None) -> Conversation:
        """Start a conversation and make it current; it has no model until one is chosen."""
        with self._mutex:
            store = self._store()
            conversation = store.create(title)
            start = self.config.policy.starting_settings(conversation.settings)
            if start != conversation.settings:
                conversation = store.update_settings(conversation.id, **start.to_dict())
            self._current = conversation.id
        self._changed()
        return conversation

    def select(self, conversation_id: str) -> Conversation:
        """Make a conversation of this user current."""
        with self._mutex:
            conversation = self._store().get(conversation_id)
            self._current = conversation.id
        self._changed()
        return conversation

    def rename(self, conversation_id: str, title: str) -> Conversation:
        conversation = self._store().rename(conversation_id, title)
        self._changed()
        return conversation

    def delete(self, conversation_id: str) -> None:
        """Delete a conversation for good; if it was current, none is current afterwards."""
        with self._mutex:
            reply = self._reply
            if reply is not None and not reply.done and reply.conversation_id == conversation_id:
                raise ReplyInProgress("A reply is still streaming into that conversation; stop it first.")
            self._store().delete(conversation_id)
            if self._current == conversation_id:
                self._current = None
        self._changed()

    def history(self) -> list[Message]:
        """The current conversation's active path, oldest first: what is shown and sent (see ``tree()``)."""
        return list(self._require_current().messages)

    # -- settings --------------------------------------------------------------------------

    @property
    def settings(self) -> ConversationSettings:
        """The current conversation's settings."""
        return self._require_current().settings

    def configure(self, **changes: Any) -> ConversationSettings:
        """Change the current conversation's settings; the next message uses them.

        ``model``, ``temperature`` (0–2), ``max_new_tokens`` (1 to the model's
        context), ``think``, ``system``. Unknown names and bad values are refused
        and nothing changes. Only the settings named change, so two kernels
        changing different settings at once both keep theirs.
        """
        conversation = self._require_current()
        settings = conversation.settings.updated(**changes)  # validates every value
        if settings.model is not None and "model" in changes:
            from nbchat.backends import parse_model_id

            parse_model_id(settings.model, self.config)  # refuse an unknown form now, not at send
        # May ask a server for the model's context: never under the session's lock.
        window = self._known_context_window(settings.model)
        settings = _fit_max_tokens(settings, window, explicit="max_new_tokens" in changes)
        self.config.policy.check_settings(settings)
        before = conversation.settings.to_dict()
        changed = {k: v for k, v in settings.to_dict().items() if before[k] != v}
        with self._mutex:
            if self._current != conversation.id:
                raise NoConversation(
                    "Another conversation was selected while these settings were being checked; try again."
                )
            updated = self._store().update_settings(conversation.id, **changed)
        self._changed()
        return updated.settings

    def _known_context_window(self, model_id: str | None) -> int | None:
        """The model's context if the engine knows it without loading anything (None if not)."""
        if model_id is None:
            return None
        from nbchat.backends import resolve
        from nbchat.errors import BackendError

        backend, name = resolve(model_id, self.config)
        try:
            return backend.known_context_window(name)
        except BackendError:
            return None  # the engine is unreachable now; send() will say so

    # -- chatting --------------------------------------------------------------------------

    @property
    def reply(self) -> Reply | None:
        """The latest reply of this login: streaming now, or the last one."""
        return self._reply

    def send(
        self,
        prompt: str,
        *,
        cells: int = 0,
        error: bool = False,
        namespace: Mapping[str, Any] | None = None,
    ) -> Reply:
        """Save ``prompt`` as the user's message and start the reply; returns it at once.

        ``@name`` in the prompt attaches a bounded summary of that object of the
        user's namespace (``namespace``, by default IPython's); ``cells`` attaches
        the last N executed cells, ``error`` the last traceback. What is attached
        is saved with the message (``message.context``) and sent with it, now and
        as history later. An unknown ``@name`` is refused before anything is saved.

        Iterate the returned ``Reply`` for chunks, or ``wait()`` for it; it is
        saved to the conversation when it ends, also if it was stopped or failed
        part-way (then marked ``partial``).
        """
        _check_prompt(prompt)
        self._require_current()
        attached = _attach(prompt, cells=cells, error=error, namespace=namespace)  # user code: no lock
        with self._mutex:
            store, conversation = self._store(), self._ready_to_reply()
            question = Message("user", prompt, context=attached)  # refused here, before anything is saved
            title = None
            if conversation.title == DEFAULT_TITLE and not conversation.tree.messages:
                title = title_from_text(prompt, AUTO_TITLE_CHARS)  # cleaned: never refused
            question = store.append(conversation.id, question)
            if title is not None and title != DEFAULT_TITLE:
                try:
                    store.rename(conversation.id, title)
                except NbchatError as exc:  # the question is saved; a title is not worth failing for
                    warnings.warn(f"The conversation keeps its title: {exc}", NbchatWarning, stacklevel=2)
            reply = self._answer(conversation, question)
        return self._started(reply)

    def regenerate(self) -> Reply:
        """A new reply to the last question shown, with the conversation's settings now.

        The reply it replaces is kept: the question then has alternatives (``Conversation.alternatives``),
        and switching back (``switch_to``) shows it again.
        """
        with self._mutex:
            conversation = self._ready_to_reply()
            question = next((m for m in reversed(conversation.messages) if m.role == "user"), None)
            if question is None:
                raise InvalidValue("There is no question in this conversation to answer again.")
            reply = self._answer(conversation, question)
        return self._started(reply)

    def edit(self, message_id: str, new_text: str, *, namespace: Mapping[str, Any] | None = None) -> Reply:
        """Ask ``new_text`` in place of an earlier question: a new branch from there, the old one kept.

        What the original attached (recent cells, the last error) goes along again; ``@mentions``
        in the new text are resolved now, from ``namespace`` (by default IPython's).
        """
        _check_prompt(new_text)
        original = self._require_current().tree.get(message_id)
        if original.role != "user":
            raise InvalidValue("Only a question can be edited; regenerate a reply instead.")
        kept = tuple(item for item in original.context if item.kind != "object")
        mentioned = _attach(new_text, cells=0, error=False, namespace=namespace) if "@" in new_text else ()
        attached = _bounded((*mentioned, *kept))
        with self._mutex:
            store, conversation = self._store(), self._ready_to_reply()
            question = Message("user", new_text, context=attached, parent=original.parent)
            question = store.append(conversation.id, question, new_root=original.parent is None)
            reply = self._answer(conversation, question)
        return self._started(reply)

    def switch_to(self, message_id: str) -> Conversation:
        """Show the branch through ``message_id`` (an alternative); it is what is sent from now on."""
        with self._mutex:
            conversation = self._require_current()
            self._refuse_while_streaming(conversation.id)
            conversation = self._store().select(conversation.id, message_id)
        self._changed()
        return conversation

    def open_at(self, conversation_id: str, message_id: str) -> Conversation:
        """Make a conversation current, showing the branch that holds ``message_id`` (a search hit)."""
        with self._mutex:
            conversation = self._store().get(conversation_id)
            self._current = conversation.id
            if message_id not in {m.id for m in conversation.messages}:
                self._refuse_while_streaming(conversation.id)
                conversation = self._store().select(conversation.id, message_id)
        self._changed()
        return conversation

    def tree(self) -> MessageTree:
        """Every message of the current conversation, all branches (``history()`` is the active path)."""
        return self._require_current().tree

    def search(self, query: str, limit: int = 20) -> list[SearchHit]:
        """The logged-in user's conversations and messages holding ``query``'s words, best first."""
        return self._store().search(query, limit)

    @property
    def search_ready(self) -> bool:
        """Whether a search answers at once: its index holds every conversation as it is now
        (an encrypted account's is built in the background at login; a changed file is
        indexed again by the next search)."""
        return self._store().search_behind() == 0

    def export(
        self, conversation_id: str, format: str | None = None, path: str | os.PathLike[str] | None = None
    ) -> Path:
        """Write a conversation as ``markdown``, ``ipynb`` or ``json`` next to the notebook; returns the file.

        Without ``path`` the file is named after the title; an existing file is never overwritten.
        """
        from nbchat.export import export_conversation

        conversation = self._store().get(conversation_id)
        try:
            here = Path.cwd()
        except FileNotFoundError:  # the notebook's folder was deleted or renamed under the kernel
            if path is None or not Path(path).is_absolute():
                raise ExportError(
                    "The kernel's working folder no longer exists (moved or deleted?), so there is no "
                    "'next to the notebook'; give an absolute path, or restart the kernel."
                ) from None
            here = Path(path).parent
        return export_conversation(conversation, format, path, directory=here)

    def _ready_to_reply(self) -> Conversation:
        """The current conversation, when a reply can start in it now (a model chosen, none streaming)."""
        if self._reply is not None and not self._reply.done:
            raise ReplyInProgress("A reply is still streaming; wait for it or stop it first.")
        conversation = self._require_current()
        settings = conversation.settings
        if settings.model is None:
            raise ModelNotChosen(
                "Choose a model for this conversation first, e.g. "
                "configure(model='ollama:qwen3:1.7b') or model='qwen3' for the local Qwen3; "
                "nbchat.models() lists what is available."
            )
        self.config.policy.check_settings(settings)  # saved before a policy change: still checked
        return conversation

    def _refuse_while_streaming(self, conversation_id: str) -> None:
        reply = self._reply
        if reply is not None and not reply.done and reply.conversation_id == conversation_id:
            raise ReplyInProgress("A reply is still streaming into this conversation; wait or stop it first.")

    def _answer(self, conversation: Conversation, question: Message) -> Reply:
        """The reply to ``question`` (saved), to be sent with the path that leads to it; under the lock."""
        from nbchat.backends import resolve

        store, settings = self._store(), conversation.settings
        assert settings.model is not None  # _ready_to_reply made sure
        backend, name = resolve(settings.model, self.config)
        history = list(store.get(conversation.id).tree.path_through(question.id))
        history = history[: history.index(question) + 1]  # a regenerated question keeps its old replies out

        def start(reply: Reply) -> ReplyStream | None:
            return _start_reply(reply, backend, name, settings, history)

        secrets = (self.config.openai_api_key,)

        def save(reply: Reply) -> Message | None:
            return _save_reply(store, conversation.id, reply, secrets)

        def draft(reply: Reply, text: str, thinking: str) -> None:
            store.append_draft(
                conversation.id,
                Draft(reply.message_id, reply.prompt.id, reply.model, reply.started, text, thinking),
            )

        def ended(reply: Reply) -> None:
            if reply.done:
                self._changed()

        reply = Reply(conversation.id, settings.model, question, start, save, draft)
        reply.subscribe(ended)
        self._reply = reply
        return reply

    def _started(self, reply: Reply) -> Reply:
        """Tell the views, then let the reply run (outside the session's lock)."""
        self._changed()
        return reply._begin()

    def explain_last_error(self) -> Reply:
        """Ask the current conversation's model to explain the kernel's last error (attached)."""
        return self.send(EXPLAIN_ERROR_PROMPT, error=True)

    def stop(self) -> Reply | None:
        """Stop the reply in flight (its partial text is kept and saved); returns it, or None."""
        reply = self._reply
        if reply is None or reply.done:
            return None
        reply.cancel()
        return reply

    # -- models and health -----------------------------------------------------------------

    def models(self) -> list[str]:
        """Model ids to choose from now (within the site policy): Ollama's, the openai: server's, qwen3."""
        return self.model_choices()[0]

    def model_choices(self) -> tuple[list[str], str | None]:
        """What a model picker offers now (within the site policy), and why an engine's are missing."""
        from nbchat.backends import model_choices

        models, problems = model_choices(self.config)
        return [m for m in models if self.config.policy.allows_model(m)], " ".join(problems) or None

    def pull(self, model: str, progress: Callable[[Any], None] | None = None) -> str:
        """Have the Ollama server download ``model`` (``qwen3:1.7b`` or ``ollama:qwen3:1.7b``).

        ``progress`` gets each step (``status``, ``completed``, ``total``, ``fraction``).
        Returns the model id to choose. Refused when nobody is logged in or the site
        policy does not allow that model.
        """
        from nbchat.backends import backend_for, parse_model_id

        self._require_login()
        if not isinstance(model, str) or not model.strip().removeprefix("ollama:").strip():
            raise InvalidValue("Name the Ollama model to pull, e.g. qwen3:1.7b.")
        model_id = "ollama:" + model.strip().removeprefix("ollama:").strip()
        ref = parse_model_id(model_id, self.config)
        self.config.policy.refuse_model(model_id)
        backend_for("ollama", self.config).pull(ref.name, progress)  # type: ignore[attr-defined]
        return model_id

    def warm_up(self, model_id: str | None = None, *, on_status: Callable[[str], None] | None = None) -> None:
        """Start loading a local model now, in the background, so the first reply does not wait for it.

        ``model_id`` defaults to the current conversation's model. Returns at once; a no-op for
        server engines (nothing to load) and outside the site policy. Never raises: a model that
        cannot be loaded is reported when a message is sent, as without warm-up. ``on_status``
        hears, from another thread, "<model> is loading in the background…" and "<model> ready"
        (or why it could not be loaded).
        """
        from nbchat.backends import resolve
        from nbchat.backends.local import PREFIX

        try:
            model = model_id if model_id is not None else self.settings.model
        except NbchatError:
            model = None
        stop = self._stop_other_warm_up(model)
        try:
            if model is None or not self.config.policy.allows_model(model):
                return
            backend, name = resolve(model, self.config)
        except NbchatError:
            return
        if backend.prefix != PREFIX:
            return
        args = (backend, name, model, on_status, stop)
        threading.Thread(target=_warm, args=args, name="nbchat-warm-up", daemon=True).start()

    def _stop_other_warm_up(self, model: str | None) -> threading.Event:
        """Stop waiting for the warm-up of another model (chosen, then changed): a load nobody else
        waits for ends, and its memory comes back. The event that stops this model's."""
        with self._mutex:
            if self._warming is not None and self._warming[0] == model:
                return self._warming[1]  # the same model again: its warm-up goes on
            if self._warming is not None:
                self._warming[1].set()
            stop = threading.Event()
            self._warming = (model, stop) if model is not None else None
            return stop

    def health(self) -> HealthReport:
        return check_health(
            self.config,
            session={"user": self.user, "hub": self.hub_login, "conversation": self._current},
        )

    # -- views -----------------------------------------------------------------------------

    def on_change(self, listener: Listener) -> None:
        """Call ``listener(session)`` after logins, logouts, conversation and settings changes."""
        with self._mutex:
            self._listeners.append(listener)

    def off_change(self, listener: Listener) -> None:
        """Stop calling ``listener`` (a closed panel); a listener never added is ignored."""
        with self._mutex:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def _changed(self) -> None:
        with self._mutex:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(self)
            except Exception:  # a view's bug must not break the session
                import logging

                logging.getLogger(__name__).exception("An nbchat session listener failed")

    # -- internals -------------------------------------------------------------------------

    def _require_login(self) -> Login:
        login = self._login
        if login is None:
            raise NotLoggedIn("Log in first (or register, then log in).")
        return login

    def _store(self) -> ConversationStore:
        return self._require_login().conversations

    def _require_current(self) -> Conversation:
        with self._mutex:
            self._require_login()
            if self._current is None:
                raise NoConversation("No conversation is selected: start a new one or pick one first.")
            return self._store().get(self._current)

    def __repr__(self) -> str:
        who = self.user or "nobody logged in"
        return f"<ChatSession {who}, conversation {self._current}>"


def _start_reply(
    reply: Reply, backend: Backend, name: str, settings: ConversationSettings, history: list[Message]
) -> ReplyStream | None:
    """In the reply's thread: fit the history into the model's context, then start streaming.

    None when the reply was stopped while the model was being prepared (nothing to stream).
    """
    _prepare_with_progress(reply, backend, name)  # a local model loads here, off the main thread
    if reply.cancelled:
        return None
    window = backend.context_window(name)
    budget = window - settings.max_new_tokens
    if budget <= 0:
        raise ContextOverflow(
            f"Max new tokens ({settings.max_new_tokens:,}) leaves no room for the conversation in "
            f"{settings.model}'s context of {window:,} tokens; lower it.",
            available=budget,
        )
    system = [Message("system", settings.system)] if settings.system.strip() else []
    everything = system + [_as_sent(message) for message in history]

    def count(messages: Sequence[Message]) -> int:
        return backend.count_tokens(name, messages, think=settings.think)

    try:
        kept = truncate_history(everything, budget, count)
    except ContextOverflow as exc:
        question = history[-1]
        if not question.context:
            raise
        from nbchat.context import context_label

        plain = count([*system, replace(question, context=())])
        taken = max(0, count([*system, everything[-1]]) - plain)
        raise ContextOverflow(
            f"{exc} What was attached ({context_label(question.context).removeprefix('Context: ')}) took "
            f"about {taken:,} of those tokens: mention fewer objects, attach fewer cells, or ask without it.",
            needed=exc.needed,
            available=exc.available,
        ) from None
    system_kept, turns = sendable(everything)
    reply.dropped_messages = len(system_kept) + sum(map(len, turns)) - len(kept)
    reply.context_window, reply.prompt_tokens = window, count(kept)  # how full the context is
    params = GenerationParams(
        temperature=settings.temperature,
        max_new_tokens=settings.max_new_tokens,
        think=settings.think,
        context_size=window,
    )
    return _follow_turn(reply, backend.stream(name, kept, params))


def _check_prompt(prompt: object) -> None:
    if not isinstance(prompt, str):
        raise InvalidValue(f"A message must be text, not {type(prompt).__name__}.")
    if not prompt.strip():
        raise InvalidValue("The message is empty; type something to send.")


def _bounded(items: Sequence[ContextItem]) -> tuple[ContextItem, ...]:
    if not items:
        return ()
    from nbchat import context

    return tuple(context.bound_context(list(items)))


def _attach(
    prompt: str, *, cells: int, error: bool, namespace: Mapping[str, Any] | None
) -> tuple[ContextItem, ...]:
    """What ``prompt`` attaches: its ``@mentions``, the last ``cells`` cells, the last error."""
    if isinstance(cells, bool) or not isinstance(cells, int) or cells < 0:
        raise InvalidValue(f"The number of cells to attach must be a whole number, 0 or more, not {cells!r}.")
    if "@" not in prompt and not cells and not error:
        return ()  # nothing to attach: nbchat.context is not even imported
    from nbchat import context

    names = context.user_namespace() if namespace is None else namespace
    items = list(context.resolve_mentions(prompt, names))
    if cells:
        recent = context.recent_cells(cells)
        if recent is None:
            raise NoContext("No cell has run in this kernel yet, so there are no cells to attach.")
        items.append(recent)
    if error:
        last = context.last_error()
        if last is None:
            raise NoContext("No error has happened in this kernel yet, so there is none to explain.")
        items.append(last)
    return tuple(context.bound_context(items))  # one message's whole context is bounded too


def _as_sent(message: Message) -> Message:
    """A message as the model is given it: a user message with its attached context written out."""
    if message.role != "user" or (not message.context and "@@" not in message.content):
        return message
    from nbchat.context import unescape_mentions, with_context

    text = with_context(unescape_mentions(message.content), message.context)
    if len(text) > MAX_CONTENT_CHARS:
        raise ContextOverflow(
            f"A message with what it attaches is {len(text):,} characters, more than any model takes; "
            "mention fewer objects or attach fewer cells."
        )
    return replace(message, content=text, context=())


def _follow_turn(reply: Reply, stream: ReplyStream) -> ReplyStream:
    """A local model serves one reply at a time: while this one waits for it, its status says so."""

    def progress(step: LoadProgress) -> None:
        if step.phase == "waiting":
            reply.waiting_for_turn = True
            reply.set_status(f"Waiting for {reply.model}: another reply is using it…")
        elif step.phase == "turn":
            reply.waiting_for_turn = False
            reply.set_status(f"{reply.model} is free after {step.elapsed_s:.1f} s of waiting; generating…")

    if hasattr(stream, "on_progress"):  # the engine's reply can wait for its turn (transformers:)
        stream.on_progress = progress
    return stream


def _warm(
    backend: Backend, name: str, model: str, on_status: Callable[[str], None] | None, stop: threading.Event
) -> None:
    """In a thread of its own: load ``model`` now; a failure is only said (the send reports it again).

    ``stop`` set (another model was chosen): it stops waiting and says nothing more.
    """

    def say(text: str) -> None:
        if on_status is not None:
            try:
                on_status(text)
            except Exception:  # a view's bug must not end the warm-up
                import logging

                logging.getLogger(__name__).exception("An nbchat warm-up listener failed")

    def progress(step: LoadProgress) -> None:
        if step.phase == "download":  # it joined a load that downloads (a message sent meanwhile)
            say(f"Downloading {model}: {step.download_text()}")
        elif step.phase != "ready":
            say(f"{model} is loading in the background…")

    try:
        backend.prepare(name, on_progress=progress, download=False, cancel=stop)  # gigabytes only when asked
    except ModelNotDownloaded as exc:
        say(str(exc))
    except NbchatError as exc:
        say(f"{model} could not be loaded: {exc}")
    except Exception as exc:  # never into a thread's traceback: the send says it as today
        say(f"{model} could not be loaded: {type(exc).__name__}: {exc}")
    else:
        if not stop.is_set():
            say(f"{model} ready")


def _prepare_with_progress(reply: Reply, backend: Backend, name: str) -> None:
    """Have the engine make the model ready, telling the reply's views each phase of a load."""
    model = reply.model
    phases = {
        "tokenizer": f"Loading {model}: the tokenizer…",
        "weights": f"Loading {model}: the weights (the first use of a model takes a while)…",
    }

    def progress(step: LoadProgress) -> None:
        if step.phase == "download":  # the first use on this machine: the weights come from the hub
            reply.set_status(f"Downloading {model}: {step.download_text()}", download=step)
        elif step.phase == "ready":
            how = f" ({step.detail})" if step.detail else ""  # its precision, and why
            reply.set_status(f"{model} loaded in {step.elapsed_s:.1f} s{how}; generating…")
        else:
            reply.set_status(phases.get(step.phase, f"Loading {model}…"))

    backend.prepare(name, on_progress=progress, cancel=reply.cancel_event)


def _fit_max_tokens(
    settings: ConversationSettings, window: int | None, *, explicit: bool
) -> ConversationSettings:
    """Max new tokens must leave room for a prompt in the model's context (when known cheaply).

    A value the user just gave is refused; a value carried over from the
    previous model (choosing a small-context model) is lowered to half the
    context, with a warning, so picking a model in a dropdown never fails.
    """
    if window is None or settings.max_new_tokens < window:
        return settings
    if explicit:
        raise InvalidValue(
            f"Max new tokens must be below {settings.model}'s context of {window:,} tokens "
            f"(the prompt needs room too), not {settings.max_new_tokens:,}."
        )
    fitted = max(1, window // 2)
    warnings.warn(
        f"Max new tokens lowered from {settings.max_new_tokens:,} to {fitted:,}: "
        f"{settings.model}'s context holds only {window:,} tokens.",
        NbchatWarning,
        stacklevel=4,
    )
    return settings.updated(max_new_tokens=fitted)


def _save_reply(
    store: ConversationStore, conversation_id: str, reply: Reply, secrets: tuple[str | None, ...] = ()
) -> Message | None:
    """Append the finished reply to its conversation; whatever the engine sent, its text is kept.

    Text over the message size limit is cut with a note (``stats.truncated``), lone
    surrogates (which a JSON ``\\ud800`` can produce) become U+FFFD, and odd statistics are
    dropped (``stats_record``), so no reply is ever lost to a number. Saved error texts hold no
    credential (``nbchat.redact``): a server may have echoed the API key into one.
    """
    text, thinking = _saveable(reply.text), _saveable(reply.thinking)
    if not text and not thinking and reply.error is None:
        return None  # stopped before the first token: nothing to keep
    stats = stats_record(reply, lambda said: scrub_secrets(said, *secrets))
    if len(text) > MAX_CONTENT_CHARS:
        note = (
            f"\n\n*(nbchat: the reply was {len(text):,} characters long; it was cut to "
            f"{MAX_CONTENT_CHARS:,} to be saved.)*"
        )
        text = text[: MAX_CONTENT_CHARS - len(note)] + note
        stats["truncated"] = True
    if len(thinking) > MAX_CONTENT_CHARS:
        thinking = thinking[: MAX_CONTENT_CHARS - 1] + "…"
        stats["truncated"] = True
    message = Message(
        "assistant",
        text,
        id=reply.message_id,
        thinking=thinking or None,
        model=reply.model,
        stats=stats,
        parent=reply.prompt.id,
    )
    return store.append(conversation_id, message)


def _saveable(text: str) -> str:
    """``text`` with any lone surrogate (unstorable in UTF-8) replaced by U+FFFD."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return text


_session: ChatSession | None = None
_session_lock = threading.Lock()


def get_session() -> ChatSession:
    """The one session of this kernel, created on first use.

    Under JupyterHub it starts with the hub user logged in (unless
    ``NBCHAT_TRUST_HUB_USER=0``).
    """
    global _session
    with _session_lock:
        if _session is None:
            session = ChatSession()
            if session.config.hub_user is not None and session.config.trust_hub_user:
                try:
                    session.login_from_hub()
                except NbchatError as exc:  # e.g. the user cap: the session still works, logged out
                    session.hub_error = exc
                    warnings.warn(f"Could not log the JupyterHub user in: {exc}", NbchatWarning, stacklevel=2)
            _session = session
        return _session


def _prepare_search(login: Login) -> None:
    """Build an encrypted account's search index in the background; a failure is only logged,
    since the first search builds it anyway (and says what went wrong)."""
    try:
        login.conversations.prepare_search()
    except Exception as exc:  # logged out meanwhile (NotLoggedIn), a damaged file, a full disk...
        logging.getLogger(__name__).debug("preparing the search index failed: %s", exc)
