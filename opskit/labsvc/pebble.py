"""The lab's ACME CA: Debian's `pebble` (a test-only ACME server) on the lab bridge.

`inv lab.up` runs ``/usr/bin/pebble -config <state_dir>/services/pebble/pebble.json`` with
``PEBBLE_VA_ALWAYS_VALID=1`` (the lab has no DNS: every challenge is taken as valid without
pebble fetching it), ``PEBBLE_VA_NOSLEEP=1`` and ``PEBBLE_WFE_NONCEREJECT=0`` (pebble otherwise
rejects 5% of good nonces on purpose, which makes tests flaky). Before it starts, ``prepare``
writes:

* ``pki/ca.pem``, ``pki/ca.key``: a CA of the lab's own, made once, that signs
* ``pki/server.pem``, ``pki/server.key``: the certificate of pebble's HTTPS listener, for the
  bridge address. Lab hosts trust the ACME endpoint through ``certbot_acme_ca_file`` (the lab
  inventory points it at ``pki/ca.pem``); production hosts use the system's CAs.
* ``pebble.json``: listen on ``<gateway>:14000``, management interface off, 90-day certificates
  (Let's Encrypt's lifetime; bookworm's pebble 2.4 issues 5-year ones unless told).

Pebble keeps everything in memory: its issuing root and intermediate are new at every start
(``inv certs.status`` shows "Pebble Intermediate CA <random>" as issuer), and it forgets the
ACME accounts hosts registered; ``opskit.certs`` re-registers a host whose account the server
no longer knows.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
from pathlib import Path

PORT = 14000
PEBBLE = "/usr/bin/pebble"
SERVER_NAME = "acme.opskit.lab"
CA_NAME = "opskit lab ACME CA"
VALIDITY_SECONDS = 90 * 24 * 3600
ENV = {"PEBBLE_VA_ALWAYS_VALID": "1", "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0"}


def config(address: str, pki: Path) -> dict[str, object]:
    """pebble's configuration (its JSON file) for a listener on `address`.

    >>> config("10.213.4.1", Path("/x"))["pebble"]["listenAddress"]
    '10.213.4.1:14000'
    """
    return {
        "pebble": {
            "listenAddress": f"{address}:{PORT}",
            "managementListenAddress": "",  # off: nothing in opskit needs it
            "certificate": str(pki / "server.pem"),
            "privateKey": str(pki / "server.key"),
            # Where pebble would fetch HTTP-01/TLS-ALPN-01 challenges (unused: always valid).
            "httpPort": 80,
            "tlsPort": 443,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
            "certificateValidityPeriod": VALIDITY_SECONDS,
        }
    }


def directory_url(address: str) -> str:
    """The ACME directory URL the lab inventory gives the hosts (certbot_acme_server)."""
    return f"https://{address}:{PORT}/dir"


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def ensure_pki(directory: Path, address: str) -> Path:
    """Make ``directory/{ca,server}.{pem,key}`` once (the server certificate names `address`)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    server_pem = directory / "server.pem"
    have = all((directory / f).exists() for f in ("ca.pem", "server.pem", "server.key"))
    if have and _names(server_pem, address):
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME)])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_subject)
        .issuer_name(ca_subject)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SERVER_NAME)]))
        .issuer_name(ca_subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=825))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(SERVER_NAME), x509.IPAddress(ipaddress.ip_address(address))]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    pkcs8 = serialization.PrivateFormat.PKCS8
    none = serialization.NoEncryption()
    _write_private(directory / "ca.key", ca_key.private_bytes(pem, pkcs8, none))
    (directory / "ca.pem").write_bytes(ca_cert.public_bytes(pem))
    _write_private(directory / "server.key", key.private_bytes(pem, pkcs8, none))
    server_pem.write_bytes(cert.public_bytes(pem))
    return directory


def _names(pem: Path, address: str) -> bool:
    """Whether the certificate in `pem` names the IP `address` (the bridge may have moved)."""
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(pem.read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return False
    return ipaddress.ip_address(address) in san.get_values_for_type(x509.IPAddress)


def prepare(directory: Path, address: str) -> Path:
    """Write pebble's PKI and configuration under `directory`; return the config file."""
    if not Path(PEBBLE).exists():
        from opskit.lab import LabError

        raise LabError(
            f"{PEBBLE} is missing: the lab's ACME CA is Debian's pebble package "
            "(run: bash scripts/bootstrap, or apt-get install pebble)"
        )
    pki = ensure_pki(directory / "pki", address)
    path = directory / "pebble.json"
    path.write_text(json.dumps(config(address, pki), indent=2) + "\n")
    return path
