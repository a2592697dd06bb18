"""backup.run|list|verify|restore|drill|bucket."""

from __future__ import annotations

import sys

from invoke.exceptions import Exit

from cli import common as cli
from cli.common import H, task
from opskit.core.errors import ConfigError, ExitStatus

# --- backup ----------------------------------------------------------------------------------


class _Bars:
    """Progress of host-side transfers on stderr: one live line on a terminal, else a line per
    quarter of each phase."""

    def __init__(self, enabled):
        import threading

        self.enabled, self.tty, self.seen = enabled, sys.stderr.isatty(), {}
        self.lock = threading.Lock()

    def __call__(self, host, phase, done, total):
        from opskit.backup.text import format_progress

        if not self.enabled:
            return
        line = format_progress(host, phase, done, total)
        with self.lock:
            if self.tty:
                end = "\n" if total and done >= total else ""
                sys.stderr.write(f"\r\033[K{line}{end}")
            else:
                step = (phase, 4 * done // total if total else -1)
                if self.seen.get(host) == step:
                    return
                self.seen[host] = step
                sys.stderr.write(line + "\n")
            sys.stderr.flush()


def _backup_hosts(inventory, hosts):
    from opskit.backup.hosts import backup_hosts

    inv, selected = cli.load(inventory, hosts)
    try:
        return inv, backup_hosts(inv, selected)
    except ConfigError as exc:
        raise cli.usage_error(exc) from None


def _check_backup_key(cfg, backup):
    """An explicit --backup key must be in the host's bucket: the laptop reads S3 itself, so a
    typo is refused (exit 2) before any host is touched. When the laptop cannot reach S3, the
    host's own check still refuses it later."""
    import difflib

    from opskit.backup.resources import store_for
    from opskit.clients import ApiError

    if backup in ("", "latest"):
        return
    folder = backup.rsplit("/", 1)[0] + "/" if "/" in backup else ""
    try:
        keys = [o.key for o in store_for(cfg).list_objects(folder)]
    except ApiError:
        return
    if backup not in keys:
        close = difflib.get_close_matches(backup, keys, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise Exit(
            f"error: --backup: no backup {backup!r} in s3://{cfg.s3.bucket}{hint}; "
            "see `inv backup.list`",
            code=ExitStatus.USAGE,
        )


def _backup_finish(outcomes, json_out, fmt):
    import json as jsonlib

    from opskit.backup.text import outcome_json

    if json_out:
        print(jsonlib.dumps({"hosts": [outcome_json(o) for o in outcomes]}, indent=2, default=str))
    else:
        for o in outcomes:
            print(fmt(o), end="")
        ok = sum(1 for o in outcomes if o.ok)
        print(f"{len(outcomes)} host(s): {ok} ok, {len(outcomes) - ok} failed")
    if not all(o.ok for o in outcomes):
        raise Exit(code=ExitStatus.HOST_FAILED)


@task(
    help=H(
        "inventory",
        "hosts",
        "json",
        "ask_sudo_pass",
        workers="database hosts backed up at once (default 4)",
    )
)
def backup_run(c, inventory=None, hosts=None, json=False, workers=4, ask_sudo_pass=False):
    """Back up now on the selected database hosts: dump, verify, upload to S3, verify, heartbeat."""
    from opskit.backup import text
    from opskit.backup.hosts import on_hosts
    from opskit.backup.restore import run_backup

    inv, selected = _backup_hosts(inventory, hosts)
    bars = _Bars(not json)
    outcomes = on_hosts(
        inv,
        selected,
        lambda r, cfg: run_backup(r, cfg, bars),
        workers=workers,
        sudo_password=cli.ask_sudo_password(ask_sudo_pass),
    )
    _backup_finish(
        outcomes, json, lambda o: text.format_run(o) if o.ok or o.data else text.format_failed(o)
    )


@task(
    help=H(
        "inventory",
        "hosts",
        "json",
        "ask_sudo_pass",
        all="show every backup, not only the newest 5 of each host",
    )
)
def backup_list(c, inventory=None, hosts=None, json=False, all=False, ask_sudo_pass=False):
    """Per host: backups in S3 with age, size and checksum state; flags hosts with old backups."""
    import datetime as dt
    import json as jsonlib

    from opskit.backup import listing as backup

    inv, selected = _backup_hosts(inventory, hosts)
    now = dt.datetime.now(dt.UTC)
    listings = backup.list_backups(
        inv,
        selected,
        now=now,
        details=0 if all else 5,
        sudo_password=cli.ask_sudo_password(ask_sudo_pass),
    )
    if json:
        print(
            jsonlib.dumps(
                {"hosts": [backup.listing_json(x) for x in listings]}, indent=2, default=str
            )
        )
    else:
        for x in listings:
            print(backup.format_listing(x, now), end="")
    if any(x.stale or x.error or x.problem for x in listings):
        raise Exit(code=ExitStatus.HOST_FAILED)


@task(
    help=H(
        "inventory",
        "hosts",
        "json",
        "ask_sudo_pass",
        backup="S3 key of the backup, or latest (default: each host's newest)",
    )
)
def backup_verify(c, inventory=None, hosts=None, backup="latest", json=False, ask_sudo_pass=False):
    """Download a backup, check its checksum, restore it into a scratch database, count rows."""
    from opskit.backup.hosts import on_hosts
    from opskit.backup.restore import verify_backup
    from opskit.backup.spec import config_for
    from opskit.backup.text import format_restore

    inv, selected = _backup_hosts(inventory, hosts)
    if len(selected) == 1:  # a key belongs to one bucket; the hosts may use several
        _check_backup_key(config_for(selected[0]), backup)
    bars = _Bars(not json)
    outcomes = on_hosts(
        inv,
        selected,
        lambda r, cfg: verify_backup(r, cfg, backup, bars),
        sudo_password=cli.ask_sudo_password(ask_sudo_pass),
    )
    _backup_finish(outcomes, json, lambda o: format_restore(o, "verified"))


@task(
    help=H(
        "inventory",
        "json",
        "ask_sudo_pass",
        hosts="the ONE database host to restore on",
        backup="S3 key of the backup (any host's), or latest (this host's newest)",
        target="name of the new database (default <db>_restored_<time>)",
        replace="replace the LIVE database: a fresh backup first, app stopped around the swap, "
        "the old database kept renamed",
        yes="confirm --replace without the prompt",
    )
)
def backup_restore(
    c,
    inventory=None,
    hosts=None,
    backup="latest",
    target="",
    replace=False,
    yes=False,
    json=False,
    ask_sudo_pass=False,
):
    """Restore a backup into a new database (default), or over the live one with --replace."""
    import json as jsonlib

    from opskit.backup import restore as bk
    from opskit.backup.hosts import on_hosts
    from opskit.backup.spec import config_for
    from opskit.backup.text import format_restore, outcome_json

    inv, selected = _backup_hosts(inventory, hosts)
    if len(selected) != 1:
        raise Exit(
            f"error: restore works on one host; --hosts selects {len(selected)}: "
            f"{', '.join(h.name for h in selected)}",
            code=ExitStatus.USAGE,
        )
    cfg = config_for(selected[0])
    if replace and target:
        raise Exit("error: --target and --replace exclude each other", code=ExitStatus.USAGE)
    _check_backup_key(cfg, backup)
    confirmed = yes
    if replace and not yes:
        if not sys.stdin.isatty():
            raise Exit(
                f"error: refusing to replace the live database {cfg.database} on {cfg.host} "
                "without confirmation: pass --yes (or run it in a terminal)",
                code=ExitStatus.USAGE,
            )
        answer = input(
            f"Replace the LIVE database {cfg.database} on {cfg.host} with {backup}? "
            f"A fresh backup is taken first. Type the database name to confirm: "
        )
        confirmed = answer.strip() == cfg.database
        if not confirmed:
            raise Exit("not confirmed; nothing was changed", code=ExitStatus.USAGE)
    bars = _Bars(not json)

    def work(r, cfg):
        if replace:
            return bk.replace_live(inv, r, cfg, backup, confirmed=confirmed, progress=bars)
        return bk.restore_backup(r, cfg, backup, target=target, progress=bars)

    [o] = on_hosts(inv, selected, work, sudo_password=cli.ask_sudo_password(ask_sudo_pass))
    if json:
        print(jsonlib.dumps(outcome_json(o), indent=2, default=str))
    elif replace:
        for step in o.data.get(bk.KEY_STEPS, []):
            print(f"[{o.host}] {step}")
        print(f"[{o.host}] {'replaced the live database' if o.ok else 'FAILED: ' + o.error}")
    else:
        print(format_restore(o, "restored"), end="")
    if not o.ok:
        raise Exit(code=ExitStatus.HOST_FAILED)


@task(help=H("inventory", "hosts", "json", "ask_sudo_pass"))
def backup_drill(c, inventory=None, hosts=None, json=False, ask_sudo_pass=False):
    """Restore drill: newest backup into a scratch database, row counts vs live, RPO and RTO."""
    from opskit.backup.hosts import on_hosts
    from opskit.backup.restore import drill
    from opskit.backup.text import format_drill

    inv, selected = _backup_hosts(inventory, hosts)
    bars = _Bars(not json)
    outcomes = on_hosts(
        inv,
        selected,
        lambda r, cfg: drill(r, cfg, bars),
        sudo_password=cli.ask_sudo_password(ask_sudo_pass),
    )
    _backup_finish(outcomes, json, format_drill)


@task(help=H("inventory", "hosts", "json", check="show what would change, change nothing"))
def backup_bucket(c, inventory=None, hosts=None, check=False, json=False):
    """Set the backup bucket's retention, default encryption and public-access block (boto3)."""
    from opskit.backup.resources import ensure_bucket
    from opskit.backup.spec import config_for
    from opskit.clients import ApiError
    from opskit.core.output import format_change, to_json
    from opskit.core.result import HostResult

    _, selected = _backup_hosts(inventory, hosts)
    results, seen = [], set()
    for h in selected:
        cfg = config_for(h)
        if (cfg.s3.endpoint, cfg.s3.bucket) in seen:
            continue
        seen.add((cfg.s3.endpoint, cfg.s3.bucket))
        try:
            results.append(
                HostResult(f"s3://{cfg.s3.bucket}", tuple(ensure_bucket(cfg, dry_run=check)))
            )
        except ApiError as exc:
            results.append(HostResult(f"s3://{cfg.s3.bucket}", error=str(exc)))
    if json:
        print(to_json(results, dry_run=check), end="")
    else:
        for r in results:
            print(
                "".join(format_change(x, show_diff=False, verbose=True) for x in r.changes), end=""
            )
            if r.error:
                print(f"[{r.host}] FAILED   {r.error}", file=sys.stderr)
    if any(r.error for r in results):
        raise Exit(code=ExitStatus.HOST_FAILED)
