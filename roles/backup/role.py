"""backup: verified PostgreSQL backups to S3 every 6 hours (roles/backup/README.md)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from opskit.core.errors import ConfigError
from opskit.core.remote import Remote
from opskit.core.result import Change
from opskit.resources import (
    CronEntry,
    Directory,
    Packages,
    Resource,
    Template,
)

SCRIPT = "/usr/local/bin/opskit-backup"
CONFIG = "/etc/opskit-backup.json"
LOG = "/var/log/postgresql/opskit-backup.log"
CRON = "opskit-backup"


def settings(v: Mapping[str, Any]) -> dict[str, Any]:
    """The role's variables (checked at load: roles/backup/schema.yml), with the defaults that
    come from the postgresql role filled in (backup_database, backup_database_owner), and the
    rules between variables checked. ConfigError names the variable."""
    out = dict(v)
    if not out["backup_database"]:
        out["backup_database"] = v.get("postgresql_app_database") or ""
    if not out["backup_database_owner"]:
        out["backup_database_owner"] = v.get("postgresql_app_user") or ""
    for key in ("backup_database", "backup_database_owner"):
        if not out[key]:
            raise ConfigError(
                f"{key}: not set, and the host has no postgresql role to take it from"
            )
    if bool(out["backup_s3_access_key_id"]) != bool(out["backup_s3_secret_access_key"]):
        raise ConfigError(
            "backup_s3_access_key_id and backup_s3_secret_access_key: set both or neither"
        )
    if bool(out["backup_app_stop_command"]) != bool(out["backup_app_start_command"]):
        raise ConfigError(
            "backup_app_stop_command and backup_app_start_command: set both or neither"
        )
    return out


def resources(v: Mapping[str, Any]) -> list[Resource]:
    """The desired state of roles/backup/README.md for one host's variables."""
    s = settings(v)
    return [
        Packages(("python3-boto3", "cron")),  # pg_dump: the postgresql role
        Directory(s["backup_local_dir"], 0o700, "postgres", "postgres"),
        Template(SCRIPT, "backup/opskit-backup.j2", s, mode=0o755),
        Template(
            CONFIG,
            "backup/opskit-backup.json.j2",
            s,
            mode=0o600,
            owner="postgres",
            group="postgres",
            sensitive=True,
        ),
        CronEntry(CRON, s["backup_schedule"], f"{SCRIPT} run >> {LOG} 2>&1", user="postgres"),
    ]


def after_converge(remote: Remote, changes: Sequence[Change], ctx: Any) -> None:
    """Set the bucket's retention, encryption and public-access block from the laptop."""
    from opskit.backup.ops import ensure_bucket_for

    changes = ensure_bucket_for(remote.host, dry_run=False)
    made = [c for c in changes if c.changed]
    for c in made:
        ctx.notes.append(f"{c.host} {c.resource}: {c.summary}")
    if not made and changes:
        ctx.notes.append(f"{changes[0].host}: bucket settings unchanged ({len(changes)} checked)")
