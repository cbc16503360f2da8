"""Throw-away PKI for TLS tests: a CA, a server certificate for loopback, a client certificate."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Pki:
    ca: Path
    ca_key: Path  # to issue more certificates in a test (issue_server_cert)
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed nothing here: trusting it must fail
    expired_server_cert: Path  # signed by ca for loopback, but expired yesterday
    expired_server_key: Path
    elsewhere_server_cert: Path  # signed by ca, valid, for another name only
    elsewhere_server_key: Path
    expired_client_cert: Path
    expired_client_key: Path


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject, key, issuer, issuer_key, *, ca: bool, sans=None, usage=None, expired: bool = False,
          lifetime: datetime.timedelta = datetime.timedelta(days=1)) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=3 if expired else 0)
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if usage:
        b = b.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _write(path: Path, obj) -> Path:
    if isinstance(obj, x509.Certificate):
        path.write_bytes(obj.public_bytes(serialization.Encoding.PEM))
    else:
        path.write_bytes(
            obj.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    return path


_LOOPBACK = [
    x509.DNSName("localhost"),
    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    x509.IPAddress(ipaddress.ip_address("::1")),
]


def make_pki(folder: Path) -> Pki:
    """Write a CA, a server cert valid for localhost/127.0.0.1/::1 and a client cert under ``folder``."""
    ca_key, other_key = _key(), _key()
    ca = _cert(_name("imagebatch test CA"), ca_key, _name("imagebatch test CA"), ca_key, ca=True)
    other = _cert(_name("someone else's CA"), other_key, _name("someone else's CA"), other_key, ca=True)
    server_key, client_key = _key(), _key()
    sans = _LOOPBACK
    server = _cert(_name("localhost"), server_key, ca.subject, ca_key, ca=False, sans=sans,
                   usage=[ExtendedKeyUsageOID.SERVER_AUTH])
    client = _cert(_name("imagebatch test client"), client_key, ca.subject, ca_key, ca=False,
                   usage=[ExtendedKeyUsageOID.CLIENT_AUTH])
    expired_key, elsewhere_key, expired_client_key = _key(), _key(), _key()
    expired = _cert(_name("localhost"), expired_key, ca.subject, ca_key, ca=False, sans=sans,
                    usage=[ExtendedKeyUsageOID.SERVER_AUTH], expired=True)
    elsewhere = _cert(_name("elsewhere.example"), elsewhere_key, ca.subject, ca_key, ca=False,
                      sans=[x509.DNSName("elsewhere.example")], usage=[ExtendedKeyUsageOID.SERVER_AUTH])
    expired_client = _cert(_name("imagebatch test client"), expired_client_key, ca.subject, ca_key, ca=False,
                           usage=[ExtendedKeyUsageOID.CLIENT_AUTH], expired=True)
    return Pki(
        ca=_write(folder / "ca.pem", ca),
        ca_key=_write(folder / "ca.key", ca_key),
        server_cert=_write(folder / "server.pem", server),
        server_key=_write(folder / "server.key", server_key),
        client_cert=_write(folder / "client.pem", client),
        client_key=_write(folder / "client.key", client_key),
        other_ca=_write(folder / "other-ca.pem", other),
        expired_server_cert=_write(folder / "expired-server.pem", expired),
        expired_server_key=_write(folder / "expired-server.key", expired_key),
        elsewhere_server_cert=_write(folder / "elsewhere-server.pem", elsewhere),
        elsewhere_server_key=_write(folder / "elsewhere-server.key", elsewhere_key),
        expired_client_cert=_write(folder / "expired-client.pem", expired_client),
        expired_client_key=_write(folder / "expired-client.key", expired_client_key),
    )


def issue_server_cert(pki: Pki, folder: Path, lifetime: datetime.timedelta) -> tuple[Path, Path]:
    """A server certificate for loopback signed by ``pki``'s CA that expires after ``lifetime``: a worker
    accepts it at start-up, then serves it expired."""
    ca = x509.load_pem_x509_certificate(pki.ca.read_bytes())
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
    key = _key()
    cert = _cert(_name("localhost"), key, ca.subject, ca_key, ca=False, sans=_LOOPBACK,
                 usage=[ExtendedKeyUsageOID.SERVER_AUTH], lifetime=lifetime)
    return _write(folder / "expiring.pem", cert), _write(folder / "expiring.key", key)
