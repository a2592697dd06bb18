"""What the postgresql role promises (roles/postgresql/README.md), checked on the host itself."""

from __future__ import annotations

from opskit.core.roles import available_roles

ROLE = "postgresql"


def psql(host, sql, database="postgres"):
    return host.check_output(
        f'cd / && runuser -u postgres -- psql -X -A -t -q -d {database} -c "{sql}"'
    )


def version(hostvars):
    """The cluster's major version as the role chose it (from the host's release if unset)."""
    return available_roles()["postgresql"].module().cluster_version(hostvars)


def test_cluster_running_and_enabled(host, hostvars):
    unit = f"postgresql@{version(hostvars)}-{hostvars['postgresql_cluster']}"
    assert host.service(unit).is_running
    assert host.service("postgresql").is_enabled
    assert host.run("runuser -u postgres -- pg_isready -q").rc == 0


def test_settings_in_effect(host, hostvars):
    assert "pg_stat_statements" in psql(host, "SHOW shared_preload_libraries")
    assert psql(host, "SHOW listen_addresses") == hostvars["postgresql_listen_addresses"]
    assert psql(host, "SHOW max_connections") == str(hostvars["postgresql_max_connections"])
    assert psql(host, "SELECT count(*) FROM pg_settings WHERE pending_restart") == "0"
    assert psql(host, "SELECT count(*) FROM pg_file_settings WHERE error IS NOT NULL") == "0"
    conf = host.file(
        f"/etc/postgresql/{version(hostvars)}/{hostvars['postgresql_cluster']}/conf.d/opskit.conf"
    )
    assert conf.user == "postgres" and "Managed by opskit" in conf.content_string


def test_app_role_database_and_extension(host, hostvars):
    user, db = hostvars["postgresql_app_user"], hostvars["postgresql_app_database"]
    assert psql(host, f"SELECT rolcanlogin FROM pg_roles WHERE rolname = '{user}'") == "t"
    assert (
        psql(host, f"SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = '{db}'")
        == user
    )
    for ext in hostvars["postgresql_extensions"]:
        assert psql(host, f"SELECT count(*) FROM pg_extension WHERE extname = '{ext}'", db) == "1"
    assert int(psql(host, "SELECT count(*) FROM pg_stat_statements", db)) >= 0


def test_app_password_is_a_scram_verifier_of_the_inventory_secret(host, hostvars):
    password = hostvars["postgresql_app_password"]
    if password is None:
        return
    verifier = psql(
        host,
        f"SELECT rolpassword FROM pg_authid WHERE rolname = '{hostvars['postgresql_app_user']}'",
    )
    assert verifier.startswith("SCRAM-SHA-256$")
    assert available_roles()["postgresql"].module().scram_matches(verifier, password)


def test_app_networks_in_pg_hba(host, hostvars):
    rules = psql(
        host,
        "SELECT array_to_string(database, ',') || ' ' || array_to_string(user_name, ',') || ' ' "
        "|| address || '/' || netmask || ' ' || auth_method FROM pg_hba_file_rules "
        "WHERE type = 'host' AND error IS NULL",
    )
    for net in hostvars["postgresql_app_networks"]:
        assert f"{hostvars['postgresql_app_database']} {hostvars['postgresql_app_user']} " in rules
        assert net.split("/")[0] in rules
    assert psql(host, "SELECT count(*) FROM pg_hba_file_rules WHERE error IS NOT NULL") == "0"
