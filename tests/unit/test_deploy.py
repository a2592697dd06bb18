"""Deploy, rollback and release logic without SSH: pure decisions, and the host-side scripts run
with local bash in a temporary directory (AppLayout(root=tmp_path))."""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from opskit.app import deploy as dep
from opskit.app import release
from opskit.app.resources import Unpacked
from opskit.core import artifacts
from opskit.core.errors import ConfigError, RemoteCommandError
from opskit.core.roles import REPO, available_roles, check_host_vars
from opskit.resources import NOTHING
from tests.fakes import LocalRemote

R = dep.Release


def state(*releases: R, current: str | None = None) -> dep.HostState:
    return dep.HostState(tuple(releases), current)


def artifact(tree: str = "T1", deps_key: str = "D1", *, code: bytes = b"c", deps: bytes = b"d"):
    return release.Artifact(
        "20260101T000000Z-abcdef0",
        "v1",
        "a" * 40,
        "v1",
        tree,
        code,
        deps_key,
        deps if deps_key else None,
        "t",
        "me",
    )


# --- pure decisions ------------------------------------------------------------------------------


def test_parse_state_reads_releases_marks_lock_and_journal():
    out = (
        "@@current releases/r2\n"
        '@@release r2\n{"ref": "v2", "describe": "v2"}\n'
        '@@release r1\n{"ref": "v1"}\n@@bad\n{"reason": "HTTP 503"}\n'
        '@@lock\n{"owner": "al@lap", "since": "T", "action": "deploy v3", "pid": 12}\n'
        "@@activating active\n"
        '@@journal\n{"action": "deploy", "result": "ok"}\n{"action": "rollback"}\n'
    )
    s = dep.parse_state(out)
    assert [r.name for r in s.releases] == ["r1", "r2"]  # oldest first
    assert s.current == "r2" and s.find("r1").bad == {"reason": "HTTP 503"}
    assert s.find("r2").label == "v2" and s.lock["owner"] == "al@lap" and s.activating
    assert [j["action"] for j in s.journal] == ["deploy", "rollback"]


def test_parse_state_of_a_fresh_host():
    s = dep.parse_state("@@current \n@@activating inactive\n")
    assert s == dep.HostState((), None, None, False, ())


@pytest.mark.parametrize(
    ("releases", "expected"),
    [
        ((), dep.UploadPlan(None, None, True, True)),
        ((R("r1", {"tree": "T1", "deps_key": "D1"}),), dep.UploadPlan("r1", "r1", False, False)),
        ((R("r1", {"tree": "T0", "deps_key": "D1"}),), dep.UploadPlan(None, "r1", True, False)),
        ((R("r1", {"tree": "T1", "deps_key": "D0"}),), dep.UploadPlan("r1", None, False, True)),
        # a release with both is preferred, then the newest
        (
            (
                R("r1", {"tree": "T1", "deps_key": "D1"}),
                R("r2", {"tree": "T1", "deps_key": "D0"}),
                R("r3", {"tree": "T0", "deps_key": "D1"}),
            ),
            dep.UploadPlan("r1", "r1", False, False),
        ),
        (
            (R("r1", {"tree": "T0", "deps_key": "D1"}), R("r2", {"tree": "T0", "deps_key": "D1"})),
            dep.UploadPlan(None, "r2", True, False),
        ),
    ],
)
def test_plan_upload_sends_only_what_no_release_has(releases, expected):
    assert dep.plan_upload(state(*releases), artifact()) == expected


def test_plan_upload_without_dependencies():
    plan = dep.plan_upload(state(R("r1", {"tree": "T0", "deps_key": ""})), artifact(deps_key=""))
    assert plan == dep.UploadPlan(None, None, True, False)
    assert plan.describe(artifact(deps_key="")).endswith("no dependencies")


BAD = {"reason": "health gate failed"}
HISTORY = state(
    R("a", {}),
    R("b", {}),
    R("c", {}, BAD),
    R("d", {}),
    R("e", {}, BAD),
    R("f", {}),
    current="f",
)


@pytest.mark.parametrize(("steps", "expected"), [(1, "d"), (2, "b"), (3, "a")])
def test_rollback_skips_bad_releases(steps, expected):
    assert dep.choose_rollback(HISTORY, steps=steps).name == expected


def test_rollback_never_goes_forward():
    s = state(R("a", {}), R("b", {}), R("c", {}), current="b")
    assert dep.choose_rollback(s).name == "a"
    with pytest.raises(dep.NothingToRollBack, match="only 1 good release"):
        dep.choose_rollback(s, steps=2)


@pytest.mark.parametrize(
    ("s", "message"),
    [
        (state(), "no current release"),
        (state(R("a", {}), current="a"), "nothing to roll back to: no good release older"),
        (state(R("a", {}, BAD), R("b", {}), current="b"), "1 older release.s. marked bad"),
    ],
)
def test_rollback_refuses_with_a_clear_message(s, message):
    with pytest.raises(dep.NothingToRollBack, match=message):
        dep.choose_rollback(s)


