from __future__ import annotations

import os
from pathlib import Path

import pytest

from opskit.core.errors import ConfigError
from opskit.core.inventory import load_inventory
from opskit.core.roles import Role
from opskit.core.secrets import Secret, redact

ROLES = {
    "base": Role("base", {"base_timezone": "UTC", "base_packages": ["sudo"]}, Path("roles/base")),
    "app": Role("app", {"app_port": 3000, "app_secret": ""}, Path("roles/app")),
}

GOOD = """
ssh: {known_hosts: known_hosts}
vars: {ssh_user: deploy, base_timezone: Europe/Berlin}
groups:
  web:
    roles: [app]
    vars: {app_port: 3001}
    hosts:
      web1: {address: 10.0.0.11}
      web2: {address: 10.0.0.12, vars: {app_port: 4000}}
  db:
    hosts:
      db1: {address: 10.0.0.21, port: 2222, user: root}
"""


def write(tmp_path: Path, text: str, name: str = "inv.yml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def load(tmp_path: Path, text: str, **kw):
    return load_inventory(write(tmp_path, text), roles=ROLES, **kw)


def test_precedence_defaults_all_group_host(tmp_path):
    inv = load(tmp_path, GOOD)
    web1, web2, db1 = inv.hosts
    assert web1.vars["base_packages"] == ["sudo"]  # role default
    assert web1.vars["base_timezone"] == "Europe/Berlin"  # all
    assert web1.vars["app_port"] == 3001  # group
    assert web2.vars["app_port"] == 4000  # host
    assert web1.roles == ("base", "app") and db1.roles == ("base",)
    assert (db1.port, db1.user, web1.user) == (2222, "root", "deploy")
    assert inv.ssh.known_hosts == tmp_path / "known_hosts"


@pytest.mark.parametrize(
    ("patterns", "expected"),
    [
        (None, ["web1", "web2", "db1"]),
        (["web"], ["web1", "web2"]),
        (["db1,web2"], ["web2", "db1"]),
        (["web*"], ["web1", "web2"]),
        (["all"], ["web1", "web2", "db1"]),
    ],
)
def test_select(tmp_path, patterns, expected):
    assert [h.name for h in load(tmp_path, GOOD).select(patterns)] == expected


def test_select_unknown_names_choices(tmp_path):
    with pytest.raises(ConfigError, match=r"'nope' matches no host or group .*known: db, db1"):
        load(tmp_path, GOOD).select(["nope"])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("groups: [\n", r"inv.yml:\d+:\d+: invalid YAML"),
        ("", "the inventory is empty"),
        (
            "ssh: {known_hosts: k}\ngroups: {web: {hosts: {w1: {}}}}",
            r"groups.web.hosts.w1: missing 'address'",
        ),
        (
            "ssh: {known_hosts: k}\ngroups: {web: {hosts: {w1: {address: a b}}}}",
            r"w1.address: expected an IP",
        ),
        (
            "ssh: {known_hosts: k}\nvars: {base_timezon: UTC}\n"
            "groups: {web: {hosts: {w1: {address: x}}}}",
            r"vars.base_timezon: unknown variable \(did you mean 'base_timezone'\?\)",
        ),
        (
            "ssh: {known_hosts: k}\ngroups: {web: {roles: [bsae], hosts: {w1: {address: x}}}}",
            r"groups.web.roles: unknown role 'bsae' \(did you mean 'base'\?\)",
        ),
        (
            "ssh: {known_hosts: k}\nhostz: 1\ngroups: {web: {hosts: {w1: {address: x}}}}",
            r"hostz: unknown key",
        ),
        ("groups: {web: {hosts: {w1: {address: x}}}}", r"ssh: missing 'known_hosts'"),
        (
            "ssh: {known_hosts: k}\ngroups: {web: {hosts: {w1: {address: x, port: 70000}}}}",
            r"w1.port: expected a TCP port",
        ),
        (
            "ssh: {known_hosts: k}\ngroups:\n"
            "  a: {vars: {app_port: 1}, hosts: {w1: {address: x}}}\n"
            "  b: {vars: {app_port: 2}, hosts: {w1: {address: x}}}",
            r"groups.b.vars.app_port: host 'w1' also gets",
        ),
    ],
)
def test_errors_name_file_and_key(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message) as info:
        load(tmp_path, text)
    assert "inv.yml" in str(info.value)


SECRET_INV = """
ssh: {known_hosts: k}
secrets: {file: secrets.env}
vars: {app_secret: {secret: APP_SECRET}}
groups: {web: {roles: [app], hosts: {w1: {address: x}}}}
"""


def test_missing_secret_names_key_and_variable(tmp_path):
    with pytest.raises(
        ConfigError, match=r"inv.yml: vars.app_secret: secret APP_SECRET is not set"
    ):
        load(tmp_path, SECRET_INV.replace("secrets: {file: secrets.env}\n", ""), environ={})


def test_secret_from_environment_is_masked(tmp_path):
    inv = load(
        tmp_path,
        SECRET_INV.replace("secrets: {file: secrets.env}\n", ""),
        environ={"APP_SECRET": "hunter2"},
    )
    value = inv.hosts[0].vars["app_secret"]
    assert isinstance(value, Secret) and value == "hunter2"
    assert "hunter2" not in repr(inv.hosts[0]) and repr(value) == "'***'"
    assert redact("x hunter2 y", inv.hosts[0].secrets) == "x *** y"


def test_secrets_file_refused_unless_0600(tmp_path):
    f = tmp_path / "secrets.env"
    f.write_text("APP_SECRET=hunter2\n")
    os.chmod(f, 0o644)
    with pytest.raises(ConfigError, match=r"mode 0644.*chmod 600") as info:
        load(tmp_path, SECRET_INV, environ={})
    assert "hunter2" not in str(info.value)
    os.chmod(f, 0o600)
    assert load(tmp_path, SECRET_INV, environ={}).hosts[0].vars["app_secret"] == "hunter2"


def test_malformed_secrets_line_does_not_echo_it(tmp_path):
    f = tmp_path / "secrets.env"
    f.write_text("hunter2-without-key\n")
    os.chmod(f, 0o600)
    with pytest.raises(ConfigError, match=r"secrets.env:1: expected KEY=VALUE") as info:
        load(tmp_path, SECRET_INV, environ={})
    assert "hunter2" not in str(info.value)


class _AnySecret(dict):
    """An environment in which every secret the inventories name is set (to "x")."""

    def __contains__(self, key: object) -> bool:
        return True

    def __getitem__(self, key: str) -> str:
        return "x"


def test_real_inventories_load():
    for name in ("lab.yml", "production.example.yml"):
        path = Path(__file__).parents[2] / "inventories" / name
        inv = load_inventory(path, environ=_AnySecret())
        assert inv.hosts


def test_secret_inside_a_mapping_is_resolved_and_redacted(tmp_path):
    text = SECRET_INV.replace("secrets: {file: secrets.env}\n", "").replace(
        "vars: {app_secret: {secret: APP_SECRET}}",
        "vars: {app_secret: {TOKEN: {secret: APP_SECRET}, PLAIN: x}}",
    )
    host = load(tmp_path, text, environ={"APP_SECRET": "hunter2"}).hosts[0]
    assert host.vars["app_secret"] == {"TOKEN": "hunter2", "PLAIN": "x"}
    assert isinstance(host.vars["app_secret"]["TOKEN"], Secret)
    assert host.secrets == ("hunter2",)
    with pytest.raises(ConfigError, match=r"vars.app_secret.TOKEN: secret APP_SECRET is not set"):
        load(tmp_path, text, environ={})
