"""Backups and restores on a database host: run, verify, restore (into a new database or over
the live one) and the restore drill. Each runs the host program once or a few times; the
checksum is checked on the host before anything is restored (a mismatch is refused, exit 3)."""

from __future__ import annotations

import datetime as dt
import logging
import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from opskit.backup.hosts import BackupError, Progress, host_script, no_progress
from opskit.backup.listing import VERIFIED_TAG, VERIFY_FAILED_TAG, resolve_key
from opskit.backup.resources import store_for
from opskit.backup.spec import MAINTENANCE_DIR, BackupConfig, maintenance_flag
from opskit.backup.text import KEY_CLEANED_UP, KEY_DIFF, KEY_RPO, KEY_RTO
from opskit.clients import ApiError
from opskit.core.errors import ConfigError, OpsError
from opskit.core.inventory import Host, Inventory
from opskit.core.remote import Remote, connect
from opskit.core.secrets import Secret
from opskit.hostside.backup import (
    EXIT_EXISTS,
    EXIT_REFUSED,
    KEY_BUCKET,
    KEY_COUNTS,
    KEY_DATABASE,
    KEY_DROPPED,
    KEY_ERROR,
    KEY_FAILED_STEP,
    KEY_KEY,
    KEY_LIVE_COUNTS,
    KEY_OK,
    KEY_PREVIOUS_KEPT_AS,
    KEY_SECONDS,
    META_CREATED,
    SECONDS_DOWNLOAD,
    SECONDS_RESTORE,
)

q = shlex.quote
log = logging.getLogger(__name__)

# Keys of the report of `replace_live` (besides KEY_OK, KEY_DATABASE, KEY_KEY).
KEY_STEPS = "steps"
KEY_FRESH_BACKUP = "fresh_backup"
KEY_RESTORE = "restore"
KEY_APP = "app"
KEY_APP_DOWN_SECONDS = "app_down_seconds"


def _stamp(now: dt.datetime | None = None) -> str:
    return (now or dt.datetime.now(dt.UTC)).strftime("%Y%m%d%H%M%S")


def _error(result: Mapping[str, Any], code: int) -> Any:
    return result.get(KEY_ERROR, f"exit {code}")


def _refused(code: int) -> str:
    return "REFUSED" if code in (EXIT_REFUSED, EXIT_EXISTS) else "FAILED"


# --- run ------------------------------------------------------------------------------------


def run_backup(
    remote: Remote, cfg: BackupConfig, progress: Progress = no_progress
) -> dict[str, Any]:
    """A backup now on this host (the same program cron runs); BackupError when it failed."""
    code, result, _ = host_script(remote, ["run"], progress)
    if code != 0 or not result.get(KEY_OK):
        reason = result.get(KEY_ERROR) or f"exit {code}"
        raise BackupError(
            f"backup failed at {result.get(KEY_FAILED_STEP, '?')}: {reason}", result, code
        )
    return result


# --- verify ---------------------------------------------------------------------------------


def verify_backup(
    remote: Remote, cfg: BackupConfig, backup: str = "latest", progress: Progress = no_progress
) -> dict[str, Any]:
    """Download the backup on the host, check its sha256, restore it into a scratch database,
    count its rows, drop it; tag the S3 object with the outcome."""
    key = resolve_key(remote, cfg, backup)
    scratch = f"opskit_verify_{_stamp()}"
    code, result, _ = host_script(
        remote, ["restore", "--key", key, "--target", scratch, "--scratch"], progress
    )
    store = store_for(cfg)
    result[KEY_KEY] = key
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%MZ")
    if code != 0 or not result.get(KEY_OK):
        reason = "checksum" if code == EXIT_REFUSED else "restore"
        try:
            store.set_tags(key, {VERIFY_FAILED_TAG: f"{when} {reason}"})
        except ApiError as exc:
            log.warning("[%s] could not tag %s: %s", remote.name, key, exc)
        what = "REFUSED" if code == EXIT_REFUSED else "FAILED"
        raise BackupError(f"verify {what}: {_error(result, code)}", result, code)
    store.set_tags(key, {VERIFIED_TAG: when})
    return result