def test_rollback_to_a_named_release():
    assert dep.choose_rollback(HISTORY, to="b").name == "b"
    assert dep.choose_rollback(HISTORY, to="a").name == "a"
    with pytest.raises(dep.NothingToRollBack, match="marked bad"):
        dep.choose_rollback(HISTORY, to="c")
    with pytest.raises(dep.NothingToRollBack, match="already the current"):
        dep.choose_rollback(HISTORY, to="f")
    with pytest.raises(dep.NothingToRollBack, match="no release 'zz'"):
        dep.choose_rollback(HISTORY, to="zz")
    two = state(
        R("20260101T000000Z-aaaaaaa", {}),
        R("20260101T000001Z-bbbbbbb", {}),
        R("20260102T000000Z-ccccccc", {}),
        current="20260102T000000Z-ccccccc",
    )
    assert dep.choose_rollback(two, to="bbbbbbb").name == "20260101T000001Z-bbbbbbb"
    with pytest.raises(dep.NothingToRollBack, match="several"):
        dep.choose_rollback(two, to="20260101")


def test_prune_keeps_the_newest_and_protected():
    names = [f"r{i}" for i in range(1, 8)]
    assert dep.releases_to_prune(names, 5) == ["r1", "r2"]
    assert dep.releases_to_prune(names, 5, protect=["r1"]) == ["r2", "r3"]
    assert dep.releases_to_prune(names, 5, bad=["r6"]) == ["r1", "r6"]
    assert dep.releases_to_prune(names[:3], 5) == []


def test_batches():
    assert [len(b) for b in dep.batches(list(range(5)), 2)] == [2, 2, 1]
    with pytest.raises(ConfigError):
        dep.batches([1], 0)


def test_app_layout_validates_names():
    v = {"app_name": "shop", "app_user": "shop", "app_port": 3000}
    lo = dep.AppLayout.from_vars(v)
    assert (lo.base, lo.current, lo.pm2_service) == ("/srv/shop", "/srv/shop/current", "pm2-shop")
    for bad in ({"app_name": "../x"}, {"app_user": "root"}, {"app_port": 0}, {"app_port": True}):
        with pytest.raises(ConfigError):
            dep.AppLayout.from_vars({**v, **bad})


def test_restore_wraps_the_app_stop_and_start_in_the_maintenance_switch():
    from opskit.backup import restore
    from opskit.core.inventory import Host

    web = Host(
        "web1",
        "10.0.0.1",
        22,
        "deploy",
        ("web",),
        ("app", "nginx"),
        {"app_name": "shop", "app_port": 3000, "app_health_path": "/health"},
    )
    on = restore.maintenance_on(web, "systemctl stop pm2-app")
    assert on.index("> /var/lib/opskit/maintenance/shop") < on.index("systemctl stop")
    off = restore.maintenance_off(web, "systemctl start pm2-app")
    assert off.index("systemctl start") < off.index("http://127.0.0.1:3000/health")
    assert off.index("http://127.0.0.1:3000/health") < off.index("rm -f /var/lib/opskit/")
    assert off.endswith("exit $rc")  # the start command's exit status is the result
    db = Host("db1", "10.0.0.2", 22, "deploy", ("db",), ("postgresql",), {})
    assert restore.maintenance_on(db, "x") == "x" and restore.maintenance_off(db, "y") == "y"


def test_app_candidate_port_must_be_spare():
    v = {"app_name": "shop", "app_user": "shop", "app_port": 3000}
    assert dep.AppLayout.from_vars(v).spare_port == 3001
    assert dep.AppLayout.from_vars({**v, "app_candidate_port": 4000}).spare_port == 4000
    with pytest.raises(ConfigError, match="app_candidate_port: 3000 is app_port"):
        dep.AppLayout.from_vars({**v, "app_candidate_port": 3000})
    lo = dep.AppLayout.from_vars(v)
    assert "sport = :3001" in dep.state_script(lo)
    dep.parse_state("@@activating inactive\n@@spare 0\n").check_spare_port(lo)  # free: fine
    # an activation's own candidate listens there while it runs: not another program
    dep.parse_state("@@activating active\n@@spare 1\n").check_spare_port(lo)
    with pytest.raises(dep.DeployError, match="3001 is in use by another program"):
        dep.parse_state("@@activating inactive\n@@spare 1\n").check_spare_port(lo)


