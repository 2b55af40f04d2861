"""Certificates made by the tests themselves (``cryptography``): a CA, servers, clients.

``TestCA(directory)`` writes its own certificate to ``ca.pem``; ``server()``
and ``client()`` issue leaf certificates and write ``<name>.pem`` (the
certificate) and ``<name>.key`` (an unencrypted PKCS#8 key).  Nothing is
trusted outside the test that made it.  ``Certificates`` is the set a TLS
presence server and its gateway need: a CA, the server's certificate and the
gateway's client certificate.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["Certificates", "Issued", "TestCA"]

_DAY = datetime.timedelta(days=1)


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _names(hosts: tuple[str, ...]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


class TestCA:
    """A certificate authority of the test's own."""

    __test__ = False  # not a pytest test class

    def __init__(self, directory: Path, name: str = "presence-adapter test CA") -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(self._name)
            .issuer_name(self._name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _DAY)
            .not_valid_after(now + 30 * _DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True,
                    crl_sign=True, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()), critical=False
            )
            .sign(self._key, hashes.SHA256())
        )
        self.cert = directory / "ca.pem"
        self.cert.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))

    def _issue(
        self, name: str, usages: list[x509.ObjectIdentifier], names: list[x509.GeneralName]
    ) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self._name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _DAY)
            .not_valid_after(now + 30 * _DAY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        issued = Issued(self.directory / f"{name}.pem", self.directory / f"{name}.key")
        issued.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key, issued.key)
        return issued

    def server(
        self, name: str = "server", hosts: tuple[str, ...] = ("127.0.0.1", "localhost")
    ) -> Issued:
        return self._issue(name, [ExtendedKeyUsageOID.SERVER_AUTH], _names(hosts))

    def client(self, name: str = "client") -> Issued:
        return self._issue(name, [ExtendedKeyUsageOID.CLIENT_AUTH], [])

    def server_and_client(
        self, name: str = "node", hosts: tuple[str, ...] = ("127.0.0.1", "localhost")
    ) -> Issued:
        """A server's certificate that is good as a client's too (a cluster node's)."""
        usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
        return self._issue(name, usages, _names(hosts))

    def client_context(self, client: Issued | None = None) -> ssl.SSLContext:
        """A client's TLS context trusting this CA, presenting ``client`` when given."""
        context = ssl.create_default_context(cafile=self.cert)
        if client is not None:
            context.load_cert_chain(client.cert, client.key)
        return context


class Certificates:
    """A CA with a server certificate for ``server_host`` and a client certificate.

    The server's certificate names its host as an IP address entry when the
    host is an IP literal, so that a client's host check against a server URI
    like ``sips:127.0.0.1:5061`` is a real check.
    """

    def __init__(self, directory: Path, server_host: str = "127.0.0.1") -> None:
        self.directory = directory
        self.ca = TestCA(directory)
        self.ca_pem = self.ca.cert
        server = self.ca.server("server", (server_host,))
        self.server_cert, self.server_key = server.cert, server.key
        client = self.ca.client("gateway")
        self.client_cert, self.client_key = client.cert, client.key

    def other_ca(self, name: str = "other-ca") -> Path:
        """A CA that issued none of these: trusting it must fail the handshake."""
        return TestCA(self.directory / name, name).cert