# --- restore --------------------------------------------------------------------------------


def restore_backup(
    remote: Remote,
    cfg: BackupConfig,
    backup: str = "latest",
    *,
    target: str = "",
    progress: Progress = no_progress,
) -> dict[str, Any]:
    """Restore a backup into a NEW database (default <db>_restored_<time>); the live one stays."""
    key = resolve_key(remote, cfg, backup)
    target = target or f"{cfg.database}_restored_{_stamp()}"
    code, result, _ = host_script(
        remote, ["restore", "--key", key, "--target", target, "--compare-live"], progress
    )
    result[KEY_KEY] = key
    if code != 0 or not result.get(KEY_OK):
        raise BackupError(f"restore {_refused(code)}: {_error(result, code)}", result, code)
    return result


def _app_hosts(inventory: Inventory, cfg: BackupConfig) -> list[Host]:
    if not cfg.app_hosts:
        return [inventory.host(cfg.host)]
    return inventory.select([cfg.app_hosts])


def _health_url(host: Host) -> str | None:
    port = host.vars.get("app_port")
    if isinstance(port, bool) or not isinstance(port, int):
        return None
    return f"http://127.0.0.1:{port}{host.vars.get('app_health_path') or '/'}"


def _maintenance_switch(host: Host) -> tuple[str, str] | None:
    """(the quoted flag file, the health URL) of the host's app behind nginx; None: no switch."""
    app = str(host.vars.get("app_name") or "")
    url = _health_url(host)
    if not app or "nginx" not in host.roles or url is None:
        return None
    return q(maintenance_flag(app)), url


def maintenance_on(host: Host, stop: str) -> str:
    """`stop` (the app's stop command), after the maintenance switch is on for the host's app:
    its nginx answers 503 with Retry-After while the app is down, not 502. The flag file notes
    the HTTP status the app answered before (000: nothing answered)."""
    switch = _maintenance_switch(host)
    if switch is None:
        return stop
    flag, url = switch
    return (
        f"install -d -m 0755 {q(MAINTENANCE_DIR)}\n"
        f"code=$(curl -s -o /dev/null -m 2 -w '%{{http_code}}' {q(url)}) || true\n"
        f'echo "${{code:-000}}" > {flag}.new && mv -f {flag}.new {flag}\n'
        f"{stop}"
    )


def maintenance_off(host: Host, start: str) -> str:
    """`start` (the app's start command), then the maintenance switch off: once the app answers
    HTTP again (at most 30 s) if it answered before the stop, so no request meets a 502."""
    switch = _maintenance_switch(host)
    if switch is None:
        return start
    flag, url = switch
    return (
        f"set +e\n{start}\nrc=$?\n"
        f'if [ "$(cat {flag} 2>/dev/null || echo 000)" != 000 ]; then\n'
        "  for _ in $(seq 150); do\n"
        f"    code=$(curl -s -o /dev/null -m 1 -w '%{{http_code}}' {q(url)})\n"
        '    [ "${code:-000}" = 000 ] || break; sleep 0.2\n'
        "  done\n"
        "fi\n"
        f"rm -f {flag}\nexit $rc"
    )


def _on_app_hosts(
    inventory: Inventory,
    hosts: Sequence[Host],
    command: str,
    sudo_password: Secret | None,
    script: Callable[[Host, str], str] | None = None,
) -> list[str]:
    """Run `command` as root on each host in turn (wrapped by `script` per host, if given);
    lines saying what happened. Raises BackupError after trying every host if one failed."""
    done, failed = [], []
    for h in hosts:
        try:
            r = connect(h, inventory.ssh, sudo_password=sudo_password)
            try:
                r.run(script(h, command) if script else command, what=command, timeout=300)
            finally:
                r.close()
            done.append(f"{h.name}: {command}")
        except OpsError as exc:
            failed.append(f"{h.name}: {command}: {exc}")
    if failed:
        raise BackupError("; ".join(failed), {KEY_APP: done + failed})
    return done