def test_activation_params_validate_the_gate():
    v = {
        "app_health_timeout": 30,
        "app_health_interval": 0.5,
        "app_health_successes": 3,
        "app_health_path": "/health",
        "app_health_match": '"status" *: *"healthy"',
        "app_node_source": "official",
        "app_node_version": "26.12.1",
    }
    lo = dep.AppLayout("shop", "shop", 3000)
    p = dep.activation_params(
        lo,
        v,
        action="deploy",
        target="r",
        ref="v1",
        sha="s",
        message="m 'quoted'",
        prune=["a", "b"],
        health_timeout=5,
    )
    assert p["HEALTH_URL"] == "http://127.0.0.1:3000/health" and p["HEALTH_TIMEOUT"] == "5"
    assert p["CANDIDATE_URL"] == "http://127.0.0.1:3001/health"
    assert p["CANDIDATE"] == "shop-candidate"
    assert p["PRUNE"] == "a b"
    # the parameters survive the trip through the sourced file
    cmd = dep.activate_command(lo, p, wait=10)
    env = cmd.split("<<'OPSKIT_EOF'\n", 1)[1].split("OPSKIT_EOF", 1)[0]
    out = subprocess.run(
        ["bash", "-c", env + 'printf "%s|%s" "$MESSAGE" "$HEALTH_MATCH"'],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out == 'm \'quoted\'|"status" *: *"healthy"'
    with pytest.raises(ConfigError):
        dep.activation_params(
            lo,
            {**v, "app_health_path": "health"},
            action="deploy",
            target="r",
            ref="",
            sha="",
            message="",
            prune=[],
            health_timeout=None,
        )


def test_parse_activation_without_result_says_so():
    with pytest.raises(dep.DeployError, match=r"without a result.*timed out.*its log:\nx"):
        dep.parse_activation("@@log\nx\n@@timeout\n")


def test_format_releases_marks_current_and_bad():
    s = state(
        R("r1", {"describe": "v1", "deployed_at": "T1", "deployed_by": "al"}, BAD),
        R("r2", {"describe": "v2", "deployed_at": "T2", "deployed_by": "bo", "message": "hi"}),
        current="r2",
    )
    text = dep.format_releases(
        [dep.HostReleases("web1", s, keep=5), dep.HostReleases("web2", error="unreachable")]
    )
    lines = text.splitlines()
    assert lines[0] == "[web1] 2 release(s), current: r2, keeping 5"
    assert lines[1].startswith("  * r2  v2") and "by bo  (hi)" in lines[1]
    assert lines[2].startswith("  ! r1  v1") and "BAD since" in lines[3]
    assert lines[4] == "[web2] FAILED   unreachable"


# --- host-side scripts, run locally ----------------------------------------------------------


@pytest.fixture
def layout(tmp_path: Path) -> dep.AppLayout:
    lo = dep.AppLayout("shop", "shop", 3000, root=str(tmp_path))
    Path(lo.releases).mkdir(parents=True)
    return lo


def _hold(layout: dep.AppLayout, owner: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        ["bash", "-s"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdin is not None
    info = {"owner": owner, "since": "T", "action": "deploy v2", "message": "m"}
    proc.stdin.write(dep.lock_script(layout, info))
    proc.stdin.flush()
    return proc


def test_lock_refuses_a_second_holder_and_dies_with_the_first(layout):
    first = _hold(layout, "alice@laptop")
    assert first.stdout is not None and first.stdout.readline() == "@@acquired\n"
    second = _hold(layout, "bob@laptop")
    out, _ = second.communicate(timeout=10)
    assert second.returncode == dep.LOCKED_EXIT
    holder = json.loads(out.split("@@locked\n", 1)[1])
    assert holder["owner"] == "alice@laptop" and holder["pid"] == first.pid
    # the state read shows the holder while it lives
    shown = subprocess.run(
        ["bash", "-c", dep.state_script(layout)], capture_output=True, text=True
    ).stdout
    assert dep.parse_state(shown).lock["owner"] == "alice@laptop"
    first.kill()  # like an operator's process killed mid-deploy: its channel closes
    first.wait(timeout=10)
    third = _hold(layout, "carol@laptop")
    assert third.stdout is not None and third.stdout.readline() == "@@acquired\n"
    third.stdin.close()  # the normal release: lock.json goes
    third.wait(timeout=10)
    assert third.returncode == 0 and not Path(layout.state_dir, "lock.json").exists()


def test_lock_refuses_an_unprovisioned_host(tmp_path):
    lo = dep.AppLayout("shop", "shop", 3000, root=str(tmp_path))
    proc = _hold(lo, "alice")
    proc.communicate(timeout=10)
    assert proc.returncode == dep.UNPROVISIONED_EXIT


def _tar(files: dict[str, str], prefix: str = "") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"{prefix}{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _prepare(lo, art, plan, tmp_path, **paths):
    script = dep.prepare_script(
        lo, art, plan, meta={"name": art.name, "tree": art.tree, "deps_key": art.deps_key}, **paths
    )
    if os.geteuid() != 0:  # hosts run it as root; locally the owner stays ours
        script = script.replace("chown -R root:root", "true")
    LocalRemote().run(script)


def test_prepare_unpacks_then_links_what_the_host_has(layout, tmp_path):
    code = _tar({"server.js": "v1\n"})
    deps = _tar({"node_modules/ms/index.js": "ms\n"})
    art = release.Artifact(
        "20260101T000000Z-aaaaaaa", "v1", "a" * 40, "v1", "T1", code, "D1", deps, "t", "me"
    )
    (tmp_path / ".opskit-x-code.tar.gz").write_bytes(code)
    (tmp_path / ".opskit-x-deps.tar.gz").write_bytes(deps)
    # what a deploy killed after its upload left behind
    (tmp_path / ".opskit-old-code.tar.gz").write_bytes(b"left over")
    os.utime(tmp_path / ".opskit-old-code.tar.gz", (time.time() - 7200, time.time() - 7200))
    plan = dep.plan_upload(state(), art)
    _prepare(
        layout,
        art,
        plan,
        tmp_path,
        code_path=str(tmp_path / ".opskit-x-code.tar.gz"),
        deps_path=str(tmp_path / ".opskit-x-deps.tar.gz"),
    )
    assert not (tmp_path / ".opskit-old-code.tar.gz").exists()
    r1 = Path(layout.releases, art.name)
    assert (r1 / "server.js").read_text() == "v1\n"
    assert json.loads((r1 / dep.RELEASE_META).read_text())["tree"] == "T1"
    assert not (tmp_path / ".opskit-x-code.tar.gz").exists()  # uploads: removed once unpacked
    (r1 / dep.BAD_MARK).write_text("{}")

    # same code and dependencies: everything is hard-linked, nothing sent, no bad mark
    art2 = release.Artifact(
        "20260102T000000Z-aaaaaaa", "v1", "a" * 40, "v1", "T1", code, "D1", deps, "t", "me"
    )
    listed = dep.parse_state(
        subprocess.run(
            ["bash", "-c", dep.state_script(layout)], capture_output=True, text=True
        ).stdout
    )
    plan2 = dep.plan_upload(listed, art2)
    assert plan2 == dep.UploadPlan(art.name, art.name, False, False)
    _prepare(layout, art2, plan2, tmp_path, code_path=None, deps_path=None)
    r2 = Path(layout.releases, art2.name)
    assert not (r2 / dep.BAD_MARK).exists() and (r1 / dep.BAD_MARK).exists()
    assert (r2 / "node_modules/ms/index.js").stat().st_ino == (
        r1 / "node_modules/ms/index.js"
    ).stat().st_ino
    assert json.loads((r2 / dep.RELEASE_META).read_text())["name"] == art2.name
    assert json.loads((r1 / dep.RELEASE_META).read_text())["name"] == art.name

    # new code, same dependencies: code sent, node_modules linked
    code3 = _tar({"server.js": "v3\n"})
    (tmp_path / "code3.tgz").write_bytes(code3)
    art3 = release.Artifact(
        "20260103T000000Z-bbbbbbb", "v3", "b" * 40, "v3", "T3", code3, "D1", deps, "t", "me"
    )
    plan3 = dep.plan_upload(listed, art3)
    assert (plan3.send_code, plan3.send_deps) == (True, False)
    _prepare(layout, art3, plan3, tmp_path, code_path=str(tmp_path / "code3.tgz"), deps_path=None)
    r3 = Path(layout.releases, art3.name)
    assert (r3 / "server.js").read_text() == "v3\n"
    assert (r3 / "node_modules/ms/index.js").stat().st_ino == (
        r1 / "node_modules/ms/index.js"
    ).stat().st_ino
    assert sorted(p.name for p in Path(layout.releases).iterdir()) == [
        art.name,
        art2.name,
        art3.name,
    ]  # no .partial-* left


def test_prepare_refuses_a_corrupted_upload(layout, tmp_path):
    code = _tar({"server.js": "v1\n"})
    (tmp_path / "code.tgz").write_bytes(code + b"junk")
    art = release.Artifact(
        "20260101T000000Z-aaaaaaa", "v1", "a" * 40, "v1", "T1", code, "", None, "t", "me"
    )
    with pytest.raises(Exception, match="exit 1"):
        _prepare(
            layout,
            art,
            dep.plan_upload(state(), art),
            tmp_path,
            code_path=str(tmp_path / "code.tgz"),
            deps_path=None,
        )
    assert not Path(layout.releases, art.name).exists()


# --- app_shared_paths ----------------------------------------------------------------------------

SHARED = ("uploads/", ".env", "public/media/")


@pytest.fixture
def shared_layout(tmp_path: Path) -> dep.AppLayout:
    # `nobody` stands in for the app user: a user every test machine has
    lo = dep.AppLayout("shop", "nobody", 3000, root=str(tmp_path / "srv"), shared_paths=SHARED)
    Path(lo.releases).mkdir(parents=True)
    Path(lo.shared).mkdir()
    return lo


def _shared_prepare(lo, name, files, tmp_path, *, code_from=None, tree="T1"):
    """Prepare release `name` (its code sent, or hard-linked from `code_from`); its stdout."""
    code = _tar(files)
    (tmp_path / "code.tgz").write_bytes(code)
    art = release.Artifact(name, "v", "a" * 40, "v", tree, code, "", None, "t", "me")
    plan = dep.UploadPlan(code_from, None, code_from is None, False)
    script = dep.prepare_script(
        lo,
        art,
        plan,
        code_path=None if code_from else str(tmp_path / "code.tgz"),
        deps_path=None,
        meta={"name": name, "tree": tree},
    )
    if os.geteuid() != 0:  # hosts run it as root; locally the owner stays ours
        script = script.replace("chown -R root:root", "true").replace("chown -h", "true")
    return LocalRemote().run(script).stdout


def test_shared_paths_are_made_once_linked_into_every_release_and_survive_deploys_and_prune(
    shared_layout, tmp_path
):
    lo = shared_layout
    shared = Path(lo.shared)
    r1, r2, r3 = (f"2026010{i}T000000Z-aaaaaaa" for i in (1, 2, 3))
    # the first release ships its own .env and uploads/: the links replace them, said once
    out = _shared_prepare(
        lo, r1, {"server.js": "v1\n", ".env": "SHIPPED=1\n", "uploads/x": "shipped\n"}, tmp_path
    )
    assert dep.replaced_note(out, r1) == (
        f"{r1} had its own uploads/, .env: replaced by links to the shared ones (app_shared_paths)"
    )
    for path, kind, mode in (
        ("uploads", "d", 0o750),
        (".env", "f", 0o640),
        ("public", "d", 0o750),
        ("public/media", "d", 0o750),
    ):
        st = (shared / path).lstat()
        assert (oct(st.st_mode & 0o777), (shared / path).is_dir()) == (oct(mode), kind == "d"), path
        if os.geteuid() == 0:
            assert st.st_uid == 65534, path  # the app user's
    assert list((shared / "uploads").iterdir()) == [] and (shared / ".env").read_text() == ""
    rel1 = Path(lo.releases, r1)
    for p in ("uploads", ".env", "public/media"):
        assert os.readlink(rel1 / p) == f"{lo.shared}/{p}"
    assert (rel1 / "server.js").read_text() == "v1\n"
    # the running app writes through its release's links
    (rel1 / "uploads" / "photo.jpg").write_text("jpeg\n")
    (rel1 / ".env").write_text("SECRET=1\n")

    # the next deploys (code hard-linked from r1, then new code) never overwrite or remove them
    assert _shared_prepare(lo, r2, {}, tmp_path, code_from=r1) == ""
    out3 = _shared_prepare(lo, r3, {"server.js": "v3\n"}, tmp_path, tree="T3")
    assert dep.replaced_note(out3, r3) is None
    for r in (r2, r3):
        assert (Path(lo.releases, r) / "uploads" / "photo.jpg").read_text() == "jpeg\n"
        assert (Path(lo.releases, r) / ".env").read_text() == "SECRET=1\n"
    assert (shared / ".env").read_text() == "SECRET=1\n"
    if os.geteuid() == 0:  # chown -R root of the release never follows its links
        assert (shared / ".env").stat().st_uid == 65534

    # pruning r1 and r2 (what activate.sh's prune runs) leaves the shared files
    prune = next(ln for ln in dep.activate_sh().splitlines() if "rm -rf" in ln and "releases" in ln)
    assert 'rm -rf -- "${BASE:?}/releases/$r"' in prune
    for r in (r1, r2):
        subprocess.run(
            ["bash", "-c", f'BASE={lo.base}; r={r}; rm -rf -- "${{BASE:?}}/releases/$r"'],
            check=True,
        )
    assert sorted(p.name for p in Path(lo.releases).iterdir()) == [r3]
    assert (shared / "uploads" / "photo.jpg").read_text() == "jpeg\n"
    assert (Path(lo.releases, r3) / "uploads" / "photo.jpg").read_text() == "jpeg\n"


def test_an_old_release_gets_its_links_at_activation_once(shared_layout, tmp_path):
    """A release prepared before app_shared_paths existed (a rollback's target): the activation
    runs the same script on it; a second run changes nothing."""
    lo = shared_layout
    old = dep.AppLayout("shop", "nobody", 3000, root=lo.root)  # no shared paths yet
    _shared_prepare(old, "r0", {"server.js": "v0\n", ".env": "OLD=1\n"}, tmp_path)
    rel = Path(lo.releases, "r0")
    assert not (rel / "uploads").exists() and not (rel / ".env").is_symlink()
    params = dep.activation_params(
        lo,
        DEFAULT_GATE,
        action="rollback",
        target="r0",
        ref="v0",
        sha="s",
        message="",
        prune=(),
        health_timeout=None,
    )
    assert (
        dep.activation_params(
            old,
            DEFAULT_GATE,
            action="rollback",
            target="r0",
            ref="v0",
            sha="s",
            message="",
            prune=(),
            health_timeout=None,
        )["LINK_SHARED"]
        == ""
    )
    script = params["LINK_SHARED"]
    if os.geteuid() != 0:
        script = script.replace("chown -h", "true")
    first = LocalRemote().run(script).stdout
    assert dep.replaced_note(first, "r0") is not None and ".env" in first
    assert os.readlink(rel / ".env") == f"{lo.shared}/.env"
    assert os.readlink(rel / "public/media") == f"{lo.shared}/public/media"
    before = {p: p.lstat().st_mtime_ns for p in [*rel.rglob("*"), *Path(lo.shared).rglob("*")]}
    assert LocalRemote().run(script).stdout == ""  # idempotent
    after = {p: p.lstat().st_mtime_ns for p in [*rel.rglob("*"), *Path(lo.shared).rglob("*")]}
    assert after == before
    # the activation runs it and says what it replaced in the words rollback_work notes
    assert '"$LINK_SHARED"' in dep.activate_sh() and dep.SHARED_LINKED in dep.activate_sh()


DEFAULT_GATE = {
    "app_health_timeout": 5,
    "app_health_interval": 0.5,
    "app_health_successes": 1,
    "app_health_path": "/health",
    "app_health_match": "",
    "app_node_source": "distro",
    "app_node_version": "26.12.1",
}


def test_shared_paths_refuse_a_wrong_kind_and_a_way_out(shared_layout, tmp_path):
    lo = shared_layout
    shared = Path(lo.shared)
    (shared / "uploads").write_text("a file where a directory is declared\n")
    with pytest.raises(RemoteCommandError, match="exists but is not a directory"):
        _shared_prepare(lo, "r1", {"server.js": "v1\n"}, tmp_path)
    assert not Path(lo.releases, "r1").exists()  # never in place (the next prepare sweeps)
    (shared / "uploads").unlink()
    # a symlink in shared/ leading elsewhere: nothing is created through it
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (shared / "public").symlink_to(elsewhere)
    with pytest.raises(RemoteCommandError, match="leads outside"):
        _shared_prepare(lo, "r1", {"server.js": "v1\n"}, tmp_path)
    assert list(elsewhere.iterdir()) == []
    assert not Path(lo.releases, "r1").exists()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (["/etc/passwd"], r"app_shared_paths\[0\]: '/etc/passwd' is absolute"),
        (["uploads/", "../x"], r"app_shared_paths\[1\]: '\.\./x': each part must be a name"),
        (["a/./b"], r"app_shared_paths\[0\]: 'a/\./b': each part must be a name"),
        (["uploads/", "uploads"], r"app_shared_paths\[1\]: 'uploads' is given twice"),
        ([".env", ".env"], r"app_shared_paths\[1\]: '\.env' is given twice"),
        (["public/", "public/media/"], r"app_shared_paths\[1\]: 'public/media/' overlaps"),
        (["ecosystem.config.js"], r"app_shared_paths\[0\]: .*opskit's own"),
        (["node_modules/"], r"app_shared_paths\[0\]: .*opskit's own"),
        (["/"], r"app_shared_paths\[0\]: expected a relative path"),
        ("uploads/", r"app_shared_paths: expected a list"),
    ],
)
def test_app_shared_paths_are_checked(value, message):
    v = {"app_name": "shop", "app_user": "shop", "app_port": 3000, "app_shared_paths": value}
    with pytest.raises(ConfigError, match=message):
        dep.AppLayout.from_vars(v)
    good = dep.AppLayout.from_vars({**v, "app_shared_paths": ["uploads/", ".env"]})
    assert good.shared_paths == ("uploads/", ".env")


# --- building the artifact ---------------------------------------------------------------------


def _git_repo(path: Path, files: dict[str, str]) -> Path:
    path.mkdir()
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True, env=env)
    for name, text in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    subprocess.run(["git", "-C", str(path), "add", "-A"], check=True, env=env)
    subprocess.run(["git", "-C", str(path), "commit", "-q", "-m", "one"], check=True, env=env)
    subprocess.run(["git", "-C", str(path), "tag", "v1"], check=True, env=env)
    return path


