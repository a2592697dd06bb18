"""TLS certificates with certbot: what the inventory declares, the certbot role's resources,
and `inv certs.status` / `inv certs.renew` (roles/certbot/README.md).

On a host, certbot keeps each certificate as a *lineage*: ``/etc/letsencrypt/renewal/<name>.conf``
(how to renew it, from which ACME server) and ``/etc/letsencrypt/live/<name>/{cert,chain,
fullchain,privkey}.pem``. opskit adds:

* ``/usr/local/sbin/opskit-certbot``: certbot with the environment of the renewal timer (the ACME
  server's CA in the lab), a check that the ACME server answers before anything is asked of it,
  and re-registration when the server says it no longer knows the host's account;
* a deploy hook in ``renewal-hooks/deploy/`` that runs ``nginx -t`` and reloads nginx only when
  the test passes, and records what it did in ``/var/lib/opskit/certbot/deploy-hook.log``.

The first issuance is a chicken-and-egg: the HTTP-01 challenge needs nginx on port 80 before the
certificate exists, and nginx refuses a TLS server whose certificate file is missing. The converge
solves it in one run, in order: the nginx role serves the ACME webroot on port 80 (its default
server) and writes each certificate's TLS site to ``sites-available/`` (not yet enabled); the
certbot role then issues the certificate (a resource guarded by the lineage's existence, names,
ACME server and webroot), links the TLS site into ``sites-enabled/`` (kept only if ``nginx -t``
passes) and reloads nginx. A second run finds every guard satisfied and changes nothing; a failed
issuance leaves the host serving plain HTTP as before. Before anything changes, the probe of a
certificate that must be issued asks the ACME server's directory; if it does not answer, the run
stops with a clear error and nothing on the host was changed.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any

from opskit.core.errors import ConfigError, OpsError
from opskit.resources import NOTHING, Plan, Resource, Symlink

q = shlex.quote

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


# --- resources of the certbot role ----------------------------------------------------------


def _acme_answers(line: str) -> tuple[bool, str]:
    """Read the probe's `acme <curl exit> <output>` line: does the ACME directory answer?

    >>> _acme_answers("acme 0 200")
    (True, 'HTTP 200')
    >>> _acme_answers("acme 7 curl: (7) Failed to connect: Connection refused 000")
    (False, 'curl: (7) Failed to connect: Connection refused')
    >>> _acme_answers("acme 0 404")[0]
    False
    """
    _, rc, *rest = line.split(" ", 2)
    text = rest[0].strip() if rest else ""
    code = text[-3:] if re.search(r"\d{3}$", text) else ""
    message = text[: len(text) - len(code)].strip() if code else text
    if rc == "0" and code == "200":
        return True, "HTTP 200"
    if rc == "0":
        return False, f"it answered HTTP {code or '?'} (is it the URL of the ACME directory?)"
    return False, message or f"curl exit {rc}"


@dataclass(frozen=True)
class Certificate(Resource):
    """Certificate `spec` exists as a certbot lineage with exactly its names, from `server`;
    issued (or re-issued) with the webroot challenge through the opskit-certbot wrapper."""

    spec: CertSpec
    server: str
    webroot: str
    register: tuple[str, ...]

    @property
    def id(self) -> str:  # type: ignore[override]
        return f"certificate:{self.spec.name}"

    @property
    def want(self) -> str:
        return "".join(f"{d} " for d in sorted(set(self.spec.domains)))

    def probe(self) -> str:
        conf = q(f"{RENEWAL_DIR}/{self.spec.name}.conf")
        cert = q(f"{self.spec.cert_dir}/cert.pem")
        server = q(self.server)
        # The ACME directory is asked (read-only) only when the certificate must be issued, so
        # that an unreachable server stops the run before anything changed.
        webroot = q(self.webroot)
        return (
            f"_opskit_srv=$(sed -n 's/^server = //p' {conf} 2>/dev/null | head -n 1); "
            f"_opskit_w=$(sed -n 's/^webroot_path = //p' {conf} 2>/dev/null | head -n 1); "
            "_opskit_w=${_opskit_w%,}; "
            f'if [ -f {conf} ]; then echo "conf $_opskit_srv"; echo "webroot $_opskit_w"; '
            'else echo "conf -"; fi; '
            f"_opskit_h=''; if [ -f {cert} ]; then _opskit_h=$(openssl x509 -in {cert} -noout "
            "-ext subjectAltName 2>/dev/null | grep -o 'DNS:[^, ]*' | cut -c5- | LC_ALL=C sort -u "
            "| tr '\\n' ' '); fi; echo \"sans $_opskit_h\"; "
            f'if [ ! -f {conf} ] || [ "$_opskit_h" != {q(self.want)} ] || '
            f'[ "$_opskit_srv" != {server} ] || [ "$_opskit_w" != {webroot} ]; then '
            "if command -v curl >/dev/null 2>&1; then "
            f"_opskit_o=$(curl -sS -k --max-time 15 -o /dev/null -w '%{{http_code}}' -- {server} "
            "2>&1); echo \"acme $? $(printf '%s' \"$_opskit_o\" | tr '\\n' ' ')\"; "
            "else echo 'acme - no curl'; fi; fi"
        )

    def plan(self, state: str, changed: frozenset[str]) -> Plan:
        found: dict[str, str] = {}
        for line in state.strip("\n").split("\n"):
            key, _, value = line.partition(" ")
            found.setdefault(key, value.strip())
        conf = found.get("conf", "-")
        have = found.get("sans", "").split()
        acme = found.get("acme", "")
        names = ", ".join(self.spec.domains)
        force = False
        if conf == "-":
            reasons = (f"issue for {names} from {self.server}",)
        elif sorted(set(have)) != sorted(set(self.spec.domains)):
            reasons = (f"re-issue: names {', '.join(have) or '(none)'} -> {names}",)
        elif conf != self.server:
            reasons = (f"re-issue from {self.server} (was {conf})",)
            force = True
        elif found.get("webroot", "") != self.webroot:
            # The renewal would write challenges where nginx no longer serves them.
            reasons = (f"re-issue with webroot {self.webroot} (was {found.get('webroot') or '-'})",)
            force = True
        else:
            return NOTHING
        if acme and not acme.startswith("- "):
            answers, detail = _acme_answers(f"acme {acme}")
            if not answers:
                raise OpsError(
                    f"{self.id}: the ACME server {self.server} does not answer from this host "
                    f"({detail}); the certificate was not issued and nothing was changed. Check "
                    "certbot_acme_server, the host's network, or the CA's status, then run again."
                )
        return Plan(reasons, data={"force": force})

    def script(self, plan: Plan) -> str:
        args = [
            WRAPPER,
            "--check",
            self.server,
            "--",
            "certonly",
            "--non-interactive",
            *self.register,
            "--server",
            self.server,
            "--webroot",
            "--webroot-path",
            self.webroot,
            "--cert-name",
            self.spec.name,
        ]
        for d in self.spec.domains:
            args += ["-d", d]
        if plan.data.get("force"):
            args.append("--force-renewal")
        cmd = " ".join(q(a) for a in args)
        return (
            f"if ! _opskit_out=$({cmd} 2>&1); then "
            f'echo "certbot could not issue {self.spec.name} from {self.server}:" >&2; '
            "printf '%s\\n' \"$_opskit_out\" | grep -v -e '^Saving debug log' -e '^Ask for help' "
            "-e '^- - -' -e '^$' | tail -n 8 >&2; exit 70; fi"
        )


@dataclass(frozen=True)
class EnabledSite(Symlink):
    """`path` (in /etc/nginx/sites-enabled) points to `target`; kept only if `nginx -t` passes
    with it, else removed again and the run fails."""

    def plan(self, state: str, changed: frozenset[str]) -> Plan:
        plan = super().plan(state, changed)
        return Plan(("enable",)) if plan.reasons == ("create",) else plan

    def script(self, plan: Plan) -> str:
        p = q(self.path)
        return (
            f"{super().script(plan)}\n"
            f"if ! _opskit_out=$(nginx -t 2>&1); then rm -f -- {p}; "
            f'echo "nginx -t failed with {self.path} enabled; it was disabled again: '
            '$_opskit_out" >&2; exit 65; fi'
        )


@dataclass(frozen=True)
class NginxReload(Resource):
    """Handler: nginx is tested and reloaded once when a resource in `watch` changed (a new or
    re-issued certificate, a TLS site enabled)."""

    watch: tuple[str, ...]

    @property
    def id(self) -> str:  # type: ignore[override]
        return "reload:nginx (certificates)"

    def probe(self) -> str:
        return "true"

    def plan(self, state: str, changed: frozenset[str]) -> Plan:
        if changed & set(self.watch):
            return Plan(("reload nginx (a certificate or TLS site changed)",))
        return NOTHING

    def script(self, plan: Plan) -> str:
        return (
            'if ! _opskit_out=$(nginx -t 2>&1); then echo "nginx -t failed; nginx was not '
            'reloaded: $_opskit_out" >&2; exit 65; fi\n'
            "systemctl reload nginx"
        )


# Cron entries that run `certbot renew` (or the older `letsencrypt` / `certbot-auto`).
_RENEW = re.compile(r"(^|[\s/;&|(])(certbot|certbot-auto|letsencrypt)\s(.*\s)?renew(\s|$|;)")
_ENV_LINE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\s*=")
_CRONTAB_HEADER = ("# DO NOT EDIT THIS FILE", "# (")


def is_renew_line(line: str) -> bool:
    """Whether a crontab line schedules a certbot renewal.

    >>> is_renew_line("0 3 * * * root certbot renew --quiet")
    True
    >>> is_renew_line("0 */12 * * * root test -x /usr/bin/certbot && certbot -q renew")
    True
    >>> is_renew_line("# 0 3 * * * certbot renew"), is_renew_line("MAILTO=certbot renew")
    (False, False)
    >>> is_renew_line("0 3 * * * root /usr/local/bin/backup --certbot-renewal-report")
    False
    """
    s = line.strip()
    if not s or s.startswith("#") or _ENV_LINE.match(s):
        return False
    return bool(_RENEW.search(s))


def _is_job(line: str) -> bool:
    s = line.strip()
    return bool(s) and not s.startswith("#") and not _ENV_LINE.match(s)


@dataclass(frozen=True)
class CronFix:
    """What to do with one crontab that schedules certbot renewals."""

    kind: str  # "file" (/etc/crontab, /etc/cron.d/*) or "user" (a user's crontab)
    where: str  # path, or user name
    removed: tuple[str, ...]
    new_content: str | None  # None: remove the file / the user's crontab


def plan_cron_fixes(found: Sequence[tuple[str, str, str]]) -> list[CronFix]:
    """From (kind, path or user, content) of crontabs, what removes every renew entry (pure).

    A /etc/cron.d file left with no job goes; /etc/crontab stays; a user's crontab left empty is
    removed (`crontab -r`).

    >>> [f.new_content for f in plan_cron_fixes([("file", "/etc/cron.d/certbot",
    ...     "SHELL=/bin/sh\\n0 3 * * * root certbot -q renew\\n")])]
    [None]
    >>> plan_cron_fixes([("file", "/etc/crontab", "17 * * * * root cd / && run-parts x\\n"
    ...     "0 3 * * * root certbot renew\\n")])[0].new_content
    '17 * * * * root cd / && run-parts x\\n'
    """
    fixes = []
    for kind, where, content in found:
        lines = content.splitlines(keepends=True)
        removed = tuple(ln.rstrip("\n") for ln in lines if is_renew_line(ln))
        if not removed:
            continue
        kept = [ln for ln in lines if not is_renew_line(ln)]
        if kind == "user":
            kept = [ln for ln in kept if not ln.startswith(_CRONTAB_HEADER)]
        new: str | None = "".join(kept)
        if kind == "user" and not any(_is_job(ln) for ln in kept):
            new = None
        if kind == "file" and where != "/etc/crontab" and not any(_is_job(ln) for ln in kept):
            new = None
        fixes.append(CronFix(kind, where, removed, new))
    return fixes


@dataclass(frozen=True)
class NoDuplicateRenewCron(Resource):
    """No crontab schedules `certbot renew`: certbot.timer is the one scheduler. Entries in
    /etc/crontab, /etc/cron.d/* and users' crontabs are removed (Debian's own /etc/cron.d/certbot
    too: on systemd it only exists to do nothing)."""

    @property
    def id(self) -> str:  # type: ignore[override]
        return "cron:certbot renew (duplicates of certbot.timer)"

    def probe(self) -> str:
        pattern = q("certbot|letsencrypt")
        return (
            "for _opskit_f in /etc/crontab /etc/cron.d/*; do "
            f'if [ -f "$_opskit_f" ] && grep -qE {pattern} "$_opskit_f"; then '
            'echo "file $_opskit_f $(base64 -w0 < "$_opskit_f")"; fi; done; '
            "for _opskit_f in /var/spool/cron/crontabs/*; do "
            f'if [ -f "$_opskit_f" ] && grep -qE {pattern} "$_opskit_f"; then '
            'echo "user ${_opskit_f##*/} $(base64 -w0 < "$_opskit_f")"; fi; done'
        )

    @staticmethod
    def parse(state: str) -> list[tuple[str, str, str]]:
        found = []
        for line in state.splitlines():
            parts = line.split(" ", 2)
            if len(parts) == 3 and parts[0] in ("file", "user"):
                text = base64.b64decode(parts[2]).decode("utf-8", errors="replace")
                found.append((parts[0], parts[1], text))
            elif len(parts) == 2 and parts[0] in ("file", "user"):
                found.append((parts[0], parts[1], ""))
        return found

    def plan(self, state: str, changed: frozenset[str]) -> Plan:
        fixes = plan_cron_fixes(self.parse(state))
        if not fixes:
            return NOTHING
        reasons, diffs = [], []
        for f in fixes:
            label = f.where if f.kind == "file" else f"{f.where}'s crontab"
            verb = "remove" if f.new_content is None else f"remove {len(f.removed)} line(s) from"
            reasons.append(f"{verb} {label}")
            diffs.append(
                f"--- {label}\n+++ {label} (new)\n" + "".join(f"-{ln}\n" for ln in f.removed)
            )
        return Plan(tuple(reasons), "".join(diffs), {"fixes": fixes})

    def script(self, plan: Plan) -> str:
        out = []
        for f in plan.data["fixes"]:
            if f.kind == "user":
                user = q(f.where)
                if f.new_content is None:
                    out.append(f"crontab -u {user} -r")
                else:
                    b64 = base64.b64encode(f.new_content.encode()).decode()
                    out.append(f"printf '%s' {q(b64)} | base64 -d | crontab -u {user} -")
            elif f.new_content is None:
                out.append(f"rm -f -- {q(f.where)}")
            else:
                p = q(f.where)
                b64 = base64.b64encode(f.new_content.encode()).decode()
                out.append(
                    f'_opskit_tmp=$(mktemp -- "$(dirname -- {p})/.opskit.XXXXXX") && '
                    f"printf '%s' {q(b64)} | base64 -d > \"$_opskit_tmp\" && "
                    f'chmod --reference={p} "$_opskit_tmp" && mv -f -- "$_opskit_tmp" {p}; '
                    "_opskit_tmp=''"
                )
        return "\n".join(out)


