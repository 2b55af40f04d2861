"""What the adapter's process imports (its resident memory at start)."""

import subprocess
import sys


def test_the_adapter_does_not_import_httpx_command_line_client() -> None:
    # click, rich and pygments are installed beside httpx here (test tools
    # need them): httpx would import all three for its CLI, which the
    # adapter never runs.
    code = (
        "import sys, adapter.app, adapter.cluster.peer, httpx\n"
        "names = ('rich', 'pygments', 'httpx._main')\n"
        "print(sorted(m for m in names if sys.modules.get(m) is not None))\n"
        "print(callable(httpx.main))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split("\n")
    assert out[0] == "[]"
    assert out[1] == "True"  # httpx's stand-in that says the CLI is not installed
