"""The outside of `inv audit`: HTTP(S) probes of a web host's sites from this machine (see
opskit/audit/http.py), and the judgement of what they got: dot-files and other paths served,
directory listings, the `Server:` header, HSTS, the redirect to HTTPS (the certificate:
opskit/audit/tls.py). Of a served .env only the variable names are reported, never a value."""

from __future__ import annotations

import datetime as dt
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from opskit.audit import http as audit_http
from opskit.audit.findings import Finding, collapse
from opskit.audit.settings import Settings
from opskit.audit.tls import judge_certificate
from opskit.certs.spec import declared_certificates
from opskit.checks.levels import Severity
from opskit.core.inventory import Host

_ENV_LINE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_.]*)\s*=")


def env_keys(body: bytes) -> list[str] | None:
    """The variable names of a body that looks like a .env file (KEY=VALUE lines), else None.

    Only names: values are secrets and never leave this function.

    >>> env_keys(b"# app\\nDB_URL=postgres://x\\nexport SECRET_KEY='s'\\n")
    ['DB_URL', 'SECRET_KEY']
    >>> env_keys(b"<!doctype html><html>...</html>") is None
    True
    """
    text = body.decode("utf-8", errors="replace")
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    names = [m.group(1) for ln in lines if (m := _ENV_LINE.match(ln))]
    if not names or len(names) * 2 < len(lines):
        return None
    return names


def looks_served(path: str, body: bytes) -> str | None:
    """Why a 200 body for a dot-file path is the real file (None: it is something else, like
    an app's page for unknown paths).

    >>> looks_served("/.git/HEAD", b"ref: refs/heads/main\\n")
    'a git HEAD (ref: refs/heads/main)'
    >>> looks_served("/.git/config", b"<html>not found</html>") is None
    True
    """
    text = body.decode("utf-8", errors="replace")
    if path.endswith("/.git/HEAD"):
        m = re.match(r"^(ref: refs/\S+|[0-9a-f]{40})\s*$", text)
        return f"a git HEAD ({m.group(1)})" if m else None
    if path.endswith("/.git/config"):
        return "a git config ([core] section)" if re.search(r"^\s*\[core\]", text, re.M) else None
    if path.endswith(".env"):
        names = env_keys(body)
        if names is None:
            return None
        shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
        return f"{len(names)} KEY=VALUE line(s): {shown} (values not shown)"
    return None


@dataclass(frozen=True)
class Hsts:
    max_age: int | None
    include_subdomains: bool
    preload: bool


def parse_hsts(value: str | None) -> Hsts | None:
    """Parse a Strict-Transport-Security header (None when absent).

    >>> parse_hsts("max-age=31536000; includeSubDomains")
    Hsts(max_age=31536000, include_subdomains=True, preload=False)
    >>> parse_hsts('max-age="600"').max_age, parse_hsts("preload").max_age
    (600, None)
    """
    if value is None:
        return None
    max_age = None
    sub = preload = False
    for part in value.split(",")[0].split(";"):
        k, _, v = part.strip().partition("=")
        k = k.strip().lower()
        v = v.strip().strip('"')
        if k == "max-age" and v.isdigit():
            max_age = int(v)
        elif k == "includesubdomains":
            sub = True
        elif k == "preload":
            preload = True
    return Hsts(max_age, sub, preload)


