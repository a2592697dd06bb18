"""Renewing certificates for `inv certs.renew`: certbot through the opskit-certbot wrapper
(which checks the ACME servers first), then proof from the host: the certificate on disk
changed, the deploy hook ran, and nginx serves the new one (a reload takes a moment, so a
renewal is given `settle_seconds`). A dry run asks the ACME server and saves nothing.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from opskit.certs.read import CertInfo, HookRun, HostCerts, info_json, read_host
from opskit.certs.spec import EXIT_ACME_UNREACHABLE, WRAPPER, CertSpec, declared_certificates
from opskit.core.errors import OpsError
from opskit.core.runner import run_on_hosts
from opskit.resources import q


@dataclass(frozen=True)
class RenewOptions:
    force: bool = False  # --force-renewal: renew even if not due
    dry_run: bool = False  # certbot's --dry-run: ask the ACME server, save nothing, no hook
    cert: str | None = None  # only this lineage
    settle_seconds: float = 20.0  # how long nginx may take to serve a renewed certificate


@dataclass(frozen=True)
class RenewedCert:
    """What `certs.renew` did to one certificate, and the proof."""

    name: str
    outcome: str  # "renewed", "not due", "simulated", "failed"
    detail: str
    before: CertInfo | None = None
    after: CertInfo | None = None
    served_before: CertInfo | None = None
    served_after: CertInfo | None = None
    hooks: tuple[HookRun, ...] = ()

    @property
    def failed(self) -> bool:
        return self.outcome == "failed"


@dataclass(frozen=True)
class RenewHost:
    host: str
    certificates: tuple[RenewedCert, ...] = ()
    error: str | None = None
    unreachable: bool = False
    certbot_exit: int | None = None
    output: str = ""  # certbot's output, for --verbose and JSON
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        return self.error is not None or any(c.failed for c in self.certificates)


def renew_script(lineages: Sequence[tuple[str, str]], opts: RenewOptions) -> str:
    """The remote command of a renewal of `lineages` ((name, ACME server) pairs): the wrapper
    checks the ACME servers, then runs certbot; `@@rc <exit>` follows each run.

    A dry run goes lineage by lineage with its server named: certbot's --dry-run otherwise
    swaps the server for Let's Encrypt's staging CA.

    >>> print(renew_script([("shop", "https://ca/dir")], RenewOptions(force=True, cert="shop")))
    ... # doctest: +NORMALIZE_WHITESPACE
    /usr/local/sbin/opskit-certbot --check https://ca/dir -- renew --non-interactive
    --no-random-sleep-on-renew --force-renewal --cert-name shop 2>&1; echo "@@rc $?"
    """
    base = ["--", "renew", "--non-interactive", "--no-random-sleep-on-renew"]
    runs: list[list[str]] = []
    if opts.dry_run:
        for name, server in lineages:
            check = [WRAPPER, "--check", server]
            runs.append([*check, *base, "--cert-name", name, "--server", server, "--dry-run"])
    else:
        args = [WRAPPER]
        for server in sorted({server for _, server in lineages}):
            args += ["--check", server]
        args += base
        if opts.force:
            args.append("--force-renewal")
        if opts.cert:
            args += ["--cert-name", opts.cert]
        runs.append(args)
    return "\n".join(" ".join(q(a) for a in run) + ' 2>&1; echo "@@rc $?"' for run in runs)


def run_exits(output: str, names: Sequence[str], dry_run: bool) -> dict[str, int]:
    """Exit code of certbot for each lineage, from the `@@rc` lines of renew_script's output.

    >>> run_exits("x\\n@@rc 0\\ny\\n@@rc 1\\n", ["a", "b"], True)
    {'a': 0, 'b': 1}
    >>> run_exits("@@rc 69\\n", ["a", "b"], False)
    {'a': 69, 'b': 69}
    """
    codes = [int(m) for m in re.findall(r"^@@rc (\d+)$", output, re.M)]
    if dry_run:
        return {n: (codes[i] if i < len(codes) else -1) for i, n in enumerate(names)}
    return dict.fromkeys(names, codes[-1] if codes else -1)


_FAILED_RENEW = re.compile(r"Failed to renew certificate (\S+) with error: (.*)")
_NOISE = ("Saving debug log", "Ask for help", "- - -", "Processing ", "Congratulations")


def certbot_errors(output: str) -> str:
    """The lines of certbot's output worth showing when it failed.

    >>> certbot_errors("Saving debug log to x\\nFailed to renew certificate a with error: boom\\n")
    'Failed to renew certificate a with error: boom'
    """
    keep = [
        ln.strip()
        for ln in output.splitlines()
        if ln.strip() and not ln.strip().startswith(_NOISE) and not ln.startswith("  /etc/")
    ]
    return "\n".join(keep[-8:])


def _hook_text(hooks: Sequence[HookRun]) -> str:
    if not hooks:
        return "the deploy hook did not run"
    return "; ".join(f"deploy hook {h.result}: {h.message}" for h in hooks)


def judge_renewal(
    before: HostCerts,
    after: HostCerts,
    names: Sequence[str],
    opts: RenewOptions,
    exits: Mapping[str, int],
    output: str,
) -> tuple[RenewedCert, ...]:
    """What happened to each certificate of a renewal, proven from what the host has on disk
    and what nginx serves before and after (pure)."""
    grew = max(0, after.hook_count - before.hook_count)
    new_hooks = after.hooks[len(after.hooks) - min(grew, len(after.hooks)) :] if grew else ()
    failures = {m.group(1): m.group(2).strip() for m in _FAILED_RENEW.finditer(output)}
    note = ""
    if "does not know this host's ACME account" in output:
        note = " (the ACME server had forgotten this host's account: a new one was registered)"
    out = []
    for name in names:
        b, a = before.lineage(name), after.lineage(name)
        bd, ad = (b.disk if b else None), (a.disk if a else None)
        bs, as_ = (b.served if b else None), (a.served if a else None)
        hooks = tuple(h for h in new_hooks if h.name == name)
        server = (b.server if b else "") or "?"
        renewed = bd is not None and ad is not None and ad.fingerprint != bd.fingerprint
        certbot_exit = exits.get(name, -1)
        if certbot_exit == EXIT_ACME_UNREACHABLE:
            msg = next((ln for ln in output.splitlines() if "does not answer" in ln), output)
            outcome, detail = "failed", msg.strip()
        elif opts.dry_run and certbot_exit == 0:
            outcome = "simulated"
            detail = (
                f"simulated renewal from {server} succeeded (certbot --dry-run: nothing saved, "
                "no deploy hook run)"
            )
        elif opts.dry_run:
            why = failures.get(name) or certbot_errors(output)
            outcome, detail = "failed", f"simulated renewal failed: {why}"
        elif renewed and ad is not None and as_ is not None and as_.fingerprint == ad.fingerprint:
            outcome = "renewed"
            was = f"was serial {bd.serial[:16]}" if bd else "new"
            detail = (
                f"new certificate {ad.brief()} ({was}), issuer {ad.issuer!r}; nginx serves it "
                f"({_hook_text(hooks)})"
            )
        elif renewed and ad is not None:
            serving = f"still serves {as_.brief()}" if as_ else "serves nothing on port 443"
            outcome = "failed"
            detail = f"renewed on disk ({ad.brief()}), but nginx {serving}: {_hook_text(hooks)}"
        elif name in failures:
            outcome, detail = "failed", f"certbot: {failures[name]}"
        elif certbot_exit != 0 or opts.force:
            outcome = "failed"
            detail = f"certbot did not renew it (exit {certbot_exit}): {certbot_errors(output)}"
        else:
            days = ad.days_left(dt.datetime.now(dt.UTC)) if ad else None
            outcome, detail = "not due", f"not due for renewal ({days} days left)"
        out.append(RenewedCert(name, outcome, detail + note, bd, ad, bs, as_, hooks))
    return tuple(out)


def renew_host(remote: Any, declared: Sequence[CertSpec], opts: RenewOptions) -> RenewHost:
    """Renew the certificates of one host and prove the deploy hook made nginx serve them."""
    started = time.monotonic()
    before = read_host(remote, declared)
    names = [x.name for x in before.lineages if x.server]  # lineages with a renewal config
    if opts.cert:
        if opts.cert not in names:
            raise OpsError(
                f"no certificate {opts.cert!r} to renew on this host (it has: "
                f"{', '.join(names) or 'none'})"
            )
        names = [opts.cert]
    if not names:
        return RenewHost(remote.name, seconds=time.monotonic() - started)
    lineages = [(x.name, x.server) for x in before.lineages if x.name in names]
    res = remote.run(renew_script(lineages, opts), what="certbot renew", timeout=900)
    exits = run_exits(res.stdout, names, opts.dry_run)
    after = read_host(remote, declared)
    deadline = time.monotonic() + opts.settle_seconds

    def pending(state: HostCerts) -> bool:
        """A renewed certificate nginx does not serve yet (a reload takes a moment)."""
        for n in names:
            b, a = before.lineage(n), state.lineage(n)
            old = b.disk if b else None
            new = a.disk if a else None
            served = a.served if a else None
            if old is None or new is None or new.fingerprint == old.fingerprint:
                continue  # not renewed
            grew = max(0, state.hook_count - before.hook_count)
            hooks = state.hooks[len(state.hooks) - min(grew, len(state.hooks)) :] if grew else ()
            if any(h.name == n and h.result == "failed" for h in hooks):
                continue  # the deploy hook refused to reload: waiting changes nothing
            if served is None or served.fingerprint != new.fingerprint:
                return True
        return False

    while not opts.dry_run and pending(after) and time.monotonic() < deadline:
        time.sleep(1.0)
        after = read_host(remote, declared)
    certs = judge_renewal(before, after, names, opts, exits, res.stdout)
    return RenewHost(
        remote.name,
        certs,
        certbot_exit=max(exits.values()),
        output=res.stdout,
        seconds=time.monotonic() - started,
    )


def renew(
    inventory: Any,
    hosts: Sequence[Any],
    opts: RenewOptions,
    *,
    workers: int = 8,
    sudo_password: Any = None,
    on_result: Callable[[RenewHost], None] | None = None,
) -> list[RenewHost]:
    """`inv certs.renew` on `hosts` (in parallel, bounded); one failing host never stops others."""
    declared = {h.name: declared_certificates(h.vars) for h in hosts}
    done: dict[str, RenewHost] = {}

    def work(remote: Any, ctx: Any) -> list[Any]:
        done[remote.name] = renew_host(remote, declared[remote.name], opts)
        return []

    def emit(r: Any) -> None:
        if on_result is not None:
            fallback = RenewHost(r.host, error=r.error, unreachable=r.unreachable)
            on_result(done.get(r.host) or fallback)

    results = run_on_hosts(
        inventory, hosts, work, workers=workers, sudo_password=sudo_password, on_result=emit
    )
    return [
        done.get(r.host) or RenewHost(r.host, error=r.error, unreachable=r.unreachable)
        for r in results
    ]


def format_renew_host(r: RenewHost) -> str:
    """Lines for one host of `certs.renew`."""
    if r.error:
        label = "UNREACHABLE" if r.unreachable else "FAILED"
        first, *rest = r.error.splitlines() or [""]
        return f"[{r.host}] {label}  {first}\n" + "".join(f"    {x}\n" for x in rest)
    if not r.certificates:
        return f"[{r.host}] ok       no certificates to renew\n"
    words = {"renewed": "renewed", "not due": "ok", "simulated": "dry-run", "failed": "FAILED"}
    return "".join(
        f"[{r.host}] {words[c.outcome]:<8} {c.name}  {c.detail}\n" for c in r.certificates
    )


def renew_summary(results: Sequence[RenewHost]) -> str:
    """The last line of `certs.renew`: counts of outcomes and failed hosts."""
    certs = [c for r in results for c in r.certificates]
    counts = {k: sum(1 for c in certs if c.outcome == k) for k in ("renewed", "not due")}
    sim = sum(1 for c in certs if c.outcome == "simulated")
    failed = sum(1 for c in certs if c.failed)
    hosts_failed = sum(1 for r in results if r.error)
    return (
        f"{len(results)} host(s), {len(certs)} certificate(s): {counts['renewed']} renewed, "
        f"{counts['not due']} not due, {sim} simulated, {failed} failed; "
        f"{hosts_failed} host(s) failed\n"
    )


def renew_json(results: Sequence[RenewHost], opts: RenewOptions) -> str:
    """`inv certs.renew --json`: per host and certificate, what happened and the proof."""
    hosts = []
    for r in results:
        hosts.append(
            {
                "host": r.host,
                "error": r.error,
                "unreachable": r.unreachable,
                "failed": r.failed,
                "certbot_exit": r.certbot_exit,
                "seconds": round(r.seconds, 2),
                "certificates": [
                    {
                        "name": c.name,
                        "outcome": c.outcome,
                        "detail": c.detail,
                        "before": info_json(c.before),
                        "after": info_json(c.after),
                        "served_before": info_json(c.served_before),
                        "served_after": info_json(c.served_after),
                        "served_changed": bool(
                            c.served_before
                            and c.served_after
                            and c.served_before.fingerprint != c.served_after.fingerprint
                        ),
                        "deploy_hook": [h.__dict__ for h in c.hooks],
                    }
                    for c in r.certificates
                ],
                "certbot_output": r.output,
            }
        )
    options = {"force": opts.force, "dry_run": opts.dry_run, "cert": opts.cert}
    return json.dumps({"options": options, "hosts": hosts}, indent=2) + "\n"
