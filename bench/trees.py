"""Run a benchmark's measuring function in a child process, from another source tree."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path


def run_from_tree(script: Path, tree: Path | str, call: str, *args: str) -> str:
    """The last line ``call`` prints in a child whose packages come from ``tree``.

    ``call`` is a Python expression over ``bench`` (the module of ``script``),
    ``sys`` and ``json``, with ``args`` as ``sys.argv[3:]``.  The script is
    imported from a folder of its own under that name, so ``tree`` supplies
    only the packages under test (``sip``, ``adapter``, ...), not the bench.
    """
    code = (
        "import sys, json; sys.path.insert(0, sys.argv[1]); sys.path.insert(0, sys.argv[2]);"
        f"import bench; print({call})"
    )
    with tempfile.TemporaryDirectory() as shim:
        (Path(shim) / "bench.py").write_text(script.read_text())
        out = subprocess.run(
            [sys.executable, "-c", code, shim, str(tree), *args],
            check=True, capture_output=True, text=True, cwd=shim,
        ).stdout
    return out.splitlines()[-1]
