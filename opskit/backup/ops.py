"""Backups from the laptop: run, list, verify, restore and drill (the `inv backup.*` tasks).

The database host does the heavy work with the script the `backup` role installs
(/usr/local/bin/opskit-backup: dump, verify, upload, download, restore); the laptop starts it
over the one SSH connection per host, shows its progress, and talks to S3 itself (boto3) for what
needs no database: listing, checksum state, tags, bucket settings. So a backup never travels
through the laptop, and `inv backup.list` works even when the database host is down.

The library never prints: progress goes to a callback, results come back as dataclasses and
the `format_*` functions turn them into text.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import logging
import re
import select
import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from opskit.clients import ApiError
from opskit.clients.s3 import BucketPolicy, ObjectInfo, S3Settings, S3Store, make_client
from opskit.core.cron import validate_cron_schedule
from opskit.core.errors import ConfigError, ConnectError, OpsError, RemoteCommandError
from opskit.core.inventory import Host, Inventory
from opskit.core.remote import Remote, connect
from opskit.core.result import Change
from opskit.core.roles import available_roles
from opskit.core.runner import RunContext, run_on_hosts
from opskit.core.secrets import Secret, redact

log = logging.getLogger(__name__)
q = shlex.quote

SCRIPT = "/usr/local/bin/opskit-backup"
PROGRESS_MARK = "@@progress "
# Exit codes of the host script (templates/backup/opskit-backup.j2).
EXIT_REFUSED, EXIT_EXISTS, EXIT_LOCKED = 3, 4, 75
VERIFIED_TAG = "opskit-verified"
COUNTED_PHASES = ("restore",)  # progress in archive items, not bytes
VERIFY_FAILED_TAG = "opskit-verify-failed"

Progress = Callable[[str, str, int, int], None]  # host, phase, done, total


def _no_progress(host: str, phase: str, done: int, total: int) -> None:
    """Default progress callback: drop the event."""


class BackupError(OpsError):
    """A backup operation failed on a host; the message says where and why."""

    def __init__(self, message: str, result: Mapping[str, Any] | None = None, code: int = 1):
        super().__init__(message)
        self.result, self.code = dict(result or {}), code


# --- configuration --------------------------------------------------------------------------


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
    s3: S3Settings
    policy: BucketPolicy
    manage_bucket: bool
    app_hosts: str
    app_stop: str
    app_start: str

    def key_prefix(self, label: str) -> str:
        return "/".join(p for p in (self.prefix, label, self.database) if p) + "/"


def has_backup_role(host: Host) -> bool:
    return "backup" in host.roles


def config_for(host: Host) -> BackupConfig:
    """The backup settings of `host`; ConfigError when it has no backup role or bad values."""
    if not has_backup_role(host):
        raise ConfigError(f"{host.name}: has no backup role (give its group roles: [backup])")
    try:
        s = available_roles()["backup"].module().settings(host.vars)
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


def backup_hosts(inventory: Inventory, selected: Sequence[Host]) -> list[Host]:
    """The selected hosts that have the backup role; ConfigError if there are none."""
    hosts = [h for h in selected if has_backup_role(h)]
    if not hosts:
        names = ", ".join(h.name for h in inventory.hosts if has_backup_role(h)) or "none"
        raise ConfigError(
            f"{inventory.path}: none of the selected hosts has the backup role "
            f"(hosts with it: {names})"
        )
    for h in hosts:
        config_for(h)  # bad values stop everything before anything runs
    return hosts


def store_for(cfg: BackupConfig) -> S3Store:
    return S3Store(make_client(cfg.s3), cfg.s3.bucket, cfg.s3.secrets)


def ensure_bucket_for(host: Host, *, dry_run: bool) -> list[Change]:
    """Retention, default encryption and public-access block of `host`'s backup bucket."""
    cfg = config_for(host)
    return store_for(cfg).ensure_bucket(
        cfg.policy, region=cfg.s3.region, manage=cfg.manage_bucket, dry_run=dry_run
    )


