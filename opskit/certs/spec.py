"""What the certbot role and its users share: the paths certbot and opskit keep on a host, the
certificates an inventory declares, and the certbot role's variables (roles/certbot/README.md).

On a host, certbot keeps each certificate as a *lineage*: ``/etc/letsencrypt/renewal/<name>.conf``
(how to renew it, from which ACME server) and ``/etc/letsencrypt/live/<name>/{cert,chain,
fullchain,privkey}.pem``. opskit adds:

* ``/usr/local/sbin/opskit-certbot``: certbot with the environment of the renewal timer (the ACME
  server's CA in the lab), a check that the ACME server answers before anything is asked of it,
  and re-registration when the server says it no longer knows the host's account;
* a deploy hook in ``renewal-hooks/deploy/`` that runs ``nginx -t`` and reloads nginx only when
  the test passes, and records what it did in ``/var/lib/opskit/certbot/deploy-hook.log``.

The resource kinds of the role are in opskit.certs.resources; reading and judging certificates
(`inv certs.status`) in opskit.certs.read and opskit.certs.judge; renewing (`inv certs.renew`) in
opskit.certs.renew.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opskit.core.errors import ConfigError

LETSENCRYPT = "/etc/letsencrypt"
RENEWAL_DIR = f"{LETSENCRYPT}/renewal"
LIVE_DIR = f"{LETSENCRYPT}/live"
HOOKS_DIR = f"{LETSENCRYPT}/renewal-hooks"
DEPLOY_HOOK = f"{HOOKS_DIR}/deploy/50-opskit-nginx-reload"
WRAPPER = "/usr/local/sbin/opskit-certbot"
CONF_DIR = "/etc/opskit/certbot"
ENV_FILE = f"{CONF_DIR}/env"
CA_FILE = f"{CONF_DIR}/acme-ca.pem"
STATE_DIR = "/var/lib/opskit/certbot"
HOOK_LOG = f"{STATE_DIR}/deploy-hook.log"
SERVICE_DROPIN = "/etc/systemd/system/certbot.service.d/opskit.conf"
EXIT_ACME_UNREACHABLE = 69  # the wrapper's exit code when the ACME server does not answer

_DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9-]{1,63}$")
_CERT_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}$")
_EMAIL = re.compile(r"^[^@\s,;'\"]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}$")


# --- what the inventory declares ----------------------------------------------------------


@dataclass(frozen=True)
class CertSpec:
    """One certificate: its lineage name and the names it covers (the first is the main one)."""

    name: str
    domains: tuple[str, ...]

    @property
    def cert_dir(self) -> str:
        return f"{LIVE_DIR}/{self.name}"


def declared_certificates(v: Mapping[str, Any]) -> tuple[CertSpec, ...]:
    """The certificates of `certbot_certificates`, checked (ConfigError names the entry).

    >>> declared_certificates({"certbot_certificates": [{"domains": ["a.example", "b.example"]}]})
    (CertSpec(name='a.example', domains=('a.example', 'b.example')),)
    >>> declared_certificates({"certbot_certificates": [{"domains": ["*.example"]}]})
    ... # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    opskit.core.errors.ConfigError: certbot_certificates[0].domains: '*.example': wildcards need ...
    """
    raw = v.get("certbot_certificates") or []
    if not isinstance(raw, list):
        raise ConfigError(
            "certbot_certificates: expected a list of {domains: [name, ...], name: lineage}"
        )
    out: list[CertSpec] = []
    seen: dict[str, str] = {}
    for i, item in enumerate(raw):
        where = f"certbot_certificates[{i}]"
        if not isinstance(item, dict) or "domains" not in item or set(item) - {"domains", "name"}:
            raise ConfigError(f"{where}: expected {{domains: [name, ...]}} (and optionally name)")
        domains = item["domains"]
        if not isinstance(domains, list) or not domains:
            raise ConfigError(f"{where}.domains: expected a non-empty list of DNS names")
        for d in domains:
            if not isinstance(d, str):
                raise ConfigError(f"{where}.domains: {d!r} is not a DNS name")
            if d.startswith("*"):
                raise ConfigError(
                    f"{where}.domains: {d!r}: wildcards need a DNS-01 challenge; the certbot "
                    "role uses webroot (HTTP-01)"
                )
            if not _DOMAIN.match(d):
                raise ConfigError(
                    f"{where}.domains: {d!r} is not a fully qualified DNS name in lower case"
                )
            if d in seen:
                raise ConfigError(f"{where}.domains: {d!r} is already in {seen[d]}")
            seen[d] = where
        name = item.get("name") or domains[0]
        if not isinstance(name, str) or not _CERT_NAME.match(name):
            raise ConfigError(
                f"{where}.name: {name!r}: lower-case letters, digits, '.', '_' and '-'"
            )
        if any(c.name == name for c in out):
            raise ConfigError(f"{where}.name: {name!r} names two certificates")
        out.append(CertSpec(name, tuple(domains)))
    return tuple(out)


def tls_site_name(app: str, cert: CertSpec) -> str:
    """File name of a certificate's TLS site in /etc/nginx/sites-{available,enabled}/.

    >>> tls_site_name("shop", CertSpec("shop.example.com", ("shop.example.com",)))
    'opskit-shop-tls-shop.example.com.conf'
    """
    return f"opskit-{app}-tls-{cert.name}.conf"


def tls_site_paths(v: Mapping[str, Any], cert: CertSpec) -> tuple[str, str]:
    """(sites-available, sites-enabled) paths of a certificate's TLS site for the host's app.

    >>> tls_site_paths({"app_name": "shop"}, CertSpec("a.example", ("a.example",)))[1]
    '/etc/nginx/sites-enabled/opskit-shop-tls-a.example.conf'
    """
    name = tls_site_name(str(v.get("app_name", "app")), cert)
    return f"/etc/nginx/sites-available/{name}", f"/etc/nginx/sites-enabled/{name}"


def register_args(v: Mapping[str, Any]) -> tuple[str, ...]:
    """certbot's options to register an ACME account non-interactively (email or none)."""
    email = str(v.get("certbot_email") or "")
    who = ("--email", email) if email else ("--register-unsafely-without-email",)
    return ("--agree-tos", "--no-eff-email", *who)


