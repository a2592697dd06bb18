"""benchslice: the benchmark's desired state (bench/README.md), declared with opskit's resources.

The same defaults.yml drives bench/ansible/slice.yml and bench/pyinfra/deploy.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from opskit.resources import CronEntry, Directory, Packages, Resource, Service, Template


def resources(v: Mapping[str, Any]) -> list[Resource]:
    """Packages, directories, templated scripts and configs, cron entries, services."""
    rsyslog_conf = v["benchslice_rsyslog_conf"]
    out: list[Resource] = [Packages(tuple(v["benchslice_packages"]))]
    out += [
        Directory(d["path"], int(d["mode"], 8), d["owner"], d["group"])
        for d in v["benchslice_directories"]
    ]
    out += [
        Template(
            f["path"], f["template"], v, mode=int(f["mode"], 8), owner=f["owner"], group=f["group"]
        )
        for f in v["benchslice_files"]
    ]
    out.append(Template(rsyslog_conf, "benchslice/30-opskit.conf.j2", v))
    out += [
        CronEntry(c["name"], c["schedule"], c["command"], user=c["user"])
        for c in v["benchslice_cron"]
    ]
    out += [
        Service(name, restart_on=(f"file:{rsyslog_conf}",) if name == "rsyslog" else ())
        for name in v["benchslice_services"]
    ]
    return out
