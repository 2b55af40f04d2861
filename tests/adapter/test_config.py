import dataclasses
import json
import logging
import math
import re
import socket
import ssl
import types
import typing
from pathlib import Path
from typing import get_type_hints

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapter.app import sip_endpoint
from adapter.bayeux import BayeuxLimits
from adapter.config import (
    Account,
    BayeuxSettings,
    Config,
    ConfigError,
    HostPort,
    check_ports,
    load_config,
    sip_tls_context,
    xcap_tls_context,
)
from tests import presence_server
from tests.certificates import Certificates

REPO = Path(__file__).resolve().parents[2]

VALID = """\
[http]
host = "127.0.0.1"
port = 8080

[sip]
server = "sip:127.0.0.1:5070"
listen = "127.0.0.1:5080"
transport = "udp"

[xcap]
root = "http://127.0.0.1:5070/xcap-root/"

[store]
path = "var/adapter.sqlite"

[[accounts]]
id = "alice-app"
password = "alice-secret"
addresses = ["sip:alice@example.com", "sip:alice@work.example.com"]

[[accounts]]
id = "bob-app"
password = "bob-secret"
addresses = ["sip:bob@example.com"]
"""


SERVER = '"sip:127.0.0.1:5070"'
LISTEN = '"127.0.0.1:5080"'
ROOT = '"http://127.0.0.1:5070/xcap-root/"'
BOB = '["sip:bob@example.com"]'
BAD_ID = (
    "must be letters, digits and - _ ! ~ ( ) $ @ only (it names the Bayeux channel /bayeux/<id>)"
)
NOT_URL = "is not an http:// or https:// URL with a host"


def edited(old: str, new: str, text: str = VALID) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


@pytest.fixture
def write(tmp_path: Path):
    def write(text: str) -> Path:
        path = tmp_path / "adapter.toml"
        path.write_text(text, encoding="utf-8")
        return path

    return write


def error_line(path: Path, cwd: Path | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, cwd=cwd)
    line = str(info.value)
    assert "\n" not in line
    return line.removeprefix(f"{path}: ")


def test_valid_file_is_read_into_values(write, tmp_path: Path) -> None:
    config = load_config(write(VALID), cwd=tmp_path)
    assert config.http.host == "127.0.0.1" and config.http.port == 8080
    assert config.sip.server == "sip:127.0.0.1:5070"
    assert config.sip.listen == HostPort("127.0.0.1", 5080)
    assert config.sip.transport == "udp"
    assert config.xcap.root == "http://127.0.0.1:5070/xcap-root"  # trailing slash dropped
    assert config.xcap.username is None and config.xcap.password is None
    assert config.store.path == tmp_path / "var/adapter.sqlite"
    alice = config.account("alice-app")
    assert alice is not None
    assert alice.default_address == "sip:alice@example.com"
    assert alice.may_act_as("sip:alice@work.example.com")
    assert not alice.may_act_as("sip:bob@example.com")
    assert config.account("carol-app") is None
    assert config.unknown_keys == ()
    assert config.http.access_log is True
    assert config.store.synchronous == "normal"


def test_the_sip_window_and_its_share_for_refreshes_are_read(write) -> None:
    text = edited('transport = "udp"\n', 'transport = "udp"\nwindow = 50\nwindow_kept = 5\n')
    config = load_config(write(text))
    assert (config.sip.window, config.sip.window_kept) == (50, 5)
    window = sip_endpoint(config)._window
    assert window is not None and (window.size, window.kept) == (50, 5)
    assert load_config(write(VALID)).sip.window_kept == 32


def test_access_log_and_store_synchronous_are_read(write) -> None:
    text = edited("port = 8080\n", "port = 8080\naccess_log = false\n")
    text = edited('path = "var/adapter.sqlite"\n', 'path = "s"\nsynchronous = "full"\n', text)
    config = load_config(write(text))
    assert config.http.access_log is False
    assert config.store.synchronous == "full"
    assert config.unknown_keys == ()


def test_bundled_configuration_is_valid() -> None:
    config = load_config(REPO / "conf/adapter.toml", cwd=REPO)
    assert (config.http.host, config.http.port) == ("127.0.0.1", 8080)
    assert config.sip.server == "sip:127.0.0.1:5070"
    assert str(config.sip.listen) == "127.0.0.1:5080"
    assert config.sip.transport == "udp"
    assert config.xcap.root == "http://127.0.0.1:5070/xcap-root"
    assert config.store.path == REPO / "var/adapter.sqlite"
    assert len(config.accounts) == 2
    assert config.unknown_keys == ()


def test_passwords_stay_out_of_repr(write) -> None:
    text = edited("[store]", 'username = "u"\npassword = "xcap-pw"\n\n[store]')
    config = load_config(write(text))
    assert config.xcap.password == "xcap-pw"
    # The accounts' passwords by name: "secret" alone may be in the store's
    # path, resolved against the working directory.
    shown = repr(config)
    assert "alice-secret" not in shown and "bob-secret" not in shown and "xcap-pw" not in shown


STORE_PATH = 'path = "var/adapter.sqlite"'
PG_URL = "postgresql://adapter:pg-secret@127.0.0.1:5432/presence?sslmode=require"


def test_store_url_selects_postgresql(write) -> None:
    config = load_config(write(edited(STORE_PATH, f'url = "{PG_URL}"')))
    assert config.store.url == PG_URL and config.store.path is None
    assert config.store.key == "store.url"
    assert "pg-secret" not in repr(config)
    assert load_config(write(VALID)).store.key == "store.path"


