"""Dependencies (and app_build_command) built on the hosts' platform, once per deploy.

A release's ``node_modules`` must be installed where the platform matches the hosts': the same
OS, libc, CPU architecture and Node ABI (``process.versions.modules``), with the packages'
install scripts run (native addons, postinstall steps). The hosts cannot reach the npm registry,
so the work is split:

1. the **platform** of the hosts is read on the build host (``app_build_host``, default the
   first app host of the deploy by name) with the node the app runs under: one command;
2. the **key** of the result is the sha256 of (package-lock.json's sha256, that platform, the
   build command and, with a build command, the code's git tree). A result in the operator's
   cache (``<cache>/builds/<key>.*``) is used as it is: no npm, no build, no upload when a host
   already has a release with that key;
3. on a miss, when the operator's machine has the same platform (``node`` on its PATH;
   ``$OPSKIT_OPERATOR_PLATFORM`` overrides what it says, e.g. ``darwin-arm64`` to simulate a
   laptop) it builds itself: ``npm ci`` with install scripts, the build command, ``npm prune
   --omit=dev``;
4. else the operator's machine **fetches** the packages (``npm ci --ignore-scripts --os --cpu
   --libc`` of the hosts' platform, so the optional platform packages are the hosts' ones) and
   ships code + ``node_modules`` to the build host over its deploy connection, which, as the app
   user in a scratch directory, runs ``npm rebuild`` (every install script, under the hosts'
   node; ``npm_config_nodedir`` is the official build's headers so node-gyp downloads nothing),
   the build command with the dev dependencies, then ``npm prune --omit=dev``. The result comes
   back over the same connection, is cached by its key, and is what every host gets (the
   deploy's usual upload: only hosts without a release of that key receive it).

A failed build raises BuildError with the end of its output before any host changed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import posixpath
import shlex
import shutil
import tarfile
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from opskit.app import deploy
from opskit.app.release import Artifact
from opskit.app.spec import NPM_CLI, AppLayout, node_bin_dir, node_dir, node_source, npm_shim
from opskit.core.artifacts import BuildError, cache_dir, run_local, sha256, tar_gz_dir
from opskit.core.errors import ConfigError, OpsError
from opskit.core.inventory import Host, Inventory
from opskit.core.remote import Remote, connect

q = shlex.quote

FORCE_ENV = "OPSKIT_OPERATOR_PLATFORM"
BUILD_ROOT = "/var/cache/opskit/app-build"  # scratch directories on the build host
OUTPUT_TAIL = 40  # lines of a failed build's output in its error

# What node says about its platform, one JSON line (run on the build host and the operator).
PLATFORM_JS = (
    "const h=(process.report&&process.report.getReport?process.report.getReport().header:{})||{};"
    "console.log(JSON.stringify({os:process.platform,arch:process.arch,"
    "libc:process.platform!=='linux'?'':(h.glibcVersionRuntime?'glibc':'musl'),"
    "abi:process.versions.modules,node:process.versions.node}))"
)


@dataclass(frozen=True)
class Platform:
    """Where compiled code runs: OS, CPU, libc and the Node ABI (and release) of a node."""

    os: str
    arch: str
    libc: str
    abi: str
    node: str

    @property
    def key(self) -> str:
        """
        >>> Platform("linux", "x64", "glibc", "147", "26.12.1").key
        'linux-x64-glibc-abi147-node26.12.1'
        """
        libc = [self.libc] if self.libc else []
        return "-".join([self.os, self.arch, *libc, f"abi{self.abi}", f"node{self.node}"])

    @classmethod
    def parse(cls, text: str) -> Platform:
        """From PLATFORM_JS's output (its last JSON line).

        >>> Platform.parse('noise\\n{"os":"linux","arch":"x64","libc":"glibc","abi":"147",'
        ...                '"node":"26.12.1"}\\n').key
        'linux-x64-glibc-abi147-node26.12.1'
        """
        for line in reversed(text.strip().splitlines()):
            if line.startswith("{"):
                d = json.loads(line)
                return cls(
                    str(d["os"]), str(d["arch"]), str(d["libc"]), str(d["abi"]), str(d["node"])
                )
        raise ValueError(f"node printed no platform: {text.strip()[-200:]!r}")


def cache_key(lock_sha256: str, platform: Platform, command: str, tree: str) -> str:
    """The identity of a build result: the lock file, the platform (with the Node release), the
    build command and, only when there is one, the code it builds.

    >>> p = Platform("linux", "x64", "glibc", "147", "26.12.1")
    >>> cache_key("L", p, "", "T1") == cache_key("L", p, "", "T2")
    True
    >>> cache_key("L", p, "npm run build", "T1") == cache_key("L", p, "npm run build", "T2")
    False
    >>> cache_key("L", p, "", "T") == cache_key("L", dataclasses.replace(p, abi="137"), "", "T")
    False
    """
    ident = {"lock": lock_sha256, "platform": platform.key, "command": command}
    if command:
        ident["tree"] = tree
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()


def deps_identity(lock_sha256: str | None, hosts: Platform, build_key: str) -> str:
    """What a host compares to reuse a release's node_modules: with a lock file, the lock and the
    platform only (the production dependencies a build ships do not depend on the code it built);
    without one (None), the build's own key (npm resolves package.json afresh each time).

    >>> p = Platform("linux", "x64", "glibc", "147", "26.12.1")
    >>> deps_identity("L", p, "K1") == deps_identity("L", p, "K2")
    True
    >>> deps_identity(None, p, "K1")
    'K1'
    """
    if lock_sha256 is None:
        return build_key
    return cache_key(lock_sha256, hosts, "", "")


def plan(*, needed: bool, cached: bool, operator: str, hosts: Platform) -> str:
    """Where the dependencies are built: "none" (no dependencies, no build command), "cache",
    "operator" (its platform matches the hosts') or "host" (the build host).

    >>> p = Platform("linux", "x64", "glibc", "147", "26.12.1")
    >>> plan(needed=True, cached=False, operator=p.key, hosts=p)
    'operator'
    >>> plan(needed=True, cached=False, operator="darwin-arm64", hosts=p)
    'host'
    >>> plan(needed=True, cached=True, operator="darwin-arm64", hosts=p)
    'cache'
    """
    if not needed:
        return "none"
    if cached:
        return "cache"
    return "operator" if operator == hosts.key else "host"


def operator_platform() -> str:
    """The operator machine's platform key: ``$OPSKIT_OPERATOR_PLATFORM``, else what its
    ``node`` says ("none" without node)."""
    forced = os.environ.get(FORCE_ENV, "").strip()
    if forced:
        return forced
    if shutil.which("node") is None:
        return "none"
    try:
        out = run_local(["node", "-e", PLATFORM_JS], what="reading this machine's node platform")
        return Platform.parse(out.decode()).key
    except (BuildError, ValueError):
        return "none"


# --- what the deploy's hosts agree on ------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """The build settings every selected app host shares, and the build host."""

    host: Host
    command: str
    node_bin: str
    nodedir: str  # npm_config_nodedir ("" for distro: node-gyp uses the system's headers)
    user: str  # the app user: install scripts never run as root
    in_selection: bool


_SHARED_VARS = ("app_node_source", "app_node_version", "app_build_command", "app_build_host")


def target(inventory: Inventory, hosts: Sequence[Host]) -> Target:
    """Check the build settings (ConfigError names the file and the key; nothing touched)."""
    where = inventory.path
    for key in _SHARED_VARS:
        values = {str(h.vars.get(key, "")) for h in hosts}
        if len(values) > 1:
            raise ConfigError(
                f"{where}: {key} differs between the selected app hosts "
                f"({', '.join(sorted(values))}): they share one build; deploy them one --hosts "
                "selection at a time"
            )
    v = hosts[0].vars
    try:
        node_bin = node_bin_dir(v)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    name = str(v.get("app_build_host") or "")
    if name:
        try:
            host = inventory.host(name)
        except ConfigError:
            raise ConfigError(f"{where}: app_build_host: {name!r} is not a host of it") from None
        if "app" not in host.roles:
            raise ConfigError(
                f"{where}: app_build_host: {name} has no app role (no node, npm or app user)"
            )
        for key in ("app_node_source", "app_node_version"):
            if str(host.vars.get(key)) != str(v.get(key)):
                raise ConfigError(
                    f"{where}: app_build_host: {name} has another {key} "
                    f"({host.vars.get(key)!r}, the app hosts {v.get(key)!r})"
                )
    else:
        host = sorted(hosts, key=lambda h: h.name)[0]
    official = node_source(v) == "official"
    return Target(
        host=host,
        command=str(v.get("app_build_command") or ""),
        node_bin=node_bin,
        nodedir=node_dir(str(v["app_node_version"])) if official else "",
        user=AppLayout.from_vars(host.vars).user,
        in_selection=any(h.name == host.name for h in hosts),
    )


class Remotes:
    """The deploy's connections, noted by run_in_batches' `check` as each host is locked, so
    that the build uses the build host's own connection (no second one)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.by_name: dict[str, Remote] = {}
        self.opened: list[Remote] = []  # the build host's, when it is not deployed to

    def note(self, remote: Remote) -> None:
        with self._lock:
            self.by_name[remote.name] = remote

    def get(self, inventory: Inventory, host: Host) -> Remote:
        with self._lock:
            if host.name not in self.by_name:
                remote = connect(host, inventory.ssh)
                self.by_name[host.name] = remote
                self.opened.append(remote)
            return self.by_name[host.name]

    def close(self) -> None:
        for remote in self.opened:
            remote.close()


# --- the build -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Built:
    key: str
    deps: bytes  # tar.gz of node_modules (prefix node_modules/)
    code: bytes | None  # tar.gz of the built app (no node_modules); None: the git archive
    where: str  # "cache", "operator" or the build host's name
    platform: str
    seconds: float

    def describe(self) -> str:
        at = {"cache": "from the build cache", "operator": "on this machine"}.get(
            self.where, f"on {self.where}"
        )
        return f"dependencies for {self.platform} {at} ({self.seconds:.1f} s, key {self.key[:12]})"


def _files(code: bytes) -> dict[str, bytes]:
    """package.json and package-lock.json of a code tarball (what exists)."""
    found = {}
    with tarfile.open(fileobj=io.BytesIO(code), mode="r:gz") as tar:
        for m in tar.getmembers():
            name = m.name.removeprefix("./")
            if name in ("package.json", "package-lock.json") and m.isfile():
                f = tar.extractfile(m)
                if f is not None:
                    found[name] = f.read()
    return found


def _extract(data: bytes, into: Path) -> None:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
        for m in tar.getmembers():
            if m.name.startswith("/") or ".." in Path(m.name).parts:
                raise BuildError(f"refusing a tarball entry outside its directory: {m.name}")
        tar.extractall(into)


def _split(app: Path, *, with_code: bool) -> tuple[bytes, bytes | None]:
    """(node_modules tarball, code tarball or None) of a built app directory, deterministic."""
    modules = app / "node_modules"
    modules.mkdir(exist_ok=True)
    for junk in modules.glob(".package-lock.json"):
        junk.unlink()  # npm's own bookkeeping; it holds no code
    deps = tar_gz_dir(modules, prefix="node_modules")
    if not with_code:
        return deps, None
    shutil.rmtree(modules)
    return deps, tar_gz_dir(app)


def _store(root: Path, key: str, deps: bytes, code: bytes | None) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for suffix, data in (("code", code), ("deps", deps)):  # deps last: it marks a full entry
        if data is not None:
            partial = root / f".{key}.{suffix}.partial"
            partial.write_bytes(data)
            partial.replace(root / f"{key}.{suffix}.tar.gz")


def _cached(root: Path, key: str, with_code: bool) -> tuple[bytes, bytes | None] | None:
    deps, code = root / f"{key}.deps.tar.gz", root / f"{key}.code.tar.gz"
    if not deps.exists() or (with_code and not code.exists()):
        return None
    return deps.read_bytes(), code.read_bytes() if with_code else None


def _npm_ci(app: Path, platform: Platform, *, scripts: bool, dev: bool) -> None:
    argv = ["npm", "ci", "--no-audit", "--no-fund"]
    if not scripts:
        argv += ["--ignore-scripts", "--os", platform.os, "--cpu", platform.arch]
        if platform.libc:
            argv += ["--libc", platform.libc]
    if not dev:
        argv.append("--omit=dev")
    what = "fetching the app's dependencies with npm ci" + (
        "" if scripts else f" for {platform.key} (operator side, no install scripts)"
    )
    run_local(argv, cwd=app, what=what)


def build_here(app: Path, platform: Platform, command: str, *, has_lock: bool) -> None:
    """On the operator's machine, whose platform matches: install scripts, build, prune."""
    if has_lock:
        _npm_ci(app, platform, scripts=True, dev=bool(command))
    if command:
        run_local(["bash", "-c", command], cwd=app, what=f"app_build_command {command!r}")
        run_local(
            ["npm", "prune", "--omit=dev", "--no-audit", "--no-fund"],
            cwd=app,
            what="npm prune --omit=dev",
        )


def probe_script(t: Target) -> str:
    node = f"{t.node_bin}/node"
    return f"""set -u
need() {{ echo "no $1: provision the app role first (inv provision)" >&2; exit 3; }}
[ -x {q(node)} ] || need "node at {node}"
[ -f {q(NPM_CLI)} ] || need "npm at {NPM_CLI}"
{q(node)} -e {q(PLATFORM_JS)}
"""


def host_script(t: Target, upload: str, upload_sha: str, key: str, out: str, login: str) -> str:
    """Unpack the fetched app on the build host, npm rebuild + build + prune there as the app
    user, tar the result to `out` (readable by the login user). Prints @@built or @@failed."""
    npm_env = [
        f'PATH="$W/.bin":{t.node_bin}:/usr/local/bin:/usr/bin:/bin',
        'HOME="$W/.home"',
        'npm_config_cache="$W/.npm"',
        "npm_config_offline=true",
        "npm_config_update_notifier=false",
        "npm_config_fund=false",
        "npm_config_audit=false",
    ]
    if t.nodedir:
        npm_env.append(f"npm_config_nodedir={q(t.nodedir)}")
    env = " ".join(npm_env)
    node = q(f"{t.node_bin}/node")
    tar_what = "." if t.command else "node_modules"
    return f"""set -uo pipefail
W={q(BUILD_ROOT)}/{key[:16]}.$$
trap 'rm -rf -- "$W"' EXIT
echo {upload_sha}' '{q(upload)} | sha256sum -c --quiet - || exit 3
install -d -m 0755 {q(BUILD_ROOT)} || exit 3
install -d -m 0700 -o {q(t.user)} -g {q(t.user)} "$W" || exit 3
tar -xzf {q(upload)} -C "$W" --no-same-owner && rm -f -- {q(upload)} || exit 3
mkdir -p "$W/.home" "$W/.bin" || exit 3
{npm_shim('"$W/.bin"', f"{t.node_bin}/node")} || exit 3
chown -R {q(t.user)}: "$W" || exit 3
cd "$W/app" || exit 3
as_app() {{ runuser -u {q(t.user)} -- env -i {env} "$@"; }}
{{
  echo "+ npm rebuild (install scripts, node $({node} --version))"
  as_app {node} {q(NPM_CLI)} rebuild --foreground-scripts || exit $?
  if [ -n {q(t.command)} ]; then
    echo "+ "{q(t.command)}
    as_app bash -c {q(t.command)} || exit $?
    echo "+ npm prune --omit=dev"
    as_app {node} {q(NPM_CLI)} prune --omit=dev || exit $?
  fi
}} > "$W/build.log" 2>&1 < /dev/null &
wait $!; rc=$?
if [ "$rc" != 0 ]; then
  echo "@@failed $rc"; tail -n {OUTPUT_TAIL} "$W/build.log"; exit 0
fi
rm -f node_modules/.package-lock.json
mkdir -p node_modules
tar -czf {q(out)} {tar_what} && chown {q(login)}: {q(out)} && chmod 0600 {q(out)} || exit 3
echo "@@built $(sha256sum < {q(out)} | cut -d' ' -f1)"
"""


def build_on_host(remote: Remote, t: Target, shipped: bytes, key: str) -> bytes:
    """Ship the fetched app to the build host, build there, bring the result back."""
    name = f".opskit-build-{key[:16]}"
    path = deploy.upload(remote, shipped, f"{name}-in.tar.gz")
    out = posixpath.join(posixpath.dirname(path), f"{name}-out.tar.gz")
    res = remote.run(
        host_script(t, path, sha256(shipped), key, out, remote.host.user),
        what=f"build the app's dependencies on {remote.name}",
        timeout=1800,
    )
    text = res.stdout
    if "@@failed" in text:
        code, _, tail = text.split("@@failed ", 1)[1].partition("\n")
        raise BuildError(
            f"the build on {remote.name} failed (exit {code.strip()}); nothing was deployed. "
            f"Its output (end):\n{tail.rstrip()}"
        )
    if "@@built " not in text:
        raise BuildError(f"the build on {remote.name} printed no result: {text.strip()[-500:]}")
    want = text.split("@@built ", 1)[1].split()[0]
    sftp = remote.sftp()
    with sftp.open(out, "rb") as f:
        f.prefetch()
        data = f.read()
    sftp.remove(out)
    if sha256(data) != want:
        raise BuildError(f"the build result from {remote.name} arrived damaged (sha256 differs)")
    return bytes(data)


def build_release(
    inventory: Inventory,
    t: Target,
    remotes: Remotes,
    art: Artifact,
    *,
    cache: Path | None = None,
) -> tuple[Artifact, Built | None]:
    """The artifact with its dependencies (and app_build_command's output) built for the hosts'
    platform; `art` is release.build(..., install=False). None when there is nothing to build."""
    started = time.monotonic()
    files = _files(art.code)
    if not art.deps_key and not t.command:
        return art, None
    if t.command and "package.json" not in files:
        raise BuildError("app_build_command is set but the app has no package.json")
    remote = remotes.get(inventory, t.host)
    try:
        probe = remote.run(probe_script(t), what=f"read the node platform of {t.host.name}")
        hosts = Platform.parse(probe.stdout)
    except (OpsError, ValueError, KeyError) as exc:
        raise BuildError(f"cannot read the node platform of {t.host.name}: {exc}") from None
    lock_sha = sha256(files.get("package-lock.json", b""))
    key = cache_key(lock_sha, hosts, t.command, art.tree)
    root = (cache or cache_dir()) / "builds"
    with_code = bool(t.command)
    found = _cached(root, key, with_code)
    where = plan(needed=True, cached=found is not None, operator=operator_platform(), hosts=hosts)
    if found is None:
        with tempfile.TemporaryDirectory(prefix="opskit-build-") as tmp:
            app = Path(tmp) / "app"
            app.mkdir()
            _extract(art.code, app)
            has_lock = (app / "package-lock.json").exists()
            if where == "operator":
                build_here(app, hosts, t.command, has_lock=has_lock)
            else:
                if has_lock:
                    _npm_ci(app, hosts, scripts=False, dev=with_code)
                shipped = tar_gz_dir(Path(tmp), prefix="")
                result = build_on_host(remote, t, shipped, key)
                shutil.rmtree(app)
                app.mkdir()
                _extract(result, app)
            found = _split(app, with_code=with_code)
        _store(root, key, *found)
    else:
        where = "cache"
    deps, code = found
    built = Built(key, deps, code, where if where != "host" else t.host.name, hosts.key, 0.0)
    built = dataclasses.replace(built, seconds=time.monotonic() - started)
    new = dataclasses.replace(
        art,
        deps_key=deps_identity(lock_sha if "package-lock.json" in files else None, hosts, key),
        deps=deps,
        code=code if code is not None else art.code,
        tree=f"{art.tree}+{key[:16]}" if code is not None else art.tree,
    )
    return new, built


def describe(built: Built | None) -> str:
    return built.describe() if built is not None else "no dependencies to build"
