import logging
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from adapter.cli import LOG_FORMAT, LogFormatter, main

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
    assert result.stderr == 'adapter.toml: sip.transport: "sctp" must be "udp", "tcp" or "tls"\n'


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


# -- the store file at start-up ----------------------------------------------------------
#
# A store that cannot be used stops start-up with one line naming store.path; a
# missing one is created (a first start needs no preparation). Either way the
# adapter never starts over an existing file it cannot read.


def with_store(tmp_path: Path, store: Path) -> Path:
    """The bundled configuration on free ports, with its store at ``store``."""
    from tests.presence_server import free_ports

    http, sip, server = free_ports("127.0.0.1", 3)
    text = (REPO / "conf/adapter.toml").read_text(encoding="utf-8")
    replacements = {
        "port = 8080": f"port = {http}",
        'listen = "127.0.0.1:5080"': f'listen = "127.0.0.1:{sip}"',
        # Nobody's presence server: the bundled port may be another run's.
        'server = "sip:127.0.0.1:5070"': f'server = "sip:127.0.0.1:{server}"',
        'path = "var/adapter.sqlite"': f'path = "{store}"',
    }
    for old, new in replacements.items():
        assert old in text
        text = text.replace(old, new, 1)
    path = tmp_path / "adapter.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "content",
    [bytes(range(256)) * 16, b"[store]\npath = 'this is a text file'\n" * 40],
    ids=["random bytes", "text file"],
)
def test_a_corrupt_store_is_one_line_naming_store_path(tmp_path: Path, content: bytes) -> None:
    store = tmp_path / "adapter.sqlite"
    store.write_bytes(content)
    with_store(tmp_path, store)
    result = run("serve", "--config", "adapter.toml", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == f"adapter.toml: store.path: {store}: file is not a database\n"
    assert result.stdout == ""
    assert store.read_bytes() == content  # left as it was, for whoever looks into it


def test_a_store_of_a_newer_schema_version_is_one_line(tmp_path: Path) -> None:
    import sqlite3

    store = tmp_path / "adapter.sqlite"
    with sqlite3.connect(store) as db:
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) STRICT")
        db.execute("PRAGMA user_version = 7")
    db.close()
    with_store(tmp_path, store)
    result = run("serve", "--config", "adapter.toml", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == (
        f"adapter.toml: store.path: {store}: store schema version 7 is newer than 2, the "
        "newest this adapter supports; run the adapter version that wrote it, or a newer one\n"
    )


def test_a_postgresql_store_that_cannot_be_reached_is_one_line_naming_store_url(
    tmp_path: Path,
) -> None:
    from tests.presence_server import free_port

    port = free_port("127.0.0.1")  # nobody listens there
    config = with_store(tmp_path, tmp_path / "unused.sqlite")
    url = f"postgresql://adapter:pg-secret@127.0.0.1:{port}/presence"
    text = config.read_text(encoding="utf-8")
    config.write_text(text.replace(f'path = "{tmp_path / "unused.sqlite"}"', f'url = "{url}"'))
    result = run("serve", "--config", "adapter.toml", cwd=tmp_path)
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith(
        f"adapter.toml: store.url: postgresql://adapter@127.0.0.1:{port}/presence: "
    )
    assert "refused" in result.stderr and "pg-secret" not in result.stderr
    assert "Traceback" not in result.stderr


def test_a_store_path_that_cannot_be_created_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "var").write_text("a file where the store's folder should be")
    store = tmp_path / "var" / "adapter.sqlite"
    with_store(tmp_path, store)
    result = run("serve", "--config", "adapter.toml", cwd=tmp_path)
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith(f"adapter.toml: store.path: {store}: ")
    assert "Traceback" not in result.stderr


