"""The search box: the user's words, the ranked hits under it, and opening a hit at its message.

The part knows no session: ``on_search(query)`` hears a query (Enter or the
button), ``on_open(conversation_id, message_id)`` a hit clicked; the controller
answers with ``show_hits``, ``failed`` and ``reveal``. The hits are a tiny
``anywidget`` (``HitList``) because a hit is more than a label (title, snippet
with the hit words bold, time) and because only the page can scroll the message
list to the message a hit named and highlight it: ``reveal(message_id)`` finds
the message by its DOM hook (the class ``nbchat-msg-<id>`` the message list
gives every shown message), stops the list following the newest text (as a
person scrolling up would) and brings the message to the middle of the list.
"""

from __future__ import annotations

import html
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

import anywidget
import ipywidgets as widgets
import traitlets

from nbchat.panel.kit import classed, close_widgets, error_html
from nbchat.search import SearchHit

#: How long a revealed message stays highlighted, and how long the page looks for it to be drawn.
HIGHLIGHT_MS = 2500
REVEAL_WAIT_MS = 10_000

#: A click on *Search* right after Enter (or the blur that precedes the click) searched the same
#: words: not searched twice.
REPEAT_WITHIN_S = 1.0

_HIT_WORDS = re.compile(r"\[([^\[\]]*)\]")


def snippet_html(snippet: str, parts: Sequence[tuple[str, bool]] = ()) -> str:
    """A hit's plain-text snippet as HTML: everything escaped, the matched words bold.

    ``parts`` (``SearchHit.parts``: ``(text, matched)`` pieces) say exactly which words matched;
    without them the ``[word]`` marks of ``snippet`` do (text holding brackets of its own may
    then show a word bold that did not match)."""
    if parts:
        return "".join(f"<b>{html.escape(text)}</b>" if hit else html.escape(text) for text, hit in parts)
    pieces: list[str] = []
    at = 0
    for match in _HIT_WORDS.finditer(snippet):
        pieces.append(html.escape(snippet[at : match.start()]))
        pieces.append(f"<b>{html.escape(match.group(1))}</b>")
        at = match.end()
    pieces.append(html.escape(snippet[at:]))
    return "".join(pieces)


def hit_html(hit: SearchHit) -> str:
    """One hit as the button shows it: the title, where the words were (a question, a reply, the
    title) and when, then the snippet."""
    where = {"user": "your question", "assistant": "a reply"}.get(hit.role or "", hit.role or "the title")
    if hit.message_id is None:
        where = "the title"
    when = _when(hit.time)
    return (
        f"<span class='nbchat-search-title'>{html.escape(hit.title)}</span>"
        f"<span class='nbchat-search-where'> · in {html.escape(where)}"
        f"{' · ' + html.escape(when) if when else ''}</span>"
        f"<span class='nbchat-search-snippet'>{snippet_html(hit.snippet, hit.parts)}</span>"
    )


def _when(value: Any) -> str:
    try:
        return str(value.astimezone().strftime("%Y-%m-%d %H:%M"))
    except (AttributeError, ValueError, OSError):
        return ""


