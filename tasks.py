"""opskit tasks: `inv --list` shows them, `inv <task> --help` explains each.

Exit codes: 0 ok, 1 a host failed or was unreachable, 2 bad input (nothing touched),
3 changes pending (with --check --detailed-exitcode), 130 interrupted.
"""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime

from invoke import Collection, task
from invoke.exceptions import Exit

from opskit import cli
from opskit import lab as labmod
from opskit.errors import ConfigError, ExitStatus, OpsError
from opskit.runner import check_role_names, provision_work, run_on_hosts



def H(*names: str, **extra: str) -> dict[str, str]:  # noqa: N802
    """Help texts for a task's flags: the shared ones named, plus the task's own."""
    return {**{n: cli.COMMON_HELP[n] for n in names}, **extra}



@task(
    help=H(
        "inventory", "hosts", "workers", "json", "ask_sudo_pass",
        check="plan only: show what would change, change nothing",
        diff="show the diff of every changed file",
        roles="only these roles, comma-separated (default: every role of each host's groups)",
        detailed_exitcode="with --check: exit 3 when changes are pending (drift check in CI)",
        verbose="also list resources that are already right; full diffs",
    ),
)
def provision(
    c,
    inventory=None,
    hosts=None,
    roles=None,
    check=False,
    diff=False,
    workers=32,
    json=False,
    detailed_exitcode=False,
    verbose=False,
    ask_sudo_pass=False,
):
    """Converge the selected hosts to their roles (idempotent; --check to preview)."""
    inv, selected = cli.load(inventory, hosts)
    only = [r.strip() for r in roles.split(",")] if roles else None
    try:
        check_role_names(only)
    except ConfigError as exc:
        raise cli.usage_error(exc) from None
    password = cli.ask_sudo_password(ask_sudo_pass)
    if not json:
        mode = "checking (no changes)" if check else "converging"
        print(f"{mode} {len(selected)} host(s) of {inv.path.name}, {workers} at a time")
    emit = cli.printer(json_out=json, show_diff=diff or check, verbose=verbose)
    try:
        results = run_on_hosts(
            inv,
            selected,
            provision_work(only),
            workers=workers,
            dry_run=check,
            sudo_password=password,
            on_result=emit,
        )
    except KeyboardInterrupt:
        raise Exit(
            "interrupted: hosts not started were skipped; no file is half-written",
            code=ExitStatus.INTERRUPTED,
        ) from None
    cli.finish(results, json_out=json, dry_run=check, detailed_exitcode=detailed_exitcode)


@task(help=H("inventory", "hosts", pytest_args="extra pytest arguments, e.g. '-k sshd'",
             roles="only the specs of these roles, comma-separated (default: every role)"))
def verify(c, inventory=None, hosts=None, pytest_args="", roles=None):
    """Prove the hosts are right: the testinfra specs of tests/infra (strict host keys)."""
    from opskit.verify import run_verify

    inv, selected = cli.load(inventory, hosts)
    try:
        code = run_verify(inv, selected, pytest_args.split(),
                          [r.strip() for r in roles.split(",")] if roles else None)
    except ConfigError as exc:
        raise cli.usage_error(exc) from None
    if code != 0:
        raise Exit(code=ExitStatus.HOST_FAILED)


