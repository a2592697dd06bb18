"""postgresql: the server, the app's database and role, pg_stat_statements (README.md)."""

# No `from __future__ import annotations` here: opskit.core.roles loads role modules without
# registering them in sys.modules, and @dataclass then cannot resolve string annotations.

import base64
import hashlib
import hmac
import os
import re
import shlex
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from opskit.core.secrets import Secret
from opskit.resources import NOTHING, Packages, Plan, Resource, Service, Template

q = shlex.quote
DOWN = "@down"  # a probe's answer when the server does not answer
SCRAM_ITERATIONS = 4096


def psql(sql: str, database: str = "postgres") -> str:
    """Shell that runs `sql` as postgres (unaligned, tuples only); stderr dropped (probes)."""
    return (
        f"env -C / runuser -u postgres -- psql -X -A -t -q -d {q(database)} -c {q(sql)} 2>/dev/null"
    )


def psql_apply(sql: str, database: str = "postgres") -> str:
    """Shell that runs `sql` as postgres from stdin, stopping at the first error."""
    return (
        f"env -C / runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -d {q(database)} "
        f"<<'OPSKIT_SQL'\n{sql}\nOPSKIT_SQL"
    )


def literal(text: str) -> str:
    """An SQL string literal.

    >>> literal("it's")
    "'it''s'"
    """
    return "'" + text.replace("'", "''") + "'"


def conf_value(value: Any) -> str:
    """A postgresql.conf value: numbers as they are, everything else quoted.

    >>> conf_value(100), conf_value("all"), conf_value(True), conf_value("a'b")
    ('100', "'all'", 'on', "'a''b'")
    """
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (int, float)):
        return str(value)
    return literal(str(value))


# --- SCRAM-SHA-256 (RFC 5802/7677), as PostgreSQL stores it ---------------------------------


def _salted(password: str, salt: bytes, iterations: int) -> bytes:
    normalized = unicodedata.normalize("NFKC", password)  # close to SASLprep for most input
    return hashlib.pbkdf2_hmac("sha256", normalized.encode(), salt, iterations)