# --- cron: the longest gap between two runs -------------------------------------------------

_SPECIAL = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}
_NAMES = {
    3: {
        m: i + 1
        for i, m in enumerate(
            ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
        )
    },
    4: {d: i for i, d in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])},
}
_RANGES = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]


def _field(text: str, index: int) -> tuple[set[int], bool]:
    """The values a cron field allows, and whether it is restricted (not '*')."""
    lo, hi = _RANGES[index]
    values: set[int] = set()
    for item in text.split(","):
        rng, _, step_text = item.partition("/")
        step = int(step_text) if step_text else 1
        if rng == "*":
            start, end = lo, hi
        else:
            bounds = [_NAMES.get(index, {}).get(b.lower(), None) for b in rng.split("-")]
            nums = [
                b if b is not None else int(r) for b, r in zip(bounds, rng.split("-"), strict=True)
            ]
            start, end = nums[0], nums[-1] if len(nums) > 1 else (hi if step_text else nums[0])
        values.update(range(start, end + 1, step))
    if index == 4 and 7 in values:
        values.add(0)
    return values, not text.startswith("*")


def max_gap(schedule: str) -> dt.timedelta | None:
    """The longest time between two runs of a cron schedule (None for @reboot).

    >>> max_gap("0 */6 * * *"), max_gap("15 3 * * *"), max_gap("@weekly")
    (datetime.timedelta(seconds=21600), datetime.timedelta(days=1), datetime.timedelta(days=7))
    >>> max_gap("0 9 * * 1-5")
    datetime.timedelta(days=3)
    """
    s = validate_cron_schedule(schedule)
    if s == "@reboot":
        return None
    parts = _SPECIAL.get(s, s).split()
    minutes, hours = _field(parts[0], 0)[0], _field(parts[1], 1)[0]
    (dom, dom_r), months = _field(parts[2], 2), _field(parts[3], 3)[0]
    dow, dow_r = _field(parts[4], 4)
    start = dt.datetime(2024, 1, 1)  # 2 years: covers leap days and every weekday/month mix
    runs: list[dt.datetime] = []
    for d in range(366 * 2 + 31):
        day = start + dt.timedelta(days=d)
        if day.month not in months:
            continue
        in_dom, in_dow = day.day in dom, (day.isoweekday() % 7) in dow
        # cron: when both day fields are restricted, either one matching is enough
        if (in_dom or in_dow) if (dom_r and dow_r) else (in_dom and in_dow):
            runs += [day.replace(hour=h, minute=m) for h in sorted(hours) for m in sorted(minutes)]
    if len(runs) < 2:
        return None
    return max(b - a for a, b in itertools.pairwise(runs))


def allowed_age(cfg: BackupConfig) -> dt.timedelta | None:
    gap = max_gap(cfg.schedule)
    return None if gap is None else gap + cfg.grace


# --- talking to the host script -------------------------------------------------------------


def stream(
    remote: Remote,
    script: str,
    on_line: Callable[[str], None],
    *,
    timeout: float | None = None,
) -> tuple[int, str, str]:
    """Run `script` as root like Remote.run, but hand each stderr line to `on_line` as it
    arrives (Remote.run returns output only at the end). Returns (exit, stdout, stderr)."""
    secrets = [*remote.host.secrets, *([remote.sudo_password] if remote.sudo_password else [])]
    chan = remote.open_channel(script)
    out, err, pending = bytearray(), [], b""
    try:
        chan.shutdown_write()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            busy = False
            if chan.recv_ready():
                out += chan.recv(65536)
                busy = True
            if chan.recv_stderr_ready():
                pending += chan.recv_stderr(65536)
                *lines, pending = pending.split(b"\n")
                for raw in lines:
                    line = redact(raw.decode(errors="replace"), secrets)
                    err.append(line)
                    on_line(line)
                busy = True
            if busy:
                continue
            if chan.exit_status_ready():
                break
            if deadline is not None and time.monotonic() > deadline:
                raise RemoteCommandError(
                    remote.name, "backup script", -1, f"timed out after {timeout} s"
                )
            select.select([chan], [], [], 0.5)
        while chan.recv_ready():
            out += chan.recv(65536)
        while chan.recv_stderr_ready():
            pending += chan.recv_stderr(65536)
        if pending:
            line = redact(pending.decode(errors="replace"), secrets)
            err.append(line)
            on_line(line)
        code = chan.recv_exit_status()
    finally:
        chan.close()
    stdout = redact(out.decode(errors="replace"), secrets)
    if code == 1 and "password is required" in "\n".join(err[-3:]):
        raise ConnectError(
            f"sudo on {remote.name} needs a password: set ssh.sudo_password or --ask-sudo-pass"
        )
    return code, stdout, "\n".join(err)


