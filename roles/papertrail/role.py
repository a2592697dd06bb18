"""papertrail: rsyslog forwards system and app logs to Papertrail over TLS, certificate verified."""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from typing import Any

from opskit.certs.spec import read_ca_file
from opskit.core.errors import ConfigError
from opskit.core.roles import REPO
from opskit.resources import Command, Directory, File, Packages, Resource, Service, Template

CONF = "/etc/rsyslog.d/90-opskit-papertrail.conf"
CA_PATH = "/etc/ssl/opskit/papertrail-ca.pem"
SYSTEM_CA = "/etc/ssl/certs/ca-certificates.crt"
# Papertrail's own bundle, fetched as its setup documents it
# (https://papertrailapp.com/tools/papertrail-bundle.pem; `$DefaultNetstreamDriverCAFile`).
BUNDLE_PATH = "/etc/ssl/opskit/papertrail-bundle.pem"


def fetch_bundle(url: str) -> Command:
    """Download `url` once to BUNDLE_PATH (HTTPS only, atomically, only if it holds a
    certificate)."""
    tmp = f"{BUNDLE_PATH}.tmp"
    command = (
        f"curl -fsS --proto =https --max-time 30 -o {shlex.quote(tmp)} {shlex.quote(url)} && "
        f"grep -q 'BEGIN CERTIFICATE' {shlex.quote(tmp)} && chmod 644 {shlex.quote(tmp)} && "
        f"mv {shlex.quote(tmp)} {shlex.quote(BUNDLE_PATH)} || "
        f"{{ rm -f {shlex.quote(tmp)}; echo 'papertrail: no CA bundle from {url}' >&2; exit 1; }}"
    )
    return Command("papertrail CA bundle", command, creates=BUNDLE_PATH)


def app_logs(v: Mapping[str, Any]) -> list[dict[str, str]]:
    """The app log files to follow: declared, else the app role's out/error logs.

    >>> [f["tag"] for f in app_logs({"papertrail_app_logs": None, "app_name": "shop"})]
    ['shop', 'shop-error']
    >>> app_logs({"papertrail_app_logs": None})
    []
    """
    raw = v["papertrail_app_logs"]
    if raw is None:
        name = v.get("app_name")
        if not name:
            return []
        return [
            {"path": f"/var/log/{name}/out.log", "tag": str(name), "severity": "info"},
            {"path": f"/var/log/{name}/error.log", "tag": f"{name}-error", "severity": "error"},
        ]
    # Each entry's fields are checked at load (roles/papertrail/schema.yml).
    return [
        {"path": str(f["path"]), "tag": str(f["tag"]), "severity": str(f.get("severity", "info"))}
        for f in raw
    ]


def ca_bundle(v: Mapping[str, Any]) -> str | None:
    """The PEM text of papertrail_ca_file (read on the operator's machine), or None."""
    name = str(v["papertrail_ca_file"] or "")
    return read_ca_file(name, REPO, "papertrail_ca_file", "the lab's CA")


def resources(v: Mapping[str, Any]) -> list[Resource]:
    """The desired state of roles/papertrail/README.md for one host's variables."""
    files = app_logs(v)
    if not v["papertrail_system_logs"] and not files:
        raise ConfigError("papertrail: nothing to forward (no system logs and no app logs)")
    pem = ca_bundle(v)
    url = str(v.get("papertrail_ca_url") or "")
    ca_path = CA_PATH if pem is not None else BUNDLE_PATH if url else SYSTEM_CA
    tv = {**v, "papertrail_ca_path": ca_path, "papertrail_files": files}
    out: list[Resource] = [Packages(tuple(v["papertrail_packages"]))]
    watched = [f"file:{CONF}"]
    if pem is not None:
        out += [Directory("/etc/ssl/opskit", 0o755), File(CA_PATH, pem, mode=0o644)]
        watched.append(f"file:{CA_PATH}")
    elif url:
        bundle = fetch_bundle(url)
        out += [Directory("/etc/ssl/opskit", 0o755), bundle]
        watched.append(bundle.id)
    out += [
        Template(CONF, "papertrail/90-opskit-papertrail.conf.j2", tv, check_after="rsyslogd -N1"),
        Service("rsyslog", restart_on=tuple(watched)),
    ]
    return out
