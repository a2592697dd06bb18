"""What roles/healthcheck and the monitoring tasks agree on (no operations): the role's name,
where it installs the health check and the Slack webhook, and the cron entry.

The health check's own paths (config, status and state files), exit codes, check names and
JSON keys are constants of the host program, opskit.hostside.healthcheck.
"""

from __future__ import annotations

ROLE = "healthcheck"
SCRIPT = "/usr/local/bin/opskit-healthcheck"  # opskit/hostside/healthcheck.py, verbatim
WEBHOOK_FILE = "/etc/opskit/healthcheck-slack-webhook"  # the Slack webhook URL, root 0600
CRON_NAME = "opskit-healthcheck"  # /etc/cron.d/opskit-healthcheck
LOG_TAG = "opskit-healthcheck"  # syslog tag of cron's runs (`logger -t`)