def host_script(
    remote: Remote,
    args: Sequence[str],
    progress: Progress = _no_progress,
    *,
    timeout: float | None = None,
) -> tuple[int, dict[str, Any], str]:
    """Run `opskit-backup <args> --json --progress` on the host: (exit, result, log lines)."""
    logs: list[str] = []

    def on_line(line: str) -> None:
        if line.startswith(PROGRESS_MARK):
            try:
                ev = json.loads(line[len(PROGRESS_MARK) :])
                progress(remote.name, str(ev["phase"]), int(ev["done"]), int(ev["total"]))
            except (ValueError, KeyError, TypeError):
                pass
        elif line.strip():
            logs.append(line)

    command = " ".join(q(a) for a in [SCRIPT, *args, "--json", "--progress"])
    missing = f"[ -x {SCRIPT} ] || {{ echo 'opskit-backup is missing' >&2; exit 127; }}"
    code, out, _ = stream(remote, f"{missing}\n{command}\n", on_line, timeout=timeout)
    if code == 127:
        raise BackupError(f"{remote.name}: {SCRIPT} is missing: run `inv provision` first")
    result: dict[str, Any] = {}
    for line in reversed(out.strip().splitlines()):
        if line.startswith("{"):
            try:
                result = json.loads(line)
                break
            except ValueError:
                continue
    if not result:
        tail = "\n".join(logs[-10:])
        raise BackupError(
            f"{remote.name}: opskit-backup {args[0]} gave no result (exit {code})\n{tail}"
        )
    return code, result, "\n".join(logs)


# --- results --------------------------------------------------------------------------------


@dataclass
class HostOutcome:
    """What an operation did on one host: `ok`, its data, or an error."""

    host: str
    ok: bool = False
    data: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    unreachable: bool = False


def on_hosts(
    inventory: Inventory,
    hosts: Sequence[Host],
    fn: Callable[[Remote, BackupConfig], dict[str, Any]],
    *,
    workers: int = 4,
    sudo_password: Secret | None = None,
) -> list[HostOutcome]:
    """Run `fn(remote, config)` on each host in parallel; one failing host never stops others."""
    found: dict[str, HostOutcome] = {}

    def work(remote: Remote, ctx: RunContext) -> list[Change]:
        outcome = HostOutcome(remote.name)
        found[remote.name] = outcome
        try:
            outcome.data = fn(remote, config_for(remote.host))
            outcome.ok = bool(outcome.data.get("ok", True))
        except BackupError as exc:
            outcome.error, outcome.data = str(exc), {**exc.result, **outcome.data}
        except (ApiError, ConfigError, RemoteCommandError) as exc:
            outcome.error = redact(str(exc), remote.host.secrets)
        return []

    results = run_on_hosts(inventory, hosts, work, workers=workers, sudo_password=sudo_password)
    out = []
    for r in results:
        o = found.get(r.host, HostOutcome(r.host))
        if r.error and not o.error:
            o.error, o.unreachable, o.ok = r.error, r.unreachable, False
        out.append(o)
    return out


