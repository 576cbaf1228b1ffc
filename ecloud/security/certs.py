"""A private certificate authority for a cluster's broker (``ecloud certs init``).

The broker's TLS listener proves itself with a server certificate signed by
a CA of the cluster's own; the boss and the workers trust that CA alone
(they get ``ca.pem``, never its key). A client certificate for the boss is
made too, for brokers set to require one; workers authenticate with their
own username and password instead (:mod:`ecloud.security.accounts`), which
the boss can hand out and take back without a CA at hand.

Files written into the target folder (keys mode 0600, the folder 0700)::

    ca.pem  ca.key            the authority (keep ca.key offline if you can)
    server.pem  server.key    the broker's, for the names given with --host
    client.pem  client.key    the boss's client certificate

Keys are ECDSA P-256; certificates SHA-256 signed, valid ``days`` days. An
existing file is never overwritten: making new keys for a running cluster
is a decision, not a side effect (remove the folder to start over).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ecloud.errors import UserError

FILES = ("ca.pem", "ca.key", "server.pem", "server.key", "client.pem", "client.key")


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ecloud"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _san(host: str) -> x509.GeneralName:
    """An IP address entry for an address, a DNS entry for anything else
    (TLS clients check IP hosts against IP entries only)."""
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _certificate(subject: x509.Name, key: ec.EllipticCurvePrivateKey, issuer: x509.Name,
                 issuer_key: ec.EllipticCurvePrivateKey, days: int,
                 extensions: list[tuple[x509.ExtensionType, bool]]) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder()
               .subject_name(subject).issuer_name(issuer).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=days)))
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, data: bytes, secret: bool) -> None:
    """Create ``path`` (never replacing one); keys are 0600 from the start."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if secret else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _key_bytes(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def init_certs(folder: str | os.PathLike, hosts: list[str], cluster: str, days: int = 825) -> list[Path]:
    """Write a CA, a server certificate for ``hosts`` and a client
    certificate into ``folder``; return the paths written. Raises
    :class:`UserError` if any of them exists or the folder is unusable."""
    if not hosts:
        raise UserError("give the broker's host name(s) or address(es) with --host")
    target = Path(folder)
    existing = [name for name in FILES if (target / name).exists()]
    if existing:
        raise UserError(f"{target} already holds {', '.join(existing)}: remove them (or the "
                        "folder) to make new ones; nothing was written")
    try:
        target.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {target}: {exc.strerror or exc}") from None

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name(f"ecloud {cluster} CA")
    ca = _certificate(ca_name, ca_key, ca_name, ca_key, days, [
        (x509.BasicConstraints(ca=True, path_length=0), True),
        (x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                       key_agreement=False, encipher_only=False, decipher_only=False), True),
    ])
    leaf_usage = x509.KeyUsage(digital_signature=True, key_encipherment=False,
                               content_commitment=False, data_encipherment=False,
                               key_agreement=True, key_cert_sign=False, crl_sign=False,
                               encipher_only=False, decipher_only=False)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _certificate(_name(hosts[0]), server_key, ca_name, ca_key, days, [
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (leaf_usage, True),
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
        (x509.SubjectAlternativeName([_san(h) for h in hosts]), False),
    ])
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = _certificate(_name(f"ecloud-{cluster}-boss"), client_key, ca_name, ca_key, days, [
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (leaf_usage, True),
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False),
    ])
    pem = serialization.Encoding.PEM
    contents = {
        "ca.pem": (ca.public_bytes(pem), False), "ca.key": (_key_bytes(ca_key), True),
        "server.pem": (server.public_bytes(pem), False),
        "server.key": (_key_bytes(server_key), True),
        "client.pem": (client.public_bytes(pem), False),
        "client.key": (_key_bytes(client_key), True),
    }
    written: list[Path] = []
    try:
        for name, (data, secret) in contents.items():
            _write(target / name, data, secret)
            written.append(target / name)
    except OSError as exc:
        for path in written:  # all or nothing: half a CA is worse than none
            path.unlink(missing_ok=True)
        raise UserError(f"cannot write into {target}: {exc.strerror or exc}") from None
    return written
