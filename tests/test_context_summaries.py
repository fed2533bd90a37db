"""What ``@name`` attaches: a bounded, time-capped summary of each kind of object."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest

from nbchat.context import (
    MAX_CONTEXT_CHARS,
    MAX_SUMMARY_CHARS,
    bound_context,
    context_label,
    summarize,
    with_context,
)
from nbchat.context.guard import MAX_STUCK_WORKERS, stuck_workers
from nbchat.types import ContextItem


def lines_of(item: ContextItem) -> list[str]:
    return item.summary.splitlines()


def test_a_dataframe_gives_shape_index_dtypes_nulls_and_its_head_as_a_table() -> None:
    df = pd.DataFrame(
        {"city": ["Oslo", "Rome", None, "Lima", "Pune", "Kyiv"], "temp": [3.5, 18.0, 21.5, None, 30.1, 7.0]},
        index=pd.Index(range(10, 16), name="id"),
    )
    item = summarize("df", df)
    assert item.kind == "object" and item.name == "df" and item.label == "DataFrame 6 × 2"
    lines = lines_of(item)
    assert lines[0] == "pandas DataFrame: 6 rows × 2 columns"
    assert lines[1].startswith("index: RangeIndex 'id'") and "10 to 15" in lines[1]
    assert "- city: str, 1 null" in lines or "- city: object, 1 null" in lines
    assert "- temp: float64, 1 null" in lines
    table = lines[lines.index("head (5 rows):") + 1 :]
    assert table[0] == "| id | city | temp |" and table[1] == "| --- | --- | --- |"
    assert table[2] == "| 10 | Oslo | 3.5 |" and len(table) == 7  # header, rule, 5 rows


def test_a_million_row_dataframe_is_summarised_quickly_and_within_the_cap() -> None:
    rng = np.random.default_rng(0)
    df = pd.DataFrame(rng.random((1_000_000, 20)), columns=[f"c{i}" for i in range(20)])
    df["label"] = "x"
    started = time.perf_counter()
    item = summarize("df", df)
    elapsed = time.perf_counter() - started
    assert elapsed < 0.5, elapsed  # bench/context.py holds it to 0.1 s on a quiet machine
    assert item.label == "DataFrame 1,000,000 × 21"
    assert len(item.summary) <= MAX_SUMMARY_CHARS and "(the summary stopped" not in item.summary
    assert "- label: " in item.summary


def test_a_wide_dataframe_lists_some_columns_and_stays_within_the_cap() -> None:
    df = pd.DataFrame(np.zeros((3, 500)), columns=[f"a_rather_long_column_name_{i}" for i in range(500)])
    item = summarize("wide", df)
    assert len(item.summary) <= MAX_SUMMARY_CHARS
    assert item.label == "DataFrame 3 × 500"
    assert "…" in item.summary


def test_a_series_gives_length_dtype_nulls_statistics_and_head() -> None:
    series = pd.Series([1.0, 2.0, None, 4.0], name="x")
    item = summarize("s", series)
    assert item.label == "Series 4 float64"
    assert lines_of(item)[0] == "pandas Series 'x': 4 values, dtype float64, 1 null"
    assert "min 1.0, max 4.0, mean 2.3333333333333335" in item.summary
    assert "| 0 | 1.0 |" in item.summary


def test_an_array_of_ten_million_gives_statistics_computed_on_the_array() -> None:
    array = np.arange(10_000_000, dtype=np.float64)
    started = time.perf_counter()
    item = summarize("nums", array)
    elapsed = time.perf_counter() - started
    assert elapsed < 0.5, elapsed  # a Python loop over the elements would take seconds
    assert item.label == "ndarray 10,000,000 float64"
    assert "min 0.0, max 9999999.0, mean 4999999.5" in item.summary
    assert "values: [0.000000e+00" in item.summary and "..." in item.summary
    assert len(item.summary) <= MAX_SUMMARY_CHARS


def test_arrays_with_nans_booleans_and_no_numbers_say_what_they_can() -> None:
    with_nan = summarize("a", np.array([1.0, np.nan, 3.0]))
    assert "1 NaN value; without them: min 1.0, max 3.0, mean 2.0" in with_nan.summary
    flags = summarize("b", np.array([[True, False], [True, True]]))
    assert flags.label == "ndarray 2 × 2 bool" and "3 True" in flags.summary
    words = summarize("w", np.array(["a", "b"]))
    assert "min" not in words.summary and "values: ['a' 'b']" in words.summary


def test_containers_give_type_length_item_types_and_bounded_first_items() -> None:
    big = list(range(1_000_000))
    item = summarize("big", big)
    assert item.label == "list of 1,000,000"
    assert lines_of(item)[:2] == ["list of 1,000,000 items", "item types (first 20): int ×20"]
    assert item.summary.endswith("first items: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, ...]")
    nested = summarize("n", {"a": [[[[[1]]]]], "b": {"c": {"d": {"e": 1}}}})
    assert nested.label == "dict of 2" and "[[[...]]]" in nested.summary and "{...}" in nested.summary
    assert summarize("t", (1, "x")).label == "tuple of 2"
    assert summarize("s", {3}).label == "set of 1"


def test_text_and_bytes_give_length_and_the_start() -> None:
    text = "first line\n" + "y" * 10_000
    item = summarize("text", text)
    assert item.label == "str of 10,011 chars"
    assert lines_of(item)[:4] == ["str of 10,011 characters, 2 lines", "starts:", "```", "first line"]
    assert len(item.summary) < 2_000
    assert summarize("b", b"\x00\x01" * 1000).summary.startswith("bytes, 2,000 bytes\nstarts: b'\\x00\\x01")


def test_text_with_fences_inside_stays_one_block() -> None:
    item = summarize("md", "```python\nx = 1\n```")
    assert item.summary.splitlines()[2] == "````"


def mean_of(values: list[float], *, weights: list[float] | None = None) -> float:
    """The (weighted) mean of some numbers.

    More words that are not sent.
    """
    return sum(values) / len(values)


class Scaler:
    """Scales columns to unit variance."""

    def __init__(self, with_mean: bool = True) -> None:
        self.with_mean = with_mean

    def fit(self, data: object) -> Scaler:
        return self


def test_functions_classes_and_modules_give_signature_and_first_doc_line() -> None:
    function = summarize("mean_of", mean_of)
    assert function.label == "function mean_of"
    assert lines_of(function)[1] == "The (weighted) mean of some numbers."
    signature = "mean_of(values: 'list[float]', *, weights: 'list[float] | None' = None) -> 'float'"
    assert signature in function.summary
    assert "More words" not in function.summary
    cls = summarize("Scaler", Scaler)
    assert cls.label == "class Scaler"
    assert "signature: Scaler(with_mean: 'bool' = True) -> 'None'" in cls.summary
    assert "Scales columns to unit variance." in cls.summary and "attributes: fit" in cls.summary
    module = summarize("np", np)
    assert module.label == "module numpy" and "names: " in module.summary
    assert len(module.summary) <= MAX_SUMMARY_CHARS


def test_any_other_object_gives_its_type_and_a_bounded_repr() -> None:
    scaler = Scaler()
    item = summarize("scaler", scaler)
    assert item.label == "Scaler"
    assert lines_of(item)[0] == "type: test_context_summaries.Scaler"
    assert "attributes: with_mean" in item.summary


class Raising:
    def __repr__(self) -> str:
        raise ValueError("cannot show {this}")


class Sleeping:
    def __repr__(self) -> str:
        time.sleep(10)
        return "finally"


class Huge:
    def __repr__(self) -> str:
        return "x" * 50_000_000


def test_a_repr_that_raises_is_reported_not_raised() -> None:
    item = summarize("r", Raising())
    assert "repr: (its __repr__ raised ValueError: cannot show {this})" in item.summary


def test_a_repr_that_sleeps_ten_seconds_is_left_behind_within_the_time_cap() -> None:
    started = time.monotonic()
    item = summarize("slow", Sleeping())
    assert time.monotonic() - started < 1.0
    assert item.label == "Sleeping"
    assert item.summary.startswith("type: test_context_summaries.Sleeping\n(the summary stopped after 0.5 s")


def test_a_repr_of_fifty_megabytes_is_cut_to_the_cap() -> None:
    item = summarize("huge", [Huge()])
    assert len(item.summary) <= MAX_SUMMARY_CHARS
    alone = summarize("huge", Huge())
    assert len(alone.summary) <= MAX_SUMMARY_CHARS and alone.summary.endswith("x…")


def test_summarising_never_raises_even_for_an_odd_name() -> None:
    class Broken(list[int]):
        def __len__(self) -> int:
            raise OSError("gone")

    item = summarize("x\n" * 500, Broken())
    assert item.name.startswith("x x x") and len(item.name) <= 300
    assert item.label == "Broken" and item.summary.endswith("Broken\n(summarising it raised OSError)")


@pytest.fixture
def blocked() -> Iterator[threading.Event]:
    release = threading.Event()
    yield release
    release.set()


def test_once_several_summaries_hang_no_more_user_code_is_called(blocked: threading.Event) -> None:
    class Blocking:
        def __repr__(self) -> str:
            blocked.wait()
            return "done"

    while stuck_workers() < MAX_STUCK_WORKERS:
        summarize("b", Blocking(), timeout=0.01)
    started = time.monotonic()
    item = summarize("b", Blocking())
    assert time.monotonic() - started < 0.1
    assert "not summarised: earlier summaries of slow objects are still running" in item.summary
    blocked.set()
    deadline = time.monotonic() + 5
    while stuck_workers() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert summarize("b", Blocking()).summary.endswith("repr: done")


def item(kind: str, name: str, label: str, summary: str) -> ContextItem:
    return ContextItem(kind, name, label, summary)  # type: ignore[arg-type]


def test_the_label_lists_objects_cells_and_the_error() -> None:
    items = [
        item("object", "df", "DataFrame 1,000 × 5", "…"),
        item("cells", "cells", "2 cells", "…"),
        item("error", "ZeroDivisionError", "ZeroDivisionError", "…"),
    ]
    assert context_label(items) == "Context: @df (DataFrame 1,000 × 5), 2 cells, last error"
    assert context_label([]) == ""


def test_the_model_reads_the_prompt_then_each_summary_under_a_heading_braces_untouched() -> None:
    items = [
        item("object", "df", "DataFrame 2 × 1", "shape {0}"),
        item("error", "KeyError", "KeyError", "{x}"),
    ]
    text = with_context("What is {this}?", items)
    assert text.startswith("What is {this}?\n\n---\n")
    assert "#### @df (DataFrame 2 × 1)\nshape {0}" in text
    assert "#### The last error (KeyError)\n{x}" in text
    assert with_context("plain", []) == "plain"


def test_all_of_a_messages_context_is_shared_out_within_the_cap() -> None:
    small = item("object", "a", "int", "small")
    large = [item("object", f"b{i}", "str", "z" * 9_000) for i in range(3)]
    bounded = bound_context([small, *large])
    assert bounded[0] == small
    assert sum(len(i.summary) for i in bounded) <= MAX_CONTEXT_CHARS
    assert all(i.summary.endswith("…") for i in bounded[1:])
    assert bound_context(bounded) == bounded
    assert len(with_context("q", [small, *large])) < MAX_CONTEXT_CHARS + 500
