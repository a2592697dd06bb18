"""deploy, rollback, releases."""

from __future__ import annotations

import sys
from datetime import UTC, datetime

from invoke.exceptions import Exit

from cli import common as cli
from cli.common import H, task
from opskit.core.errors import ConfigError, ExitStatus, OpsError

# --- app: deploy, rollback, releases ---------------------------------------------------------


def _app_hosts(inventory, hosts):
    """The inventory and the selected hosts with the app role (default: every such host)."""
    from opskit.app.deploy import app_hosts

    inv, selected = cli.load(inventory, hosts)
    if not hosts:
        selected = [h for h in selected if "app" in h.roles]
    return inv, app_hosts(inv, selected)


def _run_app_work(
    inv,
    selected,
    work,
    *,
    batch,
    json,
    ask_sudo_pass,
    info,
    prepare=None,
    check=None,
    stage=None,
    on_interrupt=None,
    interrupted="",
):
    from opskit.app.deploy import run_in_batches

    password = cli.ask_sudo_password(ask_sudo_pass)
    emit = cli.printer(json_out=json, show_diff=False, verbose=False)
    try:
        results = run_in_batches(
            inv,
            selected,
            work,
            batch=batch,
            info=info,
            prepare=prepare,
            check=check,
            stage=stage,
            sudo_password=password,
            on_result=emit,
            on_interrupt=on_interrupt,
        )
    except ConfigError as exc:  # the build or a host's check refused: every lock let go, no change
        raise Exit(f"error: {exc}", code=ExitStatus.USAGE) from None
    except OpsError as exc:
        raise Exit(f"error: {exc}", code=ExitStatus.HOST_FAILED) from None
    except KeyboardInterrupt:
        raise Exit(
            interrupted
            or "interrupted: a host whose activation had started finishes it on its own (current "
            "ends on a release that passed its health gate); hosts not started are unchanged",
            code=ExitStatus.INTERRUPTED,
        ) from None
    cli.finish(results, json_out=json, dry_run=False)


APP_HELP = H(
    "inventory",
    "json",
    "ask_sudo_pass",
    hosts="hosts: names, groups or globs, comma-separated (default: every host with the app role)",
    batch="hosts at once; the next batch starts only when this one succeeded (default 1)",
    message="why: kept in the lock, the release and the journal",
    health_timeout="seconds the health gate may take (default: app_health_timeout)",
)


@task(
    help=dict(
        APP_HELP,
        ref="git ref of the app's repo (app_repo): tag, branch or commit",
        watch="after each host's switch, watch the release this long (30s, 10m; 0: no watch) "
        "and roll back automatically when it goes bad (default: app_watch)",
    )
)
def deploy(
    c,
    ref="HEAD",
    watch=None,
    inventory=None,
    hosts=None,
    batch=1,
    message="",
    health_timeout=None,
    json=False,
    ask_sudo_pass=False,
):
    """Deploy a git ref of the app: build, upload, switch, reload, gate on health, else go back;
    with a watch, roll back automatically when the release goes bad (exit 1)."""
    from opskit.app import build as appbuild
    from opskit.app import deploy as dep
    from opskit.app import release
    from opskit.app.watch import Watch

    inv, selected = _app_hosts(inventory, hosts)
    v = selected[0].vars
    try:
        repo = release.resolve_repo(v["app_repo"], inv.path.parent)
        sha = release.resolve_commit(repo, ref)
        opts = dep.Options(message, float(health_timeout) if health_timeout else None)
        watcher = Watch(
            watch,
            progress=lambda line: print(line, file=sys.stderr if json else sys.stdout, flush=True),
            health_timeout=opts.health_timeout,
        )
        for h in selected:
            watcher.rules(h.vars)  # a bad --watch or app_watch: exit 2 before anything changes
        target = appbuild.target(inv, selected)
    except (ConfigError, ValueError) as exc:
        raise Exit(f"error: {exc}", code=ExitStatus.USAGE) from None
    except OpsError as exc:
        raise Exit(f"error: {exc}", code=ExitStatus.HOST_FAILED) from None

    def build():
        # Built once the fleet's deploy lock is held: a second deploy started meanwhile is
        # refused whatever phase this one is in.
        # Dependencies are built on the hosts' platform (opskit.app.build), on the build
        # host's own deploy connection (noted by `check` when its lock was taken).
        artifact = release.build(repo, v["app_repo_path"], ref, install=False)
        artifact, built = appbuild.build_release(inv, target, remotes, artifact)
        if not json:
            print(f"  {appbuild.describe(built)}", flush=True)
            print(
                f"deploying {v['app_name']} {artifact.describe} ({artifact.sha[:7]}) as release "
                f"{artifact.name} to {len(selected)} host(s), {batch} at a time",
                flush=True,
            )
        return artifact

    remotes = appbuild.Remotes()

    artifact = dep.Once(build)
    if not json:
        print(f"locking {len(selected)} host(s) for {v['app_name']} {ref} ({sha[:7]})", flush=True)
    started = datetime.now(UTC)
    staged = {}  # hosts prepared by the migration's stage: only their activation is left
    stage = _migration_stage(inv, selected, dep.deploy_prepare(artifact, opts, staged), json=json)
    try:
        _run_app_work(
            inv,
            selected,
            dep.deploy_work(artifact, opts, staged, watcher),
            batch=batch,
            json=json,
            ask_sudo_pass=ask_sudo_pass,
            info=dep.lock_info(f"deploy {ref}", message),
            prepare=artifact,
            check=remotes.note,
            on_interrupt=watcher.stop,
            interrupted="interrupted: the watch ended without rolling back (the new release "
            "stays); a host whose activation had started finishes it on its own; hosts not "
            "started are unchanged",
            stage=stage,
        )
    finally:
        remotes.close()
    built = artifact()
    _record_sentry_release(inv, selected, built.sha, started, ref=built.ref, json=json)


