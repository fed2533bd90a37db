"""Summarising never imports a library the user has not imported (a fresh interpreter each time)."""

from __future__ import annotations

import json
import subprocess
import sys

SUMMARISE_EVERYTHING = """
import json, sys, types
import nbchat.context as context

class Thing:
    pass

namespace = {
    "n": 1, "text": "hello", "data": b"xy", "items": [1, {"a": (2, 3)}], "keys": {1, 2},
    "function": len, "cls": Thing, "thing": Thing(), "module": json, "frame": sys._getframe(),
}
prompt = " ".join("@" + name for name in namespace)
items = context.resolve_mentions(prompt, namespace)
context.with_context("q", items)
context.recent_cells(2)
context.last_error()
context.user_namespace()
print(json.dumps({
    "count": len(items),
    "loaded": sorted(m for m in ("pandas", "numpy", "polars", "pyarrow", "IPython") if m in sys.modules),
}))
"""


def test_summarising_every_kind_imports_no_data_library_nor_ipython() -> None:
    result = subprocess.run(
        [sys.executable, "-c", SUMMARISE_EVERYTHING], capture_output=True, text=True, check=True
    )
    assert json.loads(result.stdout) == {"count": 10, "loaded": []}


def test_a_dataframe_is_recognised_once_pandas_is_imported_and_numpy_came_with_it() -> None:
    code = (
        "import json, sys\n"
        "import pandas as pd\n"
        "import nbchat.context as context\n"
        "item = context.summarize('df', pd.DataFrame({'a': [1]}))\n"
        "print(json.dumps({'label': item.label, 'polars': 'polars' in sys.modules}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(result.stdout) == {"label": "DataFrame 1 × 1", "polars": False}