@pytest.mark.parametrize(
    ("store", "line"),
    [
        (
            f'{STORE_PATH}\nurl = "{PG_URL}"',
            "store.url: and store.path are both set: give one of the two",
        ),
        (
            'synchronous = "full"',
            "store.path: missing (give path for SQLite, or url for PostgreSQL)",
        ),
        (
            'url = "mysql://adapter:pg-secret@127.0.0.1/presence"',
            'store.url: "mysql://adapter:***@127.0.0.1/presence" is not a postgresql:// URL',
        ),
        ('url = "127.0.0.1:5432"', 'store.url: "127.0.0.1:5432" is not a postgresql:// URL'),
        (
            'url = "postgresql://adapter:pg-secret@[::1/presence"',
            'store.url: "postgresql://adapter:***@[::1/presence" is not a URL libpq reads: '
            'end of string reached when looking for matching "]" in IPv6 host address in '
            'URI: "postgresql://adapter:***@[::1/presence"',
        ),
        (
            'url = "postgresql://127.0.0.1/presence?colour=blue"',
            'store.url: "postgresql://127.0.0.1/presence?colour=blue" is not a URL libpq '
            'reads: invalid URI query parameter: "colour"',
        ),
        ("url = 5432", "store.url: must be a string, not an integer"),
    ],
)
def test_a_store_that_is_not_one_sqlite_file_or_one_postgresql_url_is_one_line(
    write, store: str, line: str
) -> None:
    assert error_line(write(edited(STORE_PATH, store))) == line


def test_the_urls_of_a_cluster_node_are_shown_without_their_passwords(write) -> None:
    cluster = ('\n[cluster]\nnode = "a"\nredis = "redis://:r-secret@127.0.0.1:6379/0"\n'
               f'secret = "{"x" * 32}"\n')
    config = load_config(write(edited(STORE_PATH, f'url = "{PG_URL}"') + cluster))
    assert "r-secret" not in repr(config) and "pg-secret" not in repr(config)
    # A URL with no password at all is shown as it is.
    bare = edited("redis://:r-secret@", "redis://", cluster)
    config = load_config(write(edited(STORE_PATH, 'url = "postgresql://127.0.0.1/db"') + bare))
    assert "'redis://127.0.0.1:6379/0'" in repr(config)
    assert "'postgresql://127.0.0.1/db'" in repr(config)