# --- reading certificates: inv certs.status ------------------------------------------------


class Health(IntEnum):
    """State of one certificate, in order of severity."""

    OK = 0
    WARNING = 1
    CRITICAL = 2


class CertsExit(IntEnum):
    """Exit codes of `inv certs.status`: the worst state found (see exit_code)."""

    OK = 0
    HOST_FAILED = 1  # a host could not be read (as every task); no certificate was critical
    USAGE = 2  # bad arguments or inventory; nothing was read
    WARNING = 4  # the worst certificate is in the warning window
    CRITICAL = 5  # a certificate is critical: expiring, expired, missing, or not the one served


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


@dataclass(frozen=True)
class CertStatus:
    """The verdict on one certificate of one host."""

    host: str
    lineage: Lineage
    state: Health
    days_left: int | None
    served: str  # "same", "different", "none" (nothing on 443), "-" (no certificate on disk)
    problems: tuple[str, ...]
    last_hook: HookRun | None = None


def evaluate(
    lineage: Lineage,
    now: dt.datetime,
    *,
    warning_days: int,
    critical_days: int,
    host: str = "",
    last_hook: HookRun | None = None,
) -> CertStatus:
    """Judge one certificate (pure): expiry against the thresholds, and, for a certificate the
    inventory declares, whether it covers the declared names and is the one nginx serves."""
    problems: list[str] = []
    state = Health.OK

    def worse(level: Health, problem: str) -> None:
        nonlocal state
        state = max(state, level)
        problems.append(problem)

    disk, served = lineage.disk, lineage.served
    if disk is None:
        worse(
            Health.CRITICAL,
            f"declared but not issued: no {LIVE_DIR}/{lineage.name}/cert.pem (run inv provision)",
        )
        return CertStatus(host, lineage, state, None, "-", tuple(problems), last_hook)
    days = disk.days_left(now)
    if disk.not_after <= now:
        worse(Health.CRITICAL, f"EXPIRED on {disk.not_after:%Y-%m-%d %H:%M} UTC")
    elif days < critical_days:
        worse(Health.CRITICAL, f"expires in {days} day(s) (critical below {critical_days})")
    elif days < warning_days:
        worse(Health.WARNING, f"expires in {days} days (warning below {warning_days})")
    if served is None:
        match = "none"
    elif served.fingerprint == disk.fingerprint:
        match = "same"
    else:
        match = "different"
    if lineage.declared is not None:
        missing = sorted(set(lineage.declared.domains) - set(disk.names))
        if missing:
            worse(Health.WARNING, f"does not cover {', '.join(missing)} (run inv provision)")
        hook = f"; last deploy hook: {last_hook.describe()}" if last_hook else ""
        if match == "none":
            worse(
                Health.CRITICAL,
                f"nginx serves nothing on port 443 for {lineage.sni} (is its TLS site enabled? "
                "run inv provision)",
            )
        elif match == "different" and served is not None:
            worse(
                Health.CRITICAL,
                f"nginx serves another certificate for {lineage.sni} ({served.brief()}, "
                f"issuer {served.issuer!r}): it has not been reloaded since the certificate "
                f"on disk changed{hook}",
            )
    elif match != "same":
        problems.append("not declared in the inventory: opskit does not serve it")
    return CertStatus(host, lineage, state, days, match, tuple(problems), last_hook)


