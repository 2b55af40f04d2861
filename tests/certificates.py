"""Certificates for TLS tests, made by the tests themselves (trustme, on cryptography).

One CA per :class:`Certificates`; a server certificate for 127.0.0.1 (an IP
address SAN, so that the client's host name check against the server URI's IP
literal is a real check) and a client certificate for mutual TLS, all written
as PEM files in a directory of their own.
"""

from __future__ import annotations

from pathlib import Path

import trustme


class Certificates:
    """A CA and the PEM files of a server and a client certificate it issued."""

    def __init__(self, directory: Path, server_host: str = "127.0.0.1") -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.ca = trustme.CA(organization_name="presence-adapter tests")
        self.ca_pem = directory / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_pem))
        self.server_cert, self.server_key = self._issue("server", server_host)
        self.client_cert, self.client_key = self._issue("client", "presence-adapter.test")

    def _issue(self, name: str, identity: str) -> tuple[Path, Path]:
        issued = self.ca.issue_cert(identity)
        cert = self.directory / f"{name}.pem"
        key = self.directory / f"{name}.key"
        cert.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
        issued.private_key_pem.write_to_path(str(key))
        return cert, key

    def other_ca(self, name: str = "other-ca.pem") -> Path:
        """A CA that issued none of these: trusting it must fail the handshake."""
        path = self.directory / name
        trustme.CA().cert_pem.write_to_path(str(path))
        return path
