"""Declared variables (opskit/core/schema.py): the format, the checks, and the real roles'
schemas refusing bad values at load, before anything connects (exit 2)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from opskit.core.errors import ConfigError
from opskit.core.inventory import load_inventory
from opskit.core.roles import REPO, available_roles, core_variables
from opskit.core.schema import (
    Invalid,
    check,
    describe,
    infer_variables,
    load_schema,
    parse_spec,
    short_type,
)
from opskit.core.secrets import Secret


def spec(raw):
    return parse_spec(raw, "x")


@pytest.mark.parametrize(
    ("raw", "good", "bad", "message"),
    [
        ("str", "a", 1, "expected text, got 1"),
        ({"type": "int", "min": 1, "max": 9}, 9, 10, "expected a whole number 1-9, got 10"),
        ("int", 3, True, "expected a whole number, got True"),
        ("int", 3, 2.5, "got 2.5"),
        ({"type": "number", "above": 0}, 0.5, 0, "expected a number > 0, got 0"),
        ("bool", False, "no", "expected true or false, got 'no'"),
        ({"choices": [13, 15]}, 15, "15", "expected one of 13, 15, got '15'"),
        ({"choices": ["fork", "cluster"]}, "fork", "frok", "(did you mean 'fork'?)"),
        ("cron", "*/5 * * * *", "61 * * * *", "minute '61' is out of range 0-59"),
        ("cron", "@daily", "* * * *", "expected 5 fields, got 4"),
        ("timezone", "Europe/Berlin", "Europe/Berln", "(did you mean 'Europe/Berlin'?)"),
        ("port", 443, 0, "expected a TCP port number 1-65535, got 0"),
        ("port", 443, "443", "got '443'"),
        ("path", "/var/x", "var/x", "expected an absolute path"),
        ({"type": "path", "absolute": False}, "x.pem", "", "expected a file path"),
        ("url", "https://a.example/x", "ftp://a.example", "expected an http(s) URL"),
        ({"type": "url", "schemes": ["https"]}, "https://a", "http://a", "an https URL"),
        ("duration", "10m", "10 minutes", "expected a duration"),
        ("duration", 600, -1, "expected a duration"),
        ("size", "1g", "1 GB", "expected a size"),
        ("host", "logs5.papertrailapp.com", "a b", "expected a host name or IP address"),
        ("host", "::1", "-bad-.example", "expected a host name"),
        ("network", "10.0.0.0/24", "10.0.0.0/99", "expected an IP network"),
        ("email", "ops@example.com", "ops@", "expected an e-mail address"),
        ({"type": "list of port", "min_items": 1}, [22], [], "expected a list (not empty)"),
        ("list of port", [22], [22, "x"], "[1]: expected a TCP port"),
        (
            {"type": "mapping", "keys": {"type": "str", "pattern": "[A-Z]+"}, "values": "int"},
            {"A": 1},
            {"a": 1},
            ".a: not an allowed key: expected text matching [A-Z]+, got 'a'",
        ),
        ({"type": "mapping", "values": "int"}, {"A": 1}, {"A": "1"}, ".A: expected a whole"),
        (
            {"type": "mapping", "fields": {"path": {"type": "path", "required": True}}},
            {"path": "/x"},
            {"pth": "/x"},
            ".pth: unknown field (did you mean 'path'?) (fields: path)",
        ),
        (
            {"type": "mapping", "fields": {"path": {"type": "path", "required": True}}},
            {"path": "/x"},
            {},
            "missing field 'path'",
        ),
        (
            {"one_of": [{"type": "int", "min": 1}, {"choices": ["max"]}]},
            "max",
            0,
            "expected a whole number >= 1 or one of max, got 0",
        ),
        ({"type": "str", "pattern": "[a-z]+", "what": "a name"}, "ab", "A", "'A' is not a name"),
        ({"type": "url", "empty": True}, "", "x", "expected an http(s) URL"),
        ({"type": "url", "nullable": True}, None, "", "expected an http(s) URL"),
        ("str", "", None, "expected text, got null"),
    ],
)
def test_each_type_accepts_and_refuses(raw, good, bad, message):
    s = spec(raw)
    check(s, good)
    with pytest.raises(Invalid) as info:
        check(s, bad)
    assert message in str(info.value)


def test_a_secret_value_is_checked_but_never_shown():
    s = spec({"type": "url", "secret": True})
    check(s, Secret("https://hooks.example/T1/s3cr3t"))
    with pytest.raises(Invalid) as info:
        check(s, Secret("not-a-url-s3cr3t"))
    assert "the secret value" in str(info.value) and "s3cr3t" not in str(info.value)
    with pytest.raises(Invalid, match="must be a secret reference") as info:
        check(s, "https://hooks.example/T1/s3cr3t")
    assert "s3cr3t" not in str(info.value)
    for kind, value in (
        ("cron", "s3cr3t * * *"),
        ("timezone", "Europe/s3cr3t"),
        ("port", "s3cr3t"),
    ):
        with pytest.raises(Invalid) as info:
            check(spec(kind), Secret(value))
        assert "s3cr3t" not in str(info.value) and "the secret value" in str(info.value)
    with pytest.raises(Invalid) as info:
        check(spec({"choices": ["s3cr3t1"]}), Secret("s3cr3t2"))
    assert "s3cr3t2" not in str(info.value) and "did you mean" not in str(info.value)


def test_descriptions_for_messages_and_tables():
    assert describe(spec({"type": "list of network"})).startswith("a list of: an IP network")
    assert short_type(spec({"type": "int", "min": 1, "max": 64})) == "int 1-64"
    assert short_type(spec({"choices": ["a", "b"]})) == "a \\| b"
    assert short_type(spec({"type": "url", "secret": True, "nullable": True})) == (
        "URL, secret, or null"
    )
    assert short_type(spec({"type": "str", "pattern": "x", "what": "an S3 bucket name"})) == (
        "S3 bucket name"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("x_a: 3\n", r"x_a: expected \{type: ..., default: ..., doc: ...\}"),
        ("x_a: {type: int, default: 3}\n", r"x_a: missing `doc`"),
        ("x_a: {type: int, doc: d}\n", r"x_a: missing `default`"),
        ("x_a: {type: itn, default: 3, doc: d}\n", r"unknown type 'itn' \(did you mean 'int'\?\)"),
        ("x_a: {type: int, default: 3, doc: d, mni: 1}\n", r"unknown key 'mni' \(did you mean"),
        ("x_a: {type: int, min: 5, default: 3, doc: d}\n", r"the default does not fit: expected"),
        ("y_a: {type: int, default: 3, doc: d}\n", r"y_a: variables here start with 'x_'"),
        ("x_a: {type: str, pattern: '[', default: a, doc: d}\n", r"not a regular expression"),
        ("x_a: [\n", r"schema.yml:\d+:\d+: invalid YAML"),
    ],
)
def test_a_bad_declaration_names_the_file_and_variable(tmp_path, text, message):
    path = tmp_path / "schema.yml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        load_schema(path, "x", "x_")
    assert str(path) in str(info.value)


def test_a_required_variable_may_default_to_unset(tmp_path):
    path = tmp_path / "schema.yml"
    path.write_text("x_port: {type: port, required: true, default: null, doc: d}\n")
    assert load_schema(path, "x", "x_")["x_port"].default is None


def test_a_plain_defaults_file_is_typed_after_its_defaults(tmp_path):
    path = tmp_path / "defaults.yml"
    path.write_text("x_n: 1\nx_f: 0.5\nx_s: a\nx_b: true\nx_l: []\nx_m: {}\nx_any: null\n")
    kinds = {n: v.spec.type for n, v in infer_variables(path, "x", "x_").items()}
    assert kinds == {
        "x_n": "int",
        "x_f": "number",
        "x_s": "str",
        "x_b": "bool",
        "x_l": "list",
        "x_m": "mapping",
        "x_any": "any",
    }


def test_every_variable_of_opskit_and_the_roles_is_documented_and_typed():
    variables = {**core_variables()}
    for role in available_roles().values():
        variables.update(role.variables)
    assert len(variables) > 200
    for name, var in variables.items():
        assert var.doc and var.spec.type != "any", name


# --- the real roles at load: exit 2, nothing touched ------------------------------------------

GOOD = """
ssh: {known_hosts: known_hosts}
roles: [base]
vars:
  healthcheck_slack_webhook_url: {secret: HOOK}