def test_absolute_store_path_is_kept(write, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere" / "state.sqlite"
    config = load_config(write(edited('"var/adapter.sqlite"', f'"{target}"')), cwd=Path("/"))
    assert config.store.path == target


def test_a_path_under_the_home_of_no_user_is_one_line_naming_the_key(write) -> None:
    line = error_line(write(edited('"var/adapter.sqlite"', '"~no-such-user-here/state.sqlite"')))
    assert line.startswith("store.path: ") and "no home directory" in line, line


def test_relative_store_path_follows_the_working_directory(write, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_config(write(VALID)).store.path == tmp_path / "var/adapter.sqlite"


@pytest.mark.parametrize(
    ("old", "new", "line"),
    [
        # missing keys and sections
        ('host = "127.0.0.1"\n', "", "http.host: missing (required)"),
        ("port = 8080\n", "", "http.port: missing (required)"),
        ('transport = "udp"\n', "", "sip.transport: missing (required)"),
        ('[store]\npath = "var/adapter.sqlite"\n', "", "store: missing (required)"),
        # wrong types
        ("port = 8080", 'port = "8080"', "http.port: must be an integer, not a string"),
        ("port = 8080", "port = true", "http.port: must be an integer, not a boolean"),
        ("port = 8080", "port = 80.5", "http.port: must be an integer, not a float"),
        (
            'listen = "127.0.0.1:5080"',
            "listen = 5080",
            "sip.listen: must be a string, not an integer",
        ),
        (
            'password = "bob-secret"',
            "password = 1",
            "accounts[1].password: must be a string, not an integer",
        ),
        ('password = "bob-secret"', 'password = ""', "accounts[1].password: must not be empty"),
        # bad values
        ("port = 8080", "port = 0", "http.port: 0 is outside 1-65535"),
        ("port = 8080", "port = 70000", "http.port: 70000 is outside 1-65535"),
        (
            'host = "127.0.0.1"',
            'host = "bad host"',
            'http.host: "bad host" is not a host name or IP address',
        ),
        (SERVER, '"foo"', 'sip.server: "foo" is not a SIP URI'),
        (SERVER, '"http://127.0.0.1:5070"', 'sip.server: "http://127.0.0.1:5070" is not a SIP URI'),
        (SERVER, '"sip:"', 'sip.server: "sip:" is not a SIP URI'),
        (SERVER, '"sip:300.1.1.1"', 'sip.server: "sip:300.1.1.1" has no valid host'),
        (
            SERVER,
            '"sip:127.0.0.1:99999"',
            'sip.server: "sip:127.0.0.1:99999" has a port outside 1-65535',
        ),
        (LISTEN, '"127.0.0.1"', 'sip.listen: "127.0.0.1" is not host:port'),
        (LISTEN, '"::1:5080"', 'sip.listen: "::1:5080" has no valid host'),
        (LISTEN, '"127.0.0.1:0"', 'sip.listen: "127.0.0.1:0" has a port outside 1-65535'),
        (
            LISTEN,
            '"127.0.0.1:8080"',
            "sip.listen: 127.0.0.1:8080 is also http.host/http.port (both use TCP)",
        ),
        (
            'transport = "udp"',
            'transport = "sctp"',
            'sip.transport: "sctp" must be "udp", "tcp" or "tls"',
        ),
        (ROOT, '"ftp://127.0.0.1/x"', 'xcap.root: "ftp://127.0.0.1/x" ' + NOT_URL),
        (ROOT, '"http:///x"', 'xcap.root: "http:///x" ' + NOT_URL),
        (ROOT, '"http://h:x/"', 'xcap.root: "http://h:x/" is not an HTTP URL'),
        (ROOT, '"http://h/x?a=1"', 'xcap.root: "http://h/x?a=1" must not have a query or fragment'),
        (
            "[store]",
            'username = "u"\n[store]',
            "xcap.password: missing (username and password go together)",
        ),
        ('path = "var/adapter.sqlite"', 'path = " "', "store.path: must not be empty"),
        # accounts
        (
            'id = "bob-app"',
            'id = "alice-app"',
            'accounts[1].id: "alice-app" duplicates accounts[0].id',
        ),
        ('id = "bob-app"', 'id = "bob/app"', 'accounts[1].id: "bob/app" ' + BAD_ID),
        ('id = "bob-app"', 'id = "bob:app"', 'accounts[1].id: "bob:app" ' + BAD_ID),
        ('id = "bob-app"\n', "", "accounts[1].id: missing (required)"),
        (BOB, "[]", "accounts[1].addresses: must list at least one SIP address"),
        (
            BOB,
            '"sip:bob@example.com"',
            "accounts[1].addresses: must be an array of SIP URIs, not a string",
        ),
        (BOB, "[1]", "accounts[1].addresses[0]: must be a string, not an integer"),
        (
            BOB,
            '["bob@example.com"]',
            'accounts[1].addresses[0]: "bob@example.com" is not a SIP URI',
        ),
        (
            BOB,
            '["sip:example.com"]',
            'accounts[1].addresses[0]: "sip:example.com" has no user part (expected sip:user@host)',
        ),
        (
            BOB,
            '["sip:bob@example.com", "sip:bob@example.com"]',
            'accounts[1].addresses[1]: "sip:bob@example.com" is listed twice',
        ),
        (
            "port = 8080\n",
            'port = 8080\naccess_log = "yes"\n',
            "http.access_log: must be a boolean, not a string",
        ),
        (
            'path = "var/adapter.sqlite"\n',
            'path = "var/adapter.sqlite"\nsynchronous = "off"\n',
            'store.synchronous: "off" must be "normal" or "full"',
        ),
        (
            'path = "var/adapter.sqlite"\n',
            'path = "var/adapter.sqlite"\nsynchronous = 2\n',
            "store.synchronous: must be a string, not an integer",
        ),
    ],
)
def test_each_problem_is_one_line_naming_the_key(write, old: str, new: str, line: str) -> None:
    assert error_line(write(edited(old, new))) == line


def test_section_must_be_a_table(write) -> None:
    text = 'xcap = "http://127.0.0.1/"\n' + edited(
        '[xcap]\nroot = "http://127.0.0.1:5070/xcap-root/"\n', ""
    )
    assert error_line(write(text)) == "xcap: must be a table, not a string"


def test_accounts_must_exist(write) -> None:
    text = VALID.split("[[accounts]]")[0]
    assert error_line(write(text)) == "accounts: missing (required)"
    assert error_line(write("accounts = []\n" + text)) == (
        "accounts: at least one [[accounts]] entry is required"
    )


def test_accounts_must_be_an_array_of_tables(write) -> None:
    text = VALID.split("[[accounts]]")[0] + '[accounts]\nid = "x"\n'
    assert (
        error_line(write(text))
        == "accounts: must be an array of tables ([[accounts]]), not a table"
    )
    text = 'accounts = ["x"]\n' + VALID.split("[[accounts]]")[0]
    assert error_line(write(text)) == "accounts[0]: must be a table, not a string"


def test_unreadable_and_malformed_files(write, tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    assert error_line(missing) == "cannot read: No such file or directory"
    assert error_line(write("[http\nport = 1\n")).startswith("invalid TOML: ")
    path = write("")
    path.write_bytes(b'[http]\nhost = "\xff"\n')
    assert error_line(path).startswith("invalid TOML")


def test_same_address_in_two_accounts_is_allowed(write) -> None:
    text = edited('["sip:bob@example.com"]', '["sip:bob@example.com", "sip:alice@example.com"]')
    config = load_config(write(text))
    assert [a.id for a in config.accounts if a.may_act_as("sip:alice@example.com")] == [
        "alice-app",
        "bob-app",
    ]


def test_sip_uri_forms_accepted(write) -> None:
    for server in [
        "sip:[::1]:5070;transport=tcp",
        "SIP:pres@host.example",
    ]:
        config = load_config(write(edited('"sip:127.0.0.1:5070"', f'"{server}"')))
        assert config.sip.server == server
    config = load_config(write(edited('"127.0.0.1:5080"', '"[::1]:5080"')))
    assert config.sip.listen == HostPort("[::1]", 5080)
    assert config.sip.listen.bind_host == "::1"
    assert str(config.sip.listen) == "[::1]:5080"


def test_host_port_round_trips() -> None:
    for text in ["127.0.0.1:5080", "[::1]:5060", "sip.example.com:5061"]:
        assert str(HostPort.parse(text)) == text
    with pytest.raises(ValueError):
        HostPort.parse("127.0.0.1:5o80")


def test_unknown_keys_are_accepted_and_warned_once(write, caplog) -> None:
    text = edited("[sip]", "[sip]\nretries = 3") + "\n[telemetry]\nqueue = 10\n"
    text = edited('id = "bob-app"', 'id = "bob-app"\ncolour = "blue"', text)
    with caplog.at_level(logging.WARNING, logger="adapter.config"):
        config = load_config(write(text))
    assert config.unknown_keys == ("telemetry", "sip.retries", "accounts[1].colour")
    warnings = [r for r in caplog.records if r.name == "adapter.config"]
    assert len(warnings) == 1
    assert "telemetry, sip.retries, accounts[1].colour" in warnings[0].getMessage()


def test_bayeux_limits_are_optional_and_validated(write) -> None:
    assert load_config(write(edited("[sip]", "[sip]"))).bayeux == {}
    text = edited("[sip]", "[sip]") + "\n[bayeux]\nqueue_size = 10\nconnect_timeout = 2.5\n"
    assert load_config(write(text)).bayeux == {"queue_size": 10, "connect_timeout": 2.5}
    with pytest.raises(ConfigError, match=r"bayeux\.queue_size: must be positive"):
        load_config(write(edited("[sip]", "[sip]") + "\n[bayeux]\nqueue_size = 0\n"))
    with pytest.raises(ConfigError, match=r"bayeux\.max_body: must be an integer, not a float"):
        load_config(write(edited("[sip]", "[sip]") + "\n[bayeux]\nmax_body = 1.5\n"))


def test_the_bayeux_settings_are_the_servers_limits() -> None:
    # The config reads plain values; the app builds the server's limits from them.
    limits = {f.name: f.type for f in dataclasses.fields(BayeuxLimits)}
    settings = get_type_hints(BayeuxSettings)
    assert {name: kind.__name__ for name, kind in settings.items()} == limits


def test_messages_stay_on_one_line_for_hostile_values(write) -> None:
    text = edited('"sip:127.0.0.1:5070"', '"sip:\\nfoo"')
    assert error_line(write(text)) == 'sip.server: "sip:\\nfoo" is not a SIP URI'


def test_account_values_are_frozen() -> None:
    account = Account(id="a", password="p", addresses=("sip:a@example.com",))
    with pytest.raises(AttributeError):
        account.id = "b"  # type: ignore[misc]


# -- port checks at serve time ------------------------------------------------------


def free_port() -> int:
    """Free for TCP and UDP: never the port a test holds with a socket of either kind."""
    return presence_server.free_port("127.0.0.1")


def config_with_ports(write, http_port: int, sip_port: int):
    text = edited("port = 8080", f"port = {http_port}")
    text = edited('"127.0.0.1:5080"', f'"127.0.0.1:{sip_port}"', text)
    return load_config(write(text))


def test_free_ports_pass(write) -> None:
    check_ports(config_with_ports(write, *presence_server.free_ports("127.0.0.1", 2)))


def test_http_port_in_use(write) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        config = config_with_ports(write, port, free_port())
        with pytest.raises(ConfigError) as info:
            check_ports(config)
    assert str(info.value) == (
        f"{config.source}: http.port: 127.0.0.1:{port} (TCP) is already in use"
    )


def test_sip_udp_port_in_use(write) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        config = config_with_ports(write, free_port(), port)
        with pytest.raises(ConfigError) as info:
            check_ports(config)
    assert str(info.value) == (
        f"{config.source}: sip.listen: 127.0.0.1:{port} (UDP) is already in use"
    )


def test_sip_tcp_port_in_use(write) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        config = config_with_ports(write, free_port(), port)
        with pytest.raises(ConfigError) as info:
            check_ports(config)
    assert str(info.value) == (
        f"{config.source}: sip.listen: 127.0.0.1:{port} (TCP) is already in use"
    )


# -- TLS towards the presence server and the gateway's credentials --------------------


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return Certificates(tmp_path_factory.mktemp("certificates"))


def tls_config(*lines: str, server: str = '"sips:127.0.0.1:5061"', transport: str = "tls") -> str:
    text = edited(SERVER, server)
    text = edited('transport = "udp"', f'transport = "{transport}"\n' + "\n".join(lines), text)
    return text


def test_tls_keys_are_read_and_the_context_verifies_the_server(write, certificates) -> None:
    config = load_config(write(tls_config(
        f'tls_ca = "{certificates.ca_pem}"',
        f'tls_cert = "{certificates.client_cert}"',
        f'tls_key = "{certificates.client_key}"',
        'username = "gateway"', 'password = "secret"', 'realm = "example.com"',
    )))
    assert config.sip.tls and config.sip.tls_ca == certificates.ca_pem
    assert (config.sip.username, config.sip.password, config.sip.realm) == (
        "gateway", "secret", "example.com"
    )
    context = sip_tls_context(config)
    assert context is not None
    assert context.verify_mode is ssl.CERT_REQUIRED and context.check_hostname
    assert "secret" not in repr(config.sip)
    # An https:// XCAP root without a CA of its own trusts the SIP one.
    assert xcap_tls_context(config) is None  # the root here is http://


def test_a_sips_server_implies_tls_and_without_a_ca_stops_start_up(write) -> None:
    for transport in ("tcp", "tls"):
        assert error_line(write(tls_config(transport=transport))) == (
            "sip.tls_ca: missing (required for TLS: the CA certificates, PEM, that the "
            "presence server's certificate is verified against)"
        )
    assert error_line(write(tls_config(transport="udp"))) == (
        'sip.transport: "udp" with the sips: server "sips:127.0.0.1:5061": sips means TLS; '
        'use "tls"'
    )
    # transport "tls" with a sip: server needs the CA just the same.
    assert error_line(write(tls_config(server=SERVER))).startswith("sip.tls_ca: missing")


@pytest.mark.parametrize(
    ("lines", "problem"),
    [
        (['tls_ca = "{missing}"'], 'sip.tls_ca: "{missing}": no such file'),
        (['tls_ca = "{ca_key}"'], 'sip.tls_ca: "{ca_key}": not usable PEM'),
        (
            ['tls_ca = "{ca}"', 'tls_cert = "{cert}"'],
            "sip.tls_key: missing (tls_cert and tls_key go together)",
        ),
        (
            ['tls_ca = "{ca}"', 'tls_cert = "{cert}"', 'tls_key = "{ca}"'],
            'sip.tls_cert: "{cert}": not usable PEM',
        ),
        (['tls_ca = "{ca}"', 'username = "gateway"'],
         "sip.password: missing (username and password go together)"),
        (['tls_ca = "{ca}"', 'realm = "example.com"'],
         "sip.realm: needs sip.username and sip.password"),
    ],
)
def test_tls_settings_that_do_not_work_stop_start_up_naming_the_key(
    write, certificates, lines: list[str], problem: str
) -> None:
    names = {
        "missing": certificates.directory / "missing.pem",
        "ca_key": certificates.client_key,  # a key where certificates belong
        "ca": certificates.ca_pem,
        "cert": certificates.client_cert,
    }
    line = error_line(write(tls_config(*(line.format(**names) for line in lines))))
    assert line.startswith(problem.format(**names)), line


def test_tls_keys_without_tls_are_an_error_not_a_silent_plain_link(write, certificates) -> None:
    text = edited('transport = "udp"', f'transport = "tcp"\ntls_ca = "{certificates.ca_pem}"')
    assert error_line(write(text)) == (
        'sip.tls_ca: is set but TLS is not used (sip.transport "tls" or a sips: server)'
    )
    text = edited("[store]", f'tls_ca = "{certificates.ca_pem}"\n[store]')
    assert error_line(write(text)) == "xcap.tls_ca: is set but xcap.root is not an https:// URL"


def test_an_https_xcap_root_uses_its_own_ca_or_the_sip_one(write, certificates) -> None:
    other = certificates.other_ca()
    text = tls_config(f'tls_ca = "{certificates.ca_pem}"')
    text = edited(ROOT, '"https://127.0.0.1:5061/xcap-root"', text)
    config = load_config(write(text))
    assert xcap_tls_context(config) is not None
    assert config.xcap.tls_ca is None
    config = load_config(write(edited("[store]", f'tls_ca = "{other}"\n[store]', text)))
    assert config.xcap.tls_ca == other
    # Without TLS towards the SIP server and no CA of its own: the system's store.
    plain = edited(ROOT, '"https://127.0.0.1:5061/xcap-root"')
    assert xcap_tls_context(load_config(write(plain))) is None


def test_a_server_uri_asking_for_tls_needs_the_tls_settings_too(write) -> None:
    text = edited(SERVER, '"sip:127.0.0.1:5061;transport=tls"')
    assert error_line(write(text)).startswith("sip.tls_ca: missing (required for TLS")

# -- security keys (issue 17, HTTP edge) -------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory):
    from tests.certificates import TestCA

    ca = TestCA(tmp_path_factory.mktemp("pki"))
    return ca, ca.server(), ca.server("other")


def with_http(**keys: object) -> str:
    lines = "".join(f"{key} = {json.dumps(value)}\n" for key, value in keys.items())
    return edited("port = 8080\n", "port = 8080\n" + lines)


def test_tls_files_are_read_and_made_absolute(write, pki, tmp_path: Path) -> None:
    ca, server, _ = pki
    config = load_config(write(with_http(tls_cert=str(server.cert), tls_key=str(server.key))))
    assert (config.http.tls_cert, config.http.tls_key) == (server.cert, server.key)
    assert config.http.tls_client_ca is None and config.http.scheme == "https"
    relative = server.cert.relative_to(server.cert.parent.parent)
    text = with_http(tls_cert=str(relative), tls_key=str(server.key), tls_client_ca=str(ca.cert))
    config = load_config(write(text), cwd=server.cert.parent.parent)
    assert config.http.tls_cert == server.cert and config.http.tls_client_ca == ca.cert
    assert load_config(write(VALID)).http.scheme == "http"


def test_each_tls_problem_names_its_key(write, pki, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    ca, server, other = pki
    cert, key = str(server.cert), str(server.key)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    encrypted = tmp_path / "encrypted.key"
    private = serialization.load_pem_private_key(server.key.read_bytes(), None)
    encrypted.write_bytes(private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pass"),
    ))
    missing = tmp_path / "missing.pem"
    cases = [
        ({"tls_cert": cert}, "http.tls_key: missing (tls_cert and tls_key go together)"),
        ({"tls_key": key}, "http.tls_cert: missing (tls_cert and tls_key go together)"),
        ({"tls_client_ca": str(ca.cert)},
         "http.tls_client_ca: needs tls_cert and tls_key (client certificates come over TLS)"),
        ({"tls_cert": str(missing), "tls_key": key},
         f"http.tls_cert: cannot read {missing}: No such file or directory"),
        ({"tls_cert": key, "tls_key": key}, f"http.tls_cert: {key} holds no PEM certificate"),
        ({"tls_cert": str(garbage), "tls_key": key},
         f"http.tls_cert: {garbage} holds no PEM certificate"),
        ({"tls_cert": cert, "tls_key": str(missing)},
         f"http.tls_key: cannot read {missing}: No such file or directory"),
        ({"tls_cert": cert, "tls_key": cert}, f"http.tls_key: {cert} holds no PEM private key"),
        ({"tls_cert": cert, "tls_key": str(other.key)},
         f"http.tls_key: {other.key} does not match the certificate of tls_cert"),
        ({"tls_cert": cert, "tls_key": str(encrypted)},
         f"http.tls_key: {encrypted} is encrypted (give an unencrypted key)"),
        ({"tls_cert": cert, "tls_key": key, "tls_client_ca": key},
         f"http.tls_client_ca: {key} holds no PEM certificate"),
        ({"tls_cert": cert, "tls_key": key, "tls_client_ca": str(missing)},
         f"http.tls_client_ca: cannot read {missing}: No such file or directory"),
        ({"tls_cert": 1, "tls_key": key}, "http.tls_cert: must be a string, not an integer"),
    ]
    for keys, line in cases:
        assert error_line(write(with_http(**keys))) == line, keys


def test_cors_origins_must_be_serialised_origins(write) -> None:
    origins = ["https://app.example", "http://localhost:3000", "https://[::1]:8443"]
    assert load_config(write(with_http(cors_origins=origins))).http.cors_origins == tuple(origins)
    assert load_config(write(VALID)).http.cors_origins == ()
    for bad in ["https://app.example/", "app.example", "*", "https://App.example",
                "ftp://app.example", "https://user@app.example", "https://app.example/x",
                "https://app.example?"]:
        line = error_line(write(with_http(cors_origins=["https://ok.example", bad])))
        assert line.startswith(f"http.cors_origins[1]: {json.dumps(bad)} is not an origin"), line
    assert error_line(write(with_http(cors_origins="https://app.example"))) == (
        "http.cors_origins: must be an array of origins, not a string"
    )
    assert error_line(write(with_http(cors_origins=[1]))) == (
        "http.cors_origins[0]: must be a string, not an integer"
    )


def with_limits(text: str) -> str:
    return VALID.replace("[[accounts]]", text + "\n[[accounts]]", 1)


def test_limits_are_optional_and_validated(write) -> None:
    assert load_config(write(VALID)).limits is None
    limits = load_config(write(with_limits("[limits]\nrequests_per_second = 50\nburst = 100\n")))
    assert (limits.limits.requests_per_second, limits.limits.burst) == (50.0, 100)
    # burst defaults to a second's worth of requests
    limits = load_config(write(with_limits("[limits]\nrequests_per_second = 2.5\n")))
    assert (limits.limits.requests_per_second, limits.limits.burst) == (2.5, 3)
    cases = [
        ("[limits]\nburst = 3\n", "limits.requests_per_second: missing (required)"),
        ("[limits]\nrequests_per_second = 0\n", "limits.requests_per_second: must be positive"),
        ("[limits]\nrequests_per_second = -1\n", "limits.requests_per_second: must be positive"),
        ("[limits]\nrequests_per_second = nan\n", "limits.requests_per_second: must be positive"),
        ("[limits]\nrequests_per_second = inf\n", "limits.requests_per_second: must be positive"),
        ('[limits]\nrequests_per_second = "50"\n',
         "limits.requests_per_second: must be a number, not a string"),
        ("[limits]\nrequests_per_second = 5\nburst = 0\n", "limits.burst: must be positive"),
        ("[limits]\nrequests_per_second = 5\nburst = 1.5\n",
         "limits.burst: must be an integer, not a float"),
        ("limits = 5\n", "limits: must be a table, not an integer"),
    ]
    for text, line in cases:
        assert error_line(write(with_limits(text) if "[" in text else text + VALID)) == line


def test_an_account_secret_is_exactly_one_of_three(write, monkeypatch) -> None:
    from adapter.passwords import hash_password

    digest = hash_password("bob-secret")
    config = load_config(write(edited('password = "bob-secret"', f'password_hash = "{digest}"')))
    bob = config.accounts[1]
    assert (bob.password, bob.password_hash) == (None, digest)
    assert digest not in repr(bob)

    monkeypatch.setenv("BOB_APP_SECRET", "from-the-environment")
    text = edited('password = "bob-secret"', 'password_env = "BOB_APP_SECRET"')
    config = load_config(write(text))
    assert config.accounts[1].password == "from-the-environment"

    cases = [
        ('password = "bob-secret"', "",
         "accounts[1].password: missing (give password, password_hash or password_env)"),
        ('password = "bob-secret"', f'password = "bob-secret"\npassword_hash = "{digest}"',
         "accounts[1].password_hash: give only one of password, password_hash, password_env, "
         "not also password"),
        ('password = "bob-secret"', 'password_hash = "bob-secret"',
         "accounts[1].password_hash: is not an Argon2 hash ($argon2id$v=19$...; "
         "make one with presence-adapter hash-password)"),
        ('password = "bob-secret"', 'password_hash = "$argon2id$v=19$m=65536,t=3,p=4$short"',
         "accounts[1].password_hash: is not an Argon2 hash ($argon2id$v=19$...; "
         "make one with presence-adapter hash-password)"),
        ('password = "bob-secret"', 'password_env = "NO_SUCH_VARIABLE_HERE"',
         "accounts[1].password_env: environment variable NO_SUCH_VARIABLE_HERE is not set"),
        ('password = "bob-secret"', 'password_env = "EMPTY_SECRET"',
         "accounts[1].password_env: environment variable EMPTY_SECRET is empty"),
        ('password = "bob-secret"', 'password_env = "not a name"',
         'accounts[1].password_env: "not a name" is not an environment variable name'),
        ('password = "bob-secret"', "password_env = 3",
         "accounts[1].password_env: must be a string, not an integer"),
    ]
    monkeypatch.delenv("NO_SUCH_VARIABLE_HERE", raising=False)
    monkeypatch.setenv("EMPTY_SECRET", "")
    for old, new, line in cases:
        assert error_line(write(edited(old, new))) == line, new
    # The hash is never echoed: it might be a password pasted into the wrong key.
    assert "bob-secret" not in error_line(write(edited(old, 'password_hash = "bob-secret"')))


def test_an_account_holds_exactly_one_secret() -> None:
    with pytest.raises(ValueError):
        Account(id="a", addresses=("sip:a@example.com",))
    with pytest.raises(ValueError):
        Account(
            id="a", password="p", addresses=("sip:a@example.com",), password_hash="$argon2id$..."
        )


def test_bundled_accounts_keep_their_demo_passwords_as_hashes() -> None:
    from adapter.passwords import verify_password

    config = load_config(REPO / "conf/adapter.toml", cwd=REPO)
    for account, password in zip(config.accounts, ("alice-secret", "bob-secret"), strict=True):
        assert account.password is None and account.password_hash is not None
        assert verify_password(account.password_hash, password)


def test_log_table_is_optional_and_validated(write) -> None:
    from adapter.config import LogConfig

    assert load_config(write(VALID)).log == LogConfig(level=None, format="text", sip_trace=False)
    text = VALID + '\n[log]\nlevel = "WARNING"\nformat = "json"\nsip_trace = true\n'
    assert load_config(write(text)).log == LogConfig(level="warning", format="json", sip_trace=True)
    assert error_line(write(VALID + '\n[log]\nformat = "xml"\n')) == (
        'log.format: "xml" must be "text" or "json"'
    )
    assert error_line(write(VALID + '\n[log]\nlevel = "loud"\n')) == (
        'log.level: "loud" must be one of debug, info, warning, error, critical'
    )
    assert error_line(write(VALID + "\n[log]\nsip_trace = 1\n")) == (
        "log.sip_trace: must be a boolean, not an integer"
    )


def test_metrics_token_from_the_file_or_the_environment(write, monkeypatch) -> None:
    assert load_config(write(VALID)).metrics.token is None
    assert load_config(write(VALID + '\n[metrics]\ntoken = "t"\n')).metrics.token == "t"
    monkeypatch.setenv("METRICS_TOKEN_TEST", "from-env")
    text = VALID + '\n[metrics]\ntoken_env = "METRICS_TOKEN_TEST"\n'
    assert load_config(write(text)).metrics.token == "from-env"
    assert "from-env" not in repr(load_config(write(text)))
    monkeypatch.delenv("METRICS_TOKEN_TEST")
    assert error_line(write(text)) == (
        "metrics.token_env: environment variable METRICS_TOKEN_TEST is not set"
    )
    both = VALID + '\n[metrics]\ntoken = "t"\ntoken_env = "X"\n'
    assert error_line(write(both)) == "metrics.token_env: give token or token_env, not both"


def test_deploy_configuration_is_valid_with_its_secrets_set(monkeypatch) -> None:
    monkeypatch.setenv("ALICE_APP_SECRET", "s")
    monkeypatch.setenv("PRESENCE_ADAPTER_METRICS_TOKEN", "m")
    config = load_config(REPO / "deploy/adapter.toml", cwd=Path("/var/lib/presence-adapter"))
    assert config.log.format == "json" and config.metrics.token == "m"
    assert config.store.path == Path("/var/lib/presence-adapter/adapter.sqlite")


# -- the models, the messages and docs/configuration.md -------------------------------


def model_keys() -> dict[str, object]:
    """Every key of the file ("http.host", "accounts.id") and its default (or NODEFAULT).

    The [bayeux] keys take their defaults from the Bayeux server's limits.
    """
    server_defaults = {f.name: f.default for f in dataclasses.fields(BayeuxLimits)}
    keys: dict[str, object] = {}
    for section in msgspec.structs.fields(Config):
        if section.name in ("source", "unknown_keys"):
            continue
        kind = section.type
        if typing.get_origin(kind) in (typing.Union, types.UnionType):
            kind = next(arg for arg in typing.get_args(kind) if arg is not type(None))
        if typing.get_origin(kind) is tuple:
            kind = typing.get_args(kind)[0]
        if kind is BayeuxSettings:
            for name in get_type_hints(kind):
                keys[f"{section.name}.{name}"] = server_defaults[name]
            continue
        for key in msgspec.structs.fields(kind):
            keys[f"{section.name}.{key.name}"] = key.default
    return keys


def documented_keys() -> dict[str, str | None]:
    """The keys the tables of docs/configuration.md name, with the default they show."""
    keys: dict[str, str | None] = {}
    for line in (REPO / "docs/configuration.md").read_text().splitlines():
        if not line.startswith("| `"):
            continue
        cell = line.removeprefix("| ").split(" | ")[0]
        table = re.match(r"`\[\[?(\w+)\]\]?` ", cell)
        for item in re.findall(r"`([^`]+)`", cell[table.end() if table else 0:]):
            name, _, default = item.partition(" = ")
            keys[f"{table[1]}.{name}" if table else name] = default or None
    return keys


def toml_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        # A TOML basic string: JSON's escapes, without surrogate pairs, and DEL escaped.
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, tuple):
        return "[" + ", ".join(toml_text(item) for item in value) + "]"
    return repr(value)


def test_every_key_is_documented_with_its_default() -> None:
    models, documented = model_keys(), documented_keys()
    assert sorted(models) == sorted(documented)
    for key, shown in documented.items():
        default = models[key]
        if shown is not None and default is not None:
            assert shown == toml_text(default), key


def key_set_to(key: str, value: str) -> str:
    """VALID with ``key`` ("sip.listen", "accounts.id": the second account's) set."""
    table, _, name = key.partition(".")
    if table == "accounts":
        head, _, last = VALID.rpartition("[[accounts]]\n")
        return f"{head}[[accounts]]\n{name} = {value}\n" + re.sub(
            rf"(?m)^{name} = .*\n", "", last
        )
    lines = VALID.splitlines(keepends=True)
    if f"[{table}]\n" not in lines:
        return f"{VALID}\n[{table}]\n{name} = {value}\n"
    at = lines.index(f"[{table}]\n") + 1
    kept = [line for line in lines[at:] if not line.startswith(f"{name} = ")]
    return "".join(lines[:at] + [f"{name} = {value}\n"] + kept)


@pytest.mark.parametrize("key", sorted(model_keys()))
def test_a_wrong_type_for_any_key_is_one_line_naming_it(write, key: str) -> None:
    # A date-time suits no key: msgspec's message is translated for every one.
    line = error_line(write(key_set_to(key, "1979-05-27T07:32:00Z")))
    where = key.replace("accounts.", "accounts[1].")
    assert re.fullmatch(
        rf"{re.escape(where)}: must be (a|an) [a-zA-Z ()\[\].]+, not a date-time", line
    ), line


def test_keys_that_are_not_in_the_file_are_unknown_keys(write) -> None:
    text = 'source = "elsewhere.toml"\nunknown_keys = ["x"]\n' + VALID
    config = load_config(write(text))
    assert config.source == str(write(text))
    assert config.unknown_keys == ("source", "unknown_keys")


def test_the_first_problem_follows_the_models_order_not_the_files(write) -> None:
    # [store] and [http] both broken; [store] first in the file: [http] is reported.
    store = '[store]\npath = "var/adapter.sqlite"\n'
    text = '[store]\nsynchronous = "off"\npath = "s"\n\n' + edited(store, "", VALID)
    assert error_line(write(text)) == 'store.synchronous: "off" must be "normal" or "full"'
    text = edited("port = 8080", "port = 0", text)
    assert error_line(write(text)) == "http.port: 0 is outside 1-65535"


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("http.port", "-5", "-5 is outside 1-65535"),
        ("sip.keepalive", "-1", "must not be negative"),
        ("sip.request_timeout", "0", "must be positive"),
        ("bayeux.interval", "-0.5", "must not be negative"),
        ("notifications.max_count", "0", "must be positive"),
        ("notifications.max_duration", "nan", "must be positive"),
        ("log.format", '"XML"', '"XML" must be "text" or "json"'),
        ("metrics.token", '" "', "must not be empty"),
    ],
)
def test_ranges_enums_and_blanks_are_worded_for_the_key(write, key, value, problem) -> None:
    assert error_line(write(key_set_to(key, value))) == f"{key}: {problem}"


