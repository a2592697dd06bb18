"""papertrail: rsyslog forwards system and app logs to Papertrail over TLS, certificate verified."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from opskit.certs.spec import read_ca_file
from opskit.core.errors import ConfigError
from opskit.core.roles import REPO
from opskit.resources import Directory, File, Packages, Resource, Service, Template

CONF = "/etc/rsyslog.d/90-opskit-papertrail.conf"
CA_PATH = "/etc/ssl/opskit/papertrail-ca.pem"
SYSTEM_CA = "/etc/ssl/certs/ca-certificates.crt"
_HOST = re.compile(r"^[A-Za-z0-9.-]+$|^[0-9a-fA-F:]+$")
_TAG = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")


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
    if not isinstance(raw, list):
        raise ConfigError("papertrail_app_logs: a list of {path, tag} (or null for the app's)")
    out = []
    for i, f in enumerate(raw):
        where = f"papertrail_app_logs[{i}]"
        if not isinstance(f, dict) or set(f) - {"path", "tag", "severity"}:
            raise ConfigError(f"{where}: expected {{path, tag}} (and optionally severity)")
        path, tag = str(f.get("path", "")), str(f.get("tag", ""))
        if not path.startswith("/") or '"' in path or "\n" in path:
            raise ConfigError(f"{where}.path: an absolute path, got {path!r}")
        if not _TAG.match(tag):
            raise ConfigError(f"{where}.tag: letters, digits, '.', '_', '-' (1-32), got {tag!r}")
        severity = str(f.get("severity", "info"))
        if severity not in ("debug", "info", "notice", "warning", "error", "crit"):
            raise ConfigError(f"{where}.severity: a syslog severity name, got {severity!r}")
        out.append({"path": path, "tag": tag, "severity": severity})
    return out


def ca_bundle(v: Mapping[str, Any]) -> str | None:
    """The PEM text of papertrail_ca_file (read on the operator's machine), or None."""
    name = str(v["papertrail_ca_file"] or "")
    return read_ca_file(name, REPO, "papertrail_ca_file", "the lab's CA")


def resources(v: Mapping[str, Any]) -> list[Resource]:
    """The desired state of roles/papertrail/README.md for one host's variables."""
    host, port = v["papertrail_host"], v["papertrail_port"]
    if not isinstance(host, str) or not host or not _HOST.match(host):
        raise ConfigError(
            "papertrail_host: required, the destination's host name (logsN.papertrailapp.com)"
        )
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ConfigError(f"papertrail_port: required, a TCP port number; got {port!r}")
    peer = v["papertrail_permitted_peer"]
    if not isinstance(peer, str) or not peer or '"' in peer or " " in peer:
        raise ConfigError(f"papertrail_permitted_peer: a certificate name, got {peer!r}")
    files = app_logs(v)
    if not v["papertrail_system_logs"] and not files:
        raise ConfigError("papertrail: nothing to forward (no system logs and no app logs)")
    if not re.fullmatch(r"\d+[kmg]?", str(v["papertrail_queue_max_disk"]).lower()):
        raise ConfigError("papertrail_queue_max_disk: a size such as 512m or 1g")
    pem = ca_bundle(v)
    tv = {
        **v,
        "papertrail_ca_path": CA_PATH if pem is not None else SYSTEM_CA,
        "papertrail_files": files,
    }
    out: list[Resource] = [Packages(tuple(v["papertrail_packages"]))]
    watched = [f"file:{CONF}"]
    if pem is not None:
        out += [Directory("/etc/ssl/opskit", 0o755), File(CA_PATH, pem, mode=0o644)]
        watched.append(f"file:{CA_PATH}")
    out += [
        Template(CONF, "papertrail/90-opskit-papertrail.conf.j2", tv, check_after="rsyslogd -N1"),
        Service("rsyslog", restart_on=tuple(watched)),
    ]
    return out
