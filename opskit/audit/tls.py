"""The certificate check of `inv audit`: a verifying TLS handshake for each name a web host
serves (chain against audit_tls_ca_file or this machine's CAs, names, dates), and the days
left against certbot_warning_days / certbot_critical_days."""

from __future__ import annotations

import datetime as dt
import ssl
from collections.abc import Callable

from opskit.audit import http as audit_http
from opskit.audit.findings import Finding
from opskit.audit.settings import Settings
from opskit.certs.read import parse_certificate
from opskit.checks.levels import Severity


def judge_certificate(
    address: str,
    name: str,
    der: bytes | None,
    s: Settings,
    host: str,
    *,
    verify: Callable[..., audit_http.TlsVerdict] = audit_http.verify_tls,
    now: dt.datetime | None = None,
) -> list[Finding]:
    """Chain, names and dates of the certificate served for `name` (a verifying handshake),
    and its days left against certbot_warning_days / certbot_critical_days."""
    verdict = verify(address, name, ca_file=s.tls_ca_file, timeout=s.http_timeout)
    anchor = (
        f"the CAs in {s.tls_ca_file} (audit_tls_ca_file)"
        if s.tls_ca_file
        else ("this machine's CAs")
    )
    renew = f"run `inv certs.renew --hosts {host}` (or `inv provision --hosts {host}`)"
    out = []
    info = parse_certificate(ssl.DER_cert_to_PEM_cert(der).encode()) if der else None
    brief = f"{info.brief()}, issuer {info.issuer!r}, names {', '.join(info.names)}" if info else ""
    if verdict.connect_error:
        return [
            Finding(
                "certificate",
                Severity.HIGH,
                f"no TLS handshake for {name}",
                f"{address}:443 with SNI {name}: {verdict.connect_error}",
                renew,
            )
        ]
    if not verdict.ok:
        if verdict.code == 10:
            sev, title = Severity.CRITICAL, f"certificate for {name} has expired"
        elif verdict.code == 62:
            sev, title = Severity.HIGH, f"certificate served for {name} does not name it"
        else:
            sev, title = Severity.HIGH, f"certificate for {name} is not trusted"
        fix = renew
        if verdict.code in (2, 19, 20, 21):
            fix = f"{renew}; if the CA is private (the lab's pebble), name it in audit_tls_ca_file"
        out.append(
            Finding(
                "certificate",
                sev,
                title,
                f"{verdict.message} (checked against {anchor}); served: {brief}",
                fix,
            )
        )
    if info is not None:
        days = info.days_left(now or dt.datetime.now(dt.UTC))
        if 0 <= days < s.critical_days:
            out.append(
                Finding(
                    "certificate",
                    Severity.HIGH,
                    f"certificate for {name} expires in {days} day(s)",
                    brief,
                    renew,
                )
            )
        elif 0 <= days < s.warning_days:
            out.append(
                Finding(
                    "certificate",
                    Severity.MEDIUM,
                    f"certificate for {name} expires in {days} days",
                    brief,
                    renew,
                )
            )
    return out
