"""What the healthcheck role promises (roles/healthcheck/README.md), checked on the host itself."""

from __future__ import annotations

import json

ROLE = "healthcheck"


def test_script_and_config(host):
    script = host.file("/usr/local/bin/opskit-healthcheck")
    assert script.user == "root" and script.mode == 0o755
    assert script.contains("Managed by opskit")
    config = json.loads(host.file("/etc/opskit/healthcheck.json").content_string)
    assert host.file("/etc/opskit/healthcheck.json").mode == 0o644
    assert config["slack_webhook_file"] == "/etc/opskit/healthcheck-slack-webhook"
    # No secret in the script or its config: the webhook is only in its 0600 file.
    assert "hooks.slack.com" not in script.content_string
    assert "/services/" not in json.dumps(config)


def test_thresholds_are_the_inventorys(host, hostvars):
    checks = json.loads(host.file("/etc/opskit/healthcheck.json").content_string)["checks"]
    if "disk" in checks:
        assert checks["disk"]["warning"] == hostvars["healthcheck_disk_warning"]
        assert checks["disk"]["critical"] == hostvars["healthcheck_disk_critical"]
    if "memory" in checks:
        assert checks["memory"]["critical"] == hostvars["healthcheck_memory_critical"]
    if "http" in checks:
        assert checks["http"]["critical_ms"] == hostvars["healthcheck_response_time_critical_ms"]


def test_webhook_file_is_root_only(host):
    hook = host.file("/etc/opskit/healthcheck-slack-webhook")
    assert hook.user == "root" and hook.group == "root" and hook.mode == 0o600
    assert hook.content_string.strip().startswith(("https://", "http://"))


def test_cron_runs_it(host, hostvars):
    cron = host.file("/etc/cron.d/opskit-healthcheck")
    assert cron.mode == 0o644
    line = [x for x in cron.content_string.splitlines() if "opskit-healthcheck" in x][-1]
    assert line.startswith(f"{hostvars['healthcheck_schedule']} root /usr/local/bin/")
    assert host.service("cron").is_running


def test_check_runs_and_reports(host):
    out = host.run("/usr/local/bin/opskit-healthcheck --no-alert --json")
    assert out.rc in (0, 1, 2), out.stderr
    status = json.loads(out.stdout)
    assert status["level"] in ("ok", "warning", "critical")
    assert {r["name"] for r in status["results"]} >= {"disk", "memory"}


def test_check_runs_with_crons_environment(host):
    # cron gives its jobs PATH=/usr/bin:/bin only; every probe must still find its tools
    out = host.run("env -i PATH=/usr/bin:/bin /usr/local/bin/opskit-healthcheck --no-alert --json")
    assert out.rc in (0, 1, 2), out.stderr
    status = json.loads(out.stdout)
    lost = [r for r in status["results"] if "No such file" in json.dumps(r)]
    assert not lost, lost


def test_alert_rules_keep_their_secrets_root_only(host, hostvars):
    """With the inventory's `alerts`: the rules this host runs are in the config, the targets'
    URLs, keys and passwords only in the root-only targets file."""
    config = json.loads(host.file("/etc/opskit/healthcheck.json").content_string)
    targets = host.file("/etc/opskit/healthcheck-targets.json")
    if not config.get("rules"):
        assert not targets.exists  # no rules: no secrets left behind
        return
    assert config["targets_file"] == "/etc/opskit/healthcheck-targets.json"
    assert targets.user == "root" and targets.group == "root" and targets.mode == 0o600
    secrets = json.loads(targets.content_string)
    assert set(secrets) == set(config["targets"])
    for name, values in secrets.items():
        for value in values.values():
            assert value not in json.dumps(config), f"the secret of {name} is in the config"
    out = host.run("/usr/local/bin/opskit-healthcheck --no-alert --json")
    status = json.loads(out.stdout)
    assert set(status["rules"]["samples"]) | set(status["rules"]["metric_errors"]) >= {
        r["metric"] for r in config["rules"] if r["metric"] in config.get("metrics", {})
    }
