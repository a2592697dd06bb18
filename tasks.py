"""opskit tasks: `inv --list` shows them, `inv <task> --help` explains each.

Exit codes: 0 ok, 1 a host failed or was unreachable, 2 bad input (nothing touched),
3 changes pending (with --check --detailed-exitcode), 130 interrupted.
"""

from invoke import Collection

from cli.app import deploy, killswitch, releases, rollback, toggle
from cli.audit import audit
from cli.backup import (
    backup_bucket,
    backup_drill,
    backup_list,
    backup_restore,
    backup_run,
    backup_verify,
)
from cli.certs import certs_renew, certs_status
from cli.core import provision, run, trust, verify
from cli.demo import lab_demo
from cli.dev import lint, lock, test
from cli.incident import incident_open, incident_resolve, incident_update
from cli.lab import lab_down, lab_inbox, lab_status, lab_up
from cli.monitoring import monitoring_check, monitoring_status, monitoring_sync
from cli.report import report_daily, report_monthly, report_weekly
from cli.status import status

app_ns = Collection("app")
app_ns.add_task(toggle)
app_ns.add_task(killswitch)
hosts_ns = Collection("hosts")
hosts_ns.add_task(trust)
lab_ns = Collection("lab")
lab_ns.add_task(lab_up, name="up")
lab_ns.add_task(lab_down, name="down")
lab_ns.add_task(lab_status, name="status")
lab_ns.add_task(lab_demo, name="demo")
lab_ns.add_task(lab_inbox, name="inbox")
backup_ns = Collection("backup")
backup_ns.add_task(backup_run, name="run")
backup_ns.add_task(backup_list, name="list")
backup_ns.add_task(backup_verify, name="verify")
backup_ns.add_task(backup_restore, name="restore")
backup_ns.add_task(backup_drill, name="drill")
backup_ns.add_task(backup_bucket, name="bucket")
monitoring_ns = Collection("monitoring")
monitoring_ns.add_task(monitoring_sync, name="sync")
monitoring_ns.add_task(monitoring_check, name="check")
monitoring_ns.add_task(monitoring_status, name="status")
report_ns = Collection("report")
report_ns.add_task(report_daily, name="daily")
report_ns.add_task(report_weekly, name="weekly")
report_ns.add_task(report_monthly, name="monthly")
incident_ns = Collection("incident")
incident_ns.add_task(incident_open, name="open")
incident_ns.add_task(incident_update, name="update")
incident_ns.add_task(incident_resolve, name="resolve")
certs_ns = Collection("certs")
certs_ns.add_task(certs_status, name="status")
certs_ns.add_task(certs_renew, name="renew")
dev_ns = Collection("dev")
dev_ns.add_task(test)
dev_ns.add_task(lint)
dev_ns.add_task(lock)

ns = Collection(provision, verify, run)
ns.add_task(deploy)
ns.add_task(rollback)
ns.add_task(releases)
ns.add_task(status)
ns.add_task(audit)
ns.add_collection(app_ns)
ns.add_collection(hosts_ns)
ns.add_collection(lab_ns)
ns.add_collection(backup_ns)
ns.add_collection(monitoring_ns)
ns.add_collection(certs_ns)
ns.add_collection(report_ns)
ns.add_collection(incident_ns)
ns.add_collection(dev_ns)