@task(
    help=H(
        "inventory", "hosts",
        yes="record new keys without asking (after reading the fingerprints)",
        replace="replace a recorded key that CHANGED (only after checking out of band)",
    )
)
def trust(c, inventory=None, hosts=None, yes=False, replace=False):
    """Show each host's SSH key fingerprint and record it in the inventory's known_hosts."""
    from opskit.trust import check_host_key, record

    inv, selected = cli.load(inventory, hosts)
    failed = False
    for host in selected:
        try:
            found = check_host_key(host, inv.ssh)
        except OpsError as exc:
            print(f"[{host.name}] UNREACHABLE {exc}", file=sys.stderr)
            failed = True
            continue
        key = f"{found.key.get_name()} {found.fingerprint}"
        if found.state == "trusted":
            print(f"[{host.name}] trusted   {key}")
            continue
        if found.state == "changed" and not replace:
            print(
                f"[{host.name}] CHANGED   offers {key}, known_hosts has {found.recorded}; "
                "not recorded (check out of band, then --replace)",
                file=sys.stderr,
            )
            failed = True
            continue
        if not yes:
            if not sys.stdin.isatty():
                raise Exit(
                    f"[{host.name}] new key {key}: confirm with --yes", code=ExitStatus.USAGE
                )
            if input(f"[{host.name}] {found.state} key {key}. Record it? [y/N] ").lower() != "y":
                continue
        record(found, inv.ssh.known_hosts)
        print(f"[{host.name}] recorded  {key} in {inv.ssh.known_hosts}")
    if failed:
        raise Exit(code=ExitStatus.HOST_FAILED)


# --- the lab -------------------------------------------------------------------------------


def _lab_spec(inventory):
    path = cli.inventory_path(inventory)
    try:
        return labmod.load_lab_spec(path)
    except labmod.LabError as exc:
        raise Exit(f"error: {exc}", code=ExitStatus.USAGE) from None


def _print_status(rows):
    for s in rows:
        ssh = "ssh ready" if s.ssh_ready else "no ssh"
        print(f"{s.name:<8} {s.address:<15} {s.state:<8} {ssh:<9} {s.detail}")


@task(
    help=H(
        "inventory",
        fresh="wipe the hosts and boot them anew",
        hosts="only these lab hosts, comma-separated",
    )
)
def lab_up(c, inventory=None, fresh=False, hosts=None):
    """Boot the lab's hosts (systemd-nspawn) and stand-in services; a no-op when running."""
    spec = _lab_spec(inventory)
    started = time.monotonic()
    try:
        rows = labmod.up(
            spec,
            fresh=fresh,
            hosts=hosts.split(",") if hosts else None,
            progress=lambda msg: print(f"lab: {msg}", flush=True),
        )
    except labmod.LabError as exc:
        raise Exit(f"error: {exc}", code=ExitStatus.HOST_FAILED) from None
    _print_status(rows)
    print(f"lab up in {time.monotonic() - started:.1f} s")


@task(help=H("inventory"))
def lab_down(c, inventory=None):
    """Power the lab's hosts off and remove their network; safe after a crash."""
    spec = _lab_spec(inventory)
    try:
        labmod.down(spec, progress=lambda msg: print(f"lab: {msg}", flush=True))
    except labmod.LabError as exc:
        raise Exit(f"error: {exc}", code=ExitStatus.HOST_FAILED) from None
    print("lab down")


@task(help=H("inventory"))
def lab_status(c, inventory=None):
    """Show each lab host: running or not, address, SSH reachable."""
    rows = labmod.status(_lab_spec(inventory))
    _print_status(rows)
    if any(not s.ssh_ready for s in rows):
        raise Exit(code=ExitStatus.HOST_FAILED)


@task(help=H("inventory", service="only this stand-in (slack, heartbeat, ...)",
             last="show only the last N items of each (default 20)"))
def lab_inbox(c, inventory=None, service=None, last=20):
    """Show what the lab's stand-in services received (Slack alerts, heartbeats, ...)."""
    from opskit import labsvc

    spec = _lab_spec(inventory)
    for svc in labsvc.SERVICES:
        if (service and svc.name != service) or svc.name == "aptproxy":
            continue
        items = labsvc.read_inbox(spec, svc.name)
        print(f"== {svc.name} ({len(items)} received, {labsvc.service_url(spec, svc.name)})")
        for item in items[-last:]:
            print("  " + labsvc.describe_item(svc.name, item))


