"""Copy, for a reply's code block: a button whose click copies its text in the browser.

Only the page can reach the clipboard (the kernel may run on another machine),
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

_ESM = """
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

_CSS = """
.nbchat-copy-button { width: auto; padding: 0 10px; }
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