_ESM = """
const REVEAL_WAIT_MS = __REVEAL_WAIT_MS__;
const HIGHLIGHT_MS = __HIGHLIGHT_MS__;

function findList(el) {
  // The nearest message list around this widget: its own panel's, even with several panels.
  for (let node = el.parentElement; node; node = node.parentElement) {
    const list = node.querySelector(".nbchat-messages");
    if (list) return list;
  }
  return null;
}

function render({ model, el }) {
  el.classList.add("nbchat-search-hits");
  const draw = () => {
    const generation = model.get("generation");
    const disabled = model.get("disabled");
    el.replaceChildren(...model.get("hits").map((hit, index) => {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "nbchat-search-hit";
      button.innerHTML = hit.html;  // built and escaped by the kernel (search_box.hit_html)
      button.title = disabled ? "Wait for the reply to end to open another conversation" : "Open it here";
      button.disabled = disabled;
      button.addEventListener("click", () => model.send({ event: "open", index, generation }));
      return button;
    }));
  };

  let timers = [];
  const later = (ms, what) => timers.push(setTimeout(what, ms));
  const reveal = () => {
    const target = model.get("reveal");
    if (!target || !target.id) return;
    timers.forEach(clearTimeout);
    timers = [];
    const started = Date.now();
    const look = () => {
      const list = findList(el);
      const message = list && list.querySelector(".nbchat-msg-" + CSS.escape(target.id));
      if (!message || message.offsetHeight === 0) {  // not drawn yet (the list is being redrawn)
        if (Date.now() - started < REVEAL_WAIT_MS) later(100, look);
        return;
      }
      // As a person scrolling up would: the list's scroll keeper stops following the newest text.
      list.dispatchEvent(new WheelEvent("wheel", { deltaY: -1 }));
      const place = () => {
        if (!message.isConnected) return;
        const offset = message.getBoundingClientRect().top - list.getBoundingClientRect().top;
        list.scrollTop += offset - Math.max(0, (list.clientHeight - message.offsetHeight) / 2);
      };
      place();
      list.scrollIntoView({ block: "nearest" });
      for (const ms of [100, 300, 700]) later(ms, place);  // Markdown above it may still be rendering
      const whole = message.closest(".nbchat-message") || message;  // the message with its tools
      whole.classList.add("nbchat-revealed");
      later(HIGHLIGHT_MS, () => whole.classList.remove("nbchat-revealed"));
    };
    look();
  };

  draw();
  model.on("change:hits", draw);
  model.on("change:disabled", draw);
  model.on("change:reveal", reveal);
  return () => timers.forEach(clearTimeout);
}
export default { render };
""".replace("__REVEAL_WAIT_MS__", str(REVEAL_WAIT_MS)).replace("__HIGHLIGHT_MS__", str(HIGHLIGHT_MS))

_CSS = """
.nbchat-search-hits { display: flex; flex-direction: column; gap: 2px; max-height: 260px; overflow-y: auto; }
.nbchat-search-hit { display: block; width: 100%; text-align: left; padding: 4px 8px; cursor: pointer;
  border: 1px solid var(--jp-border-color2, #e0e0e0); border-radius: 4px;
  background: var(--jp-layout-color1, #fff); color: var(--jp-ui-font-color1, #212121);
  font: inherit; font-size: 90%; }
.nbchat-search-hit:hover:not(:disabled) { background: var(--jp-layout-color2, #f5f5f5); }
.nbchat-search-hit:disabled { cursor: default; opacity: 0.6; }
.nbchat-search-title { font-weight: 600; }
.nbchat-search-where { color: var(--jp-ui-font-color2, #757575); font-size: 90%; }
.nbchat-search-snippet { display: block; color: var(--jp-ui-font-color1, #424242); white-space: pre-wrap; }
.nbchat-search-snippet b { background: var(--jp-warn-color3, #fff3cd); }
.nbchat-search-note .nbchat-error { color: var(--jp-error-color1, #d32f2f); }
.nbchat-revealed { animation: nbchat-revealed __HIGHLIGHT_MS__ms ease-out; border-radius: 6px; }
@keyframes nbchat-revealed {
  0%, 60% { background: var(--jp-warn-color3, #fff3cd);
    box-shadow: inset 0 0 0 2px var(--jp-warn-color1, #f9a825); }
  100% { background: transparent; box-shadow: none; }
}
""".replace("__HIGHLIGHT_MS__", str(HIGHLIGHT_MS))


class HitList(anywidget.AnyWidget):
    """The hits as buttons in the page; a click calls ``on_open(index)``. ``reveal`` scrolls the
    panel's message list to a message (see the module's note)."""

    _esm = _ESM
    _css = _CSS
    hits = traitlets.List(traitlets.Dict()).tag(sync=True)  # [{"html": ...}], escaped by the kernel
    generation = traitlets.Int(0).tag(sync=True)  # a click on hits shown before this one is ignored
    disabled = traitlets.Bool(False).tag(sync=True)
    reveal = traitlets.Dict().tag(sync=True)  # {"id": message id, "n": counter (the same id again)}

    def __init__(self, on_open: Callable[[int], None], **kwargs: object) -> None:
        super().__init__(**kwargs)
        self._on_open = on_open
        self.on_msg(self._on_message)

    def pick(self, index: int, generation: int | None = None) -> None:
        """What a click on hit ``index`` in the browser does (also callable from code and tests)."""
        if self.disabled or (generation is not None and generation != self.generation):
            return
        if 0 <= index < len(self.hits):
            self._on_open(index)

    def _on_message(self, _widget: object, content: object, _buffers: object) -> None:
        if isinstance(content, dict) and content.get("event") == "open":
            index, generation = content.get("index"), content.get("generation")
            if isinstance(index, int) and isinstance(generation, int):
                self.pick(index, generation)


