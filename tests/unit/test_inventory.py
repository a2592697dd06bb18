from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from opskit.core.errors import ConfigError
from opskit.core.inventory import IMPLICIT, describe_roles, load_inventory
from opskit.core.roles import Role, available_roles, build_resources, read_role
from opskit.core.secrets import Secret, redact

SCHEMAS = {
    "base": """
base_timezone: {type: timezone, default: UTC, doc: the zone}
base_packages: {type: list of str, default: [sudo], doc: packages}
""",
    "app": """
app_port: {type: port, default: 3000, doc: the port}
app_secret: {type: any, default: "", doc: "anything (a secret too)"}
""",
    "vault": """
vault_token: {type: str, secret: true, required: true, default: "", doc: the token}
vault_mode: {choices: [sealed, open], default: sealed, doc: the mode}
""",
}
ROLE_PY = "def resources(v):\n    return []\n"
_ROOT = tempfile.TemporaryDirectory(prefix="opskit-test-roles-")


def make_roles(root: Path, schemas: dict[str, str], role_py: str = ROLE_PY) -> dict[str, Role]:
    out = {}
    for name, schema in schemas.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        (root / name / "schema.yml").write_text(schema)
        (root / name / "role.py").write_text(role_py)
        out[name] = read_role(root / name)
    return out


ROLES = make_roles(Path(_ROOT.name), SCHEMAS)

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
            r"vars.base_timezon: unknown variable \(did you mean 'base_timezone'\?\): role base "
            r"declares that one in .*/base/schema.yml; a variable is declared by opskit "
            r"\(opskit/core/defaults/\) or by a role \(roles/<role>/schema.yml; see "
            r"docs/writing-a-role.md\)",
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
    """An environment in which every secret the inventories name is set (URLs to a URL)."""

    def __contains__(self, key: object) -> bool:
        return True

    def __getitem__(self, key: str) -> str:
        return "https://hooks.example/x" if key.endswith(("URL", "DSN")) else "x"


def test_real_inventories_load(tmp_path):
    """Both inventories validate, and every host's resources build with handler references
    that resolve (the CA files they name exist only on a lab machine: a stand-in here)."""
    pem = tmp_path / "ca.pem"
    pem.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    roles = available_roles()
    for name in ("lab.yml", "production.example.yml"):
        path = Path(__file__).parents[2] / "inventories" / name
        inv = load_inventory(path, environ=_AnySecret(), build=False)
        assert inv.hosts
        for host in inv.hosts:
            v = dict(host.vars)
            for key in ("certbot_acme_ca_file", "papertrail_ca_file"):
                if v.get(key):
                    v[key] = str(pem)
            assert build_resources(roles, host.roles, v), host.name


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


# --- the schema, checked at load --------------------------------------------------------------

ONE_HOST = "ssh: {known_hosts: k}\n%s\ngroups: {web: {roles: [%s], hosts: {w1: {address: x%s}}}}"


