"""The lab's ACME CA: Debian's `pebble` (a test-only ACME server) on the lab bridge.

Its configuration, environment variables and management interface are documented in its README:
https://github.com/letsencrypt/pebble.

`inv lab.up` runs ``/usr/bin/pebble -config <state_dir>/services/pebble/pebble.json`` with
``PEBBLE_VA_ALWAYS_VALID=1`` (the lab has no DNS: every challenge is taken as valid without
pebble fetching it), ``PEBBLE_VA_NOSLEEP=1`` and ``PEBBLE_WFE_NONCEREJECT=0`` (pebble otherwise
rejects 5% of good nonces on purpose, which makes tests flaky). Before it starts, ``prepare``
writes:

* ``pki/ca.pem``, ``pki/ca.key``: a CA of the lab's own, made once, that signs
* ``pki/server.pem``, ``pki/server.key``: the certificate of pebble's HTTPS listener, for the
  bridge address. Lab hosts trust the ACME endpoint through ``certbot_acme_ca_file`` (the lab
  inventory points it at ``pki/ca.pem``); production hosts use the system's CAs.
* ``pebble.json``: listen on ``<gateway>:14000``, its management interface on
  ``<gateway>:15000``, 90-day certificates (Let's Encrypt's lifetime; bookworm's pebble 2.4
  issues 5-year ones unless told).

Once it listens, ``save_roots`` writes ``roots.pem``: the issuing root of this run, from the
management interface (``/roots/0``), which the lab inventory gives ``inv audit`` as
``audit_tls_ca_file`` so the lab's certificates verify like Let's Encrypt's do in production.

Pebble keeps everything in memory: its issuing root and intermediate are new at every start
(``inv certs.status`` shows "Pebble Intermediate CA <random>" as issuer), and it forgets the
ACME accounts hosts registered; ``opskit.certs`` re-registers a host whose account the server no
longer knows.
"""

from __future__ import annotations

import ipaddress
import json
import time
from pathlib import Path

from opskit.lab.standins.pki import make_pki

PORT = 14000
MGMT_PORT = 15000
PEBBLE = "/usr/bin/pebble"
SERVER_NAME = "acme.opskit.lab"
CA_NAME = "opskit lab ACME CA"
VALIDITY_SECONDS = 90 * 24 * 3600
ENV = {"PEBBLE_VA_ALWAYS_VALID": "1", "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0"}


class PebbleError(RuntimeError):
    """pebble cannot be prepared or did not give its root; the message says why and what to do."""


def config(address: str, pki: Path) -> dict[str, object]:
    """pebble's configuration (its JSON file) for a listener on `address`.

    >>> config("10.213.4.1", Path("/x"))["pebble"]["listenAddress"]
    '10.213.4.1:14000'
    """
    return {
        "pebble": {
            "listenAddress": f"{address}:{PORT}",
            "managementListenAddress": f"{address}:{MGMT_PORT}",  # for roots.pem
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


def ensure_pki(directory: Path, address: str) -> Path:
    """Make ``directory/{ca,server}.{pem,key}`` once (the server certificate names `address`)."""
    server_pem = directory / "server.pem"
    have = all((directory / f).exists() for f in ("ca.pem", "server.pem", "server.key"))
    if have and _names(server_pem, address):
        return directory
    return make_pki(directory, ca_name=CA_NAME, server_name=SERVER_NAME, address=address)


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
        raise PebbleError(
            f"{PEBBLE} is missing: the lab's ACME CA is Debian's pebble package "
            "(run: bash scripts/bootstrap, or apt-get install pebble)"
        )
    pki = ensure_pki(directory / "pki", address)
    path = directory / "pebble.json"
    path.write_text(json.dumps(config(address, pki), indent=2) + "\n")
    return path


def save_roots(directory: Path, address: str, *, timeout: float = 20.0) -> Path:
    """Write the issuing root pebble made at this start to ``directory/roots.pem``."""
    import requests  # only the lab's `up` needs it, once pebble listens

    url = f"https://{address}:{MGMT_PORT}/roots/0"
    deadline = time.monotonic() + timeout
    while True:
        try:
            answer = requests.get(url, verify=str(directory / "pki" / "ca.pem"), timeout=5)
            if answer.ok and "BEGIN CERTIFICATE" in answer.text:
                break
            problem = f"HTTP {answer.status_code}"
        except requests.RequestException as exc:
            problem = str(exc)
        if time.monotonic() > deadline:
            raise PebbleError(f"pebble's root from {url}: {problem}")
        time.sleep(0.2)
    path = directory / "roots.pem"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(answer.text)
    tmp.replace(path)
    return path