def test_a_missing_store_is_created_and_the_adapter_serves(tmp_path: Path) -> None:
    import signal
    import sqlite3
    import time
    import urllib.request

    store = tmp_path / "state" / "adapter.sqlite"
    config = with_store(tmp_path, store)
    port = next(
        int(line.split("=")[1])
        for line in config.read_text().splitlines()
        if line.startswith("port = ")
    )
    assert SCRIPT is not None
    process = subprocess.Popen(
        [SCRIPT, "serve", "--config", "adapter.toml", "--log-level", "warning"],
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        status = None
        for _ in range(200):  # up to 10 s
            # Not /health: with no presence server behind it, that waits for its probe.
            url = f"http://127.0.0.1:{port}/openapi.json"
            try:
                with urllib.request.urlopen(url, timeout=2) as answer:
                    status = answer.status
            except OSError:  # not listening yet
                if process.poll() is not None:
                    break
                time.sleep(0.05)
                continue
            break
        assert status == 200, process.poll()
        assert store.is_file()
    finally:
        process.send_signal(signal.SIGINT)
        try:
            _, stderr = process.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            raise
    assert "Traceback" not in stderr
    with sqlite3.connect(store) as db:
        assert db.execute("PRAGMA user_version").fetchall() == [(2,)]
    db.close()


# -- the log line ---------------------------------------------------------------------


@pytest.mark.parametrize("created", [1_764_422_318.0, 1_764_422_318.0015, 1_764_422_318.999])
def test_the_log_formatter_writes_what_the_standard_one_does(created: float) -> None:
    ours, standard = LogFormatter(), logging.Formatter(LOG_FORMAT)
    for when in (created, created + 0.25, created + 1.0, created):  # cached, then not
        record = logging.LogRecord("adapter.access", logging.INFO, __file__, 1, "%s", ("x",), None)
        record.created, record.msecs = when, (when - int(when)) * 1000
        assert ours.format(record) == standard.format(record)
    assert ours.formatTime(record, "%H") == standard.formatTime(record, "%H")


def test_hash_password_prints_a_hash_of_one_line_of_stdin(tmp_path: Path) -> None:
    from adapter.passwords import verify_password

    assert SCRIPT is not None
    done = subprocess.run(
        [SCRIPT, "hash-password"], input="s3cret word\n", capture_output=True, text=True,
        timeout=30, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    (digest,) = done.stdout.splitlines()
    assert digest.startswith("$argon2id$")
    assert verify_password(digest, "s3cret word")
    assert not verify_password(digest, "s3cret word\n")
    empty = subprocess.run(
        [SCRIPT, "hash-password"], input="\n", capture_output=True, text=True, timeout=30,
        cwd=tmp_path,
    )
    assert (empty.returncode, empty.stdout) == (2, "")
    assert empty.stderr.strip() == "presence-adapter: empty password"


# -- check-config and --version ------------------------------------------------------


def test_version_prints_the_package_version(tmp_path: Path) -> None:
    from importlib.metadata import version

    result = run("--version", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"presence-adapter {version('presence-adapter')}\n"


def test_check_config_accepts_the_bundled_file_binding_nothing_creating_nothing(
    tmp_path: Path,
) -> None:
    # The HTTP port is taken (as by a running adapter) and the store does not exist:
    # check-config binds no port and opens no store, so neither matters to it.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        bundled_with(tmp_path, "port = 8080", f"port = {port}")
        result = run("check-config", "--config", "adapter.toml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "adapter.toml: ok\n"
    assert result.stderr == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter.toml"]  # no var/, no store


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ('server = "sip:127.0.0.1:5070"', 'server = "foo"'),
        ('transport = "udp"', 'transport = "sctp"'),
        ("[store]", '[log]\nformat = "xml"\n\n[store]'),
        ("[store]", '[log]\nlevel = "loud"\n\n[store]'),
        ("[store]", "[metrics]\ntoken = 3\n\n[store]"),
    ],
)
def test_check_config_refuses_with_the_line_serve_gives(tmp_path: Path, old: str, new: str) -> None:
    bundled_with(tmp_path, old, new)
    checked = run("check-config", "--config", "adapter.toml", cwd=tmp_path)
    served = run("serve", "--config", "adapter.toml", cwd=tmp_path)
    assert checked.returncode == served.returncode == 2
    assert checked.stderr == served.stderr
    assert checked.stderr.count("\n") == 1 and checked.stderr.startswith("adapter.toml: ")
    assert checked.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter.toml"]


def test_log_level_flag_wins_over_the_file(tmp_path: Path) -> None:
    from adapter.cli import _configure_logging
    from adapter.config import load_config

    path = bundled_with(tmp_path, "[store]", '[log]\nlevel = "error"\n\n[store]')
    config = load_config(path, cwd=tmp_path)
    root = logging.getLogger()
    saved = root.level
    handler = logging.StreamHandler()
    try:
        assert _configure_logging(handler, config, None) == "error"
        assert root.level == logging.ERROR
        assert _configure_logging(handler, config, "debug") == "debug"
        assert root.level == logging.DEBUG
        assert logging.getLogger("sip.trace").level == logging.WARNING  # off by default
        assert logging.getLogger("httpx").level == logging.DEBUG
        # At INFO, no line per XCAP request from httpx.
        assert _configure_logging(handler, config, "info") == "info"
        assert not logging.getLogger("httpx").isEnabledFor(logging.INFO)
    finally:
        root.setLevel(saved)
        logging.getLogger("httpx").setLevel(logging.NOTSET)