def read_host(remote: Any, declared: Sequence[CertSpec]) -> HostCerts:
    """Read every certificate of one host in one remote command."""
    out = remote.run(collect_script(declared), what="read certificates").stdout
    return parse_collect(remote.name, out, declared)


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


@dataclass(frozen=True)
class StatusReport:
    """`inv certs.status` for all selected hosts."""

    hosts: tuple[HostCerts, ...]
    statuses: tuple[CertStatus, ...]
    now: dt.datetime

    @property
    def worst(self) -> Health:
        return max((s.state for s in self.statuses), default=Health.OK)

    @property
    def exit_code(self) -> CertsExit:
        """CRITICAL if any certificate is critical, else HOST_FAILED if a host could not be
        read, else WARNING if any is in the warning window, else OK."""
        if self.worst is Health.CRITICAL:
            return CertsExit.CRITICAL
        if any(h.error for h in self.hosts):
            return CertsExit.HOST_FAILED
        if self.worst is Health.WARNING:
            return CertsExit.WARNING
        return CertsExit.OK


def build_report(
    hosts: Sequence[HostCerts], settings: Mapping[str, tuple[int, int]], now: dt.datetime
) -> StatusReport:
    """Judge every certificate of every host that could be read (pure)."""
    statuses = []
    for h in hosts:
        if h.error:
            continue
        warning, critical = settings[h.host]
        for lineage in h.lineages:
            statuses.append(
                evaluate(
                    lineage,
                    now,
                    warning_days=warning,
                    critical_days=critical,
                    host=h.host,
                    last_hook=h.last_hook(lineage.name),
                )
            )
    return StatusReport(tuple(hosts), tuple(statuses), now)


