"""sd_notify: the datagram systemd reads, and nothing without $NOTIFY_SOCKET."""

import os
import socket
from pathlib import Path

import pytest

from adapter.shutdown import sd_notify


def test_nothing_is_sent_without_notify_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sd_notify("READY=1") is False


def test_ready_reaches_a_socket_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert sd_notify("READY=1") is True
        assert systemd.recv(100) == b"READY=1"


def test_an_abstract_socket_name_starts_with_at(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"presence-adapter-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sd_notify("STOPPING=1") is True
        assert systemd.recv(100) == b"STOPPING=1"


def test_a_socket_that_is_gone_is_a_warning_not_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "absent"))
    assert sd_notify("READY=1") is False