def replace_live(
    inventory: Inventory,
    remote: Remote,
    cfg: BackupConfig,
    backup: str = "latest",
    *,
    confirmed: bool,
    progress: Progress = no_progress,
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
    steps: list[str] = []
    report: dict[str, Any] = {KEY_OK: False, KEY_DATABASE: cfg.database, KEY_STEPS: steps}
    key = resolve_key(remote, cfg, backup)
    report[KEY_KEY] = key
    started = time.monotonic()
    fresh = run_backup(remote, cfg, progress)
    report[KEY_FRESH_BACKUP] = fresh[KEY_KEY]
    steps.append(
        f"fresh backup of the live {cfg.database}: s3://{fresh[KEY_BUCKET]}/{fresh[KEY_KEY]}"
    )
    stamp = _stamp()
    staging = f"{cfg.database}_restore_{stamp}"
    keep = f"{cfg.database}_before_restore_{stamp}"
    if key == fresh[KEY_KEY]:
        raise BackupError("the backup to restore is the fresh one just taken", report)
    code, restored, _ = host_script(
        remote, ["restore", "--key", key, "--target", staging], progress
    )
    if code != 0 or not restored.get(KEY_OK):
        what = _refused(code)
        steps.append(f"restore into {staging}: {what}; the live database was not touched")
        raise BackupError(f"restore {what}: {_error(restored, code)}", report, code)
    report[KEY_RESTORE] = restored
    seconds = restored[KEY_SECONDS].get(SECONDS_RESTORE, 0)
    steps.append(f"restored {key} into {staging} ({seconds:.1f} s)")
    if cfg.app_stop:
        down = time.monotonic()
        try:
            steps += [
                f"app stopped on {d}"
                for d in _on_app_hosts(
                    inventory, app_hosts, cfg.app_stop, sudo_password, maintenance_on
                )
            ]
        except BackupError as exc:
            steps.append(
                f"stopping the app failed: {exc}; starting it again, live database untouched"
            )
            _on_app_hosts(inventory, app_hosts, cfg.app_start, sudo_password, maintenance_off)
            raise BackupError(f"app stop failed: {exc}", report) from None
    else:
        down = time.monotonic()
        steps.append(
            "app: no stop/start command configured (backup_app_stop_command); nothing stopped"
        )
    try:
        code, swapped, _ = host_script(remote, ["swap", "--new", staging, "--keep-as", keep])
        if code != 0 or not swapped.get(KEY_OK):
            steps.append(f"swap FAILED: {swapped.get(KEY_ERROR)}; live database unchanged")
            raise BackupError(f"swap failed: {_error(swapped, code)}", report, code)
        steps.append(f"{staging} is now {cfg.database}; the previous one is kept as {keep}")
        report[KEY_PREVIOUS_KEPT_AS] = keep
    finally:
        if cfg.app_start:
            steps += [
                f"app started on {d}"
                for d in _on_app_hosts(
                    inventory, app_hosts, cfg.app_start, sudo_password, maintenance_off
                )
            ]
        report[KEY_APP_DOWN_SECONDS] = round(time.monotonic() - down, 3)
    report[KEY_SECONDS] = round(time.monotonic() - started, 3)
    report[KEY_OK] = True
    return report


# --- drill ----------------------------------------------------------------------------------


def drill(
    remote: Remote,
    cfg: BackupConfig,
    progress: Progress = no_progress,
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
    result[KEY_KEY] = key
    if code != 0 or not result.get(KEY_OK):
        raise BackupError(f"drill FAILED: {_error(result, code)}", result, code)
    now = now or dt.datetime.now(dt.UTC)
    created = head.metadata.get(META_CREATED)
    taken = dt.datetime.fromisoformat(created) if created else head.last_modified
    result[KEY_RPO] = round((now - taken).total_seconds(), 1)
    secs = result.get(KEY_SECONDS, {})
    result[KEY_RTO] = round(secs.get(SECONDS_DOWNLOAD, 0) + secs.get(SECONDS_RESTORE, 0), 3)
    result[KEY_DIFF] = compare_counts(result.get(KEY_COUNTS, {}), result.get(KEY_LIVE_COUNTS, {}))
    result[KEY_CLEANED_UP] = bool(result.get(KEY_DROPPED))
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