def check_vars(v: Mapping[str, Any]) -> tuple[CertSpec, ...]:
    """Validate the certbot role's variables; return the declared certificates."""
    certs = declared_certificates(v)
    server = v["certbot_acme_server"]
    if not isinstance(server, str) or not re.fullmatch(r"https://[A-Za-z0-9.\-\[\]:]+/\S*", server):
        raise ConfigError(
            f"certbot_acme_server: expected the https:// URL of an ACME directory, got {server!r}"
        )
    email = v["certbot_email"]
    if email and (not isinstance(email, str) or not _EMAIL.match(email)):
        raise ConfigError(f"certbot_email: not an email address: {email!r}")
    if certs and v["certbot_agree_tos"] is not True:
        raise ConfigError(
            "certbot_agree_tos: certificates are declared, but the ACME server's terms of "
            f"service are not agreed to; read them (the directory {server} links them) and "
            "set certbot_agree_tos: true"
        )
    webroot = v["certbot_webroot"]
    if not isinstance(webroot, str) or not re.fullmatch(r"/[\w./-]+", webroot):
        raise ConfigError(f"certbot_webroot: expected an absolute path, got {webroot!r}")
    warning, critical = v["certbot_warning_days"], v["certbot_critical_days"]
    for key, value in (("certbot_warning_days", warning), ("certbot_critical_days", critical)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"{key}: expected whole days >= 0, got {value!r}")
    if critical > warning:
        raise ConfigError(
            f"certbot_critical_days ({critical}) is more than certbot_warning_days ({warning})"
        )
    if certs and "nginx_server_names" not in v:
        raise ConfigError(
            "certbot_certificates: the host needs the nginx role too (it serves the ACME "
            "challenges from certbot_webroot and the certificates over HTTPS)"
        )
    return certs


def read_ca_file(
    name: str, base: Path, key: str = "certbot_acme_ca_file", made: str = "the lab ACME server's CA"
) -> str | None:
    """The PEM text of the CA file variable `key` names (`name`, read on the operator's machine,
    relative to `base`), or None when empty; `made` says what `inv lab.up` writes there."""
    if not name:
        return None
    path = Path(name).expanduser()
    path = path if path.is_absolute() else base / path
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(
            f"{key}: cannot read {path}: {exc.strerror} (in the lab, `inv lab.up` makes {made})"
        ) from None
    if "-----BEGIN CERTIFICATE-----" not in text:
        raise ConfigError(f"{key}: {path} holds no PEM certificate")
    return text


def thresholds(v: Mapping[str, Any]) -> tuple[int, int]:
    """(warning, critical) days of a host: certbot_warning_days / _critical_days (30 / 7)."""
    warning = v.get("certbot_warning_days", 30)
    critical = v.get("certbot_critical_days", 7)
    for key, value in (("certbot_warning_days", warning), ("certbot_critical_days", critical)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"{key}: expected whole days >= 0, got {value!r}")
    if critical > warning:
        raise ConfigError(
            f"certbot_critical_days ({critical}) is more than certbot_warning_days ({warning})"
        )
    return warning, critical