def _migration_stage(inv, selected, prepare, *, json):
    """With app_migrate_command: every host prepares, then one migration (after a verified
    backup when the inventory has a backed-up database), then the batches switch. Else None."""
    from opskit.app import migrate

    try:
        settings = migrate.Settings.from_vars(selected[0].vars)
    except ConfigError as exc:  # before any lock or change
        raise Exit(f"error: {inv.path}: {exc}", code=ExitStatus.USAGE) from None
    if not settings.command:
        return None
    db_hosts = _backed_up_databases(inv)
    say = (lambda line: None) if json else (lambda line: print(line, flush=True))
    backup = (lambda: _verified_backup(inv, db_hosts, say)) if db_hosts else None
    order = [h.name for h in selected]
    return migrate.Migration(order, settings, backup, say).stage(prepare)


def _backed_up_databases(inv):
    from opskit.backup.spec import has_backup_role

    return [h for h in inv.hosts if has_backup_role(h)]


def _verified_backup(inv, db_hosts, say):
    """opskit/backup's run + verify on each backed-up database host; the keys, or OpsError."""
    from opskit.backup.hosts import on_hosts
    from opskit.backup.restore import run_backup, verify_backup
    from opskit.hostside.backup import KEY_KEY

    def run_and_verify(remote, cfg):
        made = run_backup(remote, cfg)
        verify_backup(remote, cfg, made[KEY_KEY])
        return made

    outcomes = on_hosts(inv, db_hosts, run_and_verify)
    failed = [f"{o.host}: {o.error}" for o in outcomes if not o.ok]
    if failed:
        raise OpsError(f"the backup before the migration failed ({'; '.join(failed)})")
    keys = [str(o.data[KEY_KEY]) for o in outcomes]
    say(f"verified backup before migrating: {', '.join(keys)}")
    return ", ".join(keys)


def _record_sentry_release(inv, selected, sha, started, *, ref=None, json):
    """Tell Sentry about the release now live (skipped when the inventory has no Sentry)."""
    from opskit.clients import ApiError
    from opskit.monitoring import releases as monitoring

    try:
        made = monitoring.sentry_release(inv, sha, hosts=selected, ref=ref, started=started)
    except (ApiError, ConfigError) as exc:
        print(f"warning: Sentry release not recorded: {exc}", file=sys.stderr)
        return
    if made and not json:
        print(made.describe())


@task(
    help=dict(
        APP_HELP,
        steps="go back this many good releases (default 1)",
        to="switch to this release (its name, or a unique prefix or suffix)",
        force="roll back even to a release whose database schema is older than the live one",
    )
)
def rollback(
    c,
    steps=1,
    to=None,
    force=False,
    inventory=None,
    hosts=None,
    batch=1,
    message="",
    health_timeout=None,
    json=False,
    ask_sudo_pass=False,
):
    """Switch back to an older good release (no upload, no install), gated on health."""
    from opskit.app import deploy as dep

    inv, selected = _app_hosts(inventory, hosts)
    try:
        opts = dep.Options(message, float(health_timeout) if health_timeout else None)
    except ValueError as exc:
        raise Exit(f"error: --health-timeout: {exc}", code=ExitStatus.USAGE) from None
    landed: dict[str, str] = {}
    states: dict[str, dep.HostState] = {}  # read once per host, by the check, for the work
    work = dep.rollback_work(steps=steps, to=to, opts=opts, landed=landed, states=states)
    started = datetime.now(UTC)
    what = f"rollback to {to}" if to else f"rollback {steps} step(s)"
    from opskit.app import migrate

    forced: dict[str, str] = {}

    def guard(state, target):  # the schema guard: refused (exit 2) before any host changes
        warning = migrate.schema_guard(state, target, force=force)
        if warning:
            forced[warning] = warning

    _run_app_work(
        inv,
        selected,
        work,
        batch=batch,
        json=json,
        ask_sudo_pass=ask_sudo_pass,
        info=dep.lock_info(what, message),
        check=dep.rollback_check(
            steps=steps, to=to, states=states, guard=guard, journal=migrate.JOURNAL_TAIL
        ),
    )
    for warning in forced:
        print(f"warning: {warning}", file=sys.stderr)
    if len(set(landed.values())) == 1:  # Sentry: a deploy of the release now live everywhere
        _record_sentry_release(inv, selected, next(iter(landed.values())), started, json=json)


