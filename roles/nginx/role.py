"""nginx: the reverse proxy in front of the app, dot-files denied, security headers."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from opskit.backup import spec as backup
from opskit.certs import spec as certs
from opskit.core.errors import ConfigError
from opskit.core.render import render
from opskit.resources import Absent, Directory, File, Packages, Resource, Service, Template

DEFAULT_SITE = "/etc/nginx/sites-enabled/default"


def site_path(v: Mapping[str, Any]) -> str:
    return f"/etc/nginx/conf.d/opskit-{v.get('app_name', 'app')}.conf"


def _check(v: Mapping[str, Any]) -> dict[str, Any]:
    # Each variable's type and syntax is checked at load (roles/nginx/schema.yml).
    names = v["nginx_server_names"]
    upstream = v["nginx_upstream"] or (f"127.0.0.1:{v['app_port']}" if "app_port" in v else "")
    if not upstream:
        raise ConfigError(
            "nginx_upstream: expected host:port or unix:/path (or give the host the app role, "
            "whose app_port it then uses)"
        )
    headers = v["nginx_security_headers"] or {}
    tls = tls_certificates(v)
    if tls and not v["nginx_remove_default_site"]:
        raise ConfigError(
            "nginx_remove_default_site: must be true with certbot_certificates: the app's site "
            "must be the default server on port 80 to answer ACME challenges for names whose "
            "certificate does not exist yet"
        )
    tls_names = {d for c in tls for d in c.domains}
    http_names = [n for n in names if n not in tls_names] or ["_"]
    app = str(v.get("app_name", "app"))
    return dict(
        v,
        nginx_app_name=app,
        nginx_upstream_name="opskit_" + re.sub(r"[^A-Za-z0-9_]", "_", app),
        nginx_upstream_address=upstream,
        nginx_security_headers=headers,
        nginx_extra_headers={},
        nginx_http_server_names=http_names,
        nginx_acme_webroot=str(v["certbot_webroot"]) if tls else "",
        nginx_maintenance_flag=backup.maintenance_flag(app),
        # The app's admin endpoints (app_admin_path) answer only on 127.0.0.1, over SSH.
        nginx_deny_path=str(v.get("app_admin_path") or ""),
    )


def tls_certificates(v: Mapping[str, Any]) -> tuple[certs.CertSpec, ...]:
    """The certificates this host serves over HTTPS: certbot_certificates of the certbot role
    (none on a host without it)."""
    if "certbot_certificates" not in v or "certbot_webroot" not in v:
        return ()
    return certs.declared_certificates(v)


def resources(v: Mapping[str, Any]) -> list[Resource]:
    """The desired state of roles/nginx/README.md for one host's variables."""
    tv = _check(v)
    site = site_path(v)
    out: list[Resource] = [Packages(("nginx",))]
    if v["nginx_remove_default_site"]:
        out.append(Absent(DEFAULT_SITE))
    out.append(Directory(backup.MAINTENANCE_DIR, 0o755))  # the maintenance switch's flags
    out.append(Template(site, "nginx/site.conf.j2", tv, check_after="nginx -t"))
    # One TLS site per certificate, in sites-available/: the certbot role enables it (a link in
    # sites-enabled/) once the certificate exists. `nginx -t` matters once it is enabled.
    tls_sites: list[str] = []
    hsts = {"Strict-Transport-Security": tv["nginx_hsts"]} if tv["nginx_hsts"] else {}
    for cert in tls_certificates(v):
        available, _ = certs.tls_site_paths(v, cert)
        tls = {"domains": list(cert.domains), "cert_dir": cert.cert_dir, "name": cert.name}
        text = render("nginx/tls-site.conf.j2", dict(tv, nginx_tls=tls, nginx_extra_headers=hsts))
        out.append(File(available, text, check_after="nginx -t"))
        tls_sites.append(f"file:{available}")
    out.append(
        Service(
            "nginx",
            reload_on=(f"file:{site}", f"absent:{DEFAULT_SITE}", *tls_sites),
        )
    )
    return out