def test_build_is_deterministic_and_named_by_time_and_commit(tmp_path):
    repo = _git_repo(
        tmp_path / "repo", {"web/server.js": "x\n", "web/package.json": "{}\n", "README": "other\n"}
    )
    a = release.build(repo, "web", "v1", cache=tmp_path / "cache", now=0)
    b = release.build(repo, "web/", "main", cache=tmp_path / "cache", now=60)
    assert a.code == b.code and a.tree == b.tree and a.sha == b.sha and a.deps is None
    assert a.name == f"19700101T000000Z-{a.sha[:7]}" and b.name.startswith("19700101T000100Z-")
    with tarfile.open(fileobj=io.BytesIO(a.code)) as tar:
        assert sorted(tar.getnames()) == ["package.json", "server.js"]
    assert a.metadata(message="m")["message"] == "m" and a.describe == "v1"


def test_build_refuses_bad_refs_and_paths(tmp_path):
    repo = _git_repo(tmp_path / "repo", {"server.js": "x\n"})
    with pytest.raises(ConfigError, match="no such commit"):
        release.build(repo, ".", "nope", cache=tmp_path)
    with pytest.raises(ConfigError, match="expected a git ref"):
        release.build(repo, ".", "--upload-pack=x", cache=tmp_path)
    with pytest.raises(ConfigError, match="not a directory"):
        release.build(repo, "missing", "v1", cache=tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        release.resolve_repo("nowhere", tmp_path)
    with pytest.raises(ConfigError, match="app_repo is not set"):
        release.resolve_repo("", tmp_path)


def test_build_needs_a_lock_file_for_dependencies(tmp_path):
    repo = _git_repo(tmp_path / "repo", {"package.json": '{"dependencies": {"ms": "2.1.3"}}'})
    with pytest.raises(artifacts.BuildError, match=r"no package-lock\.json"):
        release.build(repo, ".", "v1", cache=tmp_path)


def test_build_uses_cached_dependencies(tmp_path):
    lock = '{"lockfileVersion": 3}\n'
    repo = _git_repo(
        tmp_path / "repo",
        {"package.json": '{"dependencies": {"ms": "2.1.3"}}', "package-lock.json": lock},
    )
    key = artifacts.sha256(lock.encode())
    (tmp_path / "deps").mkdir()
    (tmp_path / "deps" / f"{key}.tar.gz").write_bytes(b"cached")  # no npm run
    a = release.build(repo, ".", "v1", cache=tmp_path)
    assert (a.deps_key, a.deps) == (key, b"cached")


def test_sample_app_demo_repo(tmp_path):
    out = subprocess.run(
        [str(REPO / "app/sample/make-demo-repo"), str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "broken" in out and "v3" in out
    names = ("v1", "v2", "broken", "v3", "slow", "crash")
    tags = {t: release.resolve_commit(tmp_path / "demo", t) for t in names}
    assert len(set(tags.values())) == 6
    show = subprocess.run(
        ["git", "-C", str(tmp_path / "demo"), "ls-tree", "--name-only", "broken"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "BROKEN" in show.split()


# --- resources of the app and nginx roles --------------------------------------------------------


def test_unpacked_installs_once_then_changes_nothing(tmp_path):
    src = tmp_path / "src"
    (src / "pm2" / "bin").mkdir(parents=True)
    (src / "pm2" / "bin" / "pm2").write_text("#!/bin/sh\n")
    tarball = tmp_path / "b.tar.gz"
    tarball.write_bytes(artifacts.tar_gz_dir(src, prefix="node_modules"))
    bundle = artifacts.Bundle("pm2", "1", tarball, artifacts.sha256(tarball.read_bytes()))
    res = Unpacked(str(tmp_path / "opt/pm2"), "pm2 1", lambda: bundle)
    remote = LocalRemote()
    probe = remote.run(res.probe()).stdout
    plan = res.plan(probe, frozenset())
    assert plan.reasons[0].startswith("install pm2 1")
    (tmp_path / "opt").mkdir()
    remote.run(res.script(plan))
    assert (tmp_path / "opt/pm2/node_modules/pm2/bin/pm2").exists()
    assert res.plan(remote.run(res.probe()).stdout, frozenset()) is NOTHING


def _role_vars(role: str, **extra: object) -> dict[str, object]:
    roles = available_roles()
    v: dict[str, object] = {}
    for name in ("app", "nginx"):
        v.update(roles[name].defaults)
    v.update(extra)
    return v


def test_app_role_resources_and_checks():
    app = available_roles()["app"].module()
    ids = [r.id for r in app.resources(_role_vars("app", app_name="shop", app_user="shop"))]
    assert "unpacked:/opt/opskit/pm2" in ids and "service:pm2-shop" in ids
    assert "file:/srv/shop/shared/ecosystem.config.js" in ids
    assert ids.index("systemd:daemon-reload") < ids.index("service:pm2-shop")
    for bad in (
        {"app_instances": 0},
        {"app_exec_mode": "x"},
        {"app_keep_releases": 1},
        {"app_env": {"A": {"secret": "X"}}},
        {"app_env": {"1A": "x"}},
        {"app_user": "root"},
    ):
        with pytest.raises(ConfigError):
            check_host_vars(available_roles(), ["app"], _role_vars("app", **bad))  # at load
            app.resources(_role_vars("app", **bad))


def test_ecosystem_file_is_secret_and_has_the_environment():
    from opskit.core.secrets import Secret

    app = available_roles()["app"].module()
    v = _role_vars(
        "app",
        app_name="shop",
        app_user="shop",
        app_sentry_dsn=Secret("https://k@s/1"),
        app_env={"GREETING": "hi", "WORKERS": 2},
    )
    [eco] = [r for r in app.resources(v) if r.id.endswith("ecosystem.config.js")]
    assert eco.sensitive and eco.mode == 0o600 and eco.owner == "shop"
    assert '"SENTRY_DSN": "https://k@s/1"' in eco.content and '"WORKERS": "2"' in eco.content
    assert "{ SENTRY_RELEASE: releaseOf(dir) }" in eco.content
    # a deploy starts the release beside the live app: one process on the spare port
    assert 'candidate ? { PORT: "3001" } : {}' in eco.content
    assert 'name: candidate ? "shop-candidate" : "shop"' in eco.content
    assert eco.plan("absent\n", frozenset()).diff == ""  # never shown


def test_nginx_site(tmp_path):
    ng = available_roles()["nginx"].module()
    res = ng.resources(_role_vars("nginx", app_name="shop", app_port=3001))
    [site] = [r for r in res if r.id.startswith("file:")]
    assert site.path == "/etc/nginx/conf.d/opskit-shop.conf" and site.check_after == "nginx -t"
    assert "server 127.0.0.1:3001;" in site.content
    assert "location ~ /\\.(?!well-known/) {\n        return 404;" in site.content
    assert "listen 80 default_server;" in site.content
    assert 'add_header X-Content-Type-Options "nosniff" always;' in site.content
    assert [r.id for r in res][1] == "absent:/etc/nginx/sites-enabled/default"
    # the maintenance switch: a flag file makes every request a 503 with Retry-After
    assert "if (-f /var/lib/opskit/maintenance/shop) {\n        return 503;" in site.content
    assert "error_page 503 @opskit_maintenance;" in site.content
    assert 'add_header Retry-After "30" always;' in site.content
    page = site.content.split("location @opskit_maintenance {", 1)[1].split("}", 1)[0]
    assert 'add_header X-Content-Type-Options "nosniff" always;' in page  # not lost there
    keep = ng.resources(_role_vars("nginx", nginx_remove_default_site=False))
    [site] = [r for r in keep if r.id.startswith("file:")]
    assert "default_server" not in site.content
    for bad in (
        {"nginx_upstream": "x y"},
        {"nginx_client_max_body_size": "10 m"},
        {"nginx_security_headers": {"X-A": 'a"b'}},
        {"nginx_server_names": []},
        {"nginx_proxy_read_timeout": "1h"},
    ):
        with pytest.raises(ConfigError):
            check_host_vars(available_roles(), ["nginx"], _role_vars("nginx", **bad))  # at load
            ng.resources(_role_vars("nginx", **bad))


# --- the fleet's deploy lock (FleetLock), with fake host locks ---------------------------------


class _FakeRemote:
    def __init__(self, host):
        self.host, self.name = host, host.name


def _fleet(monkeypatch, names, held_by=None):
    """Hosts `names`; `held_by` maps a host to the holder that refuses its lock. Returns the
    hosts and a log of what happened, in order."""
    from opskit.core.inventory import Host
    from opskit.core.result import HostResult

    events: list[str] = []

    class FakeLock:
        def __init__(self, remote, layout, info):
            self.name = remote.name

        def __enter__(self):
            if held_by and self.name in held_by:
                raise dep.LockedError(f"refused: {dep.describe_lock(held_by[self.name])}")
            events.append(f"lock {self.name}")
            return self

        def __exit__(self, *exc):
            events.append(f"unlock {self.name}")

    def fake_run_on_hosts(inventory, hosts, work, *, workers, sudo_password, on_result):
        import threading

        results = {}

        def one(h):
            try:
                work(_FakeRemote(h), None)
                r = HostResult(h.name)
            except Exception as exc:
                r = HostResult(h.name, error=str(exc))
            on_result(r)
            results[h.name] = r

        threads = [threading.Thread(target=one, args=(h,)) for h in hosts]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        return [results[h.name] for h in hosts]

    monkeypatch.setattr(dep, "HostLock", FakeLock)
    monkeypatch.setattr(dep, "run_on_hosts", fake_run_on_hosts)
    v = {"app_name": "shop", "app_user": "shop", "app_port": 3000}
    hosts = [Host(n, "10.0.0.1", 22, "deploy", ("web",), ("app",), v) for n in names]
    return hosts, events


def test_fleet_lock_changes_nothing_unless_every_host_is_locked(monkeypatch):
    holder = {"owner": "alice@laptop", "since": "T", "action": "deploy v3", "message": "m"}
    hosts, events = _fleet(monkeypatch, ["web1", "web2", "web3"], held_by={"web2": holder})
    built = []
    prepare = dep.Once(lambda: built.append(1))

    def work(remote, ctx):
        events.append(f"work {remote.name}")
        return []

    results = dep.run_in_batches(None, hosts, work, batch=1, prepare=prepare)
    errors = {r.host: r.error for r in results}
    assert errors["web2"] == "refused: a deploy holds the lock: alice@laptop since T (deploy v3: m)"
    for name in ("web1", "web3"):
        assert errors[name].startswith("not run: web2: refused: a deploy holds the lock: alice")
    assert not [e for e in events if e.startswith("work")] and built == []  # nothing, anywhere
    assert "lock web3" not in events  # locks are taken in name order: it stopped at web2
    assert events == ["lock web1", "unlock web1"]


def test_fleet_lock_holds_every_host_then_runs_the_batches_in_turn(monkeypatch):
    hosts, events = _fleet(monkeypatch, ["web2", "web1", "web3"])
    prepare = dep.Once(lambda: events.append("build") or "artifact")

    def work(remote, ctx):
        assert prepare() == "artifact"
        events.append(f"work {remote.name}")
        if remote.name == "web1":
            raise dep.DeployError("health gate failed")
        return []

    results = dep.run_in_batches(None, hosts, work, batch=2, prepare=prepare)
    errors = {r.host: r.error for r in results}
    assert errors["web2"] is None and errors["web1"] == "health gate failed"
    assert errors["web3"] == "not run: batch 1 failed (web1); this host is unchanged"
    locks = [e for e in events if e.startswith("lock")]
    assert locks == ["lock web1", "lock web2", "lock web3"]
    first_change = min(
        events.index("build"), *(events.index(f"work {n}") for n in ("web1", "web2"))
    )
    assert all(events.index(lock) < first_change for lock in locks)  # all held before any change
    assert events.count("build") == 1 and "work web3" not in events
    assert sorted(e for e in events if e.startswith("unlock")) == [
        "unlock web1",
        "unlock web2",
        "unlock web3",
    ]


def test_fleet_lock_a_failed_build_is_raised_once_every_lock_is_gone(monkeypatch):
    hosts, events = _fleet(monkeypatch, ["web1", "web2"])

    def build():
        raise ConfigError("--ref nope: no such commit")

    with pytest.raises(ConfigError, match="no such commit"):
        dep.run_in_batches(None, hosts, lambda r, c: [], batch=1, prepare=dep.Once(build))
    assert sorted(events) == ["lock web1", "lock web2", "unlock web1", "unlock web2"]


def test_fleet_lock_a_check_refused_on_one_host_changes_no_host(monkeypatch):
    # `rollback --to R` where web2 lacks R: refused (exit 2) before any host changes.
    hosts, events = _fleet(monkeypatch, ["web1", "web2", "web3"])

    def check(remote):
        events.append(f"check {remote.name}")
        if remote.name == "web2":
            raise dep.NothingToRollBack("no release 'v9' on this host (releases: v1, v2)")

    def work(remote, ctx):
        events.append(f"work {remote.name}")
        return []

    refused = r"refused before any host changed: web2: no release .v9."
    with pytest.raises(ConfigError, match=refused):
        dep.run_in_batches(None, hosts, work, batch=3, check=check)
    assert not [e for e in events if e.startswith("work")]
    assert "check web3" not in events  # stopped in name order at web2
    assert sorted(e for e in events if e.startswith("unlock")) == ["unlock web1", "unlock web2"]