class SearchBox:
    """The search field and *Search* (``nbchat-search``), then a note, the hits and *Close*."""

    def __init__(
        self,
        *,
        on_search: Callable[[str], None],
        on_open: Callable[[str, str | None], None],
    ) -> None:
        self._on_search, self._on_open = on_search, on_open
        self._hits: tuple[SearchHit, ...] = ()
        self._last: tuple[str, float] | None = None  # the words searched last, and when
        self._reveals = 0
        self.query = classed(
            widgets.Text(
                placeholder="Search your conversations",
                continuous_update=False,  # the value arrives on Enter (or leaving the field)
                layout={"width": "300px"},
            ),
            "nbchat-search",
        )
        self.query.observe(lambda change: self._search(change["new"], typed=True), names="value")
        self.search_button = classed(
            widgets.Button(description="Search", icon="search", layout={"width": "auto"}),
            "nbchat-search-button",
        )
        self.search_button.on_click(lambda _: self._search(self.query.value, typed=False))
        self.note = classed(widgets.HTML(), "nbchat-search-note")
        self.hit_list = HitList(self._opened)
        self.close_button = classed(
            widgets.Button(description="Close", icon="times", layout={"width": "auto"}),
            "nbchat-search-close",
        )
        self.close_button.on_click(lambda _: self.close_hits())
        self.results = classed(
            widgets.VBox(
                [widgets.HBox([self.note, self.close_button]), self.hit_list], layout={"display": "none"}
            ),
            "nbchat-search-results",
        )
        self.rows: tuple[widgets.Widget, ...] = (
            widgets.HBox([self.query, self.search_button]),
            self.results,
        )

    @property
    def hits(self) -> tuple[SearchHit, ...]:
        """The hits shown now (empty once closed)."""
        return self._hits

    @property
    def shown(self) -> bool:
        return self.results.layout.display != "none"

    def show_hits(self, query: str, hits: Sequence[SearchHit]) -> None:
        """The hits of ``query``, best first, or "No matches" saying what was searched."""
        self._hits = tuple(hits)
        words = html.escape(query.strip())
        if not hits:
            self.note.value = f"No matches for <b>{words}</b>."
        else:
            count = "1 match" if len(hits) == 1 else f"{len(hits)} matches"
            self.note.value = f"{count} for <b>{words}</b>: click one to open it."
        self._draw([{"html": hit_html(hit)} for hit in hits])

    def failed(self, message: str) -> None:
        """The search (or opening a hit) could not be done: why, in red; the hits stay."""
        self.note.value = error_html(message)
        self.results.layout.display = "flex"

    def close_hits(self) -> None:
        """Fold the results away (the words stay in the field, to search again)."""
        self._hits = ()
        self._draw([])
        self.note.value = ""
        self.results.layout.display = "none"

    def reveal(self, message_id: str) -> None:
        """Ask the page to scroll the message list to ``message_id`` and highlight it briefly."""
        self._reveals += 1
        self.hit_list.reveal = {"id": message_id, "n": self._reveals}

    def set_busy(self, busy: bool) -> None:
        """While a reply streams, searching still works but no hit opens another conversation."""
        self.hit_list.disabled = busy

    def clear(self) -> None:
        """Logged out: no words nor hits of the last user stay."""
        self.close_hits()
        self._last = None
        self.query.value = ""  # heard by the observer as blank: ignored

    def close(self) -> None:
        close_widgets(*self.rows)

    def _draw(self, hits: list[dict[str, Any]]) -> None:
        self.hit_list.generation += 1
        self.hit_list.hits = hits
        self.results.layout.display = "flex"

    def _search(self, query: str, *, typed: bool) -> None:
        words = query.strip()
        if not words:
            if not typed:  # the button with an empty field: say what to do; emptying the field: nothing
                self.failed("Type some words to search for.")
            return
        now = time.monotonic()
        last = self._last
        if not typed and last is not None and last[0] == words and now - last[1] < REPEAT_WITHIN_S:
            return
        self._last = (words, now)
        self._on_search(words)

    def _opened(self, index: int) -> None:
        if 0 <= index < len(self._hits):
            hit = self._hits[index]
            self._on_open(hit.conversation_id, hit.message_id)
