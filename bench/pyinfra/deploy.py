"""The benchmark's slice as a pyinfra deploy: the same desired state as bench/roles/benchslice,
from the same defaults.yml and the same templates (run with --sudo; bench/tools.py does)."""

from pathlib import Path

import yaml
from pyinfra.operations import apt, files, systemd

BENCH = Path(__file__).resolve().parent.parent
TEMPLATES = BENCH / "templates"
v = yaml.safe_load((BENCH / "roles" / "benchslice" / "defaults.yml").read_text())
v["managed_by"] = "Managed by opskit, role benchslice; local edits are overwritten."

apt.packages(name="Packages present", packages=v["benchslice_packages"])

for d in v["benchslice_directories"]:
    files.directory(
        name=f"Directory {d['path']}",
        path=d["path"],
        mode=d["mode"],
        user=d["owner"],
        group=d["group"],
    )

for f in v["benchslice_files"]:
    files.template(
        name=f"Template {f['path']}",
        src=str(TEMPLATES / f["template"]),
        dest=f["path"],
        mode=f["mode"],
        user=f["owner"],
        group=f["group"],
        **v,
    )

rsyslog_conf = files.template(
    name="rsyslog drop-in",
    src=str(TEMPLATES / "benchslice" / "30-opskit.conf.j2"),
    dest=v["benchslice_rsyslog_conf"],
    mode="0644",
    user="root",
    group="root",
    **v,
)

for c in v["benchslice_cron"]:
    files.template(
        name=f"Cron entry {c['name']}",
        src=str(TEMPLATES / "benchslice" / "cron.j2"),
        dest=f"/etc/cron.d/{c['name']}",
        mode="0644",
        user="root",
        group="root",
        item=c,
    )

for name in v["benchslice_services"]:
    systemd.service(name=f"Service {name}", service=name, running=True, enabled=True)

systemd.service(
    name="Restart rsyslog (config changed)",
    service="rsyslog",
    restarted=True,
    _if=rsyslog_conf.did_change,
)
