"""The backup bucket: desired state the laptop sets itself (boto3), not over SSH.

The role's `after_converge` and `inv backup.bucket` both call `ensure_bucket`: the bucket exists,
with the lifecycle rule that expires backups after backup_s3_retention_days, default encryption
and every public-access block (opskit/clients/s3.py plans and applies each, one Change each).
"""

from __future__ import annotations

from opskit.backup.spec import BackupConfig
from opskit.clients.s3 import S3Store, make_client
from opskit.core.result import Change


def store_for(cfg: BackupConfig) -> S3Store:
    """The host's backup bucket, reached with its settings (credentials redacted in errors)."""
    return S3Store(make_client(cfg.s3), cfg.s3.bucket, cfg.s3.secrets)


def ensure_bucket(cfg: BackupConfig, *, dry_run: bool) -> list[Change]:
    """Retention, default encryption and public-access block of the host's backup bucket
    (with backup_s3_manage_bucket false: only that it exists)."""
    return store_for(cfg).ensure_bucket(
        cfg.policy, region=cfg.s3.region, manage=cfg.manage_bucket, dry_run=dry_run
    )
