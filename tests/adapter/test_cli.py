import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from adapter.cli import main

REPO = Path(__file__).resolve().parents[2]
SCRIPT = shutil.which("presence-adapter", path=str(Path(sys.executable).parent))


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert SCRIPT is not None, "the presence-adapter console script is not installed"
    return subprocess.run(
        [SCRIPT, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )


def bundled_with(tmp_path: Path, old: str, new: str) -> Path:
    text = (REPO / "conf/adapter.toml").read_text(encoding="utf-8")
    assert old in text
    path = tmp_path / "adapter.toml"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    return path


def test_bad_config_is_one_line_on_stderr_and_exit_2(tmp_path: Path) -> None:
    bundled_with(tmp_path, 'server = "sip:127.0.0.1:5070"', 'server = "foo"')
    result = run("serve", "--config", "adapter.toml", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == 'adapter.toml: sip.server: "foo" is not a SIP URI\n'
    assert result.stdout == ""


def test_missing_config_file(tmp_path: Path) -> None:
    result = run("serve", "--config", "absent.toml", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == "absent.toml: cannot read: No such file or directory\n"


def test_port_in_use_is_reported_before_serving(tmp_path: Path) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        bundled_with(tmp_path, "port = 8080", f"port = {port}")
        result = run("serve", "--config", "adapter.toml", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == f"adapter.toml: http.port: 127.0.0.1:{port} (TCP) is already in use\n"


def test_python_dash_m_is_the_same_command(tmp_path: Path) -> None:
    bundled_with(tmp_path, 'transport = "udp"', 'transport = "sctp"')
    result = subprocess.run(
        [sys.executable, "-m", "adapter", "serve", "--config", "adapter.toml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 2
    assert result.stderr == 'adapter.toml: sip.transport: "sctp" must be "udp" or "tcp"\n'


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        ([], "the following arguments are required: COMMAND"),
        (["serve"], "the following arguments are required: --config"),
        (["serve", "--config", "x.toml", "--log-level", "loud"], "invalid choice: 'loud'"),
        (["start", "--config", "x.toml"], "invalid choice: 'start'"),
    ],
)
def test_bad_arguments_exit_2_with_usage(argv: list[str], complaint: str, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: presence-adapter")
    assert complaint in err


def test_unknown_keys_are_logged_once_and_tolerated(tmp_path: Path) -> None:
    # The port is taken so that the run stops right after loading the configuration.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        bundled_with(tmp_path, "port = 8080", f"port = {port}\nworkers = 4")
        result = run("serve", "--config", "adapter.toml", cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 2
    assert lines[0].endswith(
        "WARNING adapter.config: adapter.toml: unknown keys ignored: http.workers"
    )
    assert lines[1] == f"adapter.toml: http.port: 127.0.0.1:{port} (TCP) is already in use"
