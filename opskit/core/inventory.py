"""Inventory: hosts, groups, variables and secrets, loaded and validated once into dataclasses.

Precedence of variables: role defaults < top `vars` < group `vars` < host `vars`. Two groups
that give one host different values for a key is an error. A value `{secret: NAME}` is read from
the environment variable NAME or the inventory's secrets file (mode 0600 only).

Roles: a host gets the top-level `roles:` and those of its groups. An inventory without a
top-level `roles:` gives every host the `base` role (DEFAULT_ROLES); `Host.role_sources` says
where each role came from, and `describe_roles` shows it (`inv provision --check`).

Everything is checked here, once, before anything connects: every variable against its
declaration (opskit/core/schema.py: type, range, choices, secret), the variables each host's
roles require, and each host's resources are built (so a role's own checks run) with every
handler reference (`reload_on`, `restart_on`, `watch`) naming a resource of that host. A key
given twice in one mapping (a host listed twice in a group) is an error naming both lines: YAML
would silently keep the last. The private key (`ssh.identity`) is checked by `check_identity`
before the first connection: not at load, since `inv lab.up` creates the lab's.
"""

from __future__ import annotations

import difflib
import fnmatch
import ipaddress
import os
import re
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from opskit.core.errors import ConfigError
from opskit.core.roles import (
    Role,
    available_roles,
    build_resources,
    core_variables,
    missing_required,
    required_problem,
    where_roles_are,
)
from opskit.core.schema import DOC_POINTER, Invalid, Variable, check, did_you_mean, is_unset
from opskit.core.secrets import Secret, SecretStore, redact

TOP_KEYS = {"ssh", "lab", "secrets", "roles", "vars", "groups", "alerts"}
# Top-level sections that stand for one declared variable every host gets (at the level of the
# top `vars`), checked like it: `alerts` is roles/healthcheck's alert rules.
SECTIONS = {"alerts": "healthcheck_alerts"}
SSH_KEYS = {"known_hosts", "identity", "connect_timeout", "sudo_password"}
SECRETS_KEYS = {"file"}
GROUP_KEYS = {"roles", "vars", "hosts"}
HOST_KEYS = {"address", "port", "user", "vars"}
_IPV4_LIKE = re.compile(r"[0-9.]+")


class _UniqueKeys(yaml.SafeLoader):
    """yaml.SafeLoader refusing a key given twice in one mapping (it would keep the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node.start_mark.line)
            except TypeError:  # an unhashable key: SafeLoader's own error follows
                continue
            if first != key_node.start_mark.line:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (first at line {first + 1}); YAML would keep only "
                    "the last: remove one",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep=deep)


def check_identity(ssh: SshSettings, where: str = "ssh.identity") -> None:
    """The private key opskit logs in with exists and is readable by its owner only: OpenSSH
    refuses a key that group or others can read ("UNPROTECTED PRIVATE KEY FILE"), so do we,
    before the first connection (ConfigError, exit 2)."""
    key = ssh.identity
    if key is None:
        return
    try:
        st = key.stat()
    except FileNotFoundError:
        raise ConfigError(f"{where}: {key}: no such private key file") from None
    except OSError as exc:
        raise ConfigError(f"{where}: {key}: cannot read it ({exc.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{where}: {key}: not a file")
    if st.st_mode & 0o077 and st.st_uid == os.getuid():
        raise ConfigError(
            f"{where}: permissions {stat.S_IMODE(st.st_mode):04o} for {key} are too open: a "
            f"private key must be readable by its owner only, as OpenSSH requires (chmod 600 {key})"
        )
    if not os.access(key, os.R_OK):
        raise ConfigError(f"{where}: {key}: not readable by this user")


# The roles of every host when the inventory has no top-level `roles:` (shown as implicit).
DEFAULT_ROLES = ("base",)
IMPLICIT = "default: the inventory sets no top-level roles"


@dataclass(frozen=True)
class SshSettings:
    known_hosts: Path
    identity: Path | None = None
    connect_timeout: float = 10.0
    sudo_password: Secret | None = None


@dataclass(frozen=True)
class Host:
    name: str
    address: str
    port: int
    user: str
    groups: tuple[str, ...]
    roles: tuple[str, ...]
    vars: Mapping[str, Any] = field(repr=False)
    # role -> where it came from: "roles" (top level), "groups.<g>.roles", or IMPLICIT
    role_sources: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    @property
    def secrets(self) -> tuple[Secret, ...]:
        """Every secret value in the host's variables, at any depth (for redaction)."""
        return tuple(_secrets_in(list(self.vars.values())))