def _timer_text(timer: str) -> str:
    enabled, _, active = timer.partition("|")
    return f"certbot.timer {enabled or 'missing'}, {active or 'unknown'}"


def format_status(report: StatusReport) -> str:
    """The report as a person reads it: per host, one line per certificate, problems below."""
    lines = []
    for h in report.hosts:
        if h.error:
            label = "UNREACHABLE" if h.unreachable else "FAILED"
            lines.append(f"[{h.host}] {label}  {h.error.splitlines()[0]}")
            lines += [f"    {x}" for x in h.error.splitlines()[1:]]
            continue
        mine = [s for s in report.statuses if s.host == h.host]
        lines.append(f"[{h.host}] {len(mine)} certificate(s); renewal: {_timer_text(h.timer)}")
        for s in mine:
            d = s.lineage.disk
            served = {"same": "served=disk", "different": "SERVED!=DISK", "none": "NOT SERVED"}
            head = f"  {s.state.name.lower():<8}  {s.lineage.name}"
            if d is None:
                lines.append(f"{head}  not issued")
            else:
                lines.append(
                    f"{head}  {s.days_left} days left (not after {d.not_after:%Y-%m-%d %H:%M} "
                    f"UTC)  {served.get(s.served, s.served)}"
                )
                lines.append(f"{'':12}issuer {d.issuer!r}; names: {', '.join(d.names) or '-'}")
            lines += [f"{'':12}! {p}" for p in s.problems]
    counts = {h: sum(1 for s in report.statuses if s.state is h) for h in Health}
    failed = sum(1 for h in report.hosts if h.error)
    lines.append(
        f"{len(report.hosts)} host(s), {len(report.statuses)} certificate(s): "
        f"{counts[Health.OK]} ok, {counts[Health.WARNING]} warning, "
        f"{counts[Health.CRITICAL]} critical; {failed} host(s) not read "
        f"(exit {int(report.exit_code)})"
    )
    return "\n".join(lines) + "\n"


