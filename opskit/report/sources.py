"""The report's own pass over each host, on the connection the status and audit readers share:
its history (one command), then certificates (opskit.certs), releases and their journal
(opskit.app.deploy) and the backup label (opskit.backup) through their modules' readers; after
all hosts, the certificates are judged and the backups listed in S3 from this machine."""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Sequence
from typing import Any

from opskit.app import deploy
from opskit.app.spec import AppLayout
from opskit.backup import hosts as backup_hosts
from opskit.backup import listing as backup_listing
from opskit.backup.spec import config_for
from opskit.certs import judge as certs_judge
from opskit.certs import read as certs_read
from opskit.certs import spec as certs_spec
from opskit.core.errors import OpsError
from opskit.core.inventory import Host
from opskit.core.remote import Remote
from opskit.core.secrets import redact
from opskit.report.data import ReportData, parse_time
from opskit.report.history import history_command, params_for, parse_history

RELEASE_JOURNAL_LINES = 500
# What the report shows of an entry of the release journal (opskit.app.deploy).
EVENT_KEYS = (
    "time",
    "action",
    "result",
    "release",
    "from",
    "operator",
    "ref",
    "seconds",
    "detail",
)


class HostPass:
    """The report's own reads of a host: nginx traffic and alert history (one command), then
    certificates, releases and the backup label through their modules' readers."""

    def __init__(self, data: ReportData) -> None:
        self.data = data
        self.cert_hosts: dict[str, certs_read.HostCerts] = {}
        self.cert_settings: dict[str, tuple[int, int]] = {}
        self.releases: dict[str, dict[str, Any]] = {}
        self.labels: dict[str, tuple[str, dict[str, Any] | None]] = {}
        self.lock = threading.Lock()

    def note(self, key: str, exc: Exception, host: Host) -> None:
        with self.lock:
            self.data.errors[key] = redact(str(exc), host.secrets)

    def read(self, remote: Remote) -> None:
        data, h = self.data, remote.host
        params = params_for(h, data.kind, data.since.timestamp(), data.until.timestamp())
        try:
            res = remote.run(history_command(params), what="report history", timeout=300)
            hist = parse_history(res.stdout)
            with self.lock:
                data.history[h.name] = hist
        except (OpsError, ValueError) as exc:
            self.note(f"history:{h.name}", exc, h)
        if "certbot" in h.roles:
            try:
                declared = certs_spec.declared_certificates(h.vars)
                self.cert_settings[h.name] = certs_spec.thresholds(h.vars)
                self.cert_hosts[h.name] = certs_read.read_host(remote, declared)
            except (OpsError, ValueError) as exc:
                self.note(f"certs:{h.name}", exc, h)
        if "app" in h.roles:
            try:
                layout = AppLayout.from_vars(h.vars)
                state = deploy.read_state(remote, layout, journal=RELEASE_JOURNAL_LINES)
                self.releases[h.name] = release_summary(h.name, state, data.since, data.until)
            except (OpsError, ValueError) as exc:
                self.note(f"releases:{h.name}", exc, h)
        if "backup" in h.roles:
            try:
                self.labels[h.name] = backup_hosts.host_label(remote, config_for(h))
            except (OpsError, ValueError) as exc:
                self.note(f"backups:{h.name}", exc, h)

    def finish(self, hosts: Sequence[Host], *, details: int) -> None:
        """Judge the certificates as `inv certs.status --json` does; list backups in S3 (from
        this machine, even when the database host could not be read)."""
        data = self.data
        cert_targets = [h for h in hosts if "certbot" in h.roles]
        if cert_targets:
            read = []
            for h in cert_targets:
                if h.name in self.cert_hosts:
                    read.append(self.cert_hosts[h.name])
                else:
                    err = data.errors.get(f"host:{h.name}") or data.errors.get(
                        f"certs:{h.name}", "?"
                    )
                    read.append(
                        certs_read.HostCerts(
                            h.name, error=err, unreachable=h.name in data.unreadable
                        )
                    )
                    self.cert_settings.setdefault(h.name, certs_spec.thresholds(h.vars))
            data.certs = json.loads(
                certs_judge.status_json(
                    certs_judge.build_report(read, self.cert_settings, data.generated_at)
                )
            )
        data.releases = [self.releases[h.name] for h in hosts if h.name in self.releases]
        for h in hosts:
            if "backup" not in h.roles:
                continue
            try:
                cfg = config_for(h)
                label, info = self.labels.get(h.name, (cfg.label or cfg.host, None))
                listing = backup_listing.list_host(
                    cfg, info, label, now=data.generated_at, details=details
                )
                data.backups.append(backup_summary(listing, data.since))
            except (OpsError, ValueError) as exc:
                data.errors[f"backups:{h.name}"] = redact(str(exc), h.secrets)
                data.backups.append({"host": h.name, "error": data.errors[f"backups:{h.name}"]})


def release_summary(
    host: str, state: deploy.HostState, since: dt.datetime, until: dt.datetime
) -> dict[str, Any]:
    """One host's current release and the deploys/rollbacks of its journal inside the window."""
    current = state.find(state.current or "") if state.current else None
    events = []
    for j in state.journal:
        t = parse_time(j.get("time"))
        if t is not None and since <= t <= until:
            events.append({k: j.get(k) for k in EVENT_KEYS})
    return {
        "host": host,
        "current": state.current,
        "current_label": current.label if current else None,
        "deployed_at": current.meta.get("deployed_at") if current else None,
        "releases": len(state.releases),
        "bad": [r.name for r in state.releases if r.bad],
        "events": events,
    }


def backup_summary(listing: backup_listing.Listing, since: dt.datetime) -> dict[str, Any]:
    """opskit.backup.listing's listing (as `inv backup.list --json`) plus the window's backups."""
    d = backup_listing.listing_json(listing)
    in_window = [b for b in d["backups"] if (parse_time(b["last_modified"]) or since) > since]
    d["in_window"] = len(in_window)
    d["window_bytes"] = sum(int(b["size"]) for b in in_window)
    newest = d["backups"][-1] if d["backups"] else None
    d["newest"] = newest
    d["newest_verified"] = bool(
        newest and str(newest.get("checksum_state") or "").startswith("verified")
    )
    return d