def scram_verifier(
    password: str, salt: bytes | None = None, iterations: int = SCRAM_ITERATIONS
) -> str:
    """The verifier PostgreSQL keeps in pg_authid.rolpassword for `password`.

    >>> v = scram_verifier("secret", salt=b"0123456789abcdef")
    >>> v.startswith("SCRAM-SHA-256$4096:MDEyMzQ1Njc4OWFiY2RlZg==$")
    True
    >>> scram_matches(v, "secret"), scram_matches(v, "other")
    (True, False)
    """
    salt = os.urandom(16) if salt is None else salt
    salted = _salted(password, salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def scram_matches(verifier: str, password: str) -> bool:
    """True when `verifier` (from pg_authid) was made from `password`."""
    m = re.fullmatch(r"SCRAM-SHA-256\$(\d+):([^$]+)\$([^:]+):(.+)", verifier.strip())
    if not m:
        return False
    try:
        salt = base64.b64decode(m.group(2))
    except ValueError:
        return False
    expected = scram_verifier(password, salt, int(m.group(1)))
    return hmac.compare_digest(expected, verifier.strip())


# --- resources ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PgCluster(Resource):
    """The cluster's unit runs; when a watched config file changed it reloads, and restarts
    only if a changed setting needs it (pg_settings.pending_restart)."""

    version: int
    cluster: str
    watch: tuple[str, ...] = ()

    @property
    def unit(self) -> str:
        return f"postgresql@{self.version}-{self.cluster}"

    @property
    def id(self) -> str:  # type: ignore[override]
        return f"postgresql:{self.version}/{self.cluster}"

    def probe(self) -> str:
        return (
            f'echo "$(systemctl is-active -- {q(self.unit)})"; '
            f"{psql('SELECT count(*) FROM pg_settings WHERE pending_restart')} || echo {DOWN}"
        )

    def plan(self, state: str, changed: frozenset[str]) -> Plan:
        lines = state.split()
        active = lines[0] if lines else ""
        if active != "active":
            # The postgresql service may have started it earlier in this run, before its files
            # changed: after the start, the reload below makes sure they are in effect.
            reload = ("reload (config changed; restart if a setting needs it)",)
            return Plan(
                (f"start ({active or 'unknown'})", *(reload if changed & set(self.watch) else ()))
            )
        if changed & set(self.watch):
            return Plan(("reload (config changed; restart if a setting needs it)",))
        if len(lines) > 1 and lines[1].isdigit() and int(lines[1]) > 0:
            return Plan(("restart (settings pending a restart)",))
        return NOTHING

    def script(self, plan: Plan) -> str:
        unit = q(self.unit)
        ready = (
            "for _i in $(seq 120); do env -C / runuser -u postgres -- pg_isready -q && break; "
            "sleep 0.5; done; env -C / runuser -u postgres -- pg_isready -q"
        )
        verbs = [r.split()[0] for r in plan.reasons]
        start = f"systemctl start -- {unit}\n{ready}"
        if verbs == ["start"]:
            return start
        pending = psql("SELECT count(*) FROM pg_settings WHERE pending_restart")
        loaded = psql("SELECT pg_conf_load_time()")
        if verbs == ["restart"]:
            return f"systemctl restart -- {unit}\n{ready}"
        return "\n".join(
            [
                *([start] if verbs[0] == "start" else []),
                f"_pg_before=$({loaded})",
                f"systemctl reload -- {unit}",
                # reload only signals the server: wait until it has read the files again
                f'for _i in $(seq 50); do [ "$({loaded})" != "$_pg_before" ] && break; '
                "sleep 0.2; done",
                f'if [ "$({pending})" != 0 ]; then systemctl restart -- {unit}; fi',
                ready,
            ]
        )


@dataclass(frozen=True)
class PgRole(Resource):
    """Role `name` exists with LOGIN; with a password, its SCRAM verifier matches it."""

    name: str
    password: Secret | None = None

    @property
    def id(self) -> str:  # type: ignore[override]
        return f"postgresql:role:{self.name}"

    def probe(self) -> str:
        sql = (
            "SELECT rolcanlogin, coalesce(rolpassword, '') FROM pg_authid "
            f"WHERE rolname = {literal(self.name)}"
        )
        return f"{psql(sql)} || echo {DOWN}"

    def plan(self, state: str, changed: frozenset[str]) -> Plan:
        line = state.strip()
        if line == DOWN:
            return Plan(("ensure (server was not answering)",))
        if not line:
            return Plan(("create",))
        login, _, verifier = line.partition("|")
        reasons = []
        if login != "t":
            reasons.append("login")
        if self.password is not None and not scram_matches(verifier, self.password):
            reasons.append("password")
        return Plan(tuple(reasons))

    def script(self, plan: Plan) -> str:
        name = f'"{self.name}"'
        sql = (
            "DO $opskit$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = "
            f"{literal(self.name)}) THEN CREATE ROLE {name} LOGIN; END IF; END $opskit$;\n"
            f"ALTER ROLE {name} LOGIN;"
        )
        if self.password is not None:
            # Only the verifier travels: the plain password never reaches the server (and so
            # never pg_stat_statements or a log).
            sql += f"\nALTER ROLE {name} PASSWORD {literal(scram_verifier(self.password))};"
        return psql_apply(sql)


@dataclass(frozen=True)
class PgDatabase(Resource):
    """Database `name` exists, owned by `owner`."""

    name: str
    owner: str

    @property
    def id(self) -> str:  # type: ignore[override]
        return f"postgresql:database:{self.name}"

    def probe(self) -> str:
        sql = (
            f"SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = {literal(self.name)}"
        )
        return f"{psql(sql)} || echo {DOWN}"

    def plan(self, state: str, changed: frozenset[str]) -> Plan:
        owner = state.strip()
        if owner == DOWN:
            return Plan(("ensure (server was not answering)",))
        if not owner:
            return Plan((f"create (owner {self.owner})",))
        if owner != self.owner:
            return Plan((f"owner {owner} -> {self.owner}",))
        return NOTHING

    def script(self, plan: Plan) -> str:
        exists = psql(f"SELECT 1 FROM pg_database WHERE datname = {literal(self.name)}")
        create = psql_apply(f'CREATE DATABASE "{self.name}" OWNER "{self.owner}";')
        alter = psql_apply(f'ALTER DATABASE "{self.name}" OWNER TO "{self.owner}";')
        return f'if [ "$({exists})" != 1 ]; then\n{create}\nfi\n{alter}'


@dataclass(frozen=True)
class PgExtension(Resource):
    """Extension `name` is created in `database`."""

    database: str
    name: str

    @property
    def id(self) -> str:  # type: ignore[override]
        return f"postgresql:extension:{self.database}:{self.name}"

    def probe(self) -> str:
        has_db = psql(f"SELECT 1 FROM pg_database WHERE datname = {literal(self.database)}")
        ext = psql(
            f"SELECT extversion FROM pg_extension WHERE extname = {literal(self.name)}",
            self.database,
        )
        return f'if [ "$({has_db})" = 1 ]; then {ext} || echo {DOWN}; else echo @nodb; fi'

    def plan(self, state: str, changed: frozenset[str]) -> Plan:
        if state.strip():
            return NOTHING if state.strip() not in (DOWN, "@nodb") else Plan(("create",))
        return Plan(("create",))

    def script(self, plan: Plan) -> str:
        return psql_apply(f'CREATE EXTENSION IF NOT EXISTS "{self.name}";', self.database)


# --- the role -------------------------------------------------------------------------------


def conf_settings(v: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(name, value) lines of conf.d/opskit.conf, values quoted for postgresql.conf."""
    base: dict[str, Any] = {
        "listen_addresses": v["postgresql_listen_addresses"],
        "max_connections": v["postgresql_max_connections"],
        "shared_preload_libraries": "pg_stat_statements",
        "pg_stat_statements.max": v["postgresql_pg_stat_statements_max"],
        "pg_stat_statements.track": v["postgresql_pg_stat_statements_track"],
    }
    base.update(v["postgresql_settings"])
    return [(k, conf_value(val)) for k, val in base.items()]


# The PostgreSQL major version each supported Debian release ships (its `postgresql` package).
RELEASE_VERSIONS = {12: 15, 13: 17}


def cluster_version(v: Mapping[str, Any]) -> int:
    """`postgresql_version`, else the one the host's release ships (os_version: the host's facts;
    Debian 12 until they are known).

    >>> cluster_version({"postgresql_version": None, "os_version": 13})
    17
    >>> cluster_version({"postgresql_version": 16, "os_version": 13})
    16
    """
    chosen = v.get("postgresql_version")
    return int(chosen) if chosen else RELEASE_VERSIONS[int(v.get("os_version") or 12)]


def resources(v: Mapping[str, Any]) -> list[Resource]:
    """The desired state of roles/postgresql/README.md for one host's variables (checked at
    load against roles/postgresql/schema.yml)."""
    ver, cluster = cluster_version(v), v["postgresql_cluster"]
    etc = f"/etc/postgresql/{ver}/{cluster}"
    data = f"/var/lib/postgresql/{ver}/{cluster}"
    conf = f"{etc}/conf.d/opskit.conf"
    hba = f"{etc}/pg_hba.conf"
    check_conf = (
        f"env -C / runuser -u postgres -- /usr/lib/postgresql/{ver}/bin/postgres -D {data} "
        f"-c config_file={etc}/postgresql.conf -C max_connections"
    )
    errors = psql("SELECT count(*) FROM pg_hba_file_rules WHERE error IS NOT NULL")
    check_hba = (
        f'_n=$({errors}); [ "$_n" = 0 ] || {{ echo "pg_hba.conf has $_n bad lines"; false; }}'
    )
    variables = {**v, "postgresql_conf": conf_settings(v)}
    db, user = v["postgresql_app_database"], v["postgresql_app_user"]
    out: list[Resource] = [
        Packages(tuple(v["postgresql_packages"])),
        # Running before its files change: pg_hba.conf is checked by the live server
        # (pg_hba_file_rules); PgCluster reloads or restarts it for what changed.
        Service("postgresql"),
        Template(
            conf,
            "postgresql/opskit.conf.j2",
            variables,
            owner="postgres",
            group="postgres",
            check_after=check_conf,
        ),
        Template(
            hba,
            "postgresql/pg_hba.conf.j2",
            variables,
            mode=0o640,
            owner="postgres",
            group="postgres",
            check_after=check_hba,
        ),
        PgCluster(ver, cluster, watch=(f"file:{conf}", f"file:{hba}")),
        PgRole(user, v["postgresql_app_password"]),
        PgDatabase(db, user),
    ]
    out += [PgExtension(db, ext) for ext in v["postgresql_extensions"]]
    return out
