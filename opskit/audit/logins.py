"""Failed SSH logins and fail2ban in `inv audit`: the counts per source address the host
program reduced from sshd's journal, fail2ban's sshd jail, and the judgement of both against
audit_failed_login_threshold."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from opskit.audit.findings import Finding
from opskit.audit.settings import Settings
from opskit.checks.levels import Severity
from opskit.hostside.audit_probe import Fail2ban, Journal


@dataclass(frozen=True)
class Source:
    """Failed SSH logins from one address in the window."""

    address: str
    failures: int
    accepted: int = 0
    users: tuple[str, ...] = ()
    first: float = 0.0
    last: float = 0.0


@dataclass(frozen=True)
class Bans:
    """fail2ban's sshd jail: running or not, banned now, bans since it started, bans in window."""

    running: bool
    current: tuple[str, ...] = ()
    total: int = 0
    failed_now: int = 0
    in_window: tuple[str, ...] = ()
    error: str = ""
    # Bans in the window whose action failed: (action, address, why); nothing was blocked.
    failed_actions: tuple[tuple[str, str, str], ...] = ()


def parse_fail2ban(rc: int, text: str, err: str = "") -> Bans:
    """Parse `fail2ban-client status sshd`.

    >>> b = parse_fail2ban(0, "|  |- Currently failed:\\t2\\n   |- Currently banned:\\t1\\n"
    ...     "   |- Total banned:\\t3\\n   `- Banned IP list:\\t10.0.0.9 10.0.0.8\\n")
    >>> b.running, b.current, b.total, b.failed_now
    (True, ('10.0.0.9', '10.0.0.8'), 3, 2)
    """
    if rc != 0:
        why = (err or text).strip().splitlines()
        return Bans(False, error=why[-1] if why else f"exit {rc}")

    def value(label: str) -> str:
        m = re.search(rf"{label}:\s*(.*)$", text, re.M)
        return m.group(1).strip() if m else ""

    return Bans(
        True,
        tuple(value("Banned IP list").split()),
        int(value("Total banned") or 0),
        int(value("Currently failed") or 0),
    )


def sources_of(journal: Journal) -> tuple[Source, ...]:
    """The host program's counts per address (audit_probe.reduce_journal) as Sources; addresses
    with neither a failure nor a login are left out.

    >>> from opskit.hostside.audit_probe import reduce_journal
    >>> sources_of({"error": "", "lines": 2, "sources": reduce_journal([
    ...     "1 h sshd[1]: Failed password for root from 10.0.0.9 port 2 ssh2"])})
    (Source(address='10.0.0.9', failures=1, accepted=0, users=('root',), first=1.0, last=1.0),)
    """
    return tuple(
        Source(ip, int(x["failures"]), int(x["accepted"]), tuple(x["users"]), x["first"], x["last"])
        for ip, x in journal["sources"].items()
        if x["failures"] or x["accepted"]
    )


def bans_of(f2b: Fail2ban) -> Bans:
    """fail2ban's state as the host program read it: the jail's status, bans in the window and
    bans whose action failed (its log)."""
    bans = parse_fail2ban(f2b["rc"], f2b["out"], f2b["err"])
    return Bans(
        bans.running,
        bans.current,
        bans.total,
        bans.failed_now,
        tuple(f2b.get("in_window") or ()),
        bans.error,
        tuple((str(a), str(ip), str(why)) for a, ip, why in f2b.get("ban_errors") or ()),
    )


def judge_logins(
    sources: Sequence[Source], bans: Bans, s: Settings, host: str, ignored: Sequence[str] = ()
) -> list[Finding]:
    """Sources at or above the threshold, and whether fail2ban dealt with them (pure)."""
    out = []
    hours = f"{s.since_hours:g} h"
    if not bans.running:
        out.append(
            Finding(
                "fail2ban",
                Severity.HIGH,
                "fail2ban does not guard sshd",
                f"`fail2ban-client status sshd`: {bans.error or 'not running'}; nothing bans "
                "addresses that keep guessing",
                f"run `inv provision --hosts {host} --roles base` (fail2ban with its sshd jail)",
            )
        )
    if bans.failed_actions:
        actions = sorted({a for a, _, _ in bans.failed_actions})
        ips = sorted({ip for _, ip, _ in bans.failed_actions})
        why = sorted({w for _, _, w in bans.failed_actions})
        missing = "command not found" in why
        out.append(
            Finding(
                "fail2ban",
                Severity.HIGH,
                "fail2ban's bans block nothing",
                f"{len(bans.failed_actions)} ban(s) in the last {hours} failed to run the action "
                f"{', '.join(actions)} ({', '.join(why)}) for {', '.join(ips[:5])}: fail2ban "
                "lists them as banned, but they can keep trying",
                (
                    f"install the firewall the action needs on {host} (apt-get install "
                    "iptables, or nftables with banaction = nftables-multiport in the jail), "
                    "then `fail2ban-client reload`"
                    if missing
                    else f"see /var/log/fail2ban.log on {host} for the action's error"
                ),
            )
        )
    banned = set(bans.current) | set(bans.in_window)
    for src in sorted(sources, key=lambda x: -x.failures):
        if src.failures < s.failed_login_threshold:
            continue
        users = ", ".join(src.users) or "-"
        what = f"{src.failures} failed SSH logins from {src.address} in the last {hours}"
        detail = (
            f"users tried: {users}; threshold audit_failed_login_threshold="
            f"{s.failed_login_threshold}"
        )
        if src.accepted:
            out.append(
                Finding(
                    "failed-logins",
                    Severity.MEDIUM,
                    f"{what}, then {src.accepted} successful login(s)",
                    f"{detail}; a login succeeded from the same address after the failures",
                    f"check who logged in (journalctl -t sshd | grep 'Accepted.*{src.address}') "
                    "and that the key used is one you know",
                )
            )
        elif src.address in banned:
            now = "banned now" if src.address in bans.current else "was banned"
            out.append(
                Finding(
                    "failed-logins",
                    Severity.INFO,
                    what,
                    f"{detail}; fail2ban {now}",
                    "nothing to do: fail2ban blocks it",
                )
            )
        elif src.address in ignored or src.address.startswith("127."):
            out.append(
                Finding(
                    "failed-logins",
                    Severity.INFO,
                    what,
                    f"{detail}; the address is in fail2ban's ignoreip",
                    "check the local job or person that keeps failing",
                )
            )
        else:
            out.append(
                Finding(
                    "failed-logins",
                    Severity.MEDIUM,
                    f"{what}, not banned",
                    f"{detail}; fail2ban did not ban it (findtime/maxretry too loose, or the "
                    "jail does not see these lines)",
                    f"ban it now: `fail2ban-client set sshd banip {src.address}` on {host}; "
                    "check base_fail2ban_maxretry / base_fail2ban_findtime",
                )
            )
    return out