@task(help=H("inventory", fresh="start from freshly booted hosts"))
def lab_demo(c, inventory=None, fresh=False):
    """The main job on the lab, end to end: converge, deploy, back up, certify, monitor, verify."""
    steps = [
        ("lab up: hosts and stand-ins for S3, ACME, Slack, UptimeRobot, Sentry, Papertrail",
         lambda: lab_up(c, inventory=inventory, fresh=fresh)),
        ("provision every role", lambda: provision(c, inventory=inventory)),
        ("provision again: must change nothing",
         lambda: provision(c, inventory=inventory, check=True, detailed_exitcode=True)),
        ("deploy the sample app (health-gated)", lambda: deploy(c, inventory=inventory)),
        ("releases", lambda: releases(c, inventory=inventory)),
        ("a verified backup to S3 now", lambda: backup_run(c, inventory=inventory)),
        ("backups per host", lambda: backup_list(c, inventory=inventory)),
        ("restore drill: RPO and RTO", lambda: backup_drill(c, inventory=inventory)),
        ("certificates from the lab's ACME server: days left, served = on disk",
         lambda: certs_status(c, inventory=inventory)),
        ("forced renewal, proven by the certificate nginx now serves",
         lambda: certs_renew(c, inventory=inventory, force=True)),
        ("UptimeRobot monitors and Sentry alert rules: plan, apply, plan again",
         lambda: (monitoring_sync(c, inventory=inventory),
                  monitoring_sync(c, inventory=inventory, apply=True),
                  monitoring_sync(c, inventory=inventory, detailed_exitcode=True))),
        ("health checks now, as cron runs them", lambda: monitoring_check(c, inventory=inventory)),
        ("verify every host with testinfra", lambda: verify(c, inventory=inventory)),
        ("what the stand-ins received (Slack, heartbeats, monitors, Sentry, logs)",
         lambda: lab_inbox(c, inventory=inventory, last=5)),
    ]
    started = time.monotonic()
    for n, (title, step) in enumerate(steps, 1):
        print(f"\n== {n}/{len(steps)} {title}", flush=True)
        step()
    print(f"\nthe lab is converged, deployed, backed up, certified, monitored and verified in "
          f"{time.monotonic() - started:.0f} s; `inv lab.down` stops it")


# --- ad-hoc commands -----------------------------------------------------------------------


@task(
    help=H(
        "inventory", "hosts", "workers", "json", "ask_sudo_pass",
        command="the shell command (bash) to run on every selected host",
        sudo="run it as root (sudo) instead of as the login user",
        timeout="seconds to wait for the command on a host (default: no limit)",
    ),
)
def run(
    c, command="", inventory=None, hosts=None, sudo=False, workers=32, json=False, timeout=0,
    ask_sudo_pass=False,
):
    """Run one shell command on the selected hosts (one remote command per host)."""
    from opskit import adhoc

    inv, selected = cli.load(inventory, hosts)
    password = cli.ask_sudo_password(ask_sudo_pass)
    emit = None if json else (lambda r: print(adhoc.format_result(r), end="", flush=True))
    try:
        results = adhoc.run_command(
            inv, selected, command, sudo=sudo, workers=workers, timeout=timeout or None,
            sudo_password=password, on_result=emit,
        )
    except ConfigError as exc:
        raise cli.usage_error(exc) from None
    except KeyboardInterrupt:
        raise Exit(
            "interrupted: hosts not started were skipped", code=ExitStatus.INTERRUPTED
        ) from None
    print(adhoc.to_json(results) if json else adhoc.summary(results), end="")
    if not all(r.ok for r in results):
        raise Exit(code=ExitStatus.HOST_FAILED)


# --- app: deploy, rollback, releases ---------------------------------------------------------


def _app_hosts(inventory, hosts):
    """The inventory and the selected hosts with the app role (default: every such host)."""
    from opskit.deploy import app_hosts

    inv, selected = cli.load(inventory, hosts)
    if not hosts:
        selected = [h for h in selected if "app" in h.roles]
    try:
        return inv, app_hosts(inv, selected)
    except ConfigError as exc:
        raise cli.usage_error(exc) from None


