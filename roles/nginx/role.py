"""nginx: the reverse proxy in front of the app, dot-files denied, security headers."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from opskit.certs import spec as certs
from opskit.core.errors import ConfigError
from opskit.core.render import render
from opskit.resources import Absent, File, Packages, Resource, Service, Template

DEFAULT_SITE = "/etc/nginx/sites-enabled/default"
_SIZE = re.compile(r"^[0-9]+[kKmMgG]?$")
_HEADER = re.compile(r"^[A-Za-z0-9-]+$")
_HSTS = re.compile(r"^(max-age=[0-9]+(; ?(includeSubDomains|preload))*)?$")


def site_path(v: Mapping[str, Any]) -> str:
    return f"/etc/nginx/conf.d/opskit-{v.get('app_name', 'app')}.conf"


def _check(v: Mapping[str, Any]) -> dict[str, Any]:
    names = v["nginx_server_names"]
    if (
        not isinstance(names, list)
        or not names
        or not all(isinstance(n, str) and re.fullmatch(r"[A-Za-z0-9_.*~^$\\-]+", n) for n in names)
    ):
        raise ConfigError(f"nginx_server_names: expected a list of server names, got {names!r}")
    upstream = v["nginx_upstream"] or (f"127.0.0.1:{v['app_port']}" if "app_port" in v else "")
    if not upstream or not re.fullmatch(
        r"[A-Za-z0-9.\-\[\]:]+:[0-9]{1,5}|unix:/[\w./-]+", upstream
    ):
        raise ConfigError(
            f"nginx_upstream: expected host:port or unix:/path, got {upstream!r} "
            "(or give the host the app role, whose app_port it then uses)"
        )
    for key in (
        "nginx_proxy_read_timeout",
        "nginx_proxy_send_timeout",
        "nginx_proxy_connect_timeout",
    ):
        if isinstance(v[key], bool) or not isinstance(v[key], int) or v[key] < 1:
            raise ConfigError(f"{key}: expected whole seconds >= 1, got {v[key]!r}")
    if not _SIZE.match(str(v["nginx_client_max_body_size"])):
        raise ConfigError(
            f"nginx_client_max_body_size: expected a size like 10m, got "
            f"{v['nginx_client_max_body_size']!r}"
        )
    headers = v["nginx_security_headers"] or {}
    if not isinstance(headers, dict):
        raise ConfigError("nginx_security_headers: expected a mapping of header: value")
    for name, value in headers.items():
        if not _HEADER.match(str(name)) or any(c in str(value) for c in '"\n\r\\$;'):
            raise ConfigError(f"nginx_security_headers.{name}: invalid header name or value")
    hsts = v["nginx_hsts"] or ""
    if not isinstance(hsts, str) or not _HSTS.match(hsts):
        raise ConfigError(
            f"nginx_hsts: expected a Strict-Transport-Security value like max-age=31536000, "
            f"got {hsts!r}"
        )
    protocols = v["nginx_tls_protocols"]
    if (
        not isinstance(protocols, list)
        or not protocols
        or any(p not in ("TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3") for p in protocols)
    ):
        raise ConfigError(
            f"nginx_tls_protocols: expected a list of TLSv1.2, TLSv1.3 (...), got {protocols!r}"
        )
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