def test_zero_is_allowed_where_it_means_off(write) -> None:
    config = load_config(write(key_set_to("sip.keepalive", "0")))
    assert config.sip.keepalive == 0.0
    assert load_config(write(key_set_to("bayeux.interval", "0"))).bayeux == {"interval": 0.0}


def toml_literal(value: object) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_literal(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(toml_literal(item) for item in value) + "]"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return toml_text(value)


SCALARS = (
    st.integers(-(2**63), 2**63 - 1)
    | st.floats()
    | st.booleans()
    | st.text(max_size=40)
    | st.sampled_from(["sip:a@example.com", "127.0.0.1:1", "https://h", "x", "tls", "json"])
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.sampled_from(["a", "id", "host"]), inner, max_size=2),
    max_leaves=6,
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(key=st.sampled_from(sorted(model_keys())), value=VALUES)
def test_any_value_for_any_key_loads_or_is_one_line_naming_a_key(write, key, value) -> None:
    # The key named may be another one, when a check across keys finds the problem.
    keys = set(model_keys())
    keys |= {key.partition(".")[0] for key in keys}
    try:
        load_config(write(key_set_to(key, toml_literal(value))))
    except ConfigError as exc:
        line = str(exc)
        assert "\n" not in line and "Expected `" not in line and "- at `$" not in line, line
        assert exc.key is not None and re.sub(r"\[\d+\]", "", exc.key) in keys, line


POSTGRES_STORE = '[store]\nurl = "postgresql://adapter@127.0.0.1:5432/adapter"\n'
SECRET = "0123456789abcdef" * 4
CLUSTER = f'\n[cluster]\nnode = "a"\nredis = "redis://127.0.0.1:6379/0"\nsecret = "{SECRET}"\n'


def test_a_cluster_node_has_a_name_a_redis_and_a_lease(write) -> None:
    text = edited('[store]\npath = "var/adapter.sqlite"\n', POSTGRES_STORE) + CLUSTER
    config = load_config(write(text))
    assert config.cluster is not None
    assert (config.cluster.node, config.cluster.redis, config.cluster.lease) == (
        "a", "redis://127.0.0.1:6379/0", 10.0)
    assert load_config(write(VALID)).cluster is None


def test_the_contract_s_cluster_config_loads_without_a_secret(write) -> None:
    # Issue 19's contract: [store] url and [cluster] node and redis, nothing
    # more; the nodes then share a secret kept in the store (adapter.cluster.peer).
    contract = (
        '[store]\nurl = "postgresql://user:pass@127.0.0.1:5432/adapter"\n'
        '[cluster]\nnode = "a"\nredis = "redis://127.0.0.1:6379/0"\n'
    )
    config = load_config(write(edited('[store]\npath = "var/adapter.sqlite"\n', "") + contract))
    assert config.cluster is not None and config.cluster.secret is None
    assert config.store.url == "postgresql://user:pass@127.0.0.1:5432/adapter"


@pytest.mark.parametrize(
    ("cluster", "line"),
    [
        (CLUSTER, "cluster: needs store.url: the nodes of a cluster share a PostgreSQL store"),
        ('\n[cluster]\nredis = "redis://h"\n', "cluster.node: missing (required)"),
        (CLUSTER.replace('"a"', '"a b"'),
         'cluster.node: "a b" must be 1 to 32 letters, digits, - or _'),
        (CLUSTER.replace('"a"', '"' + "n" * 33 + '"'),
         f'cluster.node: "{"n" * 33}" must be 1 to 32 letters, digits, - or _'),
        (CLUSTER.replace("redis://127.0.0.1:6379/0", "http://h"),
         'cluster.redis: "http://h" is not a redis://, rediss:// or unix:// URL'),
        (CLUSTER.replace("redis://127.0.0.1:6379/0", "redis://:pw@"),
         'cluster.redis: "redis://:***@" has no host'),
        (CLUSTER + "lease = 0\n", "cluster.lease: must be positive"),
        (CLUSTER.replace(SECRET, "short"),
         "cluster.secret: too short (5 characters; at least 32, e.g. from openssl rand -hex 32)"),
        (CLUSTER + 'secret_env = "NODE_SECRET"\n',
         "cluster.secret_env: give only one of secret, secret_file, secret_env, not also secret"),
        (CLUSTER.replace(f'secret = "{SECRET}"', 'secret_env = "NODE_SECRET"')
         + 'secret_file = "/nonexistent/secret"\n',
         "cluster.secret_env: give only one of secret, secret_file, secret_env, "
         "not also secret_file"),
        (CLUSTER.replace(f'secret = "{SECRET}"', 'secret = ""'),
         "cluster.secret: too short (0 characters; at least 32, e.g. from openssl rand -hex 32)"),
        (CLUSTER.replace(f'secret = "{SECRET}"', 'secret_file = "/nonexistent/secret"'),
         "cluster.secret_file: cannot read /nonexistent/secret: No such file or directory"),
        (CLUSTER + 'tls_ca = "/etc/ssl/certs/ca-certificates.crt"\n',
         "cluster.tls_ca: is set but the nodes serve plain HTTP (no http.tls_cert)"),
        (CLUSTER + 'tls_cert = "/x.pem"\n',
         "cluster.tls_key: missing (tls_cert and tls_key go together)"),
    ],
)
def test_a_bad_cluster_table_is_one_line(write, cluster: str, line: str) -> None:
    store = "" if "store.url" in line else POSTGRES_STORE
    text = VALID + cluster
    if store:
        text = edited('[store]\npath = "var/adapter.sqlite"\n', store) + cluster
    assert error_line(write(text)) == line


def test_a_cluster_secret_may_come_from_a_file_or_the_environment(
    write, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = edited('[store]\npath = "var/adapter.sqlite"\n', POSTGRES_STORE)
    secret_file = tmp_path / "cluster.secret"
    secret_file.write_text(SECRET + "\n")
    from_file = CLUSTER.replace(f'secret = "{SECRET}"', f'secret_file = "{secret_file}"')
    config = load_config(write(store + from_file))
    assert config.cluster is not None and config.cluster.secret == SECRET
    assert SECRET not in repr(config)
    monkeypatch.setenv("NODE_SECRET", SECRET)
    from_env = CLUSTER.replace(f'secret = "{SECRET}"', 'secret_env = "NODE_SECRET"')
    config = load_config(write(store + from_env))
    assert config.cluster is not None and config.cluster.secret == SECRET
