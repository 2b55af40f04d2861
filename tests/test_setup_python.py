"""scripts/setup's choice of the interpreter a new .venv is made with
(``--which-python``, which changes nothing): ``$PYTHON`` when set, else the
system's ``/usr/bin/python3.11``, else the first Python >= 3.11 on PATH."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.presence_server import REPO

SETUP = REPO / "scripts" / "setup"
SYSTEM = Path("/usr/bin/python3.11")


def which_python(**env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != "PYTHON"}
    environment.update(env)
    return subprocess.run(
        ["bash", str(SETUP), "--which-python"],
        env=environment, capture_output=True, text=True, timeout=60,
    )


def venv_capable(python: Path) -> bool:
    check = "import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))"
    return subprocess.run([str(python), "-c", check], capture_output=True).returncode == 0


def test_python_set_wins() -> None:
    done = which_python(PYTHON=sys.executable)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == sys.executable


def test_an_unusable_python_is_one_line_and_no_fallback() -> None:
    done = which_python(PYTHON="/nonexistent/python3")
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.strip() == (
        "setup: error: no Python >= 3.11 with the venv module found "
        "at PYTHON=/nonexistent/python3"
    )


def test_the_system_interpreter_comes_before_path() -> None:
    if not (SYSTEM.exists() and venv_capable(SYSTEM)):
        pytest.skip("no /usr/bin/python3.11 able to make a venv here")
    # A PATH whose first python3.11 is another one (this interpreter's): the
    # system's is still chosen.
    shim = Path(sys.executable).parent
    done = which_python(PATH=f"{shim}:{os.environ.get('PATH', '')}")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(SYSTEM)


def test_usage_names_the_option() -> None:
    done = subprocess.run(["bash", str(SETUP), "--bogus"], capture_output=True, text=True)
    assert done.returncode == 2
    assert "--which-python" in done.stderr
