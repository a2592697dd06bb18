"""base: deploy user and sudo, base packages, timezone, SSH hardening, fail2ban for sshd."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from opskit.core.errors import ConnectError, OpsError
from opskit.core.remote import Remote
from opskit.core.result import Change
from opskit.resources import (
    Directory,
    File,
    Packages,
    Resource,
    Service,
    Symlink,
    Template,
    User,
)

SSHD_DROPIN = "/etc/ssh/sshd_config.d/10-opskit-hardening.conf"
JAIL = "/etc/fail2ban/jail.d/opskit-sshd.local"
# apt's periodic runs (apt-daily-upgrade.timer reads it) and opskit's unattended-upgrades settings
AUTO_UPGRADES = "/etc/apt/apt.conf.d/20auto-upgrades"
UNATTENDED = "/etc/apt/apt.conf.d/52opskit-unattended-upgrades"


def unattended_upgrades(v: Mapping[str, Any]) -> list[Resource]:
    """Daily security updates (Debian's unattended-upgrades with its default origins)."""
    on = "1" if v["base_unattended_upgrades"] else "0"
    out: list[Resource] = []
    if v["base_unattended_upgrades"]:
        out.append(Packages(("unattended-upgrades",)))
    out.append(
        Template(AUTO_UPGRADES, "base/20auto-upgrades.j2", {**v, "base_periodic": on}, mode=0o644)
    )
    if v["base_unattended_upgrades"]:
        out.append(
            Template(
                UNATTENDED,
                "base/52opskit-unattended-upgrades.j2",
                v,
                validate="apt-config -c %s dump >/dev/null",
            )
        )
    return out


def resources(v: Mapping[str, Any]) -> list[Resource]:
    """The desired state of roles/base/README.md for one host's variables."""
    user = v["base_deploy_user"]
    tz = v["base_timezone"]  # a zone of the zone database: checked at load (schema.yml)
    out: list[Resource] = [
        Packages(tuple(v["base_packages"])),
        User(user, groups=tuple(v["base_deploy_groups"])),
        Directory(f"/home/{user}/.ssh", 0o700, user, user),
    ]
    if v["base_deploy_authorized_keys"]:
        keys = "".join(f"{k.strip()}\n" for k in v["base_deploy_authorized_keys"])
        out.append(File(f"/home/{user}/.ssh/authorized_keys", keys, 0o600, user, user))
    out += [
        Template(
            f"/etc/sudoers.d/{user}", "base/sudoers.j2", v, mode=0o440, validate="visudo -cqf %s"
        ),
        File("/etc/timezone", f"{tz}\n"),
        Symlink("/etc/localtime", f"/usr/share/zoneinfo/{tz}"),
        Template(SSHD_DROPIN, "base/10-opskit-hardening.conf.j2", v, check_after="sshd -t"),
        Service("ssh", reload_on=(f"file:{SSHD_DROPIN}",)),
        Template(JAIL, "base/opskit-sshd.local.j2", v, check_after="fail2ban-client -t"),
        Service("fail2ban", restart_on=(f"file:{JAIL}",)),
        Service("cron"),
        *unattended_upgrades(v),
    ]
    return out


def after_converge(remote: Remote, changes: Sequence[Change], ctx: Any) -> None:
    """Prove that a fresh SSH connection still works after sshd changed; else put it back."""
    if not any(c.changed and c.resource == f"file:{SSHD_DROPIN}" for c in changes):
        return
    try:
        fresh = ctx.reconnect(remote.host)
        try:
            fresh.run("true", what="login check")
        finally:
            fresh.close()
    except (ConnectError, OpsError) as exc:
        remote.run(File.restore_script(SSHD_DROPIN) + "\nsystemctl reload ssh", what="revert sshd")
        raise OpsError(
            f"a fresh SSH login failed after the SSH hardening ({exc}); the previous sshd "
            "configuration was put back and sshd reloaded over the still-open connection"
        ) from None
    ctx.notes.append("ssh: a fresh login works after the sshd change")
