"""A private PostgreSQL-backed presence server, for load benchmarks.

    .venv/bin/python bench/pg_presence_server.py      # start one, print its addresses, Ctrl-C

The bundled presence server keeps its state in sqlite, which refuses about
60 % of *concurrent* PUBLISHes with 500 "database is locked" (docs/kamailio.md).
Load benchmarks use the same configuration on PostgreSQL instead
(``conf/kamailio/run --db-url``, kamailio.cfg's ``WITH_POSTGRES``):

* :class:`PostgresCluster` — a throw-away cluster of its own
  (tests/postgres_server.py: ``initdb`` in a temporary directory, a free
  loopback port, TCP only), one database holding Kamailio's standard and
  presence tables; stopped and removed by ``stop()``.
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
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # tests.presence_server is not an installed package

from tests.postgres_server import PostgresCluster as _PrivateCluster  # noqa: E402
from tests.postgres_server import PostgresError, postgres_bin  # noqa: E402
from tests.presence_server import RUN_SCRIPT, PresenceServer, PresenceServerError  # noqa: E402

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

#: Kamailio's shared memory for load runs, MB.  tm keeps each finished
#: transaction for 5 s in shared memory; the bundled 64 MB run out past about
#: 1,000 PUBLISH/s (bench/sip_publish.py, docs/benchmarks-history.md).
LOAD_SHM_MB = 1024


def _kamailio_module(name: str) -> bool:
    return any(Path("/usr/lib").glob(f"*/kamailio/modules/{name}")) or any(
        Path("/usr/lib/kamailio/modules").glob(name)
    )


def missing_packages() -> list[str]:
    missing = []
    if postgres_bin() is None or shutil.which("psql") is None:
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


class PostgresCluster(_PrivateCluster):
    """A private cluster (tests/postgres_server.py) holding Kamailio's database."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        # The backend is the floor both senders are measured against, not
        # what is measured: a commit need not wait for the disk (a crash
        # loses the last writes of a throw-away database), and the shared
        # disk's noise stays out of the figures.
        super().__init__(host, settings={"synchronous_commit": "off"})

    @property
    def db_url(self) -> str:
        """The database URL as Kamailio's db_postgres reads it."""
        return self.url(DATABASE, scheme="postgres")

    def _start(self, timeout: float) -> None:
        try:
            super()._start(timeout)
            self.create_database(DATABASE)
            schema = [arg for f in SCHEMA_FILES for arg in ("-f", str(SCHEMA_DIR / f))]
            self.psql(DATABASE, *schema, what="loading Kamailio's schema")
        except PostgresError as exc:
            raise PresenceServerError(str(exc)) from None


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
