"""``@name`` mentions: which ones a prompt has, and what they name in the kernel's namespace."""

from __future__ import annotations

import time

import pytest

from nbchat.context import (
    MAX_MENTIONS,
    find_mentions,
    resolve_mentions,
    unescape_mentions,
)
from nbchat.context.mentions import mention_spans
from nbchat.errors import InvalidValue, UnknownMention
from nbchat.magic import interpolate


def test_names_and_dotted_paths_are_found_in_order_once() -> None:
    prompt = "compare @df with @model.coef_, then @df again and @nums."
    assert find_mentions(prompt) == ["df", "model.coef_", "nums"]


def test_email_addresses_are_not_mentions() -> None:
    assert find_mentions("mail bob@example.com or alice.smith@uni.edu about @df") == ["df"]


def test_inline_code_and_fenced_code_are_not_mentions() -> None:
    prompt = (
        "Why does `@cache` fail on @func?\n"
        "```python\n@dataclass\nclass A:\n    x: int\n```\n"
        "~~~\n@property\n~~~\n"
        "and ``a `@b` c`` too"
    )
    assert find_mentions(prompt) == ["func"]


def test_an_unclosed_fence_runs_to_the_end_and_unmatched_backticks_are_text() -> None:
    assert find_mentions("see @a\n```\n@b never closed") == ["a"]
    assert find_mentions("a stray ` then @x") == ["x"]


def test_a_long_prompt_full_of_backticks_is_parsed_quickly() -> None:
    prompt = "`a ``b " * 20_000 + "@df"
    started = time.perf_counter()
    assert find_mentions(prompt) == ["df"]
    assert time.perf_counter() - started < 1.0


def test_double_at_is_a_literal_and_is_sent_as_one_at() -> None:
    prompt = "tell @@alice about @df, `@@keep` in code"
    assert find_mentions(prompt) == ["df"]
    assert unescape_mentions(prompt) == "tell @alice about @df, `@@keep` in code"


def test_keywords_digits_and_a_lone_at_are_not_mentions() -> None:
    assert find_mentions("@if @1st @ noon @_private @df.") == ["_private", "df"]


def test_mentions_and_brace_interpolation_work_together() -> None:
    namespace = {"err": ValueError("bad {x}"), "df": [1, 2]}
    prompt = "explain {err} using @df and {{literal}}"
    assert find_mentions(prompt) == ["df"]
    filled = interpolate(prompt, namespace)
    assert filled == "explain bad {x} using @df and {literal}"
    assert [item.name for item in resolve_mentions(prompt, namespace)] == ["df"]


def test_an_unknown_name_names_close_matches_and_how_to_write_a_literal() -> None:
    with pytest.raises(UnknownMention) as caught:
        resolve_mentions("what is in @dff?", {"df": 1, "df2": 2, "other": 3})
    message = str(caught.value)
    assert message.startswith("No variable named 'dff' in this kernel (did you mean df or df2?)")
    assert "Write @@dff for a literal @dff." in message
    assert caught.value.name == "dff" and set(caught.value.suggestions) == {"df", "df2"}
    assert isinstance(caught.value, InvalidValue)


def test_an_unknown_name_with_nothing_close_says_so_plainly() -> None:
    with pytest.raises(UnknownMention, match=r"^No variable named 'zebra' in this kernel\. Write @@zebra"):
        resolve_mentions("@zebra", {"df": 1})


def test_private_names_are_not_suggested_for_a_public_mention() -> None:
    with pytest.raises(UnknownMention) as caught:
        resolve_mentions("@dfx", {"_dfx1": 1, "dfx1": 2})
    assert caught.value.suggestions == ("dfx1",)


def test_every_name_is_checked_before_anything_is_summarised() -> None:
    summarised: list[str] = []

    class Watched:
        def __repr__(self) -> str:
            summarised.append("repr")
            return "watched"

    with pytest.raises(UnknownMention):
        resolve_mentions("@w then @typo", {"w": Watched()})
    assert summarised == []


class Model:
    coef_ = (0.5, 1.5)

    def __init__(self) -> None:
        self.reads = 0

    @property
    def counted(self) -> int:
        self.reads += 1
        return self.reads

    @property
    def broken(self) -> int:
        raise RuntimeError("not fitted")

    @property
    def slow(self) -> int:
        time.sleep(5)
        return 1


def test_a_dotted_path_reads_the_attribute() -> None:
    (item,) = resolve_mentions("@model.coef_", {"model": Model()})
    assert item.name == "model.coef_" and item.label == "tuple of 2"
    assert "(0.5, 1.5)" in item.summary


def test_a_missing_attribute_is_unknown_with_close_attribute_names() -> None:
    with pytest.raises(UnknownMention) as caught:
        resolve_mentions("@model.coef", {"model": Model()})
    assert str(caught.value).startswith(
        "model (a test_context_mentions.Model) has no attribute 'coef' (did you mean coef_?)"
    )
    assert "Write @@model.coef for a literal @model.coef." in str(caught.value)


def test_a_property_runs_once_and_one_that_raises_or_hangs_attaches_a_note() -> None:
    model = Model()
    (item,) = resolve_mentions("@model.counted", {"model": model})
    assert model.reads == 1 and "repr: 1" in item.summary
    (broken,) = resolve_mentions("@model.broken", {"model": model})
    assert broken.summary == "(nothing attached: reading model.broken raised RuntimeError)"
    started = time.monotonic()
    (slow,) = resolve_mentions("@model.slow", {"model": model})
    assert time.monotonic() - started < 1.0
    assert "took longer than the time cap" in slow.summary


def test_builtins_can_be_mentioned() -> None:
    (item,) = resolve_mentions("how does @len work", {})
    assert item.label == "function len" and "Return the number of items" in item.summary


def test_too_many_mentions_are_refused() -> None:
    names = [f"v{i}" for i in range(MAX_MENTIONS + 1)]
    with pytest.raises(InvalidValue, match=f"at most {MAX_MENTIONS} objects"):
        resolve_mentions(" ".join("@" + n for n in names), dict.fromkeys(names, 0))


def test_mention_spans_are_where_each_real_mention_stands_repeats_included() -> None:
    """What the magic uses to keep a filled-in value's "@" out of the mentions: offsets with the "@"."""
    prompt = "ask @df and @if, bob@x.com, `@no`, @@lit, @df.a again @df"
    assert mention_spans(prompt) == [(4, 7), (42, 47), (54, 57)]
    assert [prompt[start:end] for start, end in mention_spans(prompt)] == ["@df", "@df.a", "@df"]
