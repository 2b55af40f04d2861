"""Run a benchmark's measuring function in a child process, from another source tree."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


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


def run_child(script: Path, tree: Path, *args: str) -> Any:
    """What ``script --child --tree tree *args`` prints last, read as JSON.

    For benchmarks whose child run imports the packages under test from
    ``tree`` itself (``sys.path``) and needs the bench folder beside it.
    """
    out = subprocess.run(
        [sys.executable, str(script), "--child", "--tree", str(tree), *args],
        check=True, capture_output=True, text=True,
    )
    if out.stderr:
        print(out.stderr, file=sys.stderr, end="")
    return json.loads(out.stdout.splitlines()[-1])


def interleaved(
    repo: Path, reference: Path | None, repeat: int, measure: Callable[[Path], T]
) -> dict[str, list[T]]:
    """``measure`` of this checkout ("tree") and of ``reference`` if given, ``repeat``
    times each, alternating, so the machine's noise falls on both."""
    trees = {"tree": repo} | ({"reference": reference} if reference else {})
    results: dict[str, list[T]] = {name: [] for name in trees}
    for _ in range(repeat):
        for name, tree in trees.items():
            results[name].append(measure(tree))
    return results