groups:
  web:
    roles: [app, nginx, healthcheck]
    hosts: {web1: {address: 10.0.0.11}}
  db:
    roles: [postgresql, backup]
    vars: {backup_s3_bucket: unit-backups}
    hosts: {db1: {address: 10.0.0.21}}
"""
ENV = {"HOOK": "https://hooks.example/T1/B1/x"}


def test_the_good_inventory_loads_and_builds(tmp_path):
    path = tmp_path / "inv.yml"
    path.write_text(GOOD)
    inv = load_inventory(path, environ=ENV)
    assert [h.roles for h in inv.hosts] == [
        ("base", "app", "nginx", "healthcheck"),
        ("base", "postgresql", "backup"),
    ]


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            "vars: {backup_s3_bucket: unit-backups}",
            'vars: {backup_s3_bucket: unit-backups, backup_schedule: "61 */6 * * *"}',
            "groups.db.vars.backup_schedule: cron schedule '61 */6 * * *': minute '61' is out "
            "of range 0-59",
        ),
        (
            "  healthcheck_slack_webhook_url: {secret: HOOK}",
            "  healthcheck_slack_webhook_url: {secret: HOOK}\n  base_timezone: Europe/Berln",
            "base_timezone: unknown time zone 'Europe/Berln' (did you mean 'Europe/Berlin'?)",
        ),
        (
            "web1: {address: 10.0.0.11}",
            "web1: {address: 10.0.0.11, vars: {app_port: abc}}",
            "groups.web.hosts.web1.vars.app_port: expected a TCP port number 1-65535, got 'abc'",
        ),
        (
            "web1: {address: 10.0.0.11}",
            "web1: {address: 10.0.0.11, vars: {app_shared_paths: [uploads/, ../x]}}",
            "groups.web.hosts.web1.vars.app_shared_paths[1]: '../x' is not a relative path "
            "without '..' (`dir/` for a directory, else a file)",
        ),
        (
            "web1: {address: 10.0.0.11}",
            "web1: {address: 10.0.0.11, vars: {app_shared_paths: [uploads/, .env, uploads]}}",
            "groups.web.hosts.web1: role app: app_shared_paths[2]: 'uploads' is given twice "
            "(as 'uploads/')",
        ),
        (
            "  healthcheck_slack_webhook_url: {secret: HOOK}",
            "  healthcheck_slack_webhook_url: {secret: HOOK}\n  healthcheck_checks: [htp]",
            "vars.healthcheck_checks[0]: expected one of http, database, disk, memory, cpu, "
            "pm2, error_rate, p95, got 'htp' (did you mean 'http'?)",
        ),
        (
            "vars: {backup_s3_bucket: unit-backups}",
            "vars: {}",
            "groups.db.hosts.db1: backup_s3_bucket: required by role backup (The S3 bucket the "
            "backups go to); set it in the inventory",
        ),
        (
            "vars: {backup_s3_bucket: unit-backups}",
            "vars: {backup_s3_bucket: unit-backups, backup_app_stop_command: stop}",
            "groups.db.hosts.db1: role backup: backup_app_stop_command and "
            "backup_app_start_command: set both or neither",
        ),
    ],
)
def test_bad_values_exit_2_in_provision_before_any_host_is_touched(tmp_path, old, new, message):
    """`inv provision` refuses them while loading the inventory: exit 2, and no host is even
    connected to (the hosts' addresses are not reachable from here)."""
    assert old in GOOD
    path = tmp_path / "inv.yml"
    path.write_text(GOOD.replace(old, new))
    with pytest.raises(ConfigError) as info:
        load_inventory(path, environ=ENV)
    assert str(info.value) == f"{path}: {message}" or message in str(info.value)
    assert str(info.value).startswith(f"{path}: ")
    proc = subprocess.run(
        [sys.executable, "-m", "invoke", "provision", "-i", str(path), "--check"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **ENV},
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr and proc.stdout == ""
    assert "Traceback" not in proc.stderr