def judge_hsts(value: str | None, url: str, s: Settings, host: str) -> list[Finding]:
    """HSTS present, max-age at least audit_hsts_min_age, includeSubDomains if asked (pure).

    >>> st = Settings(24, 10, {}, (), 15552000, False, None, (), (), 5)
    >>> [f.severity.label for f in judge_hsts(None, "https://a/", st, "h")]
    ['high']
    >>> [f.title for f in judge_hsts("max-age=600", "https://a/", st, "h")]
    ['HSTS max-age too short on https://a/', 'HSTS without includeSubDomains on https://a/']
    """
    fix = (
        f"set nginx_hsts (e.g. max-age=31536000) and run `inv provision --hosts {host} --roles "
        "nginx`"
    )
    h = parse_hsts(value)
    if h is None:
        return [
            Finding(
                "hsts",
                Severity.HIGH,
                f"no HSTS header on {url}",
                "no Strict-Transport-Security header: a browser can be talked into "
                "plain HTTP (SSL stripping)",
                fix,
            )
        ]
    out = []
    if h.max_age is None or h.max_age == 0:
        out.append(
            Finding(
                "hsts",
                Severity.HIGH,
                f"HSTS header without effect on {url}",
                f"Strict-Transport-Security: {value} (max-age missing or 0)",
                fix,
            )
        )
    elif h.max_age < s.hsts_min_age:
        out.append(
            Finding(
                "hsts",
                Severity.MEDIUM,
                f"HSTS max-age too short on {url}",
                f"max-age={h.max_age} s ({h.max_age / 86400:.0f} days), below "
                f"audit_hsts_min_age={s.hsts_min_age} ({s.hsts_min_age / 86400:.0f} "
                "days)",
                fix,
            )
        )
    if not h.include_subdomains:
        out.append(
            Finding(
                "hsts",
                Severity.LOW if s.hsts_include_subdomains else Severity.INFO,
                f"HSTS without includeSubDomains on {url}",
                f"Strict-Transport-Security: {value}",
                "add '; includeSubDomains' to nginx_hsts once every subdomain is served over HTTPS"
                if s.hsts_include_subdomains
                else "fine unless subdomains must be HTTPS-only too (then set "
                "audit_hsts_include_subdomains and add '; includeSubDomains' to nginx_hsts)",
            )
        )
    return out


def judge_server_header(resp: audit_http.Response, host: str) -> list[Finding]:
    """A `Server:` header with a version, and `X-Powered-By` (pure).

    >>> r = audit_http.Response("http://a/", 200, {"server": "nginx/1.22.1"})
    >>> [f.title for f in judge_server_header(r, "h")]
    ['server version leaked on http://a/']
    """
    out = []
    server = resp.header("server") or ""
    if re.search(r"\d+\.\d+", server):
        out.append(
            Finding(
                "server-header",
                Severity.LOW,
                f"server version leaked on {resp.url}",
                f"Server: {server} tells attackers which exploits to try",
                f"`server_tokens off;` in nginx (opskit's site has it): run `inv provision --hosts "
                f"{host} --roles nginx`",
            )
        )
    powered = resp.header("x-powered-by")
    if powered:
        out.append(
            Finding(
                "server-header",
                Severity.LOW,
                f"X-Powered-By header on {resp.url}",
                f"X-Powered-By: {powered}",
                "turn it off in the app (Express: app.disable('x-powered-by')) or drop it in nginx "
                "(proxy_hide_header X-Powered-By)",
            )
        )
    return out


def is_listing(body: bytes) -> bool:
    """Whether a body is a directory listing (nginx autoindex, Apache, Python's http.server).

    >>> is_listing(b"<html><head><title>Index of /files/</title>"), is_listing(b"<h1>Hi</h1>")
    (True, False)
    """
    text = body[:4096].decode("utf-8", errors="replace")
    return bool(re.search(r"<title>\s*(Index of|Directory listing for) /", text, re.I))


@dataclass(frozen=True)
class Site:
    """One name to probe on a host: over HTTP or HTTPS; `tls_name` is served over HTTPS too
    (its port 80 must redirect)."""

    scheme: str
    name: str
    tls_name: bool = False


def sites_of(host: Host) -> tuple[Site, ...]:
    """Names a host's nginx answers to: its address and nginx_server_names over HTTP (minus the
    certificate names), and every certificate name over HTTPS (redirected on HTTP)."""
    v = host.vars
    tls_names = (
        [d for c in declared_certificates(v) for d in c.domains]
        if ("certbot" in host.roles)
        else []
    )
    http = [host.address] + [
        n
        for n in (v.get("nginx_server_names") or [])
        if n not in tls_names and re.fullmatch(r"[A-Za-z0-9.-]+", n)
    ]
    out = [Site("http", n) for n in dict.fromkeys(http)]
    out += [Site("http", n, True) for n in tls_names]
    out += [Site("https", n) for n in tls_names]
    return tuple(out)


@dataclass
class Outside:
    """What the probes of a host's sites found, the sites that could not be read, and what it
    cost."""

    findings: list[Finding] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    requests: int = 0
    checks: set[str] = field(default_factory=set)
    seconds: float = 0.0


