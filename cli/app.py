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
    inv, selected, work, *, batch, json, ask_sudo_pass, info, prepare=None, check=None
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
            sudo_password=password,
            on_result=emit,
        )
    except ConfigError as exc:  # the build or a host's check refused: every lock let go, no change
        raise Exit(f"error: {exc}", code=ExitStatus.USAGE) from None
    except OpsError as exc:
        raise Exit(f"error: {exc}", code=ExitStatus.HOST_FAILED) from None
    except KeyboardInterrupt:
        raise Exit(
            "interrupted: a host whose activation had started finishes it on its own (current "
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


@task(help=dict(APP_HELP, ref="git ref of the app's repo (app_repo): tag, branch or commit"))
def deploy(
    c,
    ref="HEAD",
    inventory=None,
    hosts=None,
    batch=1,
    message="",
    health_timeout=None,
    json=False,
    ask_sudo_pass=False,
):
    """Deploy a git ref of the app: build, upload, switch, reload, gate on health, else go back."""
    from opskit.app import deploy as dep
    from opskit.app import release

    inv, selected = _app_hosts(inventory, hosts)
    v = selected[0].vars
    try:
        repo = release.resolve_repo(v["app_repo"], inv.path.parent)
        sha = release.resolve_commit(repo, ref)
        opts = dep.Options(message, float(health_timeout) if health_timeout else None)
    except (ConfigError, ValueError) as exc:
        raise Exit(f"error: {exc}", code=ExitStatus.USAGE) from None
    except OpsError as exc:
        raise Exit(f"error: {exc}", code=ExitStatus.HOST_FAILED) from None

    def build():
        # Built once the fleet's deploy lock is held: a second deploy started meanwhile is
        # refused whatever phase this one is in.
        artifact = release.build(repo, v["app_repo_path"], ref)
        if not json:
            print(
                f"deploying {v['app_name']} {artifact.describe} ({artifact.sha[:7]}) as release "
                f"{artifact.name} to {len(selected)} host(s), {batch} at a time",
                flush=True,
            )
        return artifact

    artifact = dep.Once(build)
    if not json:
        print(f"locking {len(selected)} host(s) for {v['app_name']} {ref} ({sha[:7]})", flush=True)
    started = datetime.now(UTC)
    _run_app_work(
        inv,
        selected,
        dep.deploy_work(artifact, opts),
        batch=batch,
        json=json,
        ask_sudo_pass=ask_sudo_pass,
        info=dep.lock_info(f"deploy {ref}", message),
        prepare=artifact,
    )
    built = artifact()
    _record_sentry_release(inv, selected, built.sha, started, ref=built.ref, json=json)


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
    )
)
def rollback(
    c,
    steps=1,
    to=None,
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
    _run_app_work(
        inv,
        selected,
        work,
        batch=batch,
        json=json,
        ask_sudo_pass=ask_sudo_pass,
        info=dep.lock_info(what, message),
        check=dep.rollback_check(steps=steps, to=to, states=states),
    )
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
