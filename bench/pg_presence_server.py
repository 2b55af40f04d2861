"""A private PostgreSQL-backed presence server, for load benchmarks.

    .venv/bin/python bench/pg_presence_server.py      # start one, print its addresses, Ctrl-C

The bundled presence server keeps its state in sqlite, which refuses about
60 % of *concurrent* PUBLISHes with 500 "database is locked" (docs/kamailio.md).
Load benchmarks use the same configuration on PostgreSQL instead
(``conf/kamailio/run --db-url``, kamailio.cfg's ``WITH_POSTGRES``):

* :class:`PostgresCluster` — a throw-away cluster of its own: ``initdb`` in a
  temporary directory, ``pg_ctl start`` on a free loopback port (TCP only, no
  Unix socket, so it never meets a system cluster), one database holding
  Kamailio's standard and presence tables; stopped and removed by ``stop()``.
* :class:`PgPresenceServer` — ``tests.presence_server.PresenceServer`` (free
  port, own directory, ready when it answers OPTIONS) started with
  ``--db-url`` of such a cluster and a larger shared memory pool.
* :func:`pg_presence_server` — both, as one context manager.

Needs the Debian packages ``postgresql`` and ``kamailio-postgres-modules``;
:func:`ensure_packages` installs them with apt-get when they are missing (as
root) or says which to install.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # tests.presence_server is not an installed package

from tests.presence_server import (  # noqa: E402
    RUN_SCRIPT,
    PresenceServer,
    PresenceServerError,
    free_port,
)

__all__ = [
    "PACKAGES",
    "PgPresenceServer",
    "PostgresCluster",
    "ensure_packages",
    "pg_presence_server",
]

PACKAGES = ("postgresql", "kamailio-postgres-modules")
SCHEMA_DIR = Path("/usr/share/kamailio/postgres")
SCHEMA_FILES = ("standard-create.sql", "presence-create.sql")
DATABASE = "kamailio"
SUPERUSER = "postgres"
OS_USER = "postgres"  # initdb and postgres refuse to run as root

#: Kamailio's shared memory for load runs, MB.  tm keeps each finished
#: transaction for 5 s in shared memory; the bundled 64 MB run out past about
#: 1,000 PUBLISH/s (bench/sip_publish.py, docs/benchmarks-history.md).
LOAD_SHM_MB = 1024


def _postgres_bin() -> Path | None:
    """The folder of initdb/pg_ctl (Debian keeps them out of PATH)."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return versions[-1].parent if versions else None


def _kamailio_module(name: str) -> bool:
    return any(Path("/usr/lib").glob(f"*/kamailio/modules/{name}")) or any(
        Path("/usr/lib/kamailio/modules").glob(name)
    )


def missing_packages() -> list[str]:
    missing = []
    if _postgres_bin() is None or shutil.which("psql") is None:
        missing.append("postgresql")
    if not _kamailio_module("db_postgres.so") or not all(
        (SCHEMA_DIR / f).is_file() for f in SCHEMA_FILES
    ):
        missing.append("kamailio-postgres-modules")
    return missing


def ensure_packages() -> None:
    """Install PostgreSQL and Kamailio's PostgreSQL module when missing.

    Raises PresenceServerError when they are missing and cannot be installed
    here (not root, or apt-get failed).
    """
    missing = missing_packages()
    if not missing:
        return
    command = ["apt-get", "install", "-y", "--no-install-recommends", *missing]
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise PresenceServerError(
            f"missing Debian packages {' '.join(missing)}; install them first: "
            f"sudo {' '.join(command)}"
        )
    print(
        f"installing {' '.join(missing)} (needed for a PostgreSQL-backed presence server): "
        f"{' '.join(command)}",
        file=sys.stderr,
        flush=True,
    )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0 or missing_packages():
        raise PresenceServerError(
            f"could not install {' '.join(missing)} (apt-get exit {done.returncode}):\n"
            + "\n".join(done.stderr.splitlines()[-10:])
        )


