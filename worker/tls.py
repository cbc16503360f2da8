"""The TLS files of `worker serve` checked before gRPC reads them: each problem named, as a ``ConfigError``."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from worker.config import ConfigError, ServerConfig, log


def check_tls(config: ServerConfig) -> None:
    """The TLS files are a PEM certificate valid now and its key (and a CA bundle): each problem named here,
    before gRPC fails on them without saying which. A certificate not naming --host is only warned about:
    clients may connect by another of its names."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    def read(option: str, path: Path) -> bytes:
        try:
            return Path(path).read_bytes()
        except OSError as e:
            raise ConfigError(f"cannot read {option} {path}: {e.strerror}") from None

    def certificates(option: str, path: Path) -> list[x509.Certificate]:
        data = read(option, path)
        try:
            return x509.load_pem_x509_certificates(data)
        except ValueError:
            if _private_key(data) is not None:
                raise ConfigError(f"{option} {path} is a private key, not a certificate") from None
            raise ConfigError(f"{option} {path} holds no PEM certificate") from None

    cert, key = config.tls_cert, config.tls_key
    leaf = certificates("--tls-cert", cert)[0]  # the server's own; any others are its chain
    private_key = _private_key(read("--tls-key", key))
    if private_key is None:
        raise ConfigError(f"--tls-key {key} is not a PEM private key (unencrypted: the worker asks no passphrase)")
    raw = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if private_key.public_key().public_bytes(*raw) != leaf.public_key().public_bytes(*raw):
        raise ConfigError(f"--tls-key {key} is not the private key of --tls-cert {cert}")
    if config.tls_client_ca is not None:
        certificates("--tls-client-ca", config.tls_client_ca)
    start, end = leaf.not_valid_before_utc, leaf.not_valid_after_utc
    dates = f"valid from {start:%Y-%m-%d %H:%M:%S} to {end:%Y-%m-%d %H:%M:%S} UTC"
    now = datetime.datetime.now(datetime.UTC)
    if now < start:
        raise ConfigError(f"--tls-cert {cert} is not valid yet: {dates}")
    if now > end:
        raise ConfigError(f"--tls-cert {cert} has expired: {dates}")
    names = _certificate_names(leaf)
    if not _covers(names, config.host):
        log.warning("--tls-cert %s names %s, not --host %s: clients connecting by %s will refuse it "
                    "(fine if they connect by one of its names)", cert, ", ".join(names) or "nothing",
                    config.host, config.host)


def _private_key(data: bytes):
    """The unencrypted PEM private key in ``data``, or None."""
    from cryptography.hazmat.primitives import serialization

    try:
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):  # not a key; encrypted (TypeError: a password is needed)
        return None


def _certificate_names(cert) -> list[str]:
    """The subjectAltName DNS names and IPs of ``cert`` (its common name when it has none, as old clients read)."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return [*sans.get_values_for_type(x509.DNSName), *map(str, sans.get_values_for_type(x509.IPAddress))]


def _covers(names: list[str], host: str) -> bool:
    """Whether a client connecting by ``host`` accepts a certificate for ``names`` (one-label wildcards)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        labels = host.lower().rstrip(".").split(".")
        return any(_dns_match(name.lower().rstrip(".").split("."), labels) for name in names)
    if address.is_unspecified:  # every interface: clients connect by names and addresses we cannot know
        return True
    return any(name == str(address) for name in names)


def _dns_match(pattern: list[str], labels: list[str]) -> bool:
    return len(pattern) == len(labels) and pattern[0] in ("*", labels[0]) and pattern[1:] == labels[1:]