def _info_json(c: CertInfo | None) -> dict[str, Any] | None:
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


def status_json(report: StatusReport) -> str:
    hosts = []
    for h in report.hosts:
        certs = []
        for s in (s for s in report.statuses if s.host == h.host):
            d = s.lineage.disk
            certs.append(
                {
                    "name": s.lineage.name,
                    "declared": s.lineage.declared is not None,
                    "names": list(d.names) if d else [],
                    "not_after": d.not_after.isoformat() if d else None,
                    "days_left": s.days_left,
                    "issuer": d.issuer if d else None,
                    "server": s.lineage.server or None,
                    "state": s.state.name.lower(),
                    "served_matches_disk": s.served == "same" if d else None,
                    "served": s.served,
                    "disk": _info_json(d),
                    "served_certificate": _info_json(s.lineage.served),
                    "problems": list(s.problems),
                    "last_deploy_hook": s.last_hook.__dict__ if s.last_hook else None,
                }
            )
        enabled, _, active = h.timer.partition("|")
        hosts.append(
            {
                "host": h.host,
                "error": h.error,
                "unreachable": h.unreachable,
                "timer": {"enabled": enabled, "active": active} if not h.error else None,
                "certificates": certs,
            }
        )
    return (
        json.dumps(
            {
                "now": report.now.isoformat(),
                "worst": report.worst.name.lower(),
                "exit_code": int(report.exit_code),
                "hosts": hosts,
            },
            indent=2,
        )
        + "\n"
    )


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


