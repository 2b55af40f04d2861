"""The ``presence-adapter`` command."""

from __future__ import annotations

import argparse
import gc
import getpass
import logging
import math
import ssl
import sys
import time
from collections.abc import Sequence
from typing import Any

from adapter.config import LOG_LEVELS, Config, ConfigError, check_ports, load_config

__all__ = ["main"]

#: Seconds uvicorn waits for open requests on shutdown. Bayeux long-polls are held
#: for tens of seconds; Ctrl-C must not wait for them.
GRACEFUL_SHUTDOWN = 3

EXIT_USAGE = 2  # bad arguments or bad configuration, as argparse does
STARTUP_FAILURE = 3  # the server could not start (uvicorn's own code for it)

#: Garbage-collector thresholds while serving (CPython's default: 700, 10, 10).
GC_THRESHOLDS = (20_000, 20, 100)
#: Seconds an idle keep-alive HTTP connection is kept open, at least (uvicorn's
#: default is 5).  A client told to come back after ``Retry-After`` seconds (a
#: full SIP window: half of ``[sip] request_timeout``; an unwritable store: 5 s)
#: that sends again on the same connection must not meet its close: a POST
#: sent as the server closes is lost, and not sent again by the client
#: (RFC 9112 §9.3.1: a non-idempotent request is not retried by itself).
KEEP_ALIVE = 30


def keep_alive(config: Config) -> int:
    """uvicorn's ``timeout_keep_alive``: KEEP_ALIVE, longer with a longer request_timeout."""
    return max(KEEP_ALIVE, 2 * math.ceil(config.sip.request_timeout))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="presence-adapter",
        description="Gateway between the OCSG RESTful Presence API and SIP SIMPLE presence.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser("serve", help="serve the REST API and the Bayeux server")
    serve.add_argument("--config", required=True, metavar="PATH", help="the adapter's TOML file")
    serve.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        default=None,
        help="overrides [log] level of the configuration (default there: info)",
    )
    check = commands.add_parser(
        "check-config",
        help="read and check a configuration as serve does, then exit (0: usable, 2: not); "
        "binds no port and creates no store",
    )
    check.add_argument("--config", required=True, metavar="PATH", help="the adapter's TOML file")
    commands.add_parser(
        "hash-password",
        help="print an Argon2 hash of a password read from standard input, for "
        "[[accounts]] password_hash",
    )
    return parser


def version() -> str:
    """The installed package's version (its metadata, from pyproject.toml)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as package_version

    try:
        return package_version("presence-adapter")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _hash_password() -> int:
    from adapter.passwords import hash_password

    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            print("presence-adapter: the passwords differ", file=sys.stderr)
            return EXIT_USAGE
    else:
        # One line: `echo secret | presence-adapter hash-password` must not hash the newline.
        password = sys.stdin.readline().removesuffix("\n").removesuffix("\r")
    if not password:
        print("presence-adapter: empty password", file=sys.stderr)
        return EXIT_USAGE
    print(hash_password(password))
    return 0


def _serve(config: Config, log_level: str) -> int:
    import uvicorn

    # make_app wires the SIP user agent, the store and the services into the app
    # from adapter.app.create_app; imported here so that configuration errors are
    # reported before any of that is loaded.
    from adapter.app import make_app
    from adapter.cluster.nodes import NameInUse
    from adapter.shutdown import AdapterServer
    from adapter.store import StoreError

    try:
        app = make_app(config)
    except StoreError as exc:
        print(f"{config.source}: {config.store.key}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except NameInUse as exc:
        print(f"{config.source}: cluster.node: {exc}", file=sys.stderr)
        return EXIT_USAGE
    # Many long-lived objects (subscriptions, transactions, sessions) beside many
    # short-lived ones per message: CPython's default thresholds walk the
    # long-lived ones over and over, in pauses that hold NOTIFYs back.  What
    # exists at start is frozen out of collection, the young generation
    # collected less often.
    gc.freeze()
    gc.set_threshold(GC_THRESHOLDS[0], GC_THRESHOLDS[1], GC_THRESHOLDS[2])
    server_config = uvicorn.Config(
        app,
        host=config.http.host,
        port=config.http.port,
        log_level=log_level,
        # uvicorn's own lines go to the root logger, through the adapter's
        # formatter (text or json), rather than through a handler of its own.
        log_config=None,
        # The app writes the access log itself, when [http] access_log says
        # so (adapter.app._AccessLog, at about half uvicorn's cost).
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN,
        timeout_keep_alive=keep_alive(config),
        # Bayeux frames are small JSON; compressing each one costs more CPU
        # than it saves on the networks an adapter serves.
        ws_per_message_deflate=False,
        **_tls_options(config),
    )
    # Drains on SIGTERM before uvicorn stops (adapter.shutdown).
    server = AdapterServer(server_config, app.state.drain)
    try:
        server.run()
    except KeyboardInterrupt:
        pass  # Ctrl-C: stopped as for SIGTERM; uvicorn.run ends the same way
    if not server.started:
        return STARTUP_FAILURE  # the lifespan failed; uvicorn logged why
    return 0


def _tls_options(config: Config) -> dict[str, Any]:
    """uvicorn's HTTPS settings; the files were loaded once already by load_config."""
    http = config.http
    if http.tls_cert is None:
        return {}
    options: dict[str, Any] = {"ssl_certfile": http.tls_cert, "ssl_keyfile": http.tls_key}
    if http.tls_client_ca is not None:
        options.update(ssl_ca_certs=http.tls_client_ca, ssl_cert_reqs=ssl.CERT_REQUIRED)
    return options