def one_host(top: str = "", roles: str = "app", host: str = "") -> str:
    return ONE_HOST % (top, roles, host)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            one_host(host=", vars: {app_port: abc}"),
            r"groups.web.hosts.w1.vars.app_port: expected a TCP port number 1-65535, got 'abc'$",
        ),
        (one_host("vars: {app_port: true}"), r"vars.app_port: expected a TCP port .*, got True"),
        (
            one_host("vars: {base_timezone: Europe/Berln}"),
            r"vars.base_timezone: unknown time zone 'Europe/Berln' \(did you mean "
            r"'Europe/Berlin'\?\)",
        ),
        (
            one_host("vars: {base_packages: [sudo, 3]}"),
            r"vars.base_packages\[1\]: expected text, got 3",
        ),
        (
            one_host("vars: {vault_mode: seald}", roles="vault"),
            r"vars.vault_mode: expected one of sealed, open, got 'seald' "
            r"\(did you mean 'sealed'\?\)",
        ),
        (
            one_host("vars: {vault_token: plain-t0ken}", roles="vault"),
            r"vars.vault_token: must be a secret reference \{secret: NAME\}",
        ),
        (
            one_host(roles="vault"),
            r"groups.web.hosts.w1: vault_token: required by role vault \(the token\); "
            r"set it as \{secret: NAME\} in the inventory",
        ),
        (
            one_host("vars: {vault_token: ''}", roles="vault"),
            r"vars.vault_token: required by role vault",
        ),
        (
            one_host("vars: {vaultt_token: x}", roles="vault"),
            r"unknown variable \(did you mean 'vault_token'\?\): role vault declares",
        ),
        (
            one_host("vars: {mine_colour: blue}"),
            r"vars.mine_colour: unknown variable: no role 'mine' is known \(roles are the "
            r"folders with a role.py in: .*OPSKIT_ROLES_PATH",
        ),
        (
            one_host(roles="nope"),
            r"groups.web.roles: unknown role 'nope'; roles are the folders with a role.py in: "
            r".*/roles.* \(\$OPSKIT_ROLES_PATH",
        ),
    ],
)
def test_values_are_checked_against_the_schema_at_load(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message) as info:
        load(tmp_path, text, environ={})
    assert str(info.value).startswith(f"{tmp_path / 'inv.yml'}: ")
    assert "plain-t0ken" not in str(info.value)


def test_a_required_secret_is_accepted_and_masked(tmp_path):
    host = load(
        tmp_path,
        one_host("vars: {vault_token: {secret: VAULT_TOKEN}}", roles="vault"),
        environ={"VAULT_TOKEN": "t0ken"},
    ).hosts[0]
    assert isinstance(host.vars["vault_token"], Secret) and host.vars["vault_mode"] == "sealed"


def test_roles_say_where_they_came_from(tmp_path):
    implicit = load(tmp_path, one_host()).hosts[0]
    assert implicit.roles == ("base", "app")
    assert implicit.role_sources == {"base": IMPLICIT, "app": "groups.web.roles"}
    assert describe_roles(implicit) == (
        "base (default: the inventory sets no top-level roles), app (groups.web.roles)"
    )
    explicit = load(tmp_path, one_host("roles: [base]")).hosts[0]
    assert explicit.role_sources == {"base": "roles", "app": "groups.web.roles"}
    none = load(tmp_path, one_host("roles: []")).hosts[0]
    assert none.roles == ("app",)
    with pytest.raises(ConfigError, match=r"roles: not set, so every host gets base, which is no"):
        load_inventory(write(tmp_path, one_host()), roles={"app": ROLES["app"]})


HANDLER_ROLE = """
from opskit.resources import File, Service, Template

def resources(v):
    return [File("/etc/demo.conf", "x"), Service("demo", reload_on=(v["demo_watch"],))]
"""


@pytest.mark.parametrize(
    ("watch", "message"),
    [
        (
            "file:/etc/demo.con",
            r"w1: role demo: service:demo reload_on names 'file:/etc/demo.con',"
            r" which is no resource of this host \(did you mean 'file:/etc/demo.conf'\?\)",
        ),
        ("tpl", r"w1: role demo: templates/demo/none.j2: template not found"),
        ("boom", r"w1: role demo: demo_watch: boom"),
        (
            "key",
            r"w1: role demo: reads variable 'demo_missing', which none of the host's roles "
            r"declares \(declare it in roles/demo/schema.yml\)",
        ),
    ],
)
def test_resources_are_built_at_load_with_their_handler_references(tmp_path, watch, message):
    role_py = HANDLER_ROLE.replace(
        "def resources(v):",
        "from opskit.core.errors import ConfigError\n\ndef resources(v):\n"
        "    if v['demo_watch'] == 'boom':\n"
        "        raise ConfigError('demo_watch: boom')\n"
        "    if v['demo_watch'] == 'key':\n"
        "        v['demo_missing']\n"
        "    if v['demo_watch'] == 'tpl':\n"
        "        Template('/etc/demo.conf', 'demo/none.j2', v)",
    )
    roles = make_roles(
        tmp_path / "roles",
        {"demo": "demo_watch: {type: str, default: 'file:/etc/demo.conf', doc: watched}\n"},
        role_py,
    )
    text = one_host(f"roles: []\nvars: {{demo_watch: '{watch}'}}", roles="demo")
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=message):
        load_inventory(path, roles=roles)
    assert load_inventory(path, roles=roles, build=False).hosts[0].roles == ("demo",)
    good = write(tmp_path, one_host("roles: []", roles="demo"), "good.yml")
    assert load_inventory(good, roles=roles).hosts[0].vars["demo_watch"] == "file:/etc/demo.conf"


