"""The resource kinds of the certbot role: a certificate issued through the opskit-certbot
wrapper, a TLS site enabled only if `nginx -t` passes, one nginx reload, and no crontab that
renews next to certbot.timer (roles/certbot/README.md).

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
import re
from collections.abc import Sequence
from dataclasses import dataclass

from opskit.certs.spec import RENEWAL_DIR, WRAPPER, CertSpec
from opskit.core.errors import OpsError
from opskit.resources import NOTHING, Plan, Resource, Symlink, q

# --- the certificate ------------------------------------------------------------------------


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


# --- nginx: the TLS site and the reload --------------------------------------------------------


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


# --- one scheduler: no crontab renews next to certbot.timer -----------------------------------

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