class PostgresCluster:
    """One PostgreSQL cluster in a temporary directory, on a free loopback port."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self.directory: Path | None = None
        self._bin: Path | None = None
        self._running = False

    @property
    def data(self) -> Path:
        assert self.directory is not None
        return self.directory / "data"

    @property
    def log_path(self) -> Path:
        assert self.directory is not None
        return self.directory / "postgres.log"

    @property
    def pid(self) -> int | None:
        """The postmaster's PID while running."""
        if not self._running:
            return None
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    @property
    def db_url(self) -> str:
        """The database URL as Kamailio's db_postgres reads it."""
        return f"postgres://{SUPERUSER}@{self.host}:{self.port}/{DATABASE}"

    def _as_owner(self, argv: list[str]) -> list[str]:
        """Run the PostgreSQL tools as the ``postgres`` user when we are root."""
        if os.geteuid() == 0:
            return ["runuser", "-u", OS_USER, "--", *argv]
        return argv

    def _run(self, argv: list[str], what: str) -> None:
        done = subprocess.run(
            self._as_owner(argv), capture_output=True, text=True, check=False,
            stdin=subprocess.DEVNULL,
        )
        if done.returncode != 0:
            raise PresenceServerError(
                f"PostgreSQL: {what} failed (exit {done.returncode}):\n"
                f"{done.stdout[-2000:]}{done.stderr[-2000:]}"
            )

    def start(self, timeout: float = 30.0) -> None:
        self._bin = _postgres_bin()
        if self._bin is None:
            raise PresenceServerError("PostgreSQL is not installed (initdb not found)")
        self.directory = Path(tempfile.mkdtemp(prefix="pg-presence-"))
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise

    def _start(self, timeout: float) -> None:
        assert self._bin is not None and self.directory is not None
        if os.geteuid() == 0:
            shutil.chown(self.directory, OS_USER, OS_USER)
        # trust on loopback only: a throw-away cluster for one run, no password.
        self._run(
            [
                str(self._bin / "initdb"), "-D", str(self.data), "-U", SUPERUSER,
                "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync",
            ],
            "initdb",
        )
        for _attempt in range(3):
            self.port = free_port(self.host)
            options = " ".join(
                [
                    f"-c listen_addresses={self.host}",
                    f"-p {self.port}",
                    # No Unix socket: nothing shared with a system cluster.
                    "-c unix_socket_directories=''",
                    # The backend is the floor both senders are measured
                    # against, not what is measured: a commit need not wait
                    # for the disk (a crash loses the last writes of a
                    # throw-away database), and the shared disk's noise stays
                    # out of the figures.
                    "-c synchronous_commit=off",
                    "-c max_connections=200",
                ]
            )
            done = subprocess.run(
                self._as_owner(
                    [
                        str(self._bin / "pg_ctl"), "start", "-D", str(self.data),
                        "-l", str(self.log_path), "-w", "-t", str(int(timeout)),
                        "-o", options,
                    ]
                ),
                capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL,
            )
            if done.returncode == 0:
                self._running = True
                break
            log = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
            if "could not bind" not in log and "in use" not in log:
                raise PresenceServerError(
                    f"PostgreSQL did not start (exit {done.returncode}):\n"
                    f"{done.stderr[-2000:]}\n{log[-2000:]}"
                )
        else:
            raise PresenceServerError("PostgreSQL: no free port after 3 attempts")
        psql = shutil.which("psql") or str(self._bin / "psql")
        connect = ["-h", self.host, "-p", str(self.port), "-U", SUPERUSER]
        self._run(
            [psql, *connect, "-d", "postgres", "-q", "-v", "ON_ERROR_STOP=1",
             "-c", f"CREATE DATABASE {DATABASE}"],
            "CREATE DATABASE",
        )
        schema = [arg for f in SCHEMA_FILES for arg in ("-f", str(SCHEMA_DIR / f))]
        self._run(
            [psql, *connect, "-d", DATABASE, "-q", "-v", "ON_ERROR_STOP=1", *schema],
            "loading Kamailio's schema",
        )

    def stop(self) -> None:
        """Stop the server (fast shutdown) and remove the directory; safe to repeat."""
        if self._running and self._bin is not None:
            self._running = False
            done = subprocess.run(
                self._as_owner(
                    [str(self._bin / "pg_ctl"), "stop", "-D", str(self.data), "-m", "fast",
                     "-w", "-t", "20"]
                ),
                capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL,
            )
            if done.returncode != 0:
                self._kill_postmaster()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    def _kill_postmaster(self) -> None:
        """pg_ctl could not stop it: end the postmaster we started by its PID."""
        try:
            pid = int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)
        time.sleep(0.2)

    def __enter__(self) -> PostgresCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class PgPresenceServer(PresenceServer):
    """The bundled presence server on the PostgreSQL database ``db_url``."""

    def __init__(
        self,
        db_url: str,
        host: str = "127.0.0.1",
        shm_mb: int = LOAD_SHM_MB,
        cluster: PostgresCluster | None = None,
    ) -> None:
        super().__init__(host)
        self.db_url = db_url
        self.shm_mb = shm_mb
        #: The cluster behind ``db_url`` when this harness started it.
        self.cluster = cluster

    def _spawn(self) -> None:
        self._log = open(self.log_path, "ab")  # closed by PresenceServer._reap
        self.process = subprocess.Popen(
            [
                str(RUN_SCRIPT),
                "--dir", str(self.directory),
                "--listen", self.host,
                "--port", str(self.port),
                "--db-url", self.db_url,
                "--shm", str(self.shm_mb),
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
        )


@contextlib.contextmanager
def pg_presence_server(
    host: str = "127.0.0.1", shm_mb: int = LOAD_SHM_MB
) -> Iterator[PgPresenceServer]:
    """A PostgreSQL cluster and a presence server on it, both stopped on exit."""
    ensure_packages()
    with PostgresCluster(host) as cluster:
        server = PgPresenceServer(cluster.db_url, host, shm_mb, cluster)
        with server:
            yield server


def main() -> int:
    with pg_presence_server() as server:
        print(f"presence server {server.sip_uri} (pid {server.pid}), XCAP {server.xcap_root}")
        print(f"database {server.db_url}; log {server.log_path}; Ctrl-C stops both")
        with contextlib.suppress(KeyboardInterrupt):
            while server.process is not None and server.process.poll() is None:
                time.sleep(0.5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