def _run_app_work(inv, selected, work, *, batch, json, ask_sudo_pass):
    from opskit.deploy import run_in_batches

    password = cli.ask_sudo_password(ask_sudo_pass)
    emit = cli.printer(json_out=json, show_diff=False, verbose=False)
    try:
        results = run_in_batches(
            inv, selected, work, batch=batch, sudo_password=password, on_result=emit
        )
    except ConfigError as exc:
        raise cli.usage_error(exc) from None
    except KeyboardInterrupt:
        raise Exit(
            "interrupted: a host whose activation had started finishes it on its own (current "
            "ends on a release that passed its health gate); hosts not started are unchanged",
            code=ExitStatus.INTERRUPTED,
        ) from None
    cli.finish(results, json_out=json, dry_run=False)


APP_HELP = H(
    "inventory", "json", "ask_sudo_pass",
    hosts="hosts: names, groups or globs, comma-separated (default: every host with the app role)",
    batch="hosts at once; the next batch starts only when this one succeeded (default 1)",
    message="why: kept in the lock, the release and the journal",
    health_timeout="seconds the health gate may take (default: app_health_timeout)",
)


@task(help=dict(APP_HELP, ref="git ref of the app's repo (app_repo): tag, branch or commit"))
def deploy(c, ref="HEAD", inventory=None, hosts=None, batch=1, message="", health_timeout=None,
           json=False, ask_sudo_pass=False):
    """Deploy a git ref of the app: build, upload, switch, reload, gate on health, else go back."""
    from opskit import deploy as dep
    from opskit import release

    inv, selected = _app_hosts(inventory, hosts)
    v = selected[0].vars
    try:
        repo = release.resolve_repo(v["app_repo"], inv.path.parent)
        artifact = release.build(repo, v["app_repo_path"], ref)
        opts = dep.Options(message, float(health_timeout) if health_timeout else None)
    except (ConfigError, ValueError) as exc:
        raise Exit(f"error: {exc}", code=ExitStatus.USAGE) from None
    except OpsError as exc:
        raise Exit(f"error: {exc}", code=ExitStatus.HOST_FAILED) from None
    if not json:
        print(
            f"deploying {v['app_name']} {artifact.describe} ({artifact.sha[:7]}) as release "
            f"{artifact.name} to {len(selected)} host(s), {batch} at a time"
        )
    started = datetime.now(UTC)
    _run_app_work(inv, selected, dep.deploy_work(artifact, opts), batch=batch, json=json,
                  ask_sudo_pass=ask_sudo_pass)
    _record_sentry_release(inv, selected, artifact, started, json=json)


def _record_sentry_release(inv, selected, artifact, started, *, json):
    """Tell Sentry about the release now live (skipped when the inventory has no Sentry)."""
    from opskit import monitoring
    from opskit.clients import ApiError

    try:
        made = monitoring.sentry_release(inv, artifact.sha, hosts=selected, ref=artifact.ref,
                                         started=started)
    except (ApiError, ConfigError) as exc:
        print(f"warning: Sentry release not recorded: {exc}", file=sys.stderr)
        return
    if made and not json:
        print(made.describe())


@task(help=dict(APP_HELP, steps="go back this many good releases (default 1)",
                to="switch to this release (its name, or a unique prefix or suffix)"))
def rollback(c, steps=1, to=None, inventory=None, hosts=None, batch=1, message="",
             health_timeout=None, json=False, ask_sudo_pass=False):
    """Switch back to an older good release (no upload, no install), gated on health."""
    from opskit import deploy as dep

    inv, selected = _app_hosts(inventory, hosts)
    try:
        opts = dep.Options(message, float(health_timeout) if health_timeout else None)
    except ValueError as exc:
        raise Exit(f"error: --health-timeout: {exc}", code=ExitStatus.USAGE) from None
    work = dep.rollback_work(steps=steps, to=to, opts=opts)
    _run_app_work(inv, selected, work, batch=batch, json=json, ask_sudo_pass=ask_sudo_pass)