def status(
    inventory: Any,
    hosts: Sequence[Any],
    *,
    workers: int = 8,
    sudo_password: Any = None,
    now: dt.datetime | None = None,
) -> StatusReport:
    """Read and judge the certificates of `hosts` (one remote command per host)."""
    from opskit.core.runner import run_on_hosts

    settings = {h.name: thresholds(h.vars) for h in hosts}
    declared = {h.name: declared_certificates(h.vars) for h in hosts}
    found: dict[str, HostCerts] = {}

    def work(remote: Any, ctx: Any) -> list[Any]:
        found[remote.name] = read_host(remote, declared[remote.name])
        return []

    results = run_on_hosts(inventory, hosts, work, workers=workers, sudo_password=sudo_password)
    read = []
    for r in results:
        if r.error:
            read.append(HostCerts(r.host, error=r.error, unreachable=r.unreachable))
        else:
            read.append(found[r.host])
    return build_report(read, settings, now or dt.datetime.now(dt.UTC))


# --- renewing: inv certs.renew --------------------------------------------------------------


@dataclass(frozen=True)
class RenewOptions:
    force: bool = False  # --force-renewal: renew even if not due
    dry_run: bool = False  # certbot's --dry-run: ask the ACME server, save nothing, no hook
    cert: str | None = None  # only this lineage
    settle_seconds: float = 20.0  # how long nginx may take to serve a renewed certificate


@dataclass(frozen=True)
class RenewedCert:
    """What `certs.renew` did to one certificate, and the proof."""

    name: str
    outcome: str  # "renewed", "not due", "simulated", "failed"
    detail: str
    before: CertInfo | None = None
    after: CertInfo | None = None
    served_before: CertInfo | None = None
    served_after: CertInfo | None = None
    hooks: tuple[HookRun, ...] = ()

    @property
    def failed(self) -> bool:
        return self.outcome == "failed"


@dataclass(frozen=True)
class RenewHost:
    host: str
    certificates: tuple[RenewedCert, ...] = ()
    error: str | None = None
    unreachable: bool = False
    certbot_exit: int | None = None
    output: str = ""  # certbot's output, for --verbose and JSON
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        return self.error is not None or any(c.failed for c in self.certificates)


def renew_script(lineages: Sequence[tuple[str, str]], opts: RenewOptions) -> str:
    """The remote command of a renewal of `lineages` ((name, ACME server) pairs): the wrapper
    checks the ACME servers, then runs certbot; `@@rc <exit>` follows each run.

    A dry run goes lineage by lineage with its server named: certbot's --dry-run otherwise
    swaps the server for Let's Encrypt's staging CA.

    >>> print(renew_script([("shop", "https://ca/dir")], RenewOptions(force=True, cert="shop")))
    ... # doctest: +NORMALIZE_WHITESPACE
    /usr/local/sbin/opskit-certbot --check https://ca/dir -- renew --non-interactive
    --no-random-sleep-on-renew --force-renewal --cert-name shop 2>&1; echo "@@rc $?"
    """
    base = ["--", "renew", "--non-interactive", "--no-random-sleep-on-renew"]
    runs: list[list[str]] = []
    if opts.dry_run:
        for name, server in lineages:
            check = [WRAPPER, "--check", server]
            runs.append([*check, *base, "--cert-name", name, "--server", server, "--dry-run"])
    else:
        args = [WRAPPER]
        for server in sorted({server for _, server in lineages}):
            args += ["--check", server]
        args += base
        if opts.force:
            args.append("--force-renewal")
        if opts.cert:
            args += ["--cert-name", opts.cert]
        runs.append(args)
    return "\n".join(" ".join(q(a) for a in run) + ' 2>&1; echo "@@rc $?"' for run in runs)


def run_exits(output: str, names: Sequence[str], dry_run: bool) -> dict[str, int]:
    """Exit code of certbot for each lineage, from the `@@rc` lines of renew_script's output.

    >>> run_exits("x\\n@@rc 0\\ny\\n@@rc 1\\n", ["a", "b"], True)
    {'a': 0, 'b': 1}
    >>> run_exits("@@rc 69\\n", ["a", "b"], False)
    {'a': 69, 'b': 69}
    """
    codes = [int(m) for m in re.findall(r"^@@rc (\d+)$", output, re.M)]
    if dry_run:
        return {n: (codes[i] if i < len(codes) else -1) for i, n in enumerate(names)}
    return dict.fromkeys(names, codes[-1] if codes else -1)


