"""A bounded, time-capped summary of any object: what the model is told about ``@name``.

``summarize`` never raises and never imports a library: it reads only the object and the
libraries already in ``sys.modules``. Its text is at most ``MAX_SUMMARY_CHARS`` characters;
the user's code it calls (``__repr__``, ``len``, a signature) runs under ``SUMMARY_TIME_S``
in a worker thread (see ``guard``): a repr that raises, sleeps or returns 50 MB still yields
a short summary in time, saying what went wrong.
"""

from __future__ import annotations

import inspect
import reprlib
import types
from collections import Counter
from typing import Any

from nbchat.context.data import describe_data
from nbchat.context.guard import call_capped, too_many_stuck
from nbchat.context.text import Lines, count, counted, fenced, one_line
from nbchat.types import MAX_MODEL_ID_CHARS, MAX_TITLE_CHARS, ContextItem

#: One object's summary at most (about 750 tokens): enough for a frame's columns and head.
MAX_SUMMARY_CHARS = 3_000
#: How long one summary may run the object's own code before it is left behind.
SUMMARY_TIME_S = 0.5
#: How much of a string is quoted, how many names of a class/module are listed.
TEXT_START_CHARS = 1_500
MAX_NAMES = 30
NOTE_ROOM = 200  # what a "timed out" or "raised" note may add to a full summary


def _repr(maxother: int) -> reprlib.Repr:
    bounded = reprlib.Repr()
    bounded.maxlevel, bounded.maxlist, bounded.maxtuple = 3, 10, 10
    bounded.maxdict, bounded.maxset, bounded.maxfrozenset, bounded.maxdeque = 10, 10, 10, 10
    bounded.maxstring, bounded.maxlong, bounded.maxother = 80, 40, maxother
    return bounded


_ITEMS = _repr(80)
OBJECT_REPR_CHARS = 1_500


def type_name(obj: object) -> str:
    """``module.Qualname`` of ``obj``'s type (``type()`` cannot be faked by the object)."""
    cls = type(obj)
    module = cls.__module__ if isinstance(cls.__module__, str) else ""
    qualname = cls.__qualname__ if isinstance(cls.__qualname__, str) else "object"
    return qualname if module in ("builtins", "") else f"{module}.{qualname}"


def summarize(name: str, obj: object, timeout: float = SUMMARY_TIME_S) -> ContextItem:
    """The context item for ``@name``: a label for the folded header and the bounded summary."""
    lines = Lines(MAX_SUMMARY_CHARS - NOTE_ROOM)
    label = [one_line(type(obj).__name__, 60)]
    if too_many_stuck():
        lines.add(f"{type_name(obj)} (not summarised: earlier summaries of slow objects are still running)")
        return _item(name, label[0], lines.text())

    def describe() -> None:
        label[0] = _describe(obj, lines)

    outcome = call_capped(describe, timeout)
    text, shown_label = lines.text(), label[0]  # a worker left behind may still write to both
    text = text or f"type: {type_name(obj)}"
    if outcome.timed_out:
        text += (
            f"\n(the summary stopped after {timeout:g} s: this object's own code, e.g. its __repr__, "
            "was too slow; it was left running in the background)"
        )
    elif outcome.error is not None:
        text += f"\n(summarising it raised {type(outcome.error).__name__})"
    return _item(name, shown_label, text)


def _item(name: str, label: str, text: str) -> ContextItem:
    name, label = one_line(name, MAX_MODEL_ID_CHARS), one_line(label, MAX_TITLE_CHARS)
    return ContextItem("object", name, label, text[:MAX_SUMMARY_CHARS])


def _describe(obj: object, lines: Lines) -> str:
    label = describe_data(obj, lines)
    if label is not None:
        return label
    if isinstance(obj, str):
        return _text(obj, lines)
    if isinstance(obj, bytes | bytearray | memoryview):
        return _binary(obj, lines)
    if isinstance(obj, dict | list | tuple | set | frozenset):
        return _container(obj, lines)
    if isinstance(obj, types.ModuleType):
        return _module(obj, lines)
    if isinstance(obj, type):
        return _class(obj, lines)
    if inspect.isroutine(obj):
        return _routine(obj, lines)
    return _other(obj, lines)


def _text(text: str, lines: Lines) -> str:
    lines.add(f"str of {counted(len(text), 'character')}, {counted(text.count(chr(10)) + 1, 'line')}")
    shown = text[:TEXT_START_CHARS]
    lines.add(("starts:\n" if len(text) > len(shown) else "text:\n") + fenced(shown))
    return f"str of {count(len(text))} chars"


