"""What the base role promises (roles/base/README.md), checked on the host itself."""

from __future__ import annotations

ROLE = "base"


def test_deploy_user_has_sudo(host, hostvars):
    user = host.user(hostvars["base_deploy_user"])
    assert user.exists
    assert "sudo" in user.groups
    assert host.file(f"{user.home}/.ssh").mode == 0o700
    sudoers = host.file(f"/etc/sudoers.d/{user.name}")
    assert sudoers.mode == 0o440 and sudoers.user == "root"
    assert host.run("visudo -c").rc == 0


def test_base_packages_installed(host, hostvars):
    for name in hostvars["base_packages"]:
        assert host.package(name).is_installed, name


def test_timezone(host, hostvars):
    tz = hostvars["base_timezone"]
    assert host.file("/etc/timezone").content_string.strip() == tz
    assert host.check_output("readlink /etc/localtime") == f"/usr/share/zoneinfo/{tz}"


def test_sshd_hardened(host, hostvars):
    effective = host.check_output("sshd -T")
    settings = dict(line.split(" ", 1) for line in effective.splitlines() if " " in line)
    assert settings["passwordauthentication"] == "no"
    assert settings["kbdinteractiveauthentication"] == "no"
    assert settings["permitemptypasswords"] == "no"
    assert settings["permitrootlogin"] in ("prohibit-password", "without-password", "no")
    assert settings["permitrootlogin"] != "yes"
    assert host.service("ssh").is_running and host.service("ssh").is_enabled


def test_fail2ban_guards_sshd(host):
    assert host.service("fail2ban").is_running
    assert host.service("fail2ban").is_enabled
    status = host.check_output("fail2ban-client status sshd")
    assert "Currently banned" in status


def test_cron_running(host):
    assert host.service("cron").is_running


def test_security_updates_are_unattended(host, hostvars):
    periodic = host.file("/etc/apt/apt.conf.d/20auto-upgrades").content_string
    on = "1" if hostvars["base_unattended_upgrades"] else "0"
    assert f'APT::Periodic::Unattended-Upgrade "{on}";' in periodic
    if hostvars["base_unattended_upgrades"]:
        assert host.package("unattended-upgrades").is_installed
        config = host.check_output("apt-config dump Unattended-Upgrade")
        reboot = "true" if hostvars["base_unattended_reboot"] else "false"
        assert f'Unattended-Upgrade::Automatic-Reboot "{reboot}";' in config
        # Debian's own origins (the release's security updates) are still the ones used.
        assert "-security" in config or "Debian-Security" in config