# --- what YAML, addresses and key files can get wrong (issue 16) ----------------------------


def test_a_host_listed_twice_in_a_group_is_refused_naming_both_lines(tmp_path):
    """YAML keeps the last of two equal keys: the host would silently move to another address."""
    twice = GOOD.replace(
        "      web2: {address: 10.0.0.12,",
        "      web1: {address: 10.0.0.99}\n      web2: {address: 10.0.0.12,",
    )
    path = write(tmp_path, twice)
    with pytest.raises(ConfigError) as err:
        load_inventory(path, roles=ROLES)
    assert str(err.value) == (
        f"{path}:10:7: invalid YAML: duplicate key 'web1' (first at line 9); YAML would keep "
        "only the last: remove one"
    )
    # Anchors and merges still work; a key a merge brings may be overridden.
    merged = GOOD.replace("vars: {app_port: 3001}", "vars: &v {app_port: 3001}").replace(
        "{address: 10.0.0.21, port: 2222, user: root}",
        "{address: 10.0.0.21, port: 2222, user: root, vars: {<<: *v, app_port: 3002}}",
    )
    assert load(tmp_path, merged).host("db1").vars["app_port"] == 3002


@pytest.mark.parametrize("address", ["10.213.0.300", "10.0.0", "1.2.3.4.5", "fe80::zz"])
def test_an_address_that_looks_like_an_ip_must_be_one(tmp_path, address):
    path = write(tmp_path, GOOD.replace("10.0.0.11", address))
    with pytest.raises(ConfigError) as err:
        load_inventory(path, roles=ROLES)
    assert str(err.value) == (
        f"{path}: groups.web.hosts.web1.address: not a valid IP address: {address!r}"
    )


def test_a_host_name_address_is_still_accepted(tmp_path):
    assert load(tmp_path, GOOD.replace("10.0.0.11", "web1.example.com")).hosts[0].address == (
        "web1.example.com"
    )


def test_a_missing_or_open_private_key_is_refused_before_any_connection(tmp_path, monkeypatch):
    from opskit.core import runner
    from opskit.core.inventory import check_identity

    key = tmp_path / "id_ed25519"
    path = write(tmp_path, GOOD.replace("ssh: {", f"ssh: {{identity: {key}, "))
    inv = load_inventory(path, roles=ROLES)
    connected = []
    monkeypatch.setattr(runner, "connect", lambda *a, **k: connected.append(a))

    def run():
        runner.run_on_hosts(inv, inv.hosts, lambda remote, ctx: [])

    with pytest.raises(ConfigError) as err:
        run()
    assert str(err.value) == f"{path}: ssh.identity: {key}: no such private key file"
    key.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    key.chmod(0o644)
    with pytest.raises(ConfigError, match=r"permissions 0644 for .* are too open") as err:
        run()
    assert f"chmod 600 {key}" in str(err.value)
    key.chmod(0o640)
    with pytest.raises(ConfigError, match="permissions 0640"):
        check_identity(inv.ssh)
    assert connected == []
    key.chmod(0o600)
    check_identity(inv.ssh)
    run()
    assert len(connected) == len(inv.hosts)
