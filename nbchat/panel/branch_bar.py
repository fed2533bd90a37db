"""The tools under a message, drawn by the page: ‹ 2 / 3 › among its alternatives, *Regenerate*,
*Edit* and its inline editor (a text area with *Send* and *Cancel*).

Why one tiny ``anywidget`` instead of ipywidgets' boxes and buttons: a long conversation shows
about 50 messages, and every ipywidget is a model (plus its layout and style) that the kernel
sends and the page builds before the conversation appears. This bar is one model for all of a
message's tools; a question's own text is drawn by it too (``value``), so a question is one
widget, as it was before it had tools. Its buttons take no focus from the notebook (a click
would make the panel's cell the active one); in the editor Ctrl/Cmd+Enter sends, Escape cancels.

The page reports ``{"event": "switch", "step": -1 | 1}``, ``{"event": "regenerate"}``,
``{"event": "edit"}``, ``{"event": "send", "text": ...}`` and ``{"event": "cancel"}``; the
methods ``switch``, ``regenerate``, ``edit``, ``send_edit`` and ``cancel`` do what the page does
(for scripts and tests).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anywidget
import traitlets

_ESM = """
function keepActiveCell(node) {
  node.addEventListener("mousedown", (event) => { event.preventDefault(); event.stopPropagation(); });
  node.addEventListener("focusin", (event) => event.stopPropagation());
}

