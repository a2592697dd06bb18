"""What the backup role and the backup operations agree on: a host's settings from its
variables (checked), and the configuration file of the host program.

The host program (opskit/hostside/backup.py, installed as /usr/local/bin/opskit-backup) owns its
paths, exit codes and the keys of what it prints and records; this module turns the role's
variables (roles/backup/defaults.yml) into its JSON configuration and into `BackupConfig`, the
laptop's view of the same settings. No operations here: roles may import it.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from opskit.clients.s3 import BucketPolicy, S3Settings
from opskit.core.cron import validate_cron_schedule
from opskit.core.errors import ConfigError
from opskit.core.inventory import Host
from opskit.core.render import managed_by
from opskit.core.secrets import Secret
from opskit.hostside.backup import NAME_RE, VERIFY_MODES, Config, S3Config, key_prefix

ROLE = "backup"

# The maintenance switch: while this file exists for an app (`inv backup.restore --replace` has
# stopped it), the nginx role's site answers every request with its maintenance page (503 with
# Retry-After) instead of a 502. A plain file, so switching costs no nginx reload.
MAINTENANCE_DIR = "/var/lib/opskit/maintenance"


def maintenance_flag(app_name: str) -> str:
    """
    >>> maintenance_flag("sample")
    '/var/lib/opskit/maintenance/sample'
    """
    return f"{MAINTENANCE_DIR}/{app_name}"


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
        if not re.fullmatch(NAME_RE, str(out[key])):
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
    if out["backup_verify_upload"] not in VERIFY_MODES:
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


# --- the host program's configuration -------------------------------------------------------


def host_config(s: Mapping[str, Any]) -> Config:
    """The host program's configuration from checked settings (`settings(v)`); it holds the
    S3 keys, the heartbeat URL and the Slack webhook as they are (the file is 0600)."""
    s3: S3Config = {
        "bucket": s["backup_s3_bucket"],
        "prefix": s["backup_s3_prefix"],
        "endpoint": s["backup_s3_endpoint"],
        "region": s["backup_s3_region"],
        "access_key_id": s["backup_s3_access_key_id"],
        "secret_access_key": s["backup_s3_secret_access_key"],
        "encryption": s["backup_s3_encryption"],
        "kms_key_id": s["backup_s3_kms_key_id"],
        "storage_class": s["backup_s3_storage_class"],
        "connect_timeout": s["backup_s3_connect_timeout"],
        "read_timeout": s["backup_s3_read_timeout"],
        "max_attempts": s["backup_s3_max_attempts"],
    }
    return {
        "database": s["backup_database"],
        "owner": s["backup_database_owner"],
        "label": s["backup_s3_host_label"],
        "local_dir": s["backup_local_dir"],
        "local_retention_days": s["backup_local_retention_days"],
        "compression_level": s["backup_compression_level"],
        "restore_jobs": s["backup_restore_jobs"],
        "verify_upload": s["backup_verify_upload"],
        "heartbeat_url": s["backup_heartbeat_url"],
        "slack_webhook": s["backup_slack_webhook"],
        "http_timeout": s["backup_http_timeout"],
        "s3": s3,
    }


def config_file(s: Mapping[str, Any]) -> str:
    """The text of the host program's configuration file (CONFIG), with a managed-by note."""
    return json.dumps({"_comment": managed_by(ROLE), **host_config(s)}, indent=2) + "\n"


# --- the laptop's view ----------------------------------------------------------------------


@dataclass(frozen=True)
class BackupConfig:
    """A database host's backup settings, from its inventory variables (checked)."""

    host: str
    database: str
    owner: str
    label: str  # "" = the host's hostname (found on the host)
    prefix: str
    schedule: str
    grace: dt.timedelta
    local_dir: str
    s3: S3Settings
    policy: BucketPolicy
    manage_bucket: bool
    app_hosts: str
    app_stop: str
    app_start: str

    def key_prefix(self, label: str) -> str:
        return key_prefix(self.prefix, label, self.database)


def has_backup_role(host: Host) -> bool:
    return ROLE in host.roles


def config_for(host: Host) -> BackupConfig:
    """The backup settings of `host`; ConfigError when it has no backup role or bad values."""
    if not has_backup_role(host):
        raise ConfigError(f"{host.name}: has no backup role (give its group roles: [backup])")
    try:
        s = settings(host.vars)
    except ConfigError as exc:
        raise ConfigError(f"{host.name}: {exc}") from None
    return BackupConfig(
        host=host.name,
        database=s["backup_database"],
        owner=s["backup_database_owner"],
        label=s["backup_s3_host_label"],
        prefix=str(s["backup_s3_prefix"]).strip("/"),
        schedule=s["backup_schedule"],
        grace=dt.timedelta(minutes=s["backup_max_age_grace_minutes"]),
        local_dir=str(s["backup_local_dir"]),
        s3=S3Settings(
            bucket=s["backup_s3_bucket"],
            region=s["backup_s3_region"],
            endpoint=s["backup_s3_endpoint"],
            access_key_id=_secret(s["backup_s3_access_key_id"]),
            secret_access_key=_secret(s["backup_s3_secret_access_key"]),
            connect_timeout=float(s["backup_s3_connect_timeout"]),
            read_timeout=float(s["backup_s3_read_timeout"]),
            max_attempts=int(s["backup_s3_max_attempts"]),
        ),
        policy=BucketPolicy(
            prefix=str(s["backup_s3_prefix"]),
            retention_days=s["backup_s3_retention_days"],
            encryption=s["backup_s3_encryption"],
            kms_key_id=s["backup_s3_kms_key_id"],
        ),
        manage_bucket=bool(s["backup_s3_manage_bucket"]),
        app_hosts=str(s["backup_app_hosts"]),
        app_stop=str(s["backup_app_stop_command"]),
        app_start=str(s["backup_app_start_command"]),
    )


def _secret(value: Any) -> Secret | None:
    if not value:
        return None
    return value if isinstance(value, Secret) else Secret(str(value))