_FAILED_RENEW = re.compile(r"Failed to renew certificate (\S+) with error: (.*)")
_NOISE = ("Saving debug log", "Ask for help", "- - -", "Processing ", "Congratulations")


def certbot_errors(output: str) -> str:
    """The lines of certbot's output worth showing when it failed.

    >>> certbot_errors("Saving debug log to x\\nFailed to renew certificate a with error: boom\\n")
    'Failed to renew certificate a with error: boom'
    """
    keep = [
        ln.strip()
        for ln in output.splitlines()
        if ln.strip() and not ln.strip().startswith(_NOISE) and not ln.startswith("  /etc/")
    ]
    return "\n".join(keep[-8:])


def _hook_text(hooks: Sequence[HookRun]) -> str:
    if not hooks:
        return "the deploy hook did not run"
    return "; ".join(f"deploy hook {h.result}: {h.message}" for h in hooks)


def judge_renewal(
    before: HostCerts,
    after: HostCerts,
    names: Sequence[str],
    opts: RenewOptions,
    exits: Mapping[str, int],
    output: str,
) -> tuple[RenewedCert, ...]:
    """What happened to each certificate of a renewal, proven from what the host has on disk
    and what nginx serves before and after (pure)."""
    grew = max(0, after.hook_count - before.hook_count)
    new_hooks = after.hooks[len(after.hooks) - min(grew, len(after.hooks)) :] if grew else ()
    failures = {m.group(1): m.group(2).strip() for m in _FAILED_RENEW.finditer(output)}
    note = ""
    if "does not know this host's ACME account" in output:
        note = " (the ACME server had forgotten this host's account: a new one was registered)"
    out = []
    for name in names:
        b, a = before.lineage(name), after.lineage(name)
        bd, ad = (b.disk if b else None), (a.disk if a else None)
        bs, as_ = (b.served if b else None), (a.served if a else None)
        hooks = tuple(h for h in new_hooks if h.name == name)
        server = (b.server if b else "") or "?"
        renewed = bd is not None and ad is not None and ad.fingerprint != bd.fingerprint
        certbot_exit = exits.get(name, -1)
        if certbot_exit == EXIT_ACME_UNREACHABLE:
            msg = next((ln for ln in output.splitlines() if "does not answer" in ln), output)
            outcome, detail = "failed", msg.strip()
        elif opts.dry_run and certbot_exit == 0:
            outcome = "simulated"
            detail = (
                f"simulated renewal from {server} succeeded (certbot --dry-run: nothing saved, "
                "no deploy hook run)"
            )
        elif opts.dry_run:
            why = failures.get(name) or certbot_errors(output)
            outcome, detail = "failed", f"simulated renewal failed: {why}"
        elif renewed and ad is not None and as_ is not None and as_.fingerprint == ad.fingerprint:
            outcome = "renewed"
            was = f"was serial {bd.serial[:16]}" if bd else "new"
            detail = (
                f"new certificate {ad.brief()} ({was}), issuer {ad.issuer!r}; nginx serves it "
                f"({_hook_text(hooks)})"
            )
        elif renewed and ad is not None:
            serving = f"still serves {as_.brief()}" if as_ else "serves nothing on port 443"
            outcome = "failed"
            detail = f"renewed on disk ({ad.brief()}), but nginx {serving}: {_hook_text(hooks)}"
        elif name in failures:
            outcome, detail = "failed", f"certbot: {failures[name]}"
        elif certbot_exit != 0 or opts.force:
            outcome = "failed"
            detail = f"certbot did not renew it (exit {certbot_exit}): {certbot_errors(output)}"
        else:
            days = ad.days_left(dt.datetime.now(dt.UTC)) if ad else None
            outcome, detail = "not due", f"not due for renewal ({days} days left)"
        out.append(RenewedCert(name, outcome, detail + note, bd, ad, bs, as_, hooks))
    return tuple(out)