function render({ model, el }) {
  const body = document.createElement("div");
  const bar = document.createElement("div");
  bar.className = "nbchat-message-tools";
  const editor = document.createElement("div");
  editor.className = "nbchat-editor";
  el.append(body, bar, editor);
  let shownHtml = null, area = null, send = null;
  // While a reply streams the list says so once (its class), not every bar: see _CSS.
  const busy = () => Boolean(el.closest(".nbchat-busy"));

  const button = (label, icon, name, title, message) => {
    const node = document.createElement("button");
    node.className = "jupyter-button widget-button " + name;
    if (icon) {
      const glyph = document.createElement("i");
      glyph.className = "fa fa-" + icon;
      node.append(glyph, " ");
    }
    node.append(label);
    node.title = title;
    keepActiveCell(node);
    node.addEventListener("click", () => model.send(typeof message === "function" ? message() : message));
    return node;
  };

  const openEditor = () => {
    const holder = document.createElement("div");
    holder.className = "nbchat-edit-text";
    area = document.createElement("textarea");
    area.value = model.get("text");
    area.rows = 4;
    area.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        event.stopPropagation();
        if (!busy()) model.send({ event: "send", text: area.value });
      } else if (event.key === "Escape") {
        event.preventDefault();
        event.stopPropagation();  // not the notebook's Escape (command mode)
        model.send({ event: "cancel" });
      }
    });
    holder.append(area);
    send = button("Send", "paper-plane", "nbchat-edit-send mod-primary",
      "Send the changed question: a new branch; the old one is kept",
      () => ({ event: "send", text: area.value }));
    const cancel = button("Cancel", "", "nbchat-edit-cancel", "Keep the question as it is",
      { event: "cancel" });
    const row = document.createElement("div");
    row.className = "nbchat-edit-buttons";
    row.append(send, cancel);
    editor.replaceChildren(holder, row);
    area.focus();
  };

  const draw = () => {
    const html = model.get("value");
    if (html !== shownHtml) {
      body.innerHTML = html;
      shownHtml = html;
    }
    body.className = html ? "nbchat-message-body nbchat-msg-" + model.get("message_id") : "";
    body.style.display = html ? "" : "none";
    const position = model.get("position"), total = model.get("total");
    const parts = [];
    if (total > 1) {
      const prev = button("‹", "", "nbchat-alt-prev", "The previous alternative",
        { event: "switch", step: -1 });
      prev.disabled = position <= 1;
      const counter = document.createElement("span");
      counter.className = "nbchat-alt-counter";
      counter.textContent = model.get("counter");
      const next = button("›", "", "nbchat-alt-next", "The next alternative", { event: "switch", step: 1 });
      next.disabled = position >= total;
      parts.push(prev, counter, next);
    }
    if (model.get("can_regenerate")) {
      const regenerate = button("Regenerate", "refresh", "nbchat-regenerate",
        "A new reply to the same question; this one is kept", { event: "regenerate" });
      parts.push(regenerate);
    }
    if (model.get("editable")) {
      const edit = button("Edit", "pencil", "nbchat-edit",
        "Change this question and send it again: a new branch", { event: "edit" });
      parts.push(edit);
    }
    bar.replaceChildren(...parts);
    const editing = model.get("editing");
    bar.style.display = parts.length && !editing ? "" : "none";
    if (editing && !area) openEditor();
    if (!editing && area) {
      editor.replaceChildren();
      area = send = null;
    }
    editor.style.display = editing ? "" : "none";
  };
  draw();
  for (const name of ["value", "message_id", "counter", "position", "total", "can_regenerate",
                      "editable", "editing"]) {
    model.on("change:" + name, draw);
  }
}
export default { render };
"""

_CSS = """
.nbchat-message-tools { display: flex; gap: 2px; align-items: center; font-size: 85%; margin: 2px 0; }
.nbchat-message-tools .widget-button { height: 22px; line-height: 22px; padding: 0 6px; width: auto; }
.nbchat-message-user .nbchat-message-tools { justify-content: flex-end; }
.nbchat-alt-counter { color: var(--jp-ui-font-color2, #616161); padding: 0 4px; }
.nbchat-editor { margin: 4px 0 4px 15%; }
.nbchat-edit-text textarea { width: 100%; box-sizing: border-box; font: inherit; padding: 6px 8px;
  resize: vertical; border: 1px solid var(--jp-border-color1, #bdbdbd); border-radius: 4px;
  background: var(--jp-layout-color1, white); color: var(--jp-ui-font-color1, black); }
.nbchat-edit-buttons { display: flex; gap: 4px; margin-top: 4px; }
.nbchat-edit-buttons .widget-button { width: auto; padding: 0 10px; }
.nbchat-show-earlier { align-self: center; }
.nbchat-busy .nbchat-message-tools button, .nbchat-busy .nbchat-edit-send {
  pointer-events: none; opacity: 0.5; }
"""


class BranchBar(anywidget.AnyWidget):
    """A message's tools (and, for a question, its text: ``value``, HTML), drawn by the page.

    ``on_switch(step)``, ``on_regenerate()``, ``on_send(text)`` hear the page (or the methods
    below); opening and closing the editor is the bar's own (``editing``). While a reply streams
    the page shows every bar's buttons disabled (the list's ``nbchat-busy`` class: one change
    for the list, not one per message) and the session refuses what gets through.
    """

    _esm = _ESM
    _css = _CSS
    value = traitlets.Unicode("").tag(sync=True)  # the question's HTML; empty under a reply
    message_id = traitlets.Unicode("").tag(sync=True)
    text = traitlets.Unicode("").tag(sync=True)  # what the editor opens with
    counter = traitlets.Unicode("").tag(sync=True)  # "2 / 3", worded by nbchat.render
    position = traitlets.Int(1).tag(sync=True)
    total = traitlets.Int(1).tag(sync=True)
    can_regenerate = traitlets.Bool(False).tag(sync=True)
    editable = traitlets.Bool(False).tag(sync=True)
    editing = traitlets.Bool(False).tag(sync=True)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.on_switch: Callable[[int], object] = _nothing
        self.on_regenerate: Callable[[], object] = _nothing
        self.on_send: Callable[[str], object] = _nothing
        self.on_msg(self._on_message)

    def switch(self, step: int) -> None:
        """What ‹ (-1) and › (+1) do: ask for the neighbouring alternative, if there is one."""
        if 1 <= self.position + step <= self.total and self.total > 1:
            self.on_switch(step)

    def regenerate(self) -> None:
        """What *Regenerate* does."""
        if self.can_regenerate:
            self.on_regenerate()

    def edit(self) -> None:
        """What *Edit* does: open the editor with the question."""
        if self.editable:
            self.editing = True

    def send_edit(self, text: str) -> None:
        """What the editor's *Send* (or Ctrl/Cmd+Enter) does with the text typed."""
        if self.editing:
            self.on_send(text)

    def cancel(self) -> None:
        """What the editor's *Cancel* does."""
        self.editing = False

    def _on_message(self, _widget: object, content: object, _buffers: object) -> None:
        if not isinstance(content, dict):
            return
        event = content.get("event")
        if event == "switch" and content.get("step") in (-1, 1):
            self.switch(int(content["step"]))
        elif event == "regenerate":
            self.regenerate()
        elif event == "edit":
            self.edit()
        elif event == "send" and isinstance(content.get("text"), str):
            self.send_edit(content["text"])
        elif event == "cancel":
            self.cancel()


def _nothing(*_args: object) -> bool:
    return False
