"""``import nbchat`` stays light: no torch or transformers until a local model is used."""

from __future__ import annotations

import json
import subprocess
import sys


def test_import_does_not_load_heavy_libraries() -> None:
    code = (
        "import json, sys, nbchat\n"
        "heavy = ('torch', 'transformers', 'accelerate', 'ipywidgets')\n"
        "print(json.dumps(sorted(m for m in heavy if m in sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(result.stdout) == []


def test_public_names_are_exported() -> None:
    import nbchat

    for name in nbchat.__all__:
        assert hasattr(nbchat, name), name
    assert issubclass(nbchat.UserLimitReached, nbchat.AccountError)
    assert issubclass(nbchat.AccountError, nbchat.NbchatError)
    assert issubclass(nbchat.CorruptFile, nbchat.StoreError)