#: The adapter's log line: none of the process, the thread or the caller's file.
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _lean_log_records() -> None:
    """Stop every log record gathering what LOG_FORMAT never prints.

    The caller's file and line (a walk up the stack), the thread, the
    process id (a system call): the switches of the Logging HOWTO's
    "Optimization" section: a noticeable share of every access-log line.
    """
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


class LogFormatter(logging.Formatter):
    """LOG_FORMAT with the date and time written once a second.

    The same text as :class:`logging.Formatter`'s (local time,
    ``2026-11-29 13:18:38,123``) for less work per line: a busy adapter
    writes thousands a second.
    """

    def __init__(self) -> None:
        super().__init__(LOG_FORMAT)
        self._second: tuple[int, str] = (-1, "")  # replaced whole: threads log too

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        second, text = self._second
        if second != int(record.created):
            second = int(record.created)
            text = time.strftime(self.default_time_format, self.converter(record.created))
            self._second = (second, text)
        return f"{text},{int(record.msecs):03d}"  # logging.Formatter.default_msec_format


def _configure_logging(handler: logging.Handler, config: Config, given: str | None) -> str:
    """Apply ``[log]`` to the root logger; returns the level in force.

    ``--log-level`` on the command line, when given, wins over ``[log] level``.
    """
    level = given or config.log.level or "info"
    if config.log.format == "json":
        from adapter.logs import JsonFormatter

        handler.setFormatter(JsonFormatter())
    logging.getLogger().setLevel(level.upper())
    # sip.trace is off unless asked for: at INFO it would otherwise follow the root level.
    logging.getLogger("sip.trace").setLevel(
        logging.INFO if config.log.sip_trace else logging.WARNING
    )
    # httpx writes a line per request at INFO: one per pres-rules read, which
    # the XCAP client (adapter.xcap) already logs when it fails.  Shown at DEBUG.
    logging.getLogger("httpx").setLevel(
        logging.DEBUG if level.upper() == "DEBUG" else logging.WARNING
    )
    return level


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "hash-password":
        return _hash_password()
    given_level: str | None = getattr(args, "log_level", None)  # serve's option only
    handler = logging.StreamHandler()
    handler.setFormatter(LogFormatter())
    logging.basicConfig(level=(given_level or "info").upper(), handlers=[handler])
    _lean_log_records()
    try:
        config = load_config(args.config)
        if args.command == "check-config":
            # The same checks as serve's, short of binding the ports (a running
            # adapter holds them) and opening the store (it would create it).
            print(f"{config.source}: ok")
            return 0
        check_ports(config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    level = _configure_logging(handler, config, given_level)
    return _serve(config, level)
