"""certbot: certificates via webroot from a configurable ACME server, renewed by certbot.timer
only, a deploy hook that reloads nginx only if `nginx -t` passes (roles/certbot/README.md)."""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from typing import Any

from opskit.certs import spec as certs
from opskit.certs.resources import Certificate, EnabledSite, NginxReload, NoDuplicateRenewCron
from opskit.core.roles import REPO
from opskit.resources import (
    Absent,
    DaemonReload,
    Directory,
    File,
    Packages,
    Resource,
    Service,
    Template,
)


def resources(v: Mapping[str, Any]) -> list[Resource]:
    """The desired state of roles/certbot/README.md for one host's variables."""
    declared = certs.check_vars(v)
    ca = certs.read_ca_file(str(v["certbot_acme_ca_file"] or ""), REPO)
    register = certs.register_args(v)
    tv = dict(
        v,
        certbot_env_file=certs.ENV_FILE,
        certbot_ca_path=certs.CA_FILE,
        certbot_has_ca=ca is not None,
        certbot_hook_log=certs.HOOK_LOG,
        certbot_exit_unreachable=certs.EXIT_ACME_UNREACHABLE,
        certbot_register_args=" ".join(shlex.quote(a) for a in register),
    )
    dropin = certs.SERVICE_DROPIN
    out: list[Resource] = [
        Packages(("certbot", "curl", "openssl")),
        # (/etc/opskit itself is created with it; the healthcheck role declares it too)
        Directory(certs.CONF_DIR, 0o755),
    ]
    if ca is not None:
        out.append(File(certs.CA_FILE, ca, 0o644))
    else:
        out.append(Absent(certs.CA_FILE))
    out += [
        Template(certs.ENV_FILE, "certbot/env.j2", tv, mode=0o644),
        Directory(dropin.rsplit("/", 1)[0], 0o755),
        Template(dropin, "certbot/opskit.conf.j2", tv, mode=0o644),
        DaemonReload((f"file:{dropin}",), name="certbot"),
        Template(certs.WRAPPER, "certbot/opskit-certbot.j2", tv, mode=0o755),
        Directory(certs.STATE_DIR, 0o755),
        Directory(certs.LETSENCRYPT, 0o755),
        Directory(certs.HOOKS_DIR, 0o755),
        Directory(certs.DEPLOY_HOOK.rsplit("/", 1)[0], 0o755),
        Template(certs.DEPLOY_HOOK, "certbot/50-opskit-nginx-reload.j2", tv, mode=0o755),
        # One scheduler: certbot.timer renews; crontab entries that also run `certbot renew`
        # (runbooks, Debian's own fallback in /etc/cron.d/certbot) are removed.
        NoDuplicateRenewCron(),
        Service("certbot.timer"),
    ]
    if not declared:
        return out
    webroot = str(v["certbot_webroot"])
    out.append(Directory(webroot, 0o755))
    watch: list[str] = []
    for spec in declared:
        cert = Certificate(spec, str(v["certbot_acme_server"]), webroot, register)
        available, enabled = certs.tls_site_paths(v, spec)
        site = EnabledSite(enabled, available)
        out += [cert, site]
        watch += [cert.id, site.id]
    out.append(NginxReload(tuple(watch)))
    return out
