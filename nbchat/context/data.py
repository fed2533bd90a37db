"""Summaries of pandas, polars and numpy objects, from the object's own cheap facts.

Each library is looked up in ``sys.modules`` and never imported: if the user has not imported
pandas, nothing in their namespace can be a DataFrame. Everything is computed on the object
(``min``/``max``/``mean`` on the array, null counts per shown column, the first rows only), so
a 1,000,000-row frame or a 10,000,000-element array costs milliseconds. The head is written as
a Markdown table here (``DataFrame.to_markdown`` needs ``tabulate``, which may be missing).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, TypeVar

from nbchat.context.text import Lines, count, counted, one_line

#: Columns listed with dtype and nulls; columns shown in the head's table; rows in the head.
MAX_COLUMNS = 40
MAX_TABLE_COLUMNS = 12
HEAD_ROWS = 5
CELL_CHARS = 40

T = TypeVar("T")


def describe_data(obj: Any, lines: Lines) -> str | None:
    """Summarise ``obj`` into ``lines`` if it is a pandas/polars/numpy object; its label, else None."""
    for module, describers in (("pandas", _PANDAS), ("polars", _POLARS), ("numpy", _NUMPY)):
        library = sys.modules.get(module)
        if library is None:
            continue
        for class_name, describe in describers:
            cls = getattr(library, class_name, None)
            if isinstance(cls, type) and isinstance(obj, cls):
                return describe(obj, lines)
    return None


def cell(value: object) -> str:
    text = str(float(f"{value:.6g}")) if isinstance(value, float) else str(value)  # numpy's too
    return one_line(text, CELL_CHARS).replace("|", "\\|")


def markdown_table(header: Sequence[object], rows: Sequence[Sequence[object]]) -> list[str]:
    out = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + " --- |" * len(header)]
    out.extend("| " + " | ".join(cell(v) for v in row) + " |" for row in rows)
    return out


def _attempt(lines: Lines, what: str, compute: Callable[[], T]) -> T | None:
    try:
        return compute()
    except Exception as exc:  # one failed fact must not lose the others
        lines.add(f"({what} failed: {type(exc).__name__}: {one_line(str(exc), 200)})")
        return None


# -- pandas -------------------------------------------------------------------------------------


def _pandas_index(index: Any) -> str:
    kind = type(index).__name__
    name = f" {index.name!r}" if getattr(index, "name", None) is not None else ""
    if len(index) == 0:
        return f"index: {kind}{name}, empty"
    return (
        f"index: {kind}{name}, dtype {index.dtype}, {counted(len(index), 'entry', 'entries')}, "
        f"{cell(index[0])} to {cell(index[-1])}"
    )


def _nulls(values: Any) -> int:
    """A pandas column's missing values, the cheapest way its storage allows."""
    numpy = sys.modules["numpy"]
    dtype = values.dtype
    if isinstance(dtype, numpy.dtype):
        if dtype.kind in "iub":
            return 0  # plain integers and booleans cannot be missing
        if dtype.kind in "fc":
            return int(numpy.count_nonzero(numpy.isnan(values.to_numpy())))
    array = values.array
    arrow = getattr(array, "_pa_array", None)  # Arrow-backed: the count is in the metadata
    if arrow is not None and isinstance(getattr(arrow, "null_count", None), int):
        return int(arrow.null_count)
    mask = getattr(array, "_mask", None)  # nullable Int64/boolean/Float64: a mask of the missing
    if isinstance(mask, numpy.ndarray) and mask.dtype == bool:
        return int(numpy.count_nonzero(mask))
    return int(values.isna().sum())


def _pandas_frame(frame: Any, lines: Lines) -> str:
    rows, columns = frame.shape
    lines.add(f"pandas DataFrame: {counted(rows, 'row')} × {counted(columns, 'column')}")
    lines.add(_pandas_index(frame.index))
    lines.add("columns (dtype, nulls):")
    for position in range(min(columns, MAX_COLUMNS)):
        column = frame.iloc[:, position]
        nulls = _attempt(lines, "null count", partial(_nulls, column))
        if not lines.add(f"- {cell(frame.columns[position])}: {column.dtype}, {counted(nulls or 0, 'null')}"):
            break
    if columns > MAX_COLUMNS:
        lines.add(f"- … and {counted(columns - MAX_COLUMNS, 'more column')}")
    head = frame.iloc[:HEAD_ROWS, :MAX_TABLE_COLUMNS]
    shown = "" if columns <= MAX_TABLE_COLUMNS else f", first {MAX_TABLE_COLUMNS} columns"
    lines.add(f"head ({counted(min(rows, HEAD_ROWS), 'row')}{shown}):")
    header = [head.index.name or "", *head.columns]
    table = [[label, *values] for label, values in zip(head.index, head.itertuples(index=False), strict=True)]
    for line in markdown_table(header, table):
        lines.add(line)
    return f"DataFrame {count(rows)} × {count(columns)}"


