"""Reading the certificates of a host in one remote command: every lineage (declared or found on
disk) with its renewal server, the certificate on disk, the one nginx serves for its main name,
certbot.timer and the deploy hook's log. Judging what was read: opskit.certs.judge.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from opskit.certs.spec import HOOK_LOG, LIVE_DIR, RENEWAL_DIR, CertSpec
from opskit.core.errors import ConfigError
from opskit.resources import q


@dataclass(frozen=True)
class CertInfo:
    """What matters of one X.509 certificate."""

    fingerprint: str  # sha256 of the DER, hex
    serial: str  # hex
    names: tuple[str, ...]  # DNS names (subjectAltName)
    not_before: dt.datetime
    not_after: dt.datetime
    issuer: str  # the issuer's CN (else the whole issuer name)

    def days_left(self, now: dt.datetime) -> int:
        """Whole days until not-after (negative once expired)."""
        return int((self.not_after - now).total_seconds() // 86400)

    def brief(self) -> str:
        return f"serial {self.serial[:16]}, not after {self.not_after:%Y-%m-%d %H:%M} UTC"


def info_json(c: CertInfo | None) -> dict[str, Any] | None:
    """A certificate as `--json` output shows it (None stays None)."""
    if c is None:
        return None
    return {
        "names": list(c.names),
        "serial": c.serial,
        "fingerprint_sha256": c.fingerprint,
        "not_before": c.not_before.isoformat(),
        "not_after": c.not_after.isoformat(),
        "issuer": c.issuer,
    }


def parse_certificate(pem: bytes) -> CertInfo:
    """Read the first certificate of a PEM text (ValueError when there is none)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    cert = x509.load_pem_x509_certificate(pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = tuple(san.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        names = ()
    cns = cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
    issuer = str(cns[0].value) if cns else cert.issuer.rfc4514_string()
    return CertInfo(
        fingerprint=cert.fingerprint(hashes.SHA256()).hex(),
        serial=f"{cert.serial_number:x}",
        names=names,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        issuer=issuer,
    )


@dataclass(frozen=True)
class Lineage:
    """One certificate as found on a host: declared in the inventory, on disk, served."""

    name: str
    declared: CertSpec | None
    server: str  # the renewal configuration's ACME server ("" when there is none)
    disk: CertInfo | None  # /etc/letsencrypt/live/<name>/cert.pem
    served: CertInfo | None  # what nginx presents on 127.0.0.1:443 for the name (SNI)
    sni: str = ""


@dataclass(frozen=True)
class HookRun:
    """One line of the deploy hook's log."""

    time: str
    name: str
    result: str  # "reloaded" or "failed"
    message: str

    def describe(self) -> str:
        return f"{self.time} {self.result}: {self.message}"


def parse_hook_log(text: str) -> list[HookRun]:
    """Parse the deploy hook's log (time, lineage, result, message; tab-separated).

    >>> parse_hook_log("2026-01-01T00:00:00Z\\tshop\\treloaded\\tnginx -t passed\\n")[0].result
    'reloaded'
    """
    out = []
    for line in text.splitlines():
        parts = line.split("\t", 3)
        if len(parts) == 4:
            out.append(HookRun(*parts))
    return out


@dataclass(frozen=True)
class HostCerts:
    """Everything `certs.status` read on one host (or why it could not)."""

    host: str
    lineages: tuple[Lineage, ...] = ()
    timer: str = ""  # "<is-enabled>|<is-active>" of certbot.timer
    hook_count: int = 0  # lines in the deploy hook's log
    hooks: tuple[HookRun, ...] = ()  # its last lines
    error: str | None = None
    unreachable: bool = False

    def lineage(self, name: str) -> Lineage | None:
        return next((x for x in self.lineages if x.name == name), None)

    def last_hook(self, name: str) -> HookRun | None:
        return next((h for h in reversed(self.hooks) if h.name == name), None)


def collect_script(declared: Sequence[CertSpec]) -> str:
    """Read-only shell printing every lineage (declared or on disk) of a host: its renewal
    server, its certificate, and the one nginx serves on 127.0.0.1:443 for its main name."""
    pairs = " ".join(q(f"{c.name}|{c.domains[0]}") for c in declared)
    hook = q(HOOK_LOG)
    return f"""exec 2>/dev/null
_opskit_pairs=({pairs})
for _opskit_f in {RENEWAL_DIR}/*.conf; do
  [ -f "$_opskit_f" ] || continue
  _opskit_n=${{_opskit_f##*/}}; _opskit_pairs+=("${{_opskit_n%.conf}}|")
done
declare -A _opskit_seen=()
for _opskit_p in "${{_opskit_pairs[@]}}"; do
  _opskit_n=${{_opskit_p%%|*}}; _opskit_sni=${{_opskit_p#*|}}
  [ -z "${{_opskit_seen[$_opskit_n]+x}}" ] || continue; _opskit_seen[$_opskit_n]=1
  echo "@@cert $_opskit_n"
  echo "server $(sed -n 's/^server = //p' "{RENEWAL_DIR}/$_opskit_n.conf" | head -n 1)"
  _opskit_c="{LIVE_DIR}/$_opskit_n/cert.pem"
  [ -f "$_opskit_c" ] || continue
  echo "disk $(base64 -w0 < "$_opskit_c")"
  if [ -z "$_opskit_sni" ]; then
    _opskit_sni=$(openssl x509 -in "$_opskit_c" -noout -ext subjectAltName \
      | grep -o 'DNS:[^, ]*' | head -n 1 | cut -c5-)
  fi
  _opskit_sni=${{_opskit_sni:-$_opskit_n}}
  echo "sni $_opskit_sni"
  _opskit_s=$(timeout 10 openssl s_client -connect 127.0.0.1:443 -servername "$_opskit_sni" \
    </dev/null | openssl x509)
  echo "served $(printf '%s' "$_opskit_s" | base64 -w0)"
done
echo "@@timer $(systemctl is-enabled certbot.timer)|$(systemctl is-active certbot.timer)"
echo "@@hookcount $(cat {hook} | wc -l)"
echo "@@hook $(tail -n 50 {hook} | base64 -w0)"
true
"""


def _pem(b64: str) -> CertInfo | None:
    data = base64.b64decode(b64.strip() or b"")
    if b"BEGIN CERTIFICATE" not in data:
        return None
    return parse_certificate(data)


def parse_collect(host: str, out: str, declared: Sequence[CertSpec]) -> HostCerts:
    """Turn collect_script's output into a HostCerts."""
    by_name = {c.name: c for c in declared}
    lineages: list[Lineage] = []
    cur: dict[str, str] | None = None
    timer, count = "", 0
    hooks: tuple[HookRun, ...] = ()

    def close() -> None:
        if cur is not None:
            name = cur["name"]
            lineages.append(
                Lineage(
                    name,
                    by_name.get(name),
                    cur.get("server", ""),
                    _pem(cur.get("disk", "")),
                    _pem(cur.get("served", "")),
                    cur.get("sni", ""),
                )
            )

    for line in out.splitlines():
        key, _, value = line.partition(" ")
        if key == "@@cert":
            close()
            cur = {"name": value.strip()}
        elif key == "@@timer":
            close()
            cur = None
            timer = value.strip()
        elif key == "@@hookcount":
            count = int(value.strip() or 0)
        elif key == "@@hook":
            hooks = tuple(parse_hook_log(base64.b64decode(value.strip()).decode(errors="replace")))
        elif cur is not None and key in ("server", "disk", "sni", "served"):
            cur[key] = value.strip()
    close()
    return HostCerts(host, tuple(lineages), timer, count, hooks)


def read_host(remote: Any, declared: Sequence[CertSpec]) -> HostCerts:
    """Read every certificate of one host in one remote command."""
    out = remote.run(collect_script(declared), what="read certificates").stdout
    return parse_collect(remote.name, out, declared)


def cert_hosts(inventory: Any, selected: Sequence[Any], explicit: bool) -> list[Any]:
    """The hosts certs tasks work on: those selected with the certbot role (all selected ones
    when --hosts was given, which must then all have it)."""
    if not explicit:
        chosen = [h for h in selected if "certbot" in h.roles]
        if not chosen:
            raise ConfigError(f"{inventory.path}: no host has the certbot role")
        return chosen
    without = [h.name for h in selected if "certbot" not in h.roles]
    if without:
        raise ConfigError(f"--hosts: {', '.join(without)} do(es) not have the certbot role")
    return list(selected)