def _binary(data: bytes | bytearray | memoryview, lines: Lines) -> str:
    kind = type(data).__name__
    size = data.nbytes if isinstance(data, memoryview) else len(data)
    lines.add(f"{type_name(data)}, {counted(size, 'byte')}")
    lines.add("starts: " + repr(bytes(data[:300])))
    return f"{kind} of {count(size)}"


Container = dict[Any, Any] | list[Any] | tuple[Any, ...] | set[Any] | frozenset[Any]


def _container(items: Container, lines: Lines) -> str:
    kind, size = type_name(items), len(items)
    noun = "key" if isinstance(items, dict) else "item"
    lines.add(f"{kind} of {counted(size, noun)}")
    first = []
    for index, item in enumerate(items):
        if index == 20:
            break
        first.append(item)
    if first:
        types_seen = Counter(type(item).__name__ for item in first)
        shown = ", ".join(f"{name} ×{n}" for name, n in types_seen.most_common(5))
        lines.add(f"{noun} types (first {len(first)}): {shown}")
    lines.add("first items: " + _ITEMS.repr(items))
    return f"{type(items).__name__} of {count(size)}"


def _first_doc_line(obj: object) -> str | None:
    doc = inspect.getdoc(obj)
    if not doc:
        return None
    return one_line(next(line for line in doc.splitlines() if line.strip()), 300)


def _signature(obj: Any) -> str:
    try:
        return str(inspect.signature(obj))
    except (TypeError, ValueError):
        return "(…)"  # some builtins and C types have none


def _names(names: list[str]) -> str:
    public = [n for n in names if isinstance(n, str) and not n.startswith("_")]
    more = f", … ({count(len(public) - MAX_NAMES)} more)" if len(public) > MAX_NAMES else ""
    return ", ".join(public[:MAX_NAMES]) + more


def _routine(function: Any, lines: Lines) -> str:
    name = getattr(function, "__qualname__", None) or getattr(function, "__name__", "?")
    module = getattr(function, "__module__", None)
    where = f"{module}." if isinstance(module, str) and module not in ("builtins", "__main__") else ""
    lines.add(f"{type_name(function)} {where}{name}{_signature(function)}")
    doc = _first_doc_line(function)
    if doc:
        lines.add(doc)
    code = getattr(function, "__code__", None)
    if isinstance(code, types.CodeType):
        lines.add(f"defined in {code.co_filename}, line {code.co_firstlineno}")
    return f"function {one_line(str(name), 80)}"


def _class(cls: type, lines: Lines) -> str:
    bases = ", ".join(base.__qualname__ for base in cls.__bases__ if base is not object)
    module = "" if cls.__module__ in ("builtins", "__main__") else f"{cls.__module__}."
    lines.add(f"class {module}{cls.__qualname__}" + (f"({bases})" if bases else ""))
    lines.add(f"signature: {cls.__name__}{_signature(cls)}")
    doc = _first_doc_line(cls)
    if doc:
        lines.add(doc)
    lines.add("attributes: " + _names(sorted(vars(cls))))
    return f"class {cls.__name__}"


def _module(module: types.ModuleType, lines: Lines) -> str:
    file = getattr(module, "__file__", None)
    lines.add(f"module {module.__name__}" + (f" from {file}" if isinstance(file, str) else ""))
    doc = _first_doc_line(module)
    if doc:
        lines.add(doc)
    exported = getattr(module, "__all__", None)
    names = list(exported) if isinstance(exported, list | tuple) else sorted(vars(module))
    lines.add("names: " + _names(names))
    return f"module {module.__name__}"


def _other(obj: object, lines: Lines) -> str:
    lines.add(f"type: {type_name(obj)}")
    try:
        text = repr(obj)  # not reprlib's: it hides a failing __repr__ behind "<X instance>"
    except Exception as exc:
        text = f"(its __repr__ raised {type(exc).__name__}: {one_line(str(exc), 200)})"
    if not isinstance(text, str):
        text = f"(its __repr__ returned a {type(text).__name__}, not a str)"
    lines.add("repr: " + (text if len(text) <= OBJECT_REPR_CHARS else text[:OBJECT_REPR_CHARS] + "…"))
    attributes = getattr(obj, "__dict__", None)
    public = _names(list(attributes)) if isinstance(attributes, dict) else ""
    if public:
        lines.add("attributes: " + public)
    return type(obj).__name__