def _pandas_series(series: Any, lines: Lines) -> str:
    name = f" {series.name!r}" if series.name is not None else ""
    nulls = _attempt(lines, "null count", partial(_nulls, series))
    size = counted(len(series), "value")
    lines.add(f"pandas Series{name}: {size}, dtype {series.dtype}, {counted(nulls or 0, 'null')}")
    lines.add(_pandas_index(series.index))
    if series.dtype.kind in "iufb" and len(series):
        stats = _attempt(lines, "statistics", lambda: (series.min(), series.max(), series.mean()))
        if isinstance(stats, tuple):
            lines.add(f"min {stats[0]}, max {stats[1]}, mean {stats[2]}")
    head = series.iloc[:HEAD_ROWS]
    lines.add(f"head ({counted(len(head), 'value')}):")
    for line in markdown_table([series.index.name or "", series.name or "value"], list(head.items())):
        lines.add(line)
    return f"Series {count(len(series))} {series.dtype}"


# -- polars -------------------------------------------------------------------------------------


def _polars_frame(frame: Any, lines: Lines) -> str:
    rows, columns = frame.shape
    lines.add(f"polars DataFrame: {counted(rows, 'row')} × {counted(columns, 'column')}")
    nulls = frame.null_count().row(0) if columns else ()
    lines.add("columns (dtype, nulls):")
    for (name, dtype), missing in list(zip(frame.schema.items(), nulls, strict=True))[:MAX_COLUMNS]:
        if not lines.add(f"- {cell(name)}: {dtype}, {counted(missing, 'null')}"):
            break
    if columns > MAX_COLUMNS:
        lines.add(f"- … and {counted(columns - MAX_COLUMNS, 'more column')}")
    head = frame.head(HEAD_ROWS).select(frame.columns[:MAX_TABLE_COLUMNS])
    lines.add(f"head ({counted(head.height, 'row')}):")
    for line in markdown_table(head.columns, head.rows()):
        lines.add(line)
    return f"DataFrame {count(rows)} × {count(columns)}"


def _polars_series(series: Any, lines: Lines) -> str:
    lines.add(
        f"polars Series {series.name!r}: {counted(len(series), 'value')}, dtype {series.dtype}, "
        f"{counted(series.null_count(), 'null')}"
    )
    if series.dtype.is_numeric() and len(series):
        lines.add(f"min {series.min()}, max {series.max()}, mean {series.mean()}")
    lines.add("head: " + ", ".join(cell(v) for v in series.head(HEAD_ROWS).to_list()))
    return f"Series {count(len(series))} {series.dtype}"


# -- numpy --------------------------------------------------------------------------------------


def _numpy_array(array: Any, lines: Lines) -> str:
    numpy = sys.modules["numpy"]
    shape = " × ".join(count(n) for n in array.shape) or "scalar"
    lines.add(
        f"numpy ndarray: shape {tuple(array.shape)}, dtype {array.dtype}, "
        f"{counted(array.size, 'element')} ({array.nbytes / 1e6:,.1f} MB)"
    )
    kind = array.dtype.kind
    if array.size and kind in "iufcbmM":
        _attempt(lines, "statistics", lambda: lines.add(_numpy_stats(numpy, array, kind)))
    text = _attempt(
        lines,
        "values",
        lambda: numpy.array2string(array, threshold=20, edgeitems=3, max_line_width=100, precision=6),
    )
    if isinstance(text, str):
        lines.add("values: " + text[:1200])
    return f"ndarray {shape} {array.dtype}"


def _numpy_stats(numpy: Any, array: Any, kind: str) -> str:
    if kind == "b":
        return f"{count(int(numpy.count_nonzero(array)))} True"
    if kind == "c":
        return f"mean {array.mean()}"
    if kind in "mM":
        return f"min {array.min()}, max {array.max()}"
    low, high = array.min(), array.max()
    if kind == "f" and (numpy.isnan(low) or numpy.isnan(high)):
        nans = int(numpy.isnan(array).sum())
        if nans == array.size:
            return f"all {count(nans)} values are NaN"
        return (
            f"{counted(nans, 'NaN value')}; without them: min {numpy.nanmin(array)}, "
            f"max {numpy.nanmax(array)}, mean {numpy.nanmean(array)}"
        )
    return f"min {low}, max {high}, mean {array.mean()}"


_PANDAS = (("DataFrame", _pandas_frame), ("Series", _pandas_series))
_POLARS = (("DataFrame", _polars_frame), ("Series", _polars_series))
_NUMPY = (("ndarray", _numpy_array),)