def renew_host(remote: Any, declared: Sequence[CertSpec], opts: RenewOptions) -> RenewHost:
    """Renew the certificates of one host and prove the deploy hook made nginx serve them."""
    started = time.monotonic()
    before = read_host(remote, declared)
    names = [x.name for x in before.lineages if x.server]  # lineages with a renewal config
    if opts.cert:
        if opts.cert not in names:
            raise OpsError(
                f"no certificate {opts.cert!r} to renew on this host (it has: "
                f"{', '.join(names) or 'none'})"
            )
        names = [opts.cert]
    if not names:
        return RenewHost(remote.name, seconds=time.monotonic() - started)
    lineages = [(x.name, x.server) for x in before.lineages if x.name in names]
    res = remote.run(renew_script(lineages, opts), what="certbot renew", timeout=900)
    exits = run_exits(res.stdout, names, opts.dry_run)
    after = read_host(remote, declared)
    deadline = time.monotonic() + opts.settle_seconds

    def pending(state: HostCerts) -> bool:
        """A renewed certificate nginx does not serve yet (a reload takes a moment)."""
        for n in names:
            b, a = before.lineage(n), state.lineage(n)
            old = b.disk if b else None
            new = a.disk if a else None
            served = a.served if a else None
            if old is None or new is None or new.fingerprint == old.fingerprint:
                continue  # not renewed
            grew = max(0, state.hook_count - before.hook_count)
            hooks = state.hooks[len(state.hooks) - min(grew, len(state.hooks)) :] if grew else ()
            if any(h.name == n and h.result == "failed" for h in hooks):
                continue  # the deploy hook refused to reload: waiting changes nothing
            if served is None or served.fingerprint != new.fingerprint:
                return True
        return False

    while not opts.dry_run and pending(after) and time.monotonic() < deadline:
        time.sleep(1.0)
        after = read_host(remote, declared)
    certs = judge_renewal(before, after, names, opts, exits, res.stdout)
    return RenewHost(
        remote.name,
        certs,
        certbot_exit=max(exits.values()),
        output=res.stdout,
        seconds=time.monotonic() - started,
    )


def renew(
    inventory: Any,
    hosts: Sequence[Any],
    opts: RenewOptions,
    *,
    workers: int = 8,
    sudo_password: Any = None,
    on_result: Callable[[RenewHost], None] | None = None,
) -> list[RenewHost]:
    """`inv certs.renew` on `hosts` (in parallel, bounded); one failing host never stops others."""
    from opskit.core.runner import run_on_hosts

    declared = {h.name: declared_certificates(h.vars) for h in hosts}
    done: dict[str, RenewHost] = {}

    def work(remote: Any, ctx: Any) -> list[Any]:
        done[remote.name] = renew_host(remote, declared[remote.name], opts)
        return []

    def emit(r: Any) -> None:
        if on_result is not None:
            fallback = RenewHost(r.host, error=r.error, unreachable=r.unreachable)
            on_result(done.get(r.host) or fallback)

    results = run_on_hosts(
        inventory, hosts, work, workers=workers, sudo_password=sudo_password, on_result=emit
    )
    return [
        done.get(r.host) or RenewHost(r.host, error=r.error, unreachable=r.unreachable)
        for r in results
    ]


def format_renew_host(r: RenewHost) -> str:
    """Lines for one host of `certs.renew`."""
    if r.error:
        label = "UNREACHABLE" if r.unreachable else "FAILED"
        first, *rest = r.error.splitlines() or [""]
        return f"[{r.host}] {label}  {first}\n" + "".join(f"    {x}\n" for x in rest)
    if not r.certificates:
        return f"[{r.host}] ok       no certificates to renew\n"
    words = {"renewed": "renewed", "not due": "ok", "simulated": "dry-run", "failed": "FAILED"}
    return "".join(
        f"[{r.host}] {words[c.outcome]:<8} {c.name}  {c.detail}\n" for c in r.certificates
    )


def renew_summary(results: Sequence[RenewHost]) -> str:
    certs = [c for r in results for c in r.certificates]
    counts = {k: sum(1 for c in certs if c.outcome == k) for k in ("renewed", "not due")}
    sim = sum(1 for c in certs if c.outcome == "simulated")
    failed = sum(1 for c in certs if c.failed)
    hosts_failed = sum(1 for r in results if r.error)
    return (
        f"{len(results)} host(s), {len(certs)} certificate(s): {counts['renewed']} renewed, "
        f"{counts['not due']} not due, {sim} simulated, {failed} failed; "
        f"{hosts_failed} host(s) failed\n"
    )


def renew_json(results: Sequence[RenewHost], opts: RenewOptions) -> str:
    hosts = []
    for r in results:
        hosts.append(
            {
                "host": r.host,
                "error": r.error,
                "unreachable": r.unreachable,
                "failed": r.failed,
                "certbot_exit": r.certbot_exit,
                "seconds": round(r.seconds, 2),
                "certificates": [
                    {
                        "name": c.name,
                        "outcome": c.outcome,
                        "detail": c.detail,
                        "before": _info_json(c.before),
                        "after": _info_json(c.after),
                        "served_before": _info_json(c.served_before),
                        "served_after": _info_json(c.served_after),
                        "served_changed": bool(
                            c.served_before
                            and c.served_after
                            and c.served_before.fingerprint != c.served_after.fingerprint
                        ),
                        "deploy_hook": [h.__dict__ for h in c.hooks],
                    }
                    for c in r.certificates
                ],
                "certbot_output": r.output,
            }
        )
    options = {"force": opts.force, "dry_run": opts.dry_run, "cert": opts.cert}
    return json.dumps({"options": options, "hosts": hosts}, indent=2) + "\n"
