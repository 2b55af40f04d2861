"""A private instance of the bundled presence server for the test suite.

Starts ``conf/kamailio/run`` on a free loopback port with its own temporary
directory (database, PID file, log), waits until it answers OPTIONS over
UDP, and stops it by PID. Parallel test runs never share a port or a file.

Optionally with TLS (SIP over TLS and XCAP over HTTPS on a port of its own,
certificates from :class:`tests.certificates.Certificates`, client
certificates required with ``mutual``) and with digest authentication of the
gateway (``auth=(user, password)``): the bundled server's modes.  With
``max_expires`` it grants no PUBLISH or SUBSCRIBE longer than that, so that
its clients refresh within a test.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, ClassVar

from tests.certificates import Certificates
from tests.rawsip import RawSipError, SipMessage, format_request, new_token

REPO = Path(__file__).resolve().parent.parent
RUN_SCRIPT = REPO / "conf" / "kamailio" / "run"

OPTIONS_TEMPLATE = """
    OPTIONS sip:{server} SIP/2.0
    Via: SIP/2.0/UDP {local};branch={branch};rport
    Max-Forwards: 70
    From: <sip:readiness@{local}>;tag={tag}
    To: <sip:{server}>
    Call-ID: {call_id}
    CSeq: 1 OPTIONS
