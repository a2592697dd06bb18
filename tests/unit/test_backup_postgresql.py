"""The postgresql role (the database the backups are made of): pure parts, no SSH."""

from __future__ import annotations

import pytest

from opskit.core.engine import probe_script, split_sections
from opskit.core.errors import ConfigError
from opskit.core.roles import available_roles, check_host_vars
from opskit.core.secrets import Secret
from tests.fakes import LocalRemote

# Made by PostgreSQL 15 itself: CREATE ROLE vectortest PASSWORD 'correct horse'
PG_VERIFIER = (
    "SCRAM-SHA-256$4096:Jgt1xPrQUM+3Iqv0RhSLVg==$ocKQj5qx7jPTofxQYrFQ10tMYy7RbT027pmm4HPw6mE="
    ":kMV8noA4T+ALUEHbCvVkfDMLsCCy+E3gBxKHKz03fW4="
)


def pg():
    return available_roles()["postgresql"].module()


def variables(**extra):
    v = dict(available_roles()["postgresql"].defaults)
    v.update(extra)
    return v


def test_scram_matches_a_verifier_made_by_postgresql():
    assert pg().scram_matches(PG_VERIFIER, "correct horse")
    assert not pg().scram_matches(PG_VERIFIER, "correct horse ")
    assert not pg().scram_matches("md5abc", "correct horse")


def test_verifier_made_here_is_one_postgresql_accepts_the_shape_of():
    v = pg().scram_verifier("pw")
    assert v.startswith("SCRAM-SHA-256$4096:") and pg().scram_matches(v, "pw")
    assert pg().scram_verifier("pw") != v  # a fresh salt each time


def test_role_plan():
    password = Secret("correct horse")
    role = pg().PgRole("app", password)
    assert role.plan("", frozenset()).reasons == ("create",)
    assert role.plan(f"t|{PG_VERIFIER}\n", frozenset()).reasons == ()
    assert role.plan(f"f|{PG_VERIFIER}\n", frozenset()).reasons == ("login",)
    assert role.plan("t|SCRAM-SHA-256$4096:AAAA$BBBB:CCCC\n", frozenset()).reasons == ("password",)
    assert role.plan("@down\n", frozenset()).reasons[0].startswith("ensure")
    script = role.script(role.plan("", frozenset()))
    assert "correct horse" not in script and "PASSWORD 'SCRAM-SHA-256$4096:" in script


def test_cluster_plan_reloads_on_config_change_and_restarts_when_pending():
    cluster = pg().PgCluster(15, "main", watch=("file:/etc/x",))
    assert cluster.plan("active\n0\n", frozenset()).reasons == ()
    assert cluster.plan("active\n0\n", frozenset({"file:/etc/x"})).reasons[0].startswith("reload")
    assert cluster.plan("active\n2\n", frozenset()).reasons[0].startswith("restart")
    assert cluster.plan("inactive\n@down\n", frozenset()).reasons[0].startswith("start")
    script = cluster.script(cluster.plan("active\n0\n", frozenset({"file:/etc/x"})))
    assert "systemctl reload -- postgresql@15-main" in script and "pending_restart" in script


def test_database_and_extension_plans():
    db = pg().PgDatabase("app", "app")
    assert db.plan("\n", frozenset()).reasons == ("create (owner app)",)
    assert db.plan("postgres\n", frozenset()).reasons == ("owner postgres -> app",)
    assert db.plan("app\n", frozenset()).reasons == ()
    ext = pg().PgExtension("app", "pg_stat_statements")
    assert ext.plan("1.10\n", frozenset()).reasons == ()
    assert ext.plan("@nodb\n", frozenset()).reasons == ("create",)
    assert ext.plan("\n", frozenset()).reasons == ("create",)


def test_conf_file_quotes_values():
    res = {
        r.id: r
        for r in pg().resources(variables(postgresql_settings={"work_mem": "8MB", "jit": False}))
    }
    conf = res["file:/etc/postgresql/15/main/conf.d/opskit.conf"]
    assert "listen_addresses = 'localhost'\n" in conf.content
    assert "shared_preload_libraries = 'pg_stat_statements'\n" in conf.content
    assert "work_mem = '8MB'\njit = off\n" in conf.content
    assert conf.check_after and "-C max_connections" in conf.check_after
    hba = res["file:/etc/postgresql/15/main/pg_hba.conf"]
    assert "10.0.0.0/24" not in hba.content and hba.mode == 0o640


def test_app_networks_in_pg_hba():
    res = {r.id: r for r in pg().resources(variables(postgresql_app_networks=["10.0.0.0/24"]))}
    line = [
        x
        for x in res["file:/etc/postgresql/15/main/pg_hba.conf"].content.splitlines()
        if "10.0.0.0/24" in x
    ]
    assert line == ["host    app             app             10.0.0.0/24             scram-sha-256"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"postgresql_app_database": "App-DB"}, "postgresql_app_database"),
        ({"postgresql_app_networks": ["10.0.0.0/99"]}, "postgresql_app_networks"),
        ({"postgresql_settings": {"bad name": 1}}, "postgresql_settings"),
        ({"postgresql_max_connections": 0}, "postgresql_max_connections"),
        ({"postgresql_app_password": ""}, "postgresql_app_password"),
    ],
)
def test_bad_variables_are_refused(extra, message):
    v = variables(**extra)
    with pytest.raises(ConfigError, match=message):
        check_host_vars(available_roles(), ["postgresql"], v)  # as the inventory's load does
        pg().resources(v)


def test_probes_are_read_only_and_survive_a_missing_server(tmp_path):
    """The probes run under the engine's `exec 2>&1` without psql or a server: they must still
    print one answer each (here: the server is not there)."""
    resources = pg().resources(variables())[4:]  # the PostgreSQL resources
    out = LocalRemote().run(probe_script(resources)).stdout
    sections = split_sections(out, len(resources))
    assert all("@down" in s or "@nodb" in s for s in sections), sections
