"""OPSKIT_ROLES_PATH adds roles (and their templates) from trees laid out like the repo; such a
role declares its variables like the repo's own (or, plainly, in a defaults.yml)."""

from __future__ import annotations

import pytest

from opskit.core.engine import converge
from opskit.core.errors import ConfigError
from opskit.core.inventory import load_inventory
from opskit.core.render import render
from opskit.core.roles import REPO, available_roles, build_resources
from tests.fakes import LocalRemote


def make_tree(root, role="extra"):
    (root / "roles" / role).mkdir(parents=True)
    (root / "roles" / role / "role.py").write_text("def resources(v):\n    return []\n")
    (root / "roles" / role / "defaults.yml").write_text(f"{role}_greeting: hello\n")
    (root / "templates" / role).mkdir(parents=True)
    (root / "templates" / role / "x.j2").write_text("{{ " + role + "_greeting }}\n")


def test_unset_means_the_repo_roles_only(monkeypatch):
    monkeypatch.delenv("OPSKIT_ROLES_PATH", raising=False)
    assert "extra" not in available_roles() and "base" in available_roles()


def test_extra_tree_adds_roles_and_templates(tmp_path, monkeypatch):
    make_tree(tmp_path)
    monkeypatch.setenv("OPSKIT_ROLES_PATH", str(tmp_path))
    roles = available_roles()
    assert next(iter(roles)) == "base" and roles["extra"].defaults == {"extra_greeting": "hello"}
    assert render("extra/x.j2", {"extra_greeting": "hi"}) == "hi\n"


def test_a_role_defined_twice_is_refused(tmp_path, monkeypatch):
    make_tree(tmp_path, role="base")
    monkeypatch.setenv("OPSKIT_ROLES_PATH", str(tmp_path))
    with pytest.raises(ConfigError, match="role 'base' is also defined in"):
        available_roles()


def test_a_missing_tree_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("OPSKIT_ROLES_PATH", str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match="no such roles directory"):
        available_roles()


# --- a role of one's own, outside the repo ----------------------------------------------------

OWN_SCHEMA = """
motd_text:
  type: str
  default: hello
  doc: The message of the day.
motd_dir:
  type: path
  default: /etc/motd.d
  doc: Where the message goes.
motd_mode:
  choices: ["0644", "0640"]
  default: "0644"
  doc: Its mode.
motd_schedule:
  type: cron
  default: "@daily"
  doc: When the refresh job runs.
"""
OWN_ROLE = """
from opskit.resources import CronEntry, Directory, File, Template


def resources(v):
    cron = CronEntry("motd", v["motd_schedule"], "/bin/true", header=None)
    return [
        Directory(v["motd_dir"], 0o755),
        Template(f"{v['motd_dir']}/motd", "motd/motd.j2", v, mode=int(v["motd_mode"], 8)),
        File(f"{v['motd_dir']}/cron", cron.content),
    ]
"""
OWN_INVENTORY = """
ssh: {known_hosts: known_hosts}
roles: []
groups:
  shells:
    roles: [motd]
    vars: {motd_dir: %s%s}
    hosts: {h1: {address: 127.0.0.1}}
"""


def own_tree(root):
    (root / "roles" / "motd").mkdir(parents=True)
    (root / "roles" / "motd" / "schema.yml").write_text(OWN_SCHEMA)
    (root / "roles" / "motd" / "role.py").write_text(OWN_ROLE)
    (root / "templates" / "motd").mkdir(parents=True)
    (root / "templates" / "motd" / "motd.j2").write_text("{{ motd_text }} from {{ motd_dir }}\n")


def test_an_own_role_loads_validates_and_converges(tmp_path, monkeypatch):
    """A role written outside the repo (schema.yml, role.py using only opskit.resources, a
    template), found through OPSKIT_ROLES_PATH: its variables are checked at load like the
    repo's roles', and it converges (here with LocalRemote: the engine's real shell)."""
    own_tree(tmp_path / "tree")
    monkeypatch.setenv("OPSKIT_ROLES_PATH", str(tmp_path / "tree"))
    out = tmp_path / "out"

    def inventory(extra=""):
        path = tmp_path / "inv.yml"
        path.write_text(OWN_INVENTORY % (out, extra))
        return load_inventory(path)

    host = inventory(", motd_text: hi, motd_mode: '0640'").hosts[0]
    assert host.roles == ("motd",) and host.role_sources == {"motd": "groups.shells.roles"}
    assert host.vars["motd_schedule"] == "@daily"
    for extra, message in (
        (", motd_mode: '0600'", r"vars.motd_mode: expected one of 0644, 0640, got '0600'"),
        (", motd_schedule: '* * *'", r"vars.motd_schedule: cron schedule '\* \* \*': expected 5"),
        (
            ", motd_txt: hi",
            r"vars.motd_txt: unknown variable \(did you mean 'motd_text'\?\): role "
            r"motd declares that one in .*/tree/roles/motd/schema.yml; .*docs/writing-a-role.md",
        ),
        (", motd_dir: relative", r"vars.motd_dir: expected an absolute path, got 'relative'"),
    ):
        with pytest.raises(ConfigError, match=message):
            inventory(extra)

    remote = LocalRemote(host=host)
    resources = build_resources(available_roles(), host.roles, host.vars)
    first = converge(remote, resources)
    assert [c.changed for c in first] == [True, True, True]
    assert (out / "motd").read_text() == f"hi from {out}\n"
    assert oct((out / "motd").stat().st_mode & 0o777) == "0o640"
    assert (out / "cron").read_text() == "@daily root /bin/true\n"
    again = converge(remote, resources)
    assert not any(c.changed for c in again) and remote.commands == 3  # 2 + a one-command no-op


def test_an_unknown_role_names_the_folders_searched(tmp_path, monkeypatch):
    own_tree(tmp_path / "tree")
    monkeypatch.setenv("OPSKIT_ROLES_PATH", str(tmp_path / "tree"))
    path = tmp_path / "inv.yml"
    path.write_text((OWN_INVENTORY % (tmp_path, "")).replace("[motd]", "[motdd]"))
    with pytest.raises(ConfigError) as info:
        load_inventory(path)
    msg = str(info.value)
    assert "groups.shells.roles: unknown role 'motdd' (did you mean 'motd'?)" in msg
    assert f"{REPO / 'roles'}, {tmp_path / 'tree' / 'roles'}" in msg
    assert f"$OPSKIT_ROLES_PATH={tmp_path / 'tree'}" in msg


def test_both_a_schema_and_a_defaults_file_is_refused(tmp_path, monkeypatch):
    own_tree(tmp_path)
    (tmp_path / "roles" / "motd" / "defaults.yml").write_text("motd_text: x\n")
    monkeypatch.setenv("OPSKIT_ROLES_PATH", str(tmp_path))
    with pytest.raises(ConfigError, match=r"both schema\.yml and defaults\.yml"):
        available_roles()