@task(help=H("inventory", hosts=APP_HELP["hosts"],
             journal="also show the last N entries of each host's deploy journal"))
def releases(c, inventory=None, hosts=None, journal=0):
    """Each host's releases: current (*), bad (!), deployed when and by whom; lock holder."""
    from opskit import deploy as dep

    inv, selected = _app_hosts(inventory, hosts)
    rows = dep.list_releases(inv, selected, journal=journal)
    print(dep.format_releases(rows), end="")
    if any(r.error for r in rows):
        raise Exit(code=ExitStatus.HOST_FAILED)


# --- backup ----------------------------------------------------------------------------------


class _Bars:
    """Progress of host-side transfers on stderr: one live line on a terminal, else a line per
    quarter of each phase."""

    def __init__(self, enabled):
        import threading

        self.enabled, self.tty, self.seen = enabled, sys.stderr.isatty(), {}
        self.lock = threading.Lock()

    def __call__(self, host, phase, done, total):
        from opskit import backup

        if not self.enabled:
            return
        line = backup.format_progress(host, phase, done, total)
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
    from opskit import backup

    inv, selected = cli.load(inventory, hosts)
    try:
        return inv, backup.backup_hosts(inv, selected)
    except ConfigError as exc:
        raise cli.usage_error(exc) from None


def _backup_finish(outcomes, json_out, fmt):
    import json as jsonlib

    from opskit import backup

    if json_out:
        print(
            jsonlib.dumps(
                {"hosts": [backup.outcome_json(o) for o in outcomes]}, indent=2, default=str
            )
        )
    else:
        for o in outcomes:
            print(fmt(o), end="")
        ok = sum(1 for o in outcomes if o.ok)
        print(f"{len(outcomes)} host(s): {ok} ok, {len(outcomes) - ok} failed")
    if not all(o.ok for o in outcomes):
        raise Exit(code=ExitStatus.HOST_FAILED)


