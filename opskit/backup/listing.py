"""`inv backup.list`: each host's backups in S3 (age, size, checksum state), judged against
the schedule, with what the host's last run said. The laptop reads S3 itself (boto3), so a
listing works even when the database host is down."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from opskit.backup.hosts import BackupError, host_label, on_hosts
from opskit.backup.resources import store_for
from opskit.backup.schedule import allowed_age
from opskit.backup.spec import BackupConfig, config_for
from opskit.backup.text import human_age, human_size
from opskit.clients import ApiError
from opskit.clients.s3 import ObjectInfo, S3Store
from opskit.core.errors import ConfigError
from opskit.core.inventory import Host, Inventory
from opskit.core.remote import Remote
from opskit.core.secrets import Secret
from opskit.hostside.backup import (
    DUMP_SUFFIX,
    KEY_ERROR,
    KEY_FAILED_STEP,
    KEY_FINISHED,
    KEY_LAST_RUN,
    KEY_OK,
    META_SHA256,
    SHA256_RE,
)

# Tags `inv backup.verify` puts on an object: when it was verified, or when and why it failed.
VERIFIED_TAG = "opskit-verified"
VERIFY_FAILED_TAG = "opskit-verify-failed"


@dataclass
class Listing:
    """The backups of one host in S3, and what its last run said."""

    host: str
    database: str
    location: str
    backups: list[ObjectInfo] = field(default_factory=list)
    checksum: dict[str, str] = field(default_factory=dict)  # key -> state
    newest_age: dt.timedelta | None = None
    allowed: dt.timedelta | None = None
    stale: bool = False
    problem: str = ""  # the newest backup failed verification or has no checksum
    last_run: dict[str, Any] | None = None
    note: str = ""
    error: str = ""


def checksum_state(info: ObjectInfo) -> str:
    """How far an object's integrity is known: verified / recorded / FAILED / MISSING.

    >>> now = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)
    >>> checksum_state(ObjectInfo("k", 1, now, {"sha256": "a" * 64}, "x=", tags={}))
    'sha256 recorded, S3 checksum present'
    >>> checksum_state(ObjectInfo("k", 1, now, {}))
    'MISSING (no sha256 metadata)'
    """
    sha = info.metadata.get(META_SHA256, "")
    if not re.fullmatch(SHA256_RE, sha):
        return "MISSING (no sha256 metadata)"
    if VERIFY_FAILED_TAG in info.tags:
        return f"FAILED verification {info.tags[VERIFY_FAILED_TAG]}"
    if VERIFIED_TAG in info.tags:
        return f"verified {info.tags[VERIFIED_TAG]}"
    return "sha256 recorded" + (", S3 checksum present" if info.checksum_sha256 else "")


def dumps(store: S3Store, prefix: str) -> list[ObjectInfo]:
    """The backups under `prefix` (a host's backups of a database), oldest first."""
    return [o for o in store.list_objects(prefix) if o.key.endswith(DUMP_SUFFIX)]


def latest_key(cfg: BackupConfig, label: str) -> str:
    backups = dumps(store_for(cfg), cfg.key_prefix(label))
    if not backups:
        raise BackupError(f"no backups under s3://{cfg.s3.bucket}/{cfg.key_prefix(label)}")
    return backups[-1].key


def resolve_key(remote: Remote, cfg: BackupConfig, backup: str) -> str:
    """`latest` (this host's newest backup) or an explicit key (any host's)."""
    if backup in ("", "latest"):
        label, _ = host_label(remote, cfg)
        return latest_key(cfg, label)
    store_for(cfg).head(backup)  # ApiError (404) when there is no such object
    return backup


def list_host(
    cfg: BackupConfig,
    info: Mapping[str, Any] | None,
    label: str,
    *,
    now: dt.datetime,
    details: int = 5,
) -> Listing:
    """List `label`'s backups of `cfg.database` in S3 and judge the newest one's age."""
    prefix = cfg.key_prefix(label)
    listing = Listing(cfg.host, cfg.database, f"s3://{cfg.s3.bucket}/{prefix}")
    listing.allowed = allowed_age(cfg)
    if info is not None:
        listing.last_run = info.get(KEY_LAST_RUN)
    store = store_for(cfg)
    listing.backups = dumps(store, prefix)
    shown = listing.backups[-details:] if details else listing.backups
    heads = {o.key: store.head(o.key, with_tags=True) for o in shown}
    listing.backups = [heads.get(o.key, o) for o in listing.backups]
    listing.checksum = {k: checksum_state(v) for k, v in heads.items()}
    if listing.backups:
        listing.newest_age = now - listing.backups[-1].last_modified
    if not listing.backups:
        listing.stale = True
        listing.note = "NO BACKUPS"
    elif (
        listing.allowed is not None and listing.newest_age and listing.newest_age > listing.allowed
    ):
        listing.stale = True
        listing.note = (
            f"STALE: newest backup is {human_age(listing.newest_age)} old; schedule "
            f"'{cfg.schedule}' allows {human_age(listing.allowed)}"
        )
    newest_state = listing.checksum.get(listing.backups[-1].key, "") if listing.backups else ""
    if newest_state.startswith(("FAILED", "MISSING")):
        listing.problem = f"NEWEST BACKUP UNUSABLE: {newest_state}"
    return listing


def list_backups(
    inventory: Inventory,
    hosts: Sequence[Host],
    *,
    now: dt.datetime | None = None,
    details: int = 5,
    sudo_password: Secret | None = None,
) -> list[Listing]:
    """Per host: its backups in S3 (age, size, checksum state), flagged when too old."""
    now = now or dt.datetime.now(dt.UTC)
    infos: dict[str, tuple[str, dict[str, Any] | None, str]] = {}

    def read(remote: Remote, cfg: BackupConfig) -> dict[str, Any]:
        label, info = host_label(remote, cfg)
        infos[remote.name] = (label, info, "")
        return {KEY_OK: True}

    for o in on_hosts(inventory, hosts, read, sudo_password=sudo_password):
        if o.error:
            cfg = config_for(inventory.host(o.host))
            label = cfg.label or cfg.host
            infos[o.host] = (
                label,
                None,
                f"host not read ({o.error.splitlines()[0]}); listed under label {label}",
            )
    out = []
    for h in hosts:
        cfg = config_for(h)
        label, info, note = infos[h.name]
        try:
            listing = list_host(cfg, info, label, now=now, details=details)
            listing.note = "; ".join(n for n in (listing.note, note) if n)
        except (ApiError, ConfigError) as exc:
            where = f"s3://{cfg.s3.bucket}/{cfg.key_prefix(label)}"
            listing = Listing(h.name, cfg.database, where, error=str(exc), stale=True)
        out.append(listing)
    return out


# --- text and JSON --------------------------------------------------------------------------


def format_listing(listing: Listing, now: dt.datetime) -> str:
    head = f"{listing.host}  {listing.database}  {listing.location}"
    if listing.error:
        return f"{head}\n  ERROR {listing.error}\n"
    lines = [head]
    if listing.backups:
        newest = listing.backups[-1]
        allowed = f" (schedule allows {human_age(listing.allowed)})" if listing.allowed else ""
        verdict = "STALE" if listing.stale else "ok"
        lines.append(
            f"  {verdict}: {len(listing.backups)} backups, newest "
            f"{human_age(now - newest.last_modified)} old{allowed}"
        )
    for text in (listing.note, listing.problem):
        if text:
            lines.append(f"  {text}")
    last = listing.last_run
    if last:
        state = (
            "ok"
            if last.get(KEY_OK)
            else f"FAILED at {last.get(KEY_FAILED_STEP)}: {last.get(KEY_ERROR)}"
        )
        lines.append(f"  last run on the host: {state} ({last.get(KEY_FINISHED, '?')})")
    for o in listing.backups[-len(listing.checksum) :] if listing.checksum else []:
        name = o.key.rsplit("/", 1)[-1]
        lines.append(
            f"    {name:<34} {human_age(now - o.last_modified):>12}  {human_size(o.size):>10}  "
            f"{listing.checksum.get(o.key, '')}"
        )
    return "\n".join(lines) + "\n"


def listing_json(listing: Listing) -> dict[str, Any]:
    """A listing as `inv backup.list --json` prints it (the reports build on it)."""
    d = asdict(listing)
    d["backups"] = [
        {
            "key": o.key,
            "size": o.size,
            "last_modified": o.last_modified.isoformat(),
            "checksum_state": listing.checksum.get(o.key),
            "sha256": o.metadata.get(META_SHA256),
        }
        for o in listing.backups
    ]
    d.pop("checksum")
    for k in ("newest_age", "allowed"):
        d[k] = None if d[k] is None else d[k].total_seconds()
    return d
