"""backup: verified PostgreSQL backups to S3 every 6 hours (roles/backup/README.md)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from opskit.backup.resources import ensure_bucket
from opskit.backup.spec import ROLE, config_file, config_for, settings
from opskit.core.remote import Remote
from opskit.core.result import Change
from opskit.hostside.backup import CONFIG, LOG, PROGRAM, SCRIPT
from opskit.resources import CronEntry, Directory, File, HostProgram, Packages, Resource


def resources(v: Mapping[str, Any]) -> list[Resource]:
    """The desired state of roles/backup/README.md for one host's variables."""
    s = settings(v)
    return [
        Packages(("python3-boto3", "cron")),  # pg_dump: the postgresql role
        Directory(s["backup_local_dir"], 0o700, "postgres", "postgres"),
        HostProgram(SCRIPT, "backup", role=ROLE),
        # The program's configuration holds the S3 keys and the webhook: 0600, no diff shown.
        File(
            CONFIG, config_file(s), mode=0o600, owner="postgres", group="postgres", sensitive=True
        ),
        CronEntry(PROGRAM, s["backup_schedule"], f"{SCRIPT} run >> {LOG} 2>&1", user="postgres"),
    ]


def after_converge(remote: Remote, changes: Sequence[Change], ctx: Any) -> None:
    """Set the bucket's retention, encryption and public-access block from the laptop."""
    changes = ensure_bucket(config_for(remote.host), dry_run=False)
    made = [c for c in changes if c.changed]
    for c in made:
        ctx.notes.append(f"{c.host} {c.resource}: {c.summary}")
    if not made and changes:
        ctx.notes.append(f"{changes[0].host}: bucket settings unchanged ({len(changes)} checked)")