# --- run ------------------------------------------------------------------------------------


def run_backup(
    remote: Remote, cfg: BackupConfig, progress: Progress = _no_progress
) -> dict[str, Any]:
    """A backup now on this host (the same script cron runs); BackupError when it failed."""
    code, result, _ = host_script(remote, ["run"], progress)
    if code != 0 or not result.get("ok"):
        reason = result.get("error") or f"exit {code}"
        raise BackupError(
            f"backup failed at {result.get('failed_step', '?')}: {reason}", result, code
        )
    return result


# --- list -----------------------------------------------------------------------------------


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
    sha = info.metadata.get("sha256", "")
    if not re.fullmatch(r"[0-9a-f]{64}", sha):
        return "MISSING (no sha256 metadata)"
    if VERIFY_FAILED_TAG in info.tags:
        return f"FAILED verification {info.tags[VERIFY_FAILED_TAG]}"
    if VERIFIED_TAG in info.tags:
        return f"verified {info.tags[VERIFIED_TAG]}"
    return "sha256 recorded" + (", S3 checksum present" if info.checksum_sha256 else "")


def host_label(remote: Remote | None, cfg: BackupConfig) -> tuple[str, dict[str, Any] | None]:
    """The label the host's backups are stored under, and its `info` (None if unreachable)."""
    if remote is None:
        return cfg.label or cfg.host, None
    code, info, _ = host_script(remote, ["info"], timeout=120)
    if code != 0:
        raise BackupError(f"opskit-backup info: {info.get('error', f'exit {code}')}")
    return str(info.get("label") or cfg.label or cfg.host), info


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
        listing.last_run = info.get("last_run")
    store = store_for(cfg)
    listing.backups = [o for o in store.list_objects(prefix) if o.key.endswith(".dump")]
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
        return {"ok": True}

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


def latest_key(cfg: BackupConfig, label: str) -> str:
    backups = [
        o for o in store_for(cfg).list_objects(cfg.key_prefix(label)) if o.key.endswith(".dump")
    ]
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


def _stamp(now: dt.datetime | None = None) -> str:
    return (now or dt.datetime.now(dt.UTC)).strftime("%Y%m%d%H%M%S")


# --- verify ---------------------------------------------------------------------------------


def verify_backup(
    remote: Remote, cfg: BackupConfig, backup: str = "latest", progress: Progress = _no_progress
) -> dict[str, Any]:
    """Download the backup on the host, check its sha256, restore it into a scratch database,
    count its rows, drop it; tag the S3 object with the outcome."""
    key = resolve_key(remote, cfg, backup)
    scratch = f"opskit_verify_{_stamp()}"
    code, result, _ = host_script(
        remote, ["restore", "--key", key, "--target", scratch, "--scratch"], progress
    )
    store = store_for(cfg)
    result["key"] = key
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%MZ")
    if code != 0 or not result.get("ok"):
        reason = "checksum" if code == EXIT_REFUSED else "restore"
        try:
            store.set_tags(key, {VERIFY_FAILED_TAG: f"{when} {reason}"})
        except ApiError as exc:
            log.warning("[%s] could not tag %s: %s", remote.name, key, exc)
        what = "REFUSED" if code == EXIT_REFUSED else "FAILED"
        raise BackupError(f"verify {what}: {result.get('error', f'exit {code}')}", result, code)
    store.set_tags(key, {VERIFIED_TAG: when})
    return result


# --- restore --------------------------------------------------------------------------------


def restore_backup(
    remote: Remote,
    cfg: BackupConfig,
    backup: str = "latest",
    *,
    target: str = "",
    progress: Progress = _no_progress,
) -> dict[str, Any]:
    """Restore a backup into a NEW database (default <db>_restored_<time>); the live one stays."""
    key = resolve_key(remote, cfg, backup)
    target = target or f"{cfg.database}_restored_{_stamp()}"
    code, result, _ = host_script(
        remote, ["restore", "--key", key, "--target", target, "--compare-live"], progress
    )
    result["key"] = key
    if code != 0 or not result.get("ok"):
        what = "REFUSED" if code in (EXIT_REFUSED, EXIT_EXISTS) else "FAILED"
        raise BackupError(f"restore {what}: {result.get('error', f'exit {code}')}", result, code)
    return result