def _failed_line(o):
    first, *rest = (o.error or "?").splitlines()
    label = "UNREACHABLE" if o.unreachable else "FAILED"
    return f"[{o.host}] {label}  {first}\n" + "".join(f"    {x}\n" for x in rest)


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
    from opskit import backup

    inv, selected = _backup_hosts(inventory, hosts)
    bars = _Bars(not json)
    outcomes = backup.on_hosts(
        inv,
        selected,
        lambda r, cfg: backup.run_backup(r, cfg, bars),
        workers=workers,
        sudo_password=cli.ask_sudo_password(ask_sudo_pass),
    )
    _backup_finish(
        outcomes, json, lambda o: backup.format_run(o) if o.ok or o.data else _failed_line(o)
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

    from opskit import backup

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


def _format_restore(o, title):
    from opskit import backup

    if not o.ok:
        return _failed_line(o)
    d = o.data
    s = d.get("seconds", {})
    lines = [
        f"[{o.host}] {title}  {d['key']}",
        f"[{o.host}]   checksum ok (sha256 {d.get('sha256', '')[:12]}…, "
        f"{backup.human_size(d.get('size', 0))}); download {s.get('download', 0):.1f} s, "
        f"restore {s.get('restore', 0):.1f} s",
    ]
    if d.get("scratch"):
        lines.append(f"[{o.host}]   scratch database {d['target']} restored, counted and dropped")
    else:
        lines.append(
            f"[{o.host}]   restored into the NEW database {d['target']} (the live one is untouched)"
        )
    lines += [
        f"[{o.host}] {x}" for x in backup.format_counts(d.get("counts", {}), d.get("live_counts"))
    ]
    return "\n".join(lines) + "\n"


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
    from opskit import backup as bk

    inv, selected = _backup_hosts(inventory, hosts)
    bars = _Bars(not json)
    outcomes = bk.on_hosts(
        inv,
        selected,
        lambda r, cfg: bk.verify_backup(r, cfg, backup, bars),
        sudo_password=cli.ask_sudo_password(ask_sudo_pass),
    )
    _backup_finish(outcomes, json, lambda o: _format_restore(o, "verified"))


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

    from opskit import backup as bk

    inv, selected = _backup_hosts(inventory, hosts)
    if len(selected) != 1:
        raise Exit(
            f"error: restore works on one host; --hosts selects {len(selected)}: "
            f"{', '.join(h.name for h in selected)}",
            code=ExitStatus.USAGE,
        )
    cfg = bk.config_for(selected[0])
    if replace and target:
        raise Exit("error: --target and --replace exclude each other", code=ExitStatus.USAGE)
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
    [o] = bk.on_hosts(inv, selected, work, sudo_password=cli.ask_sudo_password(ask_sudo_pass))
    if json:
        print(jsonlib.dumps(bk.outcome_json(o), indent=2, default=str))
    elif replace:
        for step in o.data.get("steps", []):
            print(f"[{o.host}] {step}")
        print(f"[{o.host}] {'replaced the live database' if o.ok else 'FAILED: ' + o.error}")
    else:
        print(_format_restore(o, "restored"), end="")
    if not o.ok:
        raise Exit(code=ExitStatus.HOST_FAILED)


@task(help=H("inventory", "hosts", "json", "ask_sudo_pass"))
def backup_drill(c, inventory=None, hosts=None, json=False, ask_sudo_pass=False):
    """Restore drill: newest backup into a scratch database, row counts vs live, RPO and RTO."""
    from datetime import timedelta

    from opskit import backup as bk

    inv, selected = _backup_hosts(inventory, hosts)
    bars = _Bars(not json)
    outcomes = bk.on_hosts(
        inv,
        selected,
        lambda r, cfg: bk.drill(r, cfg, bars),
        sudo_password=cli.ask_sudo_password(ask_sudo_pass),
    )

    def fmt(o):
        if not o.ok:
            return _failed_line(o)
        d = o.data
        same = (
            "all row counts match live"
            if not d["diff"]
            else f"{len(d['diff'])} table(s) differ from live"
        )
        return (
            _format_restore(o, "drill")
            + f"[{o.host}]   RPO (age of the data): {bk.human_age(timedelta(seconds=d['rpo_seconds']))}"
            f"; RTO (download + restore): {d['rto_seconds']:.1f} s; {same}; "
            f"{'cleaned up' if d['cleaned_up'] else 'NOT cleaned up'}\n"
        )

    _backup_finish(outcomes, json, fmt)


@task(help=H("inventory", "hosts", "json", check="show what would change, change nothing"))
def backup_bucket(c, inventory=None, hosts=None, check=False, json=False):
    """Set the backup bucket's retention, default encryption and public-access block (boto3)."""
    from opskit import backup as bk
    from opskit.clients import ApiError
    from opskit.output import format_change, to_json
    from opskit.result import HostResult

    _, selected = _backup_hosts(inventory, hosts)
    results, seen = [], set()
    for h in selected:
        cfg = bk.config_for(h)
        if (cfg.s3.endpoint, cfg.s3.bucket) in seen:
            continue
        seen.add((cfg.s3.endpoint, cfg.s3.bucket))
        try:
            results.append(
                HostResult(f"s3://{cfg.s3.bucket}", tuple(bk.ensure_bucket_for(h, dry_run=check)))
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


# --- monitoring ------------------------------------------------------------------------------


@task(
    help=H(
        "inventory", "json",
        hosts="take the declarations of these hosts only (default: every host with the "
        "healthcheck role)",
        apply="carry the plan out (default: show it and change nothing)",
        verbose="also list monitors and rules that are already right",
        detailed_exitcode="without --apply: exit 3 when changes are pending (drift check in CI)",
    )
)
def monitoring_sync(c, inventory=None, hosts=None, apply=False, json=False, verbose=False,
                    detailed_exitcode=False):
    """UptimeRobot monitors and Sentry alert rules as the inventory declares them (plan; --apply)."""
    from opskit import monitoring
    from opskit.clients import ApiError

    inv, selected = cli.load(inventory, hosts)
    try:
        decl = monitoring.declared(inv, selected)
        result = monitoring.sync(decl, apply=apply)
    except ConfigError as exc:
        raise cli.usage_error(exc) from None
    except ApiError as exc:
        raise Exit(f"error: {exc}", code=ExitStatus.HOST_FAILED) from None
    if json:
        print(monitoring.sync_json(result), end="")
    else:
        print(monitoring.format_sync(result, verbose=verbose), end="")
        for line in result.done:
            print(line)
    if result.conflicts:
        raise Exit(code=ExitStatus.HOST_FAILED)
    if detailed_exitcode and not apply and result.pending:
        raise Exit(code=ExitStatus.CHANGES_PENDING)


def _print_health(rows, json_out):
    import json as jsonlib

    from opskit.monitoring import format_status

    if json_out:
        print(jsonlib.dumps([{"host": r.host, "status": r.status, "error": r.error} for r in rows],
                            indent=2))
    for r in rows:
        if r.status is not None and not json_out:
            print(format_status(r.host, r.status), end="")
        if r.error:
            print(f"[{r.host}] FAILED   {r.error}", file=sys.stderr)
    if any(r.error for r in rows):
        raise Exit(code=ExitStatus.HOST_FAILED)


@task(help=H("inventory", "hosts", "json",
             no_alert="check only: send nothing to Slack and keep no alert state"))
def monitoring_check(c, inventory=None, hosts=None, json=False, no_alert=False):
    """Run the health check on the hosts now, as cron does (alerts Slack on a change)."""
    from opskit.monitoring import health_hosts

    inv, selected = cli.load(inventory, hosts)
    _print_health(health_hosts(inv, selected, run=True, alert=not no_alert), json)


@task(help=H("inventory", "hosts", "json"))
def monitoring_status(c, inventory=None, hosts=None, json=False):
    """Show each host's last health-check result (its status file); runs nothing."""
    from opskit.monitoring import health_hosts

    inv, selected = cli.load(inventory, hosts)
    _print_health(health_hosts(inv, selected, run=False), json)


# --- certs ---------------------------------------------------------------------------------


def _cert_hosts(inventory, hosts):
    from opskit import certs

    inv, selected = cli.load(inventory, hosts)
    try:
        return inv, certs.cert_hosts(inv, selected, explicit=bool(hosts))
    except ConfigError as exc:
        raise cli.usage_error(exc) from None


CERTS_HELP = H(
    "inventory", "json", "ask_sudo_pass",
    hosts="hosts: names, groups or globs, comma-separated (default: every host with the certbot "
    "role)",
    workers="hosts at once (default 8)",
)


@task(help=CERTS_HELP)
def certs_status(c, inventory=None, hosts=None, json=False, workers=8, ask_sudo_pass=False):
    """Per host and certificate: names, not-after, days left, issuer, served = on disk?

    Exit code: 5 a certificate is critical (fewer than certbot_critical_days left, expired,
    declared but missing, or nginx serves another one), else 1 a host could not be read, else
    4 one is in the warning window (certbot_warning_days), else 0.
    """
    from opskit import certs

    inv, selected = _cert_hosts(inventory, hosts)
    try:
        report = certs.status(
            inv, selected, workers=workers, sudo_password=cli.ask_sudo_password(ask_sudo_pass)
        )
    except ConfigError as exc:
        raise cli.usage_error(exc) from None
    print(certs.status_json(report) if json else certs.format_status(report), end="")
    if report.exit_code:
        raise Exit(code=int(report.exit_code))


@task(
    help=dict(
        CERTS_HELP,
        force="renew even if not due (certbot --force-renewal)",
        dry_run="ask the ACME server for a renewal but save nothing and run no hook "
        "(certbot --dry-run)",
        cert="only this certificate (certbot's lineage name, e.g. shop.example.com)",
    )
)
def certs_renew(c, inventory=None, hosts=None, force=False, dry_run=False, cert=None, json=False,
                workers=8, ask_sudo_pass=False):
    """Renew certificates now, then prove nginx serves the renewed ones (the deploy hook ran)."""
    from opskit import certs

    inv, selected = _cert_hosts(inventory, hosts)
    if force and dry_run:
        raise Exit("error: --force and --dry-run exclude each other", code=ExitStatus.USAGE)
    opts = certs.RenewOptions(force=force, dry_run=dry_run, cert=cert or None)
    emit = None if json else (lambda r: print(certs.format_renew_host(r), end="", flush=True))
    try:
        results = certs.renew(inv, selected, opts, workers=workers, on_result=emit,
                              sudo_password=cli.ask_sudo_password(ask_sudo_pass))
    except ConfigError as exc:
        raise cli.usage_error(exc) from None
    except KeyboardInterrupt:
        raise Exit(
            "interrupted: hosts not started were skipped", code=ExitStatus.INTERRUPTED
        ) from None
    print(certs.renew_json(results, opts) if json else certs.renew_summary(results), end="")
    if any(r.failed for r in results):
        raise Exit(code=ExitStatus.HOST_FAILED)


# --- development ---------------------------------------------------------------------------


@task(help={"fast": "unit tests only (no lab): a developer's shortcut, never CI's"})
def test(c, fast=False):
    """Run the tests: unit, doctests and integration against the lab."""
    args = "-m 'not integration' tests/unit" if fast else ""
    c.run(f"{sys.executable} -m pytest {args}", pty=sys.stdout.isatty())


@task
def lint(c):
    """ruff check, ruff format --check, mypy --strict on opskit."""
    py = sys.executable
    c.run(f"{py} -m ruff check . && {py} -m ruff format --check . && "
          f"{py} -m mypy --strict --ignore-missing-imports opskit")


hosts_ns = Collection("hosts")
hosts_ns.add_task(trust)
lab_ns = Collection("lab")
lab_ns.add_task(lab_up, name="up")
lab_ns.add_task(lab_down, name="down")
lab_ns.add_task(lab_status, name="status")
lab_ns.add_task(lab_demo, name="demo")
lab_ns.add_task(lab_inbox, name="inbox")
backup_ns = Collection("backup")
backup_ns.add_task(backup_run, name="run")
backup_ns.add_task(backup_list, name="list")
backup_ns.add_task(backup_verify, name="verify")
backup_ns.add_task(backup_restore, name="restore")
backup_ns.add_task(backup_drill, name="drill")
backup_ns.add_task(backup_bucket, name="bucket")
monitoring_ns = Collection("monitoring")
monitoring_ns.add_task(monitoring_sync, name="sync")
monitoring_ns.add_task(monitoring_check, name="check")
monitoring_ns.add_task(monitoring_status, name="status")
certs_ns = Collection("certs")
certs_ns.add_task(certs_status, name="status")
certs_ns.add_task(certs_renew, name="renew")
dev_ns = Collection("dev")
dev_ns.add_task(test)
dev_ns.add_task(lint)

ns = Collection(provision, verify, run)
ns.add_task(deploy)
ns.add_task(rollback)
ns.add_task(releases)
ns.add_collection(hosts_ns)
ns.add_collection(lab_ns)
ns.add_collection(backup_ns)
ns.add_collection(monitoring_ns)
ns.add_collection(certs_ns)
ns.add_collection(dev_ns)
