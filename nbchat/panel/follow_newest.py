"""Keeps the message list scrolled to the newest text, in the browser, unless the user scrolled up.

Scrolling can only happen in the page: the kernel never knows where the user is
reading. So this tiny ``anywidget``, placed right after the message list,
finds that list (the nearest ``.nbchat-messages`` around it), watches it with a
``MutationObserver`` and, while the user is at the bottom, keeps it there as
messages arrive and a reply streams. Scrolling up (wheel, keys, scrollbar)
stops the following and shows a "↓ newest" button (``.nbchat-follow-newest``)
that jumps back and follows again; so does scrolling back to the bottom. The
kernel's ``jump()`` (on send, on another conversation) does the same as the
button: the user has just acted below the list, so they want the newest text.
"""

from __future__ import annotations

import anywidget
import traitlets

#: Within this many pixels of the end counts as "at the bottom" (rounding, a last line's margin).
AT_BOTTOM_PX = 8

_ESM = """
const AT_BOTTOM_PX = __AT_BOTTOM_PX__;
const UP_KEYS = new Set(["ArrowUp", "PageUp", "Home"]);

function findList(el) {
  // The nearest list around this widget: its own panel's, even with several panels in a notebook.
  for (let node = el.parentElement; node; node = node.parentElement) {
    const list = node.querySelector(".nbchat-messages");
    if (list) return list;
  }
  return null;
}

function render({ model, el }) {
  const button = document.createElement("button");
  button.className = "jupyter-button widget-button nbchat-follow-newest";
  button.textContent = "↓ newest";
  button.title = "Jump to the newest message and follow the reply again";
  button.style.display = "none";
  button.addEventListener("mousedown", (event) => { event.preventDefault(); event.stopPropagation(); });
  el.classList.add("nbchat-follow");
  el.appendChild(button);

  let list = null, observer = null, following = true, lastTop = 0;
  const atBottom = () => list.scrollHeight - list.scrollTop - list.clientHeight <= AT_BOTTOM_PX;
  const show = () => { button.style.display = following || !list || atBottom() ? "none" : ""; };
  const toBottom = () => {
    if (!list) return;
    list.scrollTop = list.scrollHeight;
    lastTop = list.scrollTop;
    show();
  };
  const follow = () => { following = true; toBottom(); };
  const stop = () => { following = false; show(); };
  const onScroll = () => {
    if (atBottom()) following = true;
    else if (list.scrollTop < lastTop) following = false;  // the user went up (content never scrolls up)
    lastTop = list.scrollTop;
    show();
  };
  const onWheel = (event) => { if (event.deltaY < 0) stop(); };  // before a streamed token pulls it down
  const onKey = (event) => { if (UP_KEYS.has(event.key)) stop(); };
  const onChange = () => { if (following) toBottom(); else show(); };

  const attach = () => {
    if (list && list.isConnected) return;
    if (list) detach();
    list = findList(el);
    if (!list) return;
    list.addEventListener("scroll", onScroll);
    list.addEventListener("wheel", onWheel, { passive: true });
    list.addEventListener("keydown", onKey);
    observer = new MutationObserver(onChange);
    observer.observe(list, { childList: true, subtree: true, characterData: true });
    follow();
  };
  const detach = () => {
    if (observer) observer.disconnect();
    list.removeEventListener("scroll", onScroll);
    list.removeEventListener("wheel", onWheel);
    list.removeEventListener("keydown", onKey);
    list = null; observer = null;
  };
  // The list may render after this widget, or again (a re-rendered output): look for it until found.
  attach();
  const timer = setInterval(attach, 250);
  button.addEventListener("click", follow);
  model.on("change:jumps", follow);
  return () => { clearInterval(timer); if (list) detach(); };
}
export default { render };
""".replace("__AT_BOTTOM_PX__", str(AT_BOTTOM_PX))

_CSS = """
.nbchat-follow { display: flex; justify-content: center; }
.nbchat-follow-newest { width: auto; padding: 0 12px; border-radius: 12px; }
"""


class FollowNewest(anywidget.AnyWidget):
    """The message list's scroll keeper (see the module's note); ``jump()`` goes to the newest text."""

    _esm = _ESM
    _css = _CSS
    jumps = traitlets.Int(0).tag(sync=True)  # each change: jump to the bottom and follow again

    def jump(self) -> None:
        self.jumps += 1