@dataclass(frozen=True)
class Inventory:
    path: Path
    ssh: SshSettings
    hosts: tuple[Host, ...]
    groups: Mapping[str, tuple[str, ...]]
    lab: Mapping[str, Any] | None = field(default=None, repr=False)

    def host(self, name: str) -> Host:
        for h in self.hosts:
            if h.name == name:
                return h
        raise ConfigError(f"{self.path}: no host named '{name}'")

    def select(self, patterns: Iterable[str] | None = None) -> list[Host]:
        """Hosts matching any of `patterns` (host name, group name, glob, or 'all'), in order.

        Patterns may also be comma-separated. No pattern means all hosts.
        """
        wanted = [p.strip() for pat in (patterns or ["all"]) for p in pat.split(",") if p.strip()]
        chosen: set[str] = set()
        for pat in wanted or ["all"]:
            matched = self._match(pat)
            if not matched:
                known = sorted({h.name for h in self.hosts} | set(self.groups))
                raise ConfigError(
                    f"--hosts {pat!r} matches no host or group in {self.path} "
                    f"(known: {', '.join(known)})"
                )
            chosen.update(matched)
        return [h for h in self.hosts if h.name in chosen]

    def _match(self, pat: str) -> set[str]:
        if pat == "all":
            return {h.name for h in self.hosts}
        if pat in self.groups:
            return set(self.groups[pat])
        names = {h.name for h in self.hosts if fnmatch.fnmatchcase(h.name, pat)}
        for group, members in self.groups.items():
            if fnmatch.fnmatchcase(group, pat):
                names.update(members)
        return names