"""


class PresenceServerError(Exception):
    """The presence server could not be started."""


def free_port(host: str) -> int:
    """A port free on ``host`` for both TCP and UDP right now."""
    (port,) = free_ports(host, 1)
    return port


def free_ports(host: str, count: int) -> list[int]:
    """``count`` distinct ports, each free on ``host`` for both TCP and UDP right now.

    The server needs the same number for both; the OS only promises a free
    port for one protocol, so take a TCP port and check UDP too.  Every port
    is held until all are chosen, so that no two are the same (the adapter
    refuses equal HTTP and SIP ports).
    """
    ports: list[int] = []
    with contextlib.ExitStack() as held:
        for _ in range(50 * count):
            tcp = held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            tcp.bind((host, 0))
            port: int = tcp.getsockname()[1]
            udp = held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
            try:
                udp.bind((host, port))
            except OSError:
                continue  # the TCP socket stays held: not offered again
            ports.append(port)
            if len(ports) == count:
                return ports
    raise PresenceServerError(f"no {count} ports free for both TCP and UDP on {host}")


class PresenceServer:
    """One Kamailio presence server in its own temporary directory.

    ``start()`` returns once the server answers SIP; ``stop()`` (TERM, then
    KILL) is safe to call more than once. Use as a context manager.
    """

    #: The servers running now, for a failing test's report (tests/integration/conftest.py).
    _running: ClassVar[set[PresenceServer]] = set()
    #: Where new servers make their directory (None: the system's temporary
    #: folder). The suite points it at a tmpfs (tests/conftest.py): SQLite
    #: fsyncs each commit while it holds the database's write lock, and on a
    #: loaded disk the server's other workers then meet "database is locked".
    scratch: ClassVar[Path | None] = None

    @classmethod
    def running(cls) -> list[PresenceServer]:
        return list(cls._running)

    def __init__(
        self,
        host: str = "127.0.0.1",
        keep_directory: bool = False,
        *,
        tls: bool = False,
        mutual: bool = False,
        auth: tuple[str, str] | None = None,
        max_expires: int | None = None,
    ) -> None:
        self.host = host
        self.port = 0
        self.tls_port = 0
        self.directory = Path(tempfile.mkdtemp(prefix="presence-server-", dir=self.scratch))
        #: The CA and certificates of its TLS port (None without TLS).
        self.certificates = Certificates(self.directory / "tls", host) if tls else None
        self.mutual = mutual
        self.auth = auth
        #: The longest lifetime it grants a PUBLISH or SUBSCRIBE (None: the bundled 86,400 s).
        self.max_expires = max_expires
        self.keep_directory = keep_directory
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def sip_uri(self) -> str:
        return f"sip:{self.host}:{self.port}"

    @property
    def sips_uri(self) -> str:
        """The server over TLS (RFC 5630: a sips: URI means a TLS hop)."""
        return f"sips:{self.host}:{self.tls_port}"

    @property
    def https_xcap_root(self) -> str:
        return f"https://{self.host}:{self.tls_port}/xcap-root"

    @property
    def sip_address(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def xcap_root(self) -> str:
        return f"http://{self.host}:{self.port}/xcap-root"

    @property
    def db_path(self) -> Path:
        return self.directory / "presence.sqlite"

    @property
    def log_path(self) -> Path:
        return self.directory / "kamailio.log"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def log_problems(self, lines: int = 30) -> str:
        """The log's last ERROR and WARNING lines: its INFO lines, one per NOTIFY
        sent, would bury them in a plain tail."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        problems = [
            line for line in text.splitlines() if " ERROR: " in line or " WARNING: " in line
        ]
        return "\n".join(problems[-lines:]) or "(none)"

    def start(self, timeout: float = 10.0) -> None:
        if self.process is not None:
            raise PresenceServerError("already started")
        try:
            self._start(timeout)
        except BaseException:
            self.stop()  # also removes the temporary directory
            raise

    def _start(self, timeout: float) -> None:
        # The same lookup as conf/kamailio/run, to fail with a clear message.
        binary = os.environ.get("KAMAILIO") or shutil.which("kamailio") or "/usr/sbin/kamailio"
        if not os.access(binary, os.X_OK):
            raise PresenceServerError(
                f"kamailio is not installed ({binary} not found); scripts/test installs it "
                "(apt-get install kamailio kamailio-presence-modules "
                "kamailio-sqlite-modules sqlite3)"
            )
        # Between probing the port and kamailio binding it another process may
        # take it; kamailio then exits at once, so try again on a new port.
        for _attempt in range(3):
            self.port = free_port(self.host)
            while self.certificates is not None and self.tls_port in (0, self.port):
                self.tls_port = free_port(self.host)
            self._spawn()
            if self._wait_ready(timeout):
                return
            if self.process is not None and self.process.poll() is None:
                break  # running but silent: not a port race
            if "bind" not in self.log_tail(200).lower():
                break
            self._reap()
        tail = self.log_tail()
        raise PresenceServerError(
            f"presence server on {self.host}:{self.port} did not answer OPTIONS "
            f"within {timeout} s; last lines of {self.log_path}:\n{tail}"
        )

    def halt(self, timeout: float = 5.0) -> None:
        """Stop the server but keep its port and directory (database, log) for :meth:`resume`."""
        if self.process is None:
            raise PresenceServerError("not running")
        self._reap(timeout)

    def resume(self, timeout: float = 10.0) -> None:
        """Start the server again on the same port with the same database (after :meth:`halt`).

        Unlike :meth:`start` there is no other port to fall back to: clients
        that know this address are what is being tested.
        """
        if self.process is not None:
            raise PresenceServerError("already running")
        self._spawn()
        if not self._wait_ready(timeout):
            self._reap()
            raise PresenceServerError(
                f"presence server did not come back on {self.host}:{self.port} within "
                f"{timeout} s; last lines of {self.log_path}:\n{self.log_tail()}"
            )

    def restart(self, timeout: float = 10.0) -> None:
        """:meth:`halt` then :meth:`resume`: same port, same database, a new process."""
        self.halt()
        self.resume(timeout)

    def _spawn(self) -> None:
        self._log = open(self.log_path, "ab")  # closed in _reap
        modes: list[str] = []
        if self.certificates is not None:
            modes += [
                "--tls-port", str(self.tls_port),
                "--tls-cert", str(self.certificates.server_cert),
                "--tls-key", str(self.certificates.server_key),
            ]
            if self.mutual:
                modes += ["--tls-ca", str(self.certificates.ca_pem)]
        if self.auth is not None:
            modes += ["--auth", ":".join(self.auth)]
        if self.max_expires is not None:
            modes += ["--max-expires", str(self.max_expires)]
        self.process = subprocess.Popen(
            [
                str(RUN_SCRIPT),
                "--dir",
                str(self.directory),
                "--listen",
                self.host,
                "--port",
                str(self.port),
                *modes,
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
        )
        self._running.add(self)

    def _wait_ready(self, timeout: float) -> bool:
        """Poll with OPTIONS until a 200 comes back, the process dies or time is up."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((self.host, 0))
            local = "{}:{}".format(*sock.getsockname())
            call_id = new_token()
            request = format_request(
                OPTIONS_TEMPLATE,
                server=f"{self.host}:{self.port}",
                local=local,
                tag=new_token(),
                call_id=call_id,
            )
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    return False
                sock.sendto(request, (self.host, self.port))
                sock.settimeout(0.05)
                try:
                    data = sock.recv(65535)
                except (TimeoutError, ConnectionRefusedError):
                    continue
                try:
                    reply = SipMessage.parse(data)
                except RawSipError:
                    continue
                if reply.is_response and reply.call_id == call_id and reply.status == 200:
                    return True
        return False

    def stop(self, timeout: float = 5.0) -> None:
        if self.process is not None and self.process.poll() is not None:
            # It died under the tests (a crash of Kamailio's, say): its log
            # goes with the directory below, so it is told here.
            print(f"presence server {self.directory}: exited with {self.process.returncode} "
                  f"before it was stopped; its log ends:\n{self.log_tail(80)}", file=sys.stderr)
        if self.process is not None:
            self._reap(timeout)
        if not self.keep_directory:
            shutil.rmtree(self.directory, ignore_errors=True)

    def _reap(self, timeout: float = 5.0) -> None:
        """TERM the server (run exec'd kamailio, so this is its main PID), then KILL."""
        process, self.process = self.process, None
        self._running.discard(self)
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                # Kamailio's workers are in the main process's group only if
                # it made one; kill the known PIDs instead of a group.
                self._kill_children(process.pid)
                process.kill()
                process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def _kill_children(self, pid: int) -> None:
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            return
        for child in children:
            try:
                os.kill(int(child), signal.SIGKILL)
            except ProcessLookupError:
                pass

    def __enter__(self) -> PresenceServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
