"""Run work on many hosts in parallel with a bound; one bad host never stops the others."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from opskit.core.artifacts import cache_dir
from opskit.core.engine import ConvergeError, FactsChanged, converge
from opskit.core.errors import ConfigError, ConnectError, ConnectionLost, OpsError
from opskit.core.facts import GUESS, Facts, FactsCache, check_supported, release_vars
from opskit.core.inventory import Host, Inventory, check_identity
from opskit.core.remote import TRANSPORT_ERRORS, Remote, connect
from opskit.core.resource import Resource
from opskit.core.result import Change, HostResult
from opskit.core.roles import available_roles
from opskit.core.secrets import Secret, redact

log = logging.getLogger(__name__)

Work = Callable[[Remote], Sequence[Change]]


@dataclass
class RunContext:
    """What a role's hooks may use besides the connection."""

    inventory: Inventory
    dry_run: bool
    sudo_password: Secret | None = None
    notes: list[str] = field(default_factory=list)

    def reconnect(self, host: Host) -> Remote:
        """A second, fresh connection (used to prove SSH still works after hardening)."""
        return connect(host, self.inventory.ssh, sudo_password=self.sudo_password)


class Cancelled(OpsError):
    pass


def run_on_hosts(
    inventory: Inventory,
    hosts: Sequence[Host],
    work: Callable[[Remote, RunContext], Sequence[Change]],
    *,
    workers: int = 8,
    dry_run: bool = False,
    sudo_password: Secret | None = None,
    on_result: Callable[[HostResult], None] | None = None,
) -> list[HostResult]:
    """Run `work` once per host over one connection, at most `workers` at a time.

    Results come back in inventory order; `on_result` sees each as soon as its host is done.
    On Ctrl-C, hosts not started are skipped, started ones finish their current step, and
    KeyboardInterrupt is re-raised.
    """
    check_identity(inventory.ssh, f"{inventory.path}: ssh.identity")  # before any host
    stop = threading.Event()

    def one(host: Host) -> HostResult:
        if stop.is_set():
            return HostResult(host.name, error="not run: interrupted")
        ctx = RunContext(inventory, dry_run, sudo_password)
        started = time.monotonic()
        remote = None
        try:
            remote = connect(host, inventory.ssh, sudo_password=sudo_password)
            changes = tuple(work(remote, ctx))
            result = HostResult(
                host.name,
                changes,
                commands=remote.commands,
                seconds=time.monotonic() - started,
                notes=tuple(ctx.notes),
            )
        except ConnectionLost as exc:
            result = _lost(host, exc, remote, started)
        except TRANSPORT_ERRORS as exc:  # a transport error that no step turned into one
            if remote is None or remote.connected():
                result = _unexpected(host, exc, remote, started)
            else:
                result = _lost(host, remote.lost("a step", exc), remote, started)
        except ConnectError as exc:
            result = HostResult(
                host.name, error=str(exc), unreachable=True, seconds=time.monotonic() - started
            )
        except ConfigError as exc:  # refused before anything was changed on this host
            result = HostResult(
                host.name,
                error=redact(str(exc), host.secrets),
                commands=remote.commands if remote else 0,
                seconds=time.monotonic() - started,
                refused=True,
            )
        except ConvergeError as exc:
            result = HostResult(
                host.name,
                exc.changes,
                error=str(exc),
                commands=remote.commands if remote else 0,
                seconds=time.monotonic() - started,
            )
        except Exception as exc:  # one bad host never stops the others
            result = _unexpected(host, exc, remote, started)
        finally:
            if remote is not None:
                remote.close()
        if on_result is not None:
            on_result(result)
        return result

    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="opskit")
    futures = [pool.submit(one, h) for h in hosts]
    try:
        results = [f.result() for f in futures]
    except KeyboardInterrupt:
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return results


def _lost(host: Host, exc: ConnectionLost, remote: Remote | None, started: float) -> HostResult:
    return HostResult(
        host.name,
        error=redact(str(exc), host.secrets),
        commands=remote.commands if remote else 0,
        seconds=time.monotonic() - started,
        lost=True,
    )


def _unexpected(host: Host, exc: Exception, remote: Remote | None, started: float) -> HostResult:
    if not isinstance(exc, OpsError):
        log.exception("[%s] unexpected error", host.name)
    msg = redact(
        f"{exc}" if isinstance(exc, OpsError) else f"{type(exc).__name__}: {exc}", host.secrets
    )
    return HostResult(
        host.name,
        error=msg,
        commands=remote.commands if remote else 0,
        seconds=time.monotonic() - started,
    )


def role_resources(host: Host, roles: Sequence[str], facts: Facts | None = None) -> list[Resource]:
    """The resources of `roles` for `host` (with its release's facts), in converge order."""
    known = available_roles()
    v = {**host.vars, **release_vars(facts)}
    resources: list[Resource] = []
    for name in roles:
        resources.extend(known[name].module().resources(v))
    return resources


def facts_cache() -> FactsCache:
    return FactsCache(cache_dir() / "facts")


def roles_for(host: Host, only: Sequence[str] | None) -> list[str]:
    if not only:
        return list(host.roles)
    return [r for r in host.roles if r in only]


def check_role_names(names: Sequence[str] | None) -> None:
    known = available_roles()
    for n in names or []:
        if n not in known:
            raise ConfigError(f"--roles: unknown role '{n}' (roles: {', '.join(known)})")


def provision_work(only: Sequence[str] | None) -> Callable[[Remote, RunContext], list[Change]]:
    """The work of `inv provision`: converge the host's roles, then run the roles' checks."""

    def work(remote: Remote, ctx: RunContext) -> list[Change]:
        h = remote.host
        names = roles_for(h, only)
        # The release the resources are built for: remembered from the last run, else a guess
        # (Debian 12). The converge's one probe re-reads it; a wrong guess costs one more probe.
        cache = facts_cache()
        remembered = cache.get(h.name, h.address, h.port)
        facts = remembered or GUESS
        try:
            changes = converge(
                remote, role_resources(h, names, facts), dry_run=ctx.dry_run, facts=facts
            )
        except FactsChanged as exc:  # first contact with another release, or an upgrade
            if exc.facts is None:
                raise OpsError(f"{h.name}: cannot read /etc/os-release") from None
            facts = check_supported(h.name, exc.facts)
            cache.put(h.name, h.address, h.port, facts)
            changes = converge(
                remote, role_resources(h, names, facts), dry_run=ctx.dry_run, facts=facts
            )
        if facts != remembered:
            cache.put(h.name, h.address, h.port, facts)
        known = available_roles()
        for name in names:
            after = getattr(known[name].module(), "after_converge", None)
            if after is not None and not ctx.dry_run:
                after(remote, changes, ctx)
        return changes

    return work