def load_inventory(
    path: Path | str,
    *,
    roles: Mapping[str, Role] | None = None,
    environ: Mapping[str, str] | None = None,
    build: bool = True,
) -> Inventory:
    """Read, validate and resolve the inventory at `path`; errors name the file and the key.

    `build`: also build every host's role resources (which runs the roles' own checks and reads
    the files they send, e.g. CA bundles) and check their handler references.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read inventory: {exc.strerror}") from exc
    try:
        data = yaml.load(text, Loader=_UniqueKeys)  # a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}{where}: invalid YAML: {problem}") from exc
    loader = _Loader(path, roles if roles is not None else available_roles(), environ)
    inventory = loader.load(data)
    if build:
        for host in inventory.hosts:
            loader.build(host)
    return inventory


class _Loader:
    def __init__(
        self, path: Path, roles: Mapping[str, Role], environ: Mapping[str, str] | None
    ) -> None:
        self.path, self.roles, self.environ = path, roles, environ
        self.declared: dict[str, Variable] = dict(core_variables())
        for role in roles.values():
            self.declared.update(role.variables)
        self.host_keys: dict[str, str] = {}

    def err(self, key: str, msg: str) -> ConfigError:
        return ConfigError(f"{self.path}: {key}: {msg}")

    def mapping(self, value: Any, key: str, allowed: set[str] | None = None) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.err(key, f"expected a mapping, got {type(value).__name__}")
        for k in value:
            if not isinstance(k, str):
                raise self.err(key, f"keys must be strings, got {k!r}")
            if allowed is not None and k not in allowed:
                raise self.err(f"{key}.{k}" if key else k, f"unknown key{did_you_mean(k, allowed)}")
        return value

    def load(self, data: Any) -> Inventory:
        if data is None:
            raise ConfigError(f"{self.path}: the inventory is empty")
        top = self.mapping(data, "", TOP_KEYS)
        base_dir = self.path.parent
        secrets_cfg = self.mapping(top.get("secrets"), "secrets", SECRETS_KEYS)
        secrets_file = None
        if "file" in secrets_cfg:
            secrets_file = (base_dir / str(secrets_cfg["file"])).resolve()
        self.store = SecretStore(secrets_file, self.environ)

        ssh = self.ssh_settings(self.mapping(top.get("ssh"), "ssh", SSH_KEYS), base_dir)
        if "roles" in top:
            top_roles = self.role_list(top["roles"], "roles")
            top_source = "roles"
        else:
            missing = [r for r in DEFAULT_ROLES if r not in self.roles]
            if missing:
                raise self.err(
                    "roles",
                    f"not set, so every host gets {', '.join(DEFAULT_ROLES)}, which is no known "
                    f"role ({where_roles_are()}); set the top-level roles, [] for none",
                )
            top_roles, top_source = list(DEFAULT_ROLES), IMPLICIT
        top_vars = self.vars(top.get("vars"), "vars")
        for section, name in SECTIONS.items():
            if section in top:
                if name in top_vars:
                    raise self.err(section, f"give either `{section}:` or vars.{name}, not both")
                top_vars[name] = self.section(top[section], section, name)

        groups_raw = self.mapping(top.get("groups"), "groups")
        if not groups_raw:
            raise self.err("groups", "no groups: declare at least one group with hosts")
        entries: dict[str, dict[str, Any]] = {}  # host -> merged entry
        group_members: dict[str, list[str]] = {}
        for gname, graw in groups_raw.items():
            gkey = f"groups.{gname}"
            _check_name(self, gkey, gname)
            group = self.mapping(graw, gkey, GROUP_KEYS)
            gvars = self.vars(group.get("vars"), f"{gkey}.vars")
            groles = self.role_list(group.get("roles", []), f"{gkey}.roles")
            hosts = self.mapping(group.get("hosts"), f"{gkey}.hosts")
            group_members[gname] = []
            for hname, hraw in hosts.items():
                hkey = f"{gkey}.hosts.{hname}"
                _check_name(self, hkey, hname)
                entry = self.mapping(hraw, hkey, HOST_KEYS)
                merged = entries.setdefault(
                    hname,
                    {"groups": [], "roles": {}, "gvars": {}, "gvar_src": {}, "host": {}},
                )
                merged["groups"].append(gname)
                for r in groles:
                    merged["roles"].setdefault(r, f"{gkey}.roles")
                for k, v in gvars.items():
                    if k in merged["gvars"] and merged["gvars"][k] != v:
                        raise self.err(
                            f"{gkey}.vars.{k}",
                            f"host '{hname}' also gets a different value from "
                            f"{merged['gvar_src'][k]}; set it on the host instead",
                        )
                    merged["gvars"][k] = v
                    merged["gvar_src"][k] = f"groups.{gname}.vars"
                for k, v in entry.items():
                    if k in merged["host"] and merged["host"][k] != v:
                        raise self.err(f"{hkey}.{k}", "host is listed twice with different values")
                    merged["host"][k] = v
                group_members[gname].append(hname)

        hosts_out = []
        for hname, merged in entries.items():
            hkey = f"groups.{merged['groups'][0]}.hosts.{hname}"
            entry = merged["host"]
            hvars = self.vars(entry.get("vars"), f"{hkey}.vars")
            sources = dict.fromkeys(top_roles, top_source)
            for r, src in merged["roles"].items():
                sources.setdefault(r, src)
            ordered = tuple(r for r in self.roles if r in sources)
            values: dict[str, Any] = {n: v.default for n, v in core_variables().items()}
            for role in ordered:
                values.update(self.roles[role].defaults)
            values.update(top_vars)
            values.update(merged["gvars"])
            values.update(hvars)
            if "address" not in entry:
                raise self.err(hkey, "missing 'address'")
            address = self.address(entry["address"], f"{hkey}.address")
            port = entry.get("port", values["ssh_port"])
            if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
                raise self.err(f"{hkey}.port", f"expected a TCP port number, got {port!r}")
            user = entry.get("user", values["ssh_user"])
            if not isinstance(user, str) or not user:
                raise self.err(f"{hkey}.user", "expected a user name")
            self.required(hkey, ordered, values)
            self.host_keys[hname] = hkey
            hosts_out.append(
                Host(
                    hname,
                    address,
                    port,
                    user,
                    tuple(merged["groups"]),
                    ordered,
                    values,
                    {r: sources[r] for r in ordered},
                )
            )
        lab = top.get("lab")
        return Inventory(
            self.path,
            ssh,
            tuple(hosts_out),
            {g: tuple(m) for g, m in group_members.items()},
            self.mapping(lab, "lab") if lab is not None else None,
        )

    def ssh_settings(self, raw: dict[str, Any], base_dir: Path) -> SshSettings:
        if "known_hosts" not in raw:
            raise self.err("ssh", "missing 'known_hosts' (host keys are always checked strictly)")
        timeout = raw.get("connect_timeout", 10)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise self.err("ssh.connect_timeout", f"expected seconds > 0, got {timeout!r}")
        identity = raw.get("identity")
        sudo = raw.get("sudo_password")
        return SshSettings(
            known_hosts=(base_dir / str(raw["known_hosts"])).expanduser(),
            identity=(base_dir / str(identity)).expanduser() if identity else None,
            connect_timeout=float(timeout),
            sudo_password=self.resolve(sudo, "ssh.sudo_password") if sudo is not None else None,
        )

    def role_list(self, value: Any, key: str) -> list[str]:
        if not isinstance(value, list) or not all(isinstance(r, str) for r in value):
            raise self.err(key, "expected a list of role names")
        for r in value:
            if r not in self.roles:
                raise self.err(
                    key, f"unknown role '{r}'{did_you_mean(r, self.roles)}; {where_roles_are()}"
                )
        return list(value)

    def vars(self, value: Any, key: str) -> dict[str, Any]:
        raw = self.mapping(value, key)
        out = {}
        for k, v in raw.items():
            if k not in self.declared:
                raise self.err(f"{key}.{k}", self.unknown_variable(k))
            resolved = self.resolve(v, f"{key}.{k}")
            var = self.declared[k]
            if var.spec.required and is_unset(resolved):
                raise self.err(f"{key}.{k}", required_problem(var))
            try:
                check(var.spec, resolved)
            except Invalid as exc:
                raise self.err(f"{key}.{k}{exc.at}", exc.message) from None
            out[k] = resolved
        return out

    def section(self, value: Any, key: str, name: str) -> Any:
        """The top-level section `key`, checked as the declared variable `name`."""
        if name not in self.declared:
            raise self.err(key, f"needs the variable {name}, which no known role declares")
        resolved = self.resolve(value, key)
        try:
            check(self.declared[name].spec, resolved)
        except Invalid as exc:
            raise self.err(f"{key}{exc.at}", exc.message) from None
        return resolved

    def unknown_variable(self, name: str) -> str:
        """Why `name` is refused: the declared variable it is close to (and who declares it),
        or the role its prefix names that does not exist; and how variables are declared."""
        how = (
            "a variable is declared by opskit (opskit/core/defaults/) or by a role "
            f"(roles/<role>/schema.yml; see {DOC_POINTER})"
        )
        close = difflib.get_close_matches(name, list(self.declared), n=1)
        if close:
            var = self.declared[close[0]]
            whose = "opskit" if var.owner == "opskit" else f"role {var.owner}"
            return (
                f"unknown variable (did you mean '{close[0]}'?): {whose} declares that one "
                f"in {var.source}; {how}"
            )
        owners = {
            v.owner if v.owner != "opskit" else n.split("_", 1)[0] for n, v in self.declared.items()
        }
        owners.update(self.roles)
        if not any(name.startswith(f"{o}_") for o in owners):
            prefix = name.split("_", 1)[0]
            return f"unknown variable: no role '{prefix}' is known ({where_roles_are()}); {how}"
        return f"unknown variable; {how}"

    def required(self, hkey: str, roles: Sequence[str], values: Mapping[str, Any]) -> None:
        """Every variable a role of the host requires is set (neither null nor "")."""
        for role in roles:
            problem = missing_required(self.roles[role], values)
            if problem is not None:
                raise self.err(hkey, problem)

    def build(self, host: Host) -> None:
        """Build the host's role resources: the roles' own checks, handler references."""
        try:
            build_resources(self.roles, host.roles, host.vars)
        except ConfigError as exc:
            msg = redact(str(exc), host.secrets)
            raise self.err(self.host_keys.get(host.name, host.name), msg) from None

    def resolve(self, value: Any, key: str) -> Any:
        if isinstance(value, dict) and set(value) == {"secret"}:
            name = value["secret"]
            if not isinstance(name, str) or not name.isidentifier():
                raise self.err(key, "secret: expected the name of an environment variable")
            secret = self.store.get(name)
            if secret is None:
                raise self.err(key, f"secret {name} is not set (looked in {self.store.describe()})")
            return secret
        if isinstance(value, dict) and "secret" in value:
            raise self.err(key, "a secret reference is exactly {secret: NAME}")
        # Secrets may sit anywhere inside a variable (e.g. app_env: {API_TOKEN: {secret: X}}).
        if isinstance(value, dict):
            return {k: self.resolve(v, f"{key}.{k}") for k, v in value.items()}
        if isinstance(value, list):
            return [self.resolve(v, f"{key}[{i}]") for i, v in enumerate(value)]
        return value

    def address(self, value: Any, key: str) -> str:
        if not isinstance(value, str) or not value or any(c.isspace() for c in value):
            raise self.err(key, f"expected an IP address or host name, got {value!r}")
        try:
            ipaddress.ip_address(value)
        except ValueError:
            if _IPV4_LIKE.fullmatch(value) or ":" in value:  # meant as an IP address
                raise self.err(key, f"not a valid IP address: {value!r}") from None
            if not all(part and (part.replace("-", "").isalnum()) for part in value.split(".")):
                raise self.err(key, f"not an IP address or host name: {value!r}") from None
        return value


def _secrets_in(value: Any) -> list[Secret]:
    if isinstance(value, Secret):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        return [s for item in value for s in _secrets_in(item)]
    return []


def _check_name(loader: _Loader, key: str, name: str) -> None:
    if not name.replace("-", "").replace("_", "").isalnum():
        raise loader.err(key, "names are letters, digits, '-' and '_'")


def describe_roles(host: Host) -> str:
    """The host's roles and where each came from (for `inv provision --check`).

    >>> h = Host("w1", "10.0.0.1", 22, "root", ("web",), ("base", "app"), {},
    ...          {"base": IMPLICIT, "app": "groups.web.roles"})
    >>> describe_roles(h)
    'base (default: the inventory sets no top-level roles), app (groups.web.roles)'
    """
    return ", ".join(f"{r} ({host.role_sources.get(r, '?')})" for r in host.roles)


def host_vars_for_display(host: Host) -> Mapping[str, Any]:
    """The host's variables as they may be shown: secrets masked."""
    return {k: ("***" if isinstance(v, Secret) else v) for k, v in sorted(host.vars.items())}


def names(hosts: Sequence[Host]) -> list[str]:
    return [h.name for h in hosts]