@task(
    help=H(
        "inventory",
        hosts=APP_HELP["hosts"],
        journal="also show the last N entries of each host's deploy journal",
    )
)
def releases(c, inventory=None, hosts=None, journal=0):
    """Each host's releases: current (*), bad (!), deployed when and by whom; lock holder."""
    from opskit.app import deploy as dep

    inv, selected = _app_hosts(inventory, hosts)
    rows = dep.list_releases(inv, selected, journal=journal)
    print(dep.format_releases(rows), end="")
    if any(r.error for r in rows):
        raise Exit(code=ExitStatus.HOST_FAILED)


# --- app.toggle, app.killswitch: the app's admin endpoints (opskit/app/toggles.py) ------------


def _positional_help(task_name, usage, doc, helps):
    """Invoke eats `-h` as a positional argument's value: print the task's help ourselves."""
    print(f"Usage: inv[oke] [--core-opts] {task_name} {usage} [--options]\n\nDocstring:\n  {doc}\n")
    print("Options:")
    for flag, text in helps.items():
        print(f"  --{flag.replace('_', '-'):<16} {text}")


def _flip(inventory, hosts, name, state, message, json, ask_sudo_pass):
    from opskit.app import toggles
    from opskit.app.release import operator
    from opskit.clients import ApiError
    from opskit.core.runner import run_on_hosts

    try:
        flip = toggles.Flip(name, toggles.on_off(state, "STATE"), operator(), message)
    except ConfigError as exc:
        raise Exit(f"error: {exc}", code=ExitStatus.USAGE) from None
    inv, selected = _app_hosts(inventory, hosts)
    toggles.check_settings(selected)  # ConfigError: exit 2, no host called
    done: dict[str, bool] = {}
    emit = cli.printer(json_out=json, show_diff=False, verbose=False)
    results = run_on_hosts(
        inv,
        selected,
        toggles.flip_work(flip, done),
        sudo_password=cli.ask_sudo_password(ask_sudo_pass),
        on_result=emit,
    )
    changed = [h for h, c in done.items() if c]
    webhook = toggles.slack_webhook(selected)
    if changed and webhook:
        text = toggles.slack_text(
            flip, changed, [h for h, c in done.items() if not c], sum(1 for r in results if r.error)
        )
        try:
            toggles.post_slack(webhook, text)
        except ApiError as exc:
            print(f"warning: Slack not told: {exc}", file=sys.stderr)
    elif not changed and not json and not any(r.error for r in results):
        print(f"{flip.describe}: already so on every host read; nothing changed, nothing sent")
    cli.finish(results, json_out=json, dry_run=False)


FLIP_HELP = H(
    "inventory",
    "json",
    "ask_sudo_pass",
    hosts=APP_HELP["hosts"],
    message="why: kept in the journal and the Slack message",
)


@task(help=dict(FLIP_HELP, name="the toggle's name", state="on or off"))
def toggle(c, name, state, inventory=None, hosts=None, message="", json=False, ask_sudo_pass=False):
    """Switch a feature toggle of the app on or off on every app host (journal, Slack)."""
    if {name, state} & {"-h", "--help"}:
        return _positional_help("app.toggle", "NAME on|off", toggle.__doc__, FLIP_HELP)
    _flip(inventory, hosts, name, state, message, json, ask_sudo_pass)


@task(help=dict(FLIP_HELP, state="on (normal routes answer 503; /health stays truthful) or off"))
def killswitch(c, state, inventory=None, hosts=None, message="", json=False, ask_sudo_pass=False):
    """Switch the app's killswitch on or off on every app host (admin endpoint, journal, Slack)."""
    if state in ("-h", "--help"):
        return _positional_help("app.killswitch", "on|off", killswitch.__doc__, FLIP_HELP)
    _flip(inventory, hosts, None, state, message, json, ask_sudo_pass)