def _app_hosts(inventory: Inventory, cfg: BackupConfig) -> list[Host]:
    if not cfg.app_hosts:
        return [inventory.host(cfg.host)]
    return inventory.select([cfg.app_hosts])


def _on_app_hosts(
    inventory: Inventory, hosts: Sequence[Host], command: str, sudo_password: Secret | None
) -> list[str]:
    """Run `command` as root on each host in turn; lines saying what happened. Raises
    BackupError after trying every host if one failed."""
    done, failed = [], []
    for h in hosts:
        try:
            r = connect(h, inventory.ssh, sudo_password=sudo_password)
            try:
                r.run(command, what=command, timeout=300)
            finally:
                r.close()
            done.append(f"{h.name}: {command}")
        except OpsError as exc:
            failed.append(f"{h.name}: {command}: {exc}")
    if failed:
        raise BackupError("; ".join(failed), {"app": done + failed})
    return done


def replace_live(
    inventory: Inventory,
    remote: Remote,
    cfg: BackupConfig,
    backup: str = "latest",
    *,
    confirmed: bool,
    progress: Progress = _no_progress,
    sudo_password: Secret | None = None,
) -> dict[str, Any]:
    """Replace the live database with a backup, safely:

    1. a fresh backup of the live database (verified and uploaded) — or stop, nothing touched;
    2. the backup is restored into a staging database (checksum checked) — or stop;
    3. the app is stopped (backup_app_stop_command on backup_app_hosts);
    4. staging becomes the live database, the old one is kept renamed (one transaction);
    5. the app is started again — also when the swap failed.
    """
    if not confirmed:
        raise ConfigError(
            f"refusing to replace the live database {cfg.database} on {cfg.host} without "
            "confirmation (--yes, or answer the prompt)"
        )
    app_hosts = _app_hosts(inventory, cfg) if cfg.app_stop else []  # bad pattern: stop here
    report: dict[str, Any] = {"ok": False, "database": cfg.database, "steps": []}
    steps: list[str] = report["steps"]
    key = resolve_key(remote, cfg, backup)
    report["key"] = key
    started = time.monotonic()
    fresh = run_backup(remote, cfg, progress)
    report["fresh_backup"] = fresh["key"]
    steps.append(f"fresh backup of the live {cfg.database}: s3://{fresh['bucket']}/{fresh['key']}")
    stamp = _stamp()
    staging = f"{cfg.database}_restore_{stamp}"
    keep = f"{cfg.database}_before_restore_{stamp}"
    if key == fresh["key"]:
        raise BackupError("the backup to restore is the fresh one just taken", report)
    code, restored, _ = host_script(
        remote, ["restore", "--key", key, "--target", staging], progress
    )
    if code != 0 or not restored.get("ok"):
        what = "REFUSED" if code in (EXIT_REFUSED, EXIT_EXISTS) else "FAILED"
        steps.append(f"restore into {staging}: {what}; the live database was not touched")
        raise BackupError(f"restore {what}: {restored.get('error', f'exit {code}')}", report, code)
    report["restore"] = restored
    steps.append(f"restored {key} into {staging} ({restored['seconds'].get('restore', 0):.1f} s)")
    if cfg.app_stop:
        down = time.monotonic()
        try:
            steps += [
                f"app stopped on {d}"
                for d in _on_app_hosts(inventory, app_hosts, cfg.app_stop, sudo_password)
            ]
        except BackupError as exc:
            steps.append(
                f"stopping the app failed: {exc}; starting it again, live database untouched"
            )
            _on_app_hosts(inventory, app_hosts, cfg.app_start, sudo_password)
            raise BackupError(f"app stop failed: {exc}", report) from None
    else:
        down = time.monotonic()
        steps.append(
            "app: no stop/start command configured (backup_app_stop_command); nothing stopped"
        )
    try:
        code, swapped, _ = host_script(remote, ["swap", "--new", staging, "--keep-as", keep])
        if code != 0 or not swapped.get("ok"):
            steps.append(f"swap FAILED: {swapped.get('error')}; live database unchanged")
            raise BackupError(f"swap failed: {swapped.get('error', f'exit {code}')}", report, code)
        steps.append(f"{staging} is now {cfg.database}; the previous one is kept as {keep}")
        report["previous_kept_as"] = keep
    finally:
        if cfg.app_start:
            steps += [
                f"app started on {d}"
                for d in _on_app_hosts(inventory, app_hosts, cfg.app_start, sudo_password)
            ]
        report["app_down_seconds"] = round(time.monotonic() - down, 3)
    report["seconds"] = round(time.monotonic() - started, 3)
    report["ok"] = True
    return report