def probe_site(
    address: str,
    site: Site,
    s: Settings,
    host: str,
    *,
    get: Callable[..., audit_http.Response] = audit_http.get,
    verify: Callable[..., audit_http.TlsVerdict] = audit_http.verify_tls,
    now: dt.datetime | None = None,
) -> Outside:
    """Every outside check of one site of a host (HTTP requests from this machine)."""
    res = Outside()
    kw = {"scheme": site.scheme, "timeout": s.http_timeout}

    def fetch(path: str) -> audit_http.Response:
        res.requests += 1
        return get(address, site.name, path, **kw)

    root = fetch("/")
    if root.error:
        res.errors.append(f"{root.url} (at {address}): {root.error}")
        return res
    if site.tls_name:
        res.checks.add("https-redirect")
        loc = root.header("location") or ""
        if root.status not in (301, 302, 307, 308) or not loc.startswith(f"https://{site.name}"):
            res.findings.append(
                Finding(
                    "https-redirect",
                    Severity.MEDIUM,
                    f"{root.url} is not redirected to HTTPS",
                    f"HTTP {root.status}"
                    + (f", Location: {loc}" if loc else "")
                    + "; logins and cookies may travel in clear text",
                    f"run `inv provision --hosts {host} --roles nginx,certbot` (the TLS site "
                    "redirects port 80 for its names)",
                )
            )
        return res  # everything else of this name is checked over HTTPS
    res.checks |= {"exposed-files", "directory-listing", "server-header"}
    res.findings += judge_server_header(root, host)
    if site.scheme == "https":
        res.checks |= {"hsts", "certificate"}
        res.findings += judge_hsts(root.header("strict-transport-security"), root.url, s, host)
        res.findings += judge_certificate(
            address, site.name, root.peer_der, s, host, verify=verify, now=now
        )
    # An app may answer 200 with the same page for any unknown path: remember that page, so
    # that only a different answer counts as "served".
    baseline = fetch(f"/opskit-audit-{secrets.token_hex(6)}")
    soft = baseline.body if baseline.status == 200 else None
    for path in ("/.env", "/.git/HEAD", "/.git/config"):
        r = fetch(path)
        what = looks_served(path, r.body) if r.status in (200, 206) else None
        if what:
            res.findings.append(
                Finding(
                    "exposed-files",
                    Severity.CRITICAL,
                    f"{path} is served on {r.url}",
                    f"HTTP {r.status}, {r.length} bytes: {what}",
                    f"run `inv provision --hosts {host} --roles nginx` (opskit's site answers 404 "
                    "for every dot-file), find what serves it (`nginx -T | grep -n "
                    "'location\\|root\\|alias'`) and remove the file from the web root"
                    + (
                        "; rotate every secret it holds: it was public"
                        if path == "/.env"
                        else "; the repository's history may hold secrets: rotate them"
                    ),
                )
            )
    for path in s.extra_paths:
        r = fetch(path)
        if r.status in (200, 206) and r.length and r.body != soft and not is_listing(r.body):
            res.findings.append(
                Finding(
                    "exposed-files",
                    Severity.HIGH,
                    f"{path} is served on {r.url}",
                    f"HTTP {r.status}, {r.length} bytes, Content-Type "
                    f"{r.header('content-type') or '-'} (an unknown path gets "
                    f"{'HTTP ' + str(baseline.status) if baseline.status else 'no answer'})",
                    f"remove it or deny it in nginx on {host}; if it is meant to be public, drop "
                    "it from audit_extra_paths",
                )
            )
    for path in s.listing_paths:
        r = fetch(path)
        if r.status == 200 and is_listing(r.body):
            res.findings.append(
                Finding(
                    "directory-listing",
                    Severity.MEDIUM,
                    f"directory listing on {r.url}",
                    f"HTTP 200 with an 'Index of {path}' page: every file there can be found",
                    f"remove `autoindex on` from nginx on {host} (`nginx -T | grep -n autoindex`); "
                    f"`inv provision --hosts {host} --roles nginx` restores opskit's files",
                )
            )
    return res


def probe_host(host: Host, s: Settings, *, now: dt.datetime | None = None) -> Outside:
    """Every outside check of one host with the nginx role."""
    total = Outside()
    started = time.monotonic()
    for site in sites_of(host):
        r = probe_site(host.address, site, s, host.name, now=now)
        total.findings += r.findings
        total.errors += r.errors
        total.requests += r.requests
        total.checks |= r.checks
    total.findings = collapse(total.findings)
    total.seconds = time.monotonic() - started
    return total
