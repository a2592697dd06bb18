"""backup: verified PostgreSQL backups to S3 every 6 hours (roles/backup/README.md)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from opskit.core.errors import ConfigError
from opskit.core.remote import Remote
from opskit.core.result import Change
from opskit.resources import (
    CronEntry,
    Directory,
    Packages,
    Resource,
    Template,
    validate_cron_schedule,
)

SCRIPT = "/usr/local/bin/opskit-backup"
CONFIG = "/etc/opskit-backup.json"
LOG = "/var/log/postgresql/opskit-backup.log"
CRON = "opskit-backup"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


def settings(v: Mapping[str, Any]) -> dict[str, Any]:
    """The role's variables, checked, with the defaults that come from the postgresql role
    filled in (backup_database, backup_database_owner). ConfigError names the variable."""
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
        if not _NAME.fullmatch(str(out[key])):
            raise ConfigError(f"{key}: {out[key]!r} is not a plain PostgreSQL name")
    bucket = str(out["backup_s3_bucket"])
    if not bucket:
        raise ConfigError("backup_s3_bucket: required (the S3 bucket the backups go to)")
    if not _BUCKET.fullmatch(bucket) or ".." in bucket:
        raise ConfigError(f"backup_s3_bucket: {bucket!r} is not a valid S3 bucket name")
    try:
        validate_cron_schedule(str(out["backup_schedule"]))
    except ConfigError as exc:
        raise ConfigError(f"backup_schedule: {exc}") from None
    ints = {
        "backup_local_retention_days": (1, 3650),
        "backup_s3_retention_days": (1, 36500),
        "backup_compression_level": (0, 9),
        "backup_restore_jobs": (1, 64),
        "backup_s3_max_attempts": (1, 20),
        "backup_max_age_grace_minutes": (0, 100000),
    }
    for key, (lo, hi) in ints.items():
        value = out[key]
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise ConfigError(f"{key}: expected a whole number {lo}-{hi}, got {value!r}")
    for key in ("backup_s3_connect_timeout", "backup_s3_read_timeout", "backup_http_timeout"):
        value = out[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ConfigError(f"{key}: expected seconds > 0, got {value!r}")
    if out["backup_s3_encryption"] not in ("AES256", "aws:kms"):
        raise ConfigError("backup_s3_encryption: AES256 or aws:kms")
    if out["backup_verify_upload"] not in ("checksum", "download"):
        raise ConfigError("backup_verify_upload: checksum or download")
    if bool(out["backup_s3_access_key_id"]) != bool(out["backup_s3_secret_access_key"]):
        raise ConfigError(
            "backup_s3_access_key_id and backup_s3_secret_access_key: set both or neither"
        )
    for key in ("backup_s3_endpoint", "backup_heartbeat_url", "backup_slack_webhook"):
        value = str(out[key])
        if value and (
            urlsplit(value).scheme not in ("http", "https") or not urlsplit(value).netloc
        ):
            # Never echo the value: it may be a secret URL.
            raise ConfigError(f"{key}: expected an http(s) URL")
    prefix = str(out["backup_s3_prefix"]).strip("/")
    if not re.fullmatch(r"[A-Za-z0-9._/-]*", prefix):
        raise ConfigError("backup_s3_prefix: letters, digits, '.', '_', '-' and '/' only")
    label = str(out["backup_s3_host_label"])
    if label and not re.fullmatch(r"[A-Za-z0-9._-]+", label):
        raise ConfigError("backup_s3_host_label: letters, digits, '.', '_' and '-' only")
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