# --- drill ----------------------------------------------------------------------------------


def drill(
    remote: Remote,
    cfg: BackupConfig,
    progress: Progress = _no_progress,
    *,
    now: dt.datetime | None = None,
) -> dict[str, Any]:
    """Restore the newest backup into a scratch database, compare row counts with live, report
    RPO (age of the data) and RTO (download + restore time), then drop the scratch database."""
    key = resolve_key(remote, cfg, "latest")
    head = store_for(cfg).head(key)
    scratch = f"opskit_drill_{_stamp()}"
    code, result, _ = host_script(
        remote,
        ["restore", "--key", key, "--target", scratch, "--scratch", "--compare-live"],
        progress,
    )
    result["key"] = key
    if code != 0 or not result.get("ok"):
        raise BackupError(f"drill FAILED: {result.get('error', f'exit {code}')}", result, code)
    now = now or dt.datetime.now(dt.UTC)
    created = head.metadata.get("created")
    taken = dt.datetime.fromisoformat(created) if created else head.last_modified
    result["rpo_seconds"] = round((now - taken).total_seconds(), 1)
    secs = result.get("seconds", {})
    result["rto_seconds"] = round(secs.get("download", 0) + secs.get("restore", 0), 3)
    result["diff"] = compare_counts(result.get("counts", {}), result.get("live_counts", {}))
    result["cleaned_up"] = bool(result.get("dropped"))
    return result


def compare_counts(restored: Mapping[str, int], live: Mapping[str, int]) -> list[dict[str, Any]]:
    """Tables whose row counts differ (or exist on one side only).

    >>> compare_counts({"a": 1, "b": 2}, {"a": 1, "b": 3, "c": 0})
    [{'table': 'b', 'restored': 2, 'live': 3}, {'table': 'c', 'restored': None, 'live': 0}]
    """
    out = []
    for t in sorted(set(restored) | set(live)):
        if restored.get(t) != live.get(t):
            out.append({"table": t, "restored": restored.get(t), "live": live.get(t)})
    return out


# --- text -----------------------------------------------------------------------------------


def human_size(n: float) -> str:
    """
    >>> human_size(0), human_size(1536), human_size(5 * 1024**3)
    ('0 B', '1.5 KiB', '5.0 GiB')
    """
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def human_age(delta: dt.timedelta) -> str:
    """
    >>> human_age(dt.timedelta(seconds=42)), human_age(dt.timedelta(hours=7, minutes=5))
    ('42 s', '7 h 5 min')
    >>> human_age(dt.timedelta(days=2, hours=3))
    '2 d 3 h'
    """
    s = int(delta.total_seconds())
    if s < 120:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400 * 2:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def format_progress(host: str, phase: str, done: int, total: int, width: int = 24) -> str:
    """One progress line.

    >>> format_progress("db1", "upload", 50, 100, width=10)
    '[db1] upload         [#####.....]  50%  50 B / 100 B'
    >>> format_progress("db1", "dump", 2048, 0)
    '[db1] dump           2.0 KiB'
    """
    if total <= 0:
        return f"[{host}] {phase:<14} {human_size(done)}"
    frac = min(1.0, done / total)
    bar = "#" * int(frac * width) + "." * (width - int(frac * width))
    amount = (
        f"{done} / {total} items"
        if phase in COUNTED_PHASES
        else f"{human_size(done)} / {human_size(total)}"
    )
    return f"[{host}] {phase:<14} [{bar}] {frac * 100:3.0f}%  {amount}"


