"""The buttons under a reply's code block: Copy, Insert and Run, as tiny ``anywidget`` buttons.

Why not ipywidgets' ``Button``: a click on it focuses it, and JupyterLab makes
the cell holding whatever gets focus the active cell, so every Insert would go
right below the panel's own cell and successive inserts would come out in
reverse order. These buttons take no focus from a mouse click and keep focus
events from the notebook, so the active cell stays the one Insert made last.

Copy: only the page can reach the clipboard (the kernel may run on another machine),
so the button is a tiny ``anywidget`` (a front-end module shipped as a string,
no build step): its click calls ``navigator.clipboard.writeText``, falling back
to a hidden text area and ``document.execCommand("copy")`` where the
Clipboard API is refused (a page served over plain http from another host).
The button says "Copied" (or what went wrong) for a moment, and tells the
kernel ``{"event": "copied", "ok": ...}`` so the panel's status line can too.
"""

from __future__ import annotations

from collections.abc import Callable

import anywidget
import traitlets

#: How long the button says "Copied" before its label comes back.
COPIED_SHOWN_MS = 1500

#: Keeps a click on a button from making the panel's cell the active one (see the module's note).
_KEEP_ACTIVE_CELL = """
function keepActiveCell(button) {
  button.addEventListener("mousedown", (event) => { event.preventDefault(); event.stopPropagation(); });
  button.addEventListener("focusin", (event) => event.stopPropagation());
}
"""

_ESM = (
    _KEEP_ACTIVE_CELL
    + """
function fallbackCopy(text) {
  const area = document.createElement("textarea");
  area.value = text;
  area.setAttribute("readonly", "");
  area.style.position = "fixed";
  area.style.opacity = "0";
  document.body.appendChild(area);
  area.select();
  let ok = false;
  try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
  area.remove();
  return ok;
}
async function copy(text) {
  if (navigator.clipboard && window.isSecureContext) {
    try { await navigator.clipboard.writeText(text); return true; } catch (e) { /* fall back */ }
  }
  return fallbackCopy(text);
}
function render({ model, el }) {
  const button = document.createElement("button");
  button.className = "jupyter-button widget-button nbchat-copy-button";
  const label = () => { button.textContent = model.get("label"); };
  label();
  button.title = "Copy this code to the clipboard";
  keepActiveCell(button);
  let timer = null;
  button.addEventListener("click", async () => {
    const ok = await copy(model.get("text"));
    button.textContent = ok ? "Copied" : "Copy failed: select the code and press Ctrl+C";
    button.classList.toggle("nbchat-copied", ok);
    model.send({ event: "copied", ok });
    clearTimeout(timer);
    timer = setTimeout(() => { button.classList.remove("nbchat-copied"); label(); }, __SHOWN_MS__);
  });
  model.on("change:label", label);
  el.appendChild(button);
}
export default { render };
""".replace("__SHOWN_MS__", str(COPIED_SHOWN_MS))
)

_CSS = """
.nbchat-copy-button, .nbchat-action-button { width: auto; padding: 0 10px; }
.nbchat-copy-button.nbchat-copied { color: var(--jp-success-color1, #388e3c); }
"""


class CopyButton(anywidget.AnyWidget):
    """Copies ``text`` to the clipboard when clicked in the browser; ``on_copied(ok)`` hears the outcome."""

    _esm = _ESM
    _css = _CSS
    text = traitlets.Unicode("").tag(sync=True)
    label = traitlets.Unicode("Copy").tag(sync=True)

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self._copied_callbacks: list[Callable[[bool], None]] = []
        self.on_msg(self._on_message)

    def on_copied(self, callback: Callable[[bool], None]) -> None:
        self._copied_callbacks.append(callback)

    def _on_message(self, _widget: object, content: object, _buffers: object) -> None:
        if isinstance(content, dict) and content.get("event") == "copied":
            ok = content.get("ok") is True
            for callback in list(self._copied_callbacks):
                callback(ok)


_ACTION_ESM = (
    _KEEP_ACTIVE_CELL
    + """
function render({ model, el }) {
  const button = document.createElement("button");
  button.className = "jupyter-button widget-button nbchat-action-button";
  const sync = () => {
    button.textContent = model.get("label");
    button.title = model.get("hint");
    button.disabled = model.get("disabled");
  };
  sync();
  keepActiveCell(button);
  button.addEventListener("click", () => model.send({ event: "click" }));
  model.on("change:label", sync);
  model.on("change:hint", sync);
  model.on("change:disabled", sync);
  el.appendChild(button);
}
export default { render };
"""
)


class ActionButton(anywidget.AnyWidget):
    """A button that leaves the notebook's active cell alone; ``on_click(callback)`` as ipywidgets'."""

    _esm = _ACTION_ESM
    _css = _CSS
    label = traitlets.Unicode("").tag(sync=True)
    hint = traitlets.Unicode("").tag(sync=True)
    disabled = traitlets.Bool(False).tag(sync=True)

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self._click_callbacks: list[Callable[[ActionButton], None]] = []
        self.on_msg(self._on_message)

    def on_click(self, callback: Callable[[ActionButton], None]) -> None:
        self._click_callbacks.append(callback)

    def click(self) -> None:
        """What a click in the browser does (also callable from code and tests)."""
        if self.disabled:
            return
        for callback in list(self._click_callbacks):
            callback(self)

    def _on_message(self, _widget: object, content: object, _buffers: object) -> None:
        if isinstance(content, dict) and content.get("event") == "click":
            self.click()
