"""The setup of ``scripts/serve`` on free ports, for the tests that follow the README.

The same presence server (``conf/kamailio/run``, a private one per use so that
the bundled SIP addresses start with no state) and the same adapter
configuration (``conf/adapter.toml``: its accounts, hashed passwords
included) — only the ports, the presence server's address and the store path
are replaced.
"""

from __future__ import annotations

import contextlib
import tomllib
from collections.abc import Iterator
from pathlib import Path

from tests.adapter_process import AdapterProcess, AppAccount
from tests.presence_server import REPO, PresenceServer

CONFIG = REPO / "conf" / "adapter.toml"

#: The bundled accounts with the passwords the README gives.
ALICE = AppAccount("alice-app", "alice-secret", ("sip:alice@example.com",))
BOB = AppAccount("bob-app", "bob-secret", ("sip:bob@example.com",))

#: What scripts/serve uses → a placeholder of AdapterProcess or the test's server.
_REPLACED = {
    "port = 8080": "port = {http_port}",
    '"127.0.0.1:5080"': '"127.0.0.1:{sip_port}"',
    '"var/adapter.sqlite"': '"{store}"',
}


def bundled_config(server: PresenceServer) -> str:
    """conf/adapter.toml as an AdapterProcess template, in front of ``server``."""
    text = CONFIG.read_text().replace("{", "{{").replace("}", "}}")
    replaced = {
        **_REPLACED,
        '"sip:127.0.0.1:5070"': f'"{server.sip_uri}"',
        '"http://127.0.0.1:5070/xcap-root"': f'"{server.xcap_root}"',
    }
    for old, new in replaced.items():
        if text.count(old) != 1:
            raise AssertionError(f"{CONFIG}: expected {old} once (has scripts/serve changed?)")
        text = text.replace(old, new)
    return text


@contextlib.contextmanager
def bundled_adapter(directory: Path) -> Iterator[AdapterProcess]:
    """A presence server and an adapter as scripts/serve starts them, both stopped after."""
    directory.mkdir(parents=True, exist_ok=True)
    with PresenceServer() as server:
        adapter = AdapterProcess(directory, bundled_config(server))
        served = tomllib.loads(adapter.config_path.read_text())
        if [a["id"] for a in served["accounts"]] != [ALICE.id, BOB.id]:
            raise AssertionError(f"{CONFIG}: the README's accounts are {ALICE.id}, {BOB.id}")
        adapter.accounts = {ALICE.id: ALICE, BOB.id: BOB}
        adapter.start(healthy=True)
        try:
            yield adapter
        finally:
            adapter.stop()