def format_run(o: HostOutcome) -> str:
    d = o.data
    if not o.ok:
        lines = [f"[{o.host}] FAILED   {o.error.splitlines()[0] if o.error else '?'}"]
        if d.get("local_copy_kept"):
            lines.append(f"[{o.host}]          local copy kept: {d.get('local_path')}")
        if d.get("alert"):
            lines.append(
                f"[{o.host}]          slack alert: {d['alert']}; heartbeat: {d.get('heartbeat')}"
            )
        lines += [f"    {x}" for x in o.error.splitlines()[1:]]
        return "\n".join(lines) + "\n"
    s = d.get("seconds", {})
    mem = d.get("peak_memory", {})
    return (
        f"[{o.host}] backup ok  s3://{d['bucket']}/{d['key']}  {human_size(d['size'])}  "
        f"sha256 {d['sha256'][:12]}…\n"
        f"[{o.host}]   dump {s.get('dump', 0):.1f} s, verify dump {s.get('verify_dump', 0):.1f} s, "
        f"upload {s.get('upload', 0):.1f} s, verify upload ({d.get('upload_check')}) "
        f"{s.get('verify_upload', 0):.1f} s, total {s.get('total', 0):.1f} s; peak memory "
        f"{human_size(max(mem.get('self_kib', 0), mem.get('children_kib', 0)) * 1024)}\n"
        f"[{o.host}]   heartbeat: {d.get('heartbeat')}; local copies removed: "
        f"{len(d.get('removed_local', []))}\n"
    )


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
            "ok" if last.get("ok") else f"FAILED at {last.get('failed_step')}: {last.get('error')}"
        )
        lines.append(f"  last run on the host: {state} ({last.get('finished', '?')})")
    for o in listing.backups[-len(listing.checksum) :] if listing.checksum else []:
        name = o.key.rsplit("/", 1)[-1]
        lines.append(
            f"    {name:<34} {human_age(now - o.last_modified):>12}  {human_size(o.size):>10}  "
            f"{listing.checksum.get(o.key, '')}"
        )
    return "\n".join(lines) + "\n"


def listing_json(listing: Listing) -> dict[str, Any]:
    d = asdict(listing)
    d["backups"] = [
        {
            "key": o.key,
            "size": o.size,
            "last_modified": o.last_modified.isoformat(),
            "checksum_state": listing.checksum.get(o.key),
            "sha256": o.metadata.get("sha256"),
        }
        for o in listing.backups
    ]
    d.pop("checksum")
    for k in ("newest_age", "allowed"):
        d[k] = None if d[k] is None else d[k].total_seconds()
    return d


def format_counts(counts: Mapping[str, int], live: Mapping[str, int] | None) -> list[str]:
    lines = []
    for t in sorted(set(counts) | set(live or {})):
        c = counts.get(t)
        if live is None:
            lines.append(f"    {t:<40} {c}")
        else:
            mark = "=" if live.get(t) == c else "≠"
            lines.append(f"    {t:<40} restored {c}  {mark} live {live.get(t)}")
    return lines


def outcome_json(o: HostOutcome) -> dict[str, Any]:
    return {
        **o.data,
        "host": o.host,
        "ok": o.ok,
        "error": o.error or None,
        "unreachable": o.unreachable,
    }
