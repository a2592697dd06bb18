"""Pure parts of the lab (opskit.lab and its stand-ins): no root, no processes, no network."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from opskit.lab import apt, hosts, image, network, nspawn, proc, registry
from opskit.lab.spec import (
    LabError,
    LabHost,
    LabSpec,
    find_host,
    gateway_ip,
    lab_network,
    load_lab_spec,
)
from opskit.lab.standins import aptproxy

REPO = Path(__file__).resolve().parents[2]

DEB822 = """\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
 contrib

Types: deb
Enabled: no
URIs: http://disabled.example/debian
Suites: bookworm
Components: main
"""

LAB_YML = """\
ssh: {known_hosts: kh, identity: keys/id_ed25519}
lab:
  state_dir: state
  cache_dir: /var/cache/x
  bridge: opskit0
  gateway: 10.213.0.1/24
  packages: [curl, less, curl]
vars: {ssh_user: deploy}
groups:
  web:
    hosts:
      web1: {address: 10.213.0.11}
  db:
    hosts:
      db1: {address: 10.213.0.21}
      web1: {address: 10.213.0.11}
"""


# ---- apt sources ---------------------------------------------------------------------------


def test_parse_deb822_sources_skips_comments_and_disabled_stanzas() -> None:
    sources = apt.parse_deb822_sources(DEB822)
    assert [s.uris for s in sources] == [
        ("http://deb.debian.org/debian",),
        ("http://deb.debian.org/debian-security",),
    ]
    assert sources[0].suites == ("bookworm", "bookworm-updates")
    assert sources[1].components == ("main", "contrib")  # continuation line


def test_parse_sources_list_handles_options_comments_and_deb_src() -> None:
    text = (
        "# a comment\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://ftp.de.debian.org/debian bookworm main contrib\n"
        "deb-src http://ftp.de.debian.org/debian bookworm main  # trailing comment\n"
        "garbage line\n"
    )
    sources = apt.parse_sources_list(text)
    assert sources[0] == apt.AptSource(
        ("deb",), ("http://ftp.de.debian.org/debian",), ("bookworm",), ("main", "contrib")
    )
    assert sources[1].types == ("deb-src",)
    assert len(sources) == 2


def test_pick_mirror_takes_the_first_deb_source_for_the_suite() -> None:
    sources = apt.parse_sources_list(
        "deb-src http://src.example/debian bookworm main\n"
        "deb http://sec.example/debian-security bookworm-security main\n"
        "deb http://mirror.example/debian bookworm main\n"
    )
    assert apt.pick_mirror(sources) == "http://mirror.example/debian"


def test_pick_mirror_without_a_bookworm_source_says_what_to_add() -> None:
    with pytest.raises(LabError, match=r"sources\.list.*deb http://<mirror>/debian bookworm"):
        apt.pick_mirror(apt.parse_sources_list("deb http://m.example/debian trixie main"))


def test_mirror_hosts_lists_http_hosts_once_with_non_default_ports() -> None:
    sources = [
        *apt.parse_deb822_sources(DEB822),
        *apt.parse_sources_list(
            "deb https://secure.example/debian bookworm main\n"
            "deb http://local.example:8080/debian bookworm main\n"
        ),
    ]
    assert apt.mirror_hosts(sources) == ("deb.debian.org", "local.example:8080")


def test_read_machine_apt_sources_reads_both_formats(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text("deb http://one.example/debian bookworm main\n")
    (tmp_path / "sources.list.d" / "debian.sources").write_text(DEB822)
    (tmp_path / "sources.list.d" / "ignored.save").write_text("deb http://no.example/ x main\n")
    sources = apt.read_machine_apt_sources(tmp_path)
    assert [s.uris[0] for s in sources] == [
        "http://one.example/debian",
        "http://deb.debian.org/debian",
        "http://deb.debian.org/debian-security",
    ]


# ---- base image key ------------------------------------------------------------------------


def test_base_image_key_ignores_order_and_duplicates() -> None:
    assert image.base_image_key(["less", "curl"]) == image.base_image_key(["curl", "less", "curl"])


def test_base_image_key_changes_with_packages_baked_values_and_recipe(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key = image.base_image_key(["curl"], {"deploy_user": "deploy"})
    assert len(key) == 12 and all(c in "0123456789abcdef" for c in key)
    assert image.base_image_key(["curl", "less"], {"deploy_user": "deploy"}) != key
    assert image.base_image_key(["curl"], {"deploy_user": "ops"}) != key
    monkeypatch.setattr(image, "RECIPE_VERSION", image.RECIPE_VERSION + 1)
    assert image.base_image_key(["curl"], {"deploy_user": "deploy"}) != key


# ---- known_hosts ---------------------------------------------------------------------------


def test_known_hosts_line_drops_the_comment() -> None:
    line = hosts.known_hosts_line("10.213.0.11", "ssh-ed25519 AAAAkey root@build\n")
    assert line == "10.213.0.11 ssh-ed25519 AAAAkey"


def test_known_hosts_line_rejects_what_is_not_a_key() -> None:
    with pytest.raises(LabError, match="not an SSH public key"):
        hosts.known_hosts_line("10.213.0.11", "-----BEGIN OPENSSH PRIVATE KEY-----")


def test_merge_known_hosts_replaces_lab_entries_and_keeps_the_rest() -> None:
    existing = (
        "# my hosts\n"
        "github.com ssh-ed25519 GH\n"
        "10.213.0.11 ssh-ed25519 OLD11\n"
        "[10.213.0.12]:22 ssh-rsa OLD12\n"
        "10.213.0.21,db.example ssh-ed25519 OLD21\n"
        "|1|hashed= ssh-ed25519 HASHED\n"
        "@cert-authority 10.213.0.11 ssh-ed25519 CA\n"
    )
    managed = {"10.213.0.11", "10.213.0.12", "10.213.0.21"}
    new = ["10.213.0.11 ssh-ed25519 NEW11", "10.213.0.21 ssh-ed25519 NEW21"]
    merged = hosts.merge_known_hosts(existing, new, managed)
    assert merged.splitlines() == [
        "# my hosts",
        "github.com ssh-ed25519 GH",
        "db.example ssh-ed25519 OLD21",
        "|1|hashed= ssh-ed25519 HASHED",
        "10.213.0.11 ssh-ed25519 NEW11",
        "10.213.0.21 ssh-ed25519 NEW21",
    ]
    assert hosts.merge_known_hosts(merged, new, managed) == merged  # idempotent


def test_merge_known_hosts_into_an_empty_file() -> None:
    assert hosts.merge_known_hosts("", ["10.0.0.5 ssh-ed25519 K"], {"10.0.0.5"}) == (
        "10.0.0.5 ssh-ed25519 K\n"
    )
    assert hosts.merge_known_hosts("", [], {"10.0.0.5"}) == ""


# ---- per-host files and commands -----------------------------------------------------------


@pytest.fixture
def spec(tmp_path: Path) -> LabSpec:
    path = tmp_path / "lab.yml"
    path.write_text(LAB_YML)
    return load_lab_spec(path)


def test_render_etc_hosts_names_every_lab_host_and_the_gateway(spec: LabSpec) -> None:
    text = hosts.render_etc_hosts(spec, "web1")
    assert "127.0.0.1\tlocalhost\n" in text
    assert "10.213.0.1\topskit-gateway\n" in text
    assert "10.213.0.11\tweb1\n" in text and "10.213.0.21\tdb1\n" in text
    with pytest.raises(LabError, match="no lab host named 'web9'"):
        hosts.render_etc_hosts(spec, "web9")


def test_apt_proxy_conf_points_at_the_gateway_proxy() -> None:
    assert 'Acquire::http::Proxy "http://10.213.0.1:3142";' in apt.apt_proxy_conf("10.213.0.1")


def test_veth_names_fit_ifnamsiz_and_stay_distinct() -> None:
    names = ["web1", "a-very-long-host-name-1", "a-very-long-host-name-2"]
    veths = [network.veth_name(n) for n in names]
    assert veths[0] == "vo-web1"
    assert all(len(v) <= 15 for v in veths)
    assert len(set(veths)) == 3


def test_nspawn_argv_follows_the_lab_recipe() -> None:
    argv = nspawn.nspawn_argv(Path("/s/hosts/web1/root"), "web1")
    assert argv[:3] == ["systemd-nspawn", "-D", "/s/hosts/web1/root"]
    for flag in ("--register=no", "--keep-unit", "-b"):
        assert flag in argv
    assert "--network-namespace-path=/run/netns/opskit-web1" in argv
    assert argv[-2:] == ["-M", "web1"]
    assert nspawn.is_lab_nspawn(argv, Path("/s/hosts/web1/root"))


@pytest.mark.parametrize(
    ("cmdline", "expected"),
    [
        (["/usr/bin/systemd-nspawn", "-D", "/r", "-b"], True),
        (["systemd-nspawn", "--directory=/r", "-b"], True),
        (["systemd-nspawn", "-D", "/other", "-b"], False),
        (["python3", "systemd-nspawn", "-D", "/r"], False),
        ([], False),
    ],
)
def test_is_lab_nspawn_accepts_only_nspawn_of_that_root(cmdline: list[str], expected: bool) -> None:
    assert nspawn.is_lab_nspawn(cmdline, Path("/r")) is expected


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n", True),
        (b"SSH-1.99-old\r\n", True),
        (b"SSH-1.5-ancient\r\n", False),
        (b"", False),
        (b"HTTP/1.1 400 Bad Request\r\n", False),
    ],
)
def test_parse_ssh_banner(data: bytes, expected: bool) -> None:
    assert nspawn.parse_ssh_banner(data) is expected


def test_overlay_options_refuse_paths_that_break_mount_options() -> None:
    assert hosts.overlay_options(Path("/l"), Path("/u"), Path("/w")) == (
        "lowerdir=/l,upperdir=/u,workdir=/w"
    )
    with pytest.raises(LabError, match="overlayfs cannot use"):
        hosts.overlay_options(Path("/l,x"), Path("/u"), Path("/w"))


def test_parse_mountinfo_unescapes_mount_points_and_reads_super_options() -> None:
    text = (
        "22 1 0:21 / /proc rw,nosuid shared:12 - proc proc rw\n"
        "90 30 0:50 / /var/lib/opskit/lab/hosts/web\\0401/root rw,relatime - overlay opskit-web1 "
        "rw,lowerdir=/var/cache/opskit/lab/base-1,upperdir=/u,workdir=/w\n"
    )
    assert proc.parse_mountinfo(text) == [
        ("/proc", "proc", "rw"),
        (
            "/var/lib/opskit/lab/hosts/web 1/root",
            "overlay",
            "rw,lowerdir=/var/cache/opskit/lab/base-1,upperdir=/u,workdir=/w",
        ),
    ]


# ---- inventory -----------------------------------------------------------------------------


def test_load_lab_spec_reads_the_shipped_lab_inventory() -> None:
    spec = load_lab_spec(REPO / "inventories" / "lab.yml")
    assert spec.bridge == "opskit0"
    assert spec.gateway == "10.213.0.1/24"
    assert spec.deploy_user == "deploy"
    assert [h.name for h in spec.hosts] == ["web1", "web2", "db1"]
    assert find_host(spec, "db1").address == "10.213.0.21"
    assert spec.identity.is_absolute() and spec.known_hosts.is_absolute()
    assert "fail2ban" in spec.packages


def test_load_lab_spec_resolves_relative_paths_and_dedupes(spec: LabSpec) -> None:
    base = spec.known_hosts.parent
    assert spec.state_dir == base / "state"
    assert spec.identity == base / "keys" / "id_ed25519"
    assert spec.cache_dir == Path("/var/cache/x")
    assert spec.packages == ("curl", "less")
    assert spec.hosts == (LabHost("web1", "10.213.0.11"), LabHost("db1", "10.213.0.21"))
    assert gateway_ip(spec) == "10.213.0.1"
    assert str(lab_network(spec)) == "10.213.0.0/24"


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("  gateway: 10.213.0.1/24\n", "", r"lab: missing 'gateway'"),
        ("10.213.0.1/24", "10.213.0.1", r"lab\.gateway: '10\.213\.0\.1' needs a prefix length"),
        ("10.213.0.1/24", "10.213.0.0/24", r"lab\.gateway: .* network or broadcast"),
        ("10.213.0.1/24", "fd00::1/64", r"lab\.gateway: .*IPv4"),
        ("bridge: opskit0", "bridge: a-much-too-long-name", r"lab\.bridge: .*15 characters"),
        ("[curl, less, curl]", "[curl, 'Bad Name']", r"lab\.packages\[1\]: 'Bad Name'"),
        ("{ssh_user: deploy}", "{}", r"vars: missing 'ssh_user'"),
        ("identity: keys/id_ed25519", "identity: 'a,b'", r"ssh\.identity: .*must not contain"),
        (
            "web1: {address: 10.213.0.11}\n  db:",
            "web1: {address: 10.9.0.11}\n  db:",
            r"groups\.web\.hosts\.web1\.address: 10\.9\.0\.11 must be a host address in the lab",
        ),
        (
            "db1: {address: 10.213.0.21}",
            "db1: {address: 10.213.0.11}",
            r"groups\.db\.hosts\.db1\.address: 10\.213\.0\.11 is already used by web1",
        ),
        (
            "      db1: {address: 10.213.0.21}\n      web1: {address: 10.213.0.11}\n",
            "      db1: {address: 10.213.0.21}\n      web1: {address: 10.213.0.12}\n",
            r"groups\.db\.hosts\.web1\.address: 10\.213\.0\.12 differs",
        ),
        ("db1: {address", "DB_1: {address", r"groups\.db\.hosts\.DB_1: a lab host name"),
        ("      db1: {address: 10.213.0.21}\n", "      db1: {}\n", r"db1: missing 'address'"),
        ("ssh: {known_hosts: kh, identity: keys/id_ed25519}\n", "", r": missing 'ssh'"),
    ],
)
def test_load_lab_spec_names_file_and_key_of_a_bad_value(
    tmp_path: Path, old: str, new: str, message: str
) -> None:
    text = LAB_YML.replace(old, new)
    assert text != LAB_YML, f"test setup: {old!r} not found"
    path = tmp_path / "lab.yml"
    path.write_text(text)
    with pytest.raises(LabError, match=message) as info:
        load_lab_spec(path)
    assert str(info.value).startswith(f"{path}: ")


def test_load_lab_spec_reports_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(LabError, match="cannot read the inventory"):
        load_lab_spec(tmp_path / "missing.yml")
    bad = tmp_path / "bad.yml"
    bad.write_text("lab: [unclosed\n")
    with pytest.raises(LabError, match="not valid YAML"):
        load_lab_spec(bad)
    bad.write_text("- a list\n")
    with pytest.raises(LabError, match="expected a mapping"):
        load_lab_spec(bad)


# ---- prerequisites -------------------------------------------------------------------------


def test_missing_tools_name_the_apt_get_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(proc.os, "geteuid", lambda: 0)
    monkeypatch.setattr(proc.shutil, "which", lambda tool: None if tool == "debootstrap" else tool)
    with pytest.raises(LabError) as info:
        proc.check_prerequisites()
    assert "missing debootstrap" in str(info.value)
    assert "apt-get install debootstrap systemd-container iproute2 openssh-client" in str(
        info.value
    )


def test_not_root_is_an_error_that_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(proc.os, "geteuid", lambda: 1000)
    with pytest.raises(LabError, match="needs root"):
        proc.check_prerequisites()


# ---- stand-in services ---------------------------------------------------------------------


def test_services_have_unique_names_and_ports() -> None:
    names = [s.name for s in registry.SERVICES]
    ports = [(s.bind, s.port) for s in registry.SERVICES]
    assert len(set(names)) == len(names) and len(set(ports)) == len(ports)
    assert registry.find_service("aptproxy") is registry.APT_PROXY
    assert registry.APT_PROXY.port == aptproxy.PORT


def test_apt_proxy_command_binds_the_gateway_and_allows_the_machine_mirrors(
    spec: LabSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(apt, "machine_mirror_hosts", lambda: ("deb.debian.org", "m.example:8080"))
    argv = registry.APT_PROXY.argv(spec)
    assert argv[:3] == [sys.executable, "-m", "opskit.lab.standins.aptproxy"]
    assert argv[argv.index("--listen") + 1] == "10.213.0.1"
    allowed = argv[argv.index("--allow") + 1 : argv.index("--cache")]
    assert allowed == ["deb.debian.org", "m.example:8080"]
    assert argv[argv.index("--cache") + 1] == str(spec.cache_dir / "apt")
    assert argv[argv.index("--stats") + 1] == str(spec.state_dir / "services/aptproxy-stats.json")
    assert registry.APT_PROXY.address(spec) == "10.213.0.1"


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("http://deb.debian.org/debian/dists/x?y=1", ("deb.debian.org", 80, "/debian/dists/x?y=1")),
        ("http://Mirror.Example:8080", ("mirror.example", 8080, "/")),
        ("/debian/dists/bookworm/InRelease", None),
        ("https://deb.debian.org/debian/", None),
        ("deb.debian.org:443", None),
        ("http://host:notaport/", None),
    ],
)
def test_aptproxy_parse_target(target: str, expected: tuple[str, int, str] | None) -> None:
    assert aptproxy.parse_target(target) == expected


def test_aptproxy_refuses_a_wildcard_listen_address() -> None:
    with pytest.raises(SystemExit):
        aptproxy.main(["--listen", "0.0.0.0", "--allow", "deb.debian.org"])


def test_old_base_images_beyond_the_most_recent_others_are_removed(tmp_path: Path) -> None:
    # Not quite pure: reads /proc/self/mountinfo and deletes the fake images in tmp_path.
    for age, key in enumerate(["c" * 12, "b" * 12, "a" * 12, "9" * 12]):  # c newest, 9 oldest
        (tmp_path / f"base-{key}" / "etc").mkdir(parents=True)
        (tmp_path / f"build-{key}.log").write_text("log")
        stamp = tmp_path / f"base-{key}.used"
        stamp.touch()
        os.utime(stamp, (1_000_000 - age, 1_000_000 - age))
    (tmp_path / "base-not-an-image").mkdir()
    current = tmp_path / "base-000000000000"
    current.mkdir()
    messages: list[str] = []
    image._remove_old_images(tmp_path, keep={current}, progress=messages.append)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == [
        "base-000000000000",
        "base-bbbbbbbbbbbb",
        "base-cccccccccccc",
        "base-not-an-image",
    ]
    assert not (tmp_path / f"base-{'a' * 12}.used").exists()
    assert not (tmp_path / f"build-{'9' * 12}.log").exists()
    assert len(messages) == 2 and all("removing old base image" in m for m in messages)


def test_hosts_of_a_chosen_release_and_image(tmp_path: Path) -> None:
    path = tmp_path / "lab.yml"
    path.write_text(
        LAB_YML.replace(
            "  packages: [curl, less, curl]\n",
            "  packages: [curl, less, curl]\n  suite: trixie\n  hosts:\n"
            "    db1: {suite: bookworm, image: bare}\n",
        )
    )
    spec = load_lab_spec(path)
    assert spec.hosts == (
        LabHost("web1", "10.213.0.11", "trixie", "baked"),
        LabHost("db1", "10.213.0.21", "bookworm", "bare"),
    )
    kinds = {h.name: image.image_kind(spec, h) for h in spec.hosts}
    assert kinds["web1"] == image.ImageKind("trixie", ("curl", "less"))
    assert kinds["db1"] == image.ImageKind("bookworm", ())
    keys = {image.base_image_key(k.packages, {}, k.suite) for k in kinds.values()}
    assert len(keys) == 2


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("  suite: sid\n", r"lab\.suite: 'sid': expected one of bookworm, trixie"),
        ("  hosts:\n    web9: {image: bare}\n", r"lab\.hosts\.web9: no such lab host"),
        ("  hosts:\n    web1: {image: tiny}\n", r"lab\.hosts\.web1\.image: 'tiny'"),
        ("  hosts:\n    web1: {release: 13}\n", r"lab\.hosts\.web1: unknown key\(s\) release"),
    ],
)
def test_bad_host_images_are_refused(tmp_path: Path, extra: str, message: str) -> None:
    path = tmp_path / "lab.yml"
    path.write_text(
        LAB_YML.replace("  packages: [curl, less, curl]\n", f"  packages: [curl]\n{extra}")
    )
    with pytest.raises(LabError, match=message):
        load_lab_spec(path)


# ---- building a base image -------------------------------------------------------------------


def _failing_builds(errors: list[str]) -> tuple[list[int], object]:
    calls: list[int] = []

    def build_once(argv: object, tmp: Path, *rest: object) -> None:
        calls.append(1)
        if errors:
            raise LabError(errors.pop(0))
        tmp.mkdir()  # what a finished build leaves

    return calls, build_once


def test_a_build_that_cannot_resolve_the_mirror_is_tried_again(
    spec: LabSpec, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    spec = replace(spec, cache_dir=tmp_path)
    calls, build_once = _failing_builds(
        ["E: Failed to fetch http://deb.debian.org/x.deb  Temporary failure resolving 'deb'"]
    )
    monkeypatch.setattr(image, "_build_once", build_once)
    monkeypatch.setattr(image.time, "sleep", lambda s: None)
    said: list[str] = []
    kind = image.ImageKind("bookworm", ("curl",))
    target = spec.cache_dir / "base-test"
    image._build_image(spec, kind, target, "test", "http://mirror", said.append)
    assert len(calls) == 2 and target.is_dir()
    assert any("trying again in 15 s (attempt 2 of 3)" in m for m in said), said


def test_a_build_that_fails_for_another_reason_is_not_retried(
    spec: LabSpec, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    spec = replace(spec, cache_dir=tmp_path)
    calls, build_once = _failing_builds(["E: Unable to locate package nosuch"] * 3)
    monkeypatch.setattr(image, "_build_once", build_once)
    monkeypatch.setattr(image.time, "sleep", lambda s: None)
    kind = image.ImageKind("bookworm", ("nosuch",))
    with pytest.raises(LabError, match="Unable to locate package nosuch"):
        image._build_image(spec, kind, spec.cache_dir / "base-x", "x", "http://m", lambda m: None)
    assert len(calls) == 1


def test_a_mirror_that_stays_unreachable_fails_after_three_tries(
    spec: LabSpec, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    spec = replace(spec, cache_dir=tmp_path)
    calls, build_once = _failing_builds(["W: Temporary failure resolving 'deb'"] * 3)
    monkeypatch.setattr(image, "_build_once", build_once)
    monkeypatch.setattr(image.time, "sleep", lambda s: None)
    kind = image.ImageKind("bookworm", ())
    with pytest.raises(LabError, match="Temporary failure resolving"):
        image._build_image(spec, kind, spec.cache_dir / "base-y", "y", "http://m", lambda m: None)
    assert len(calls) == 3


def test_a_host_name_running_in_another_lab_is_found(spec: LabSpec, tmp_path: Path) -> None:
    # A process that looks like another lab's systemd-nspawn booting a host named zz9web1 (a
    # name no real lab on this machine uses).
    other = tmp_path / "other-lab/hosts/zz9web1/root"
    script = "import time; time.sleep(60)"
    fake = subprocess.Popen(
        ["systemd-nspawn", "-c", script, "-D", str(other), "--register=no"],
        executable=sys.executable,
    )
    try:
        deadline = time.monotonic() + 10
        while nspawn.other_lab_host(spec, "zz9web1") is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert nspawn.other_lab_host(spec, "zz9web1") == str(other)
        assert nspawn.other_lab_host(spec, "zz9db1") is None
    finally:
        fake.kill()
        fake.wait()


def test_the_apt_proxy_keeps_package_files_and_counts_hits(tmp_path: Path) -> None:
    import http.client
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    served: list[str] = []
    deb = b"!<arch>\n" + os.urandom(200_000)

    class Mirror(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            served.append(self.path)
            body = deb if self.path.endswith(".deb") else b"index"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    mirror = ThreadingHTTPServer(("127.0.0.1", 0), Mirror)
    upstream = f"127.0.0.1:{mirror.server_address[1]}"
    stats = tmp_path / "stats.json"
    proxy = aptproxy.ProxyServer(
        ("127.0.0.1", 0),
        aptproxy.parse_allow([upstream]),
        tmp_path / "apt",
        stats,
    )
    for server in (mirror, proxy):
        threading.Thread(target=server.serve_forever, daemon=True).start()

    def settled(done: Callable[[], bool]) -> None:  # the server's work after the response
        deadline = time.monotonic() + 10
        while not done() and time.monotonic() < deadline:
            time.sleep(0.01)

    def get(path: str) -> tuple[int, bytes, str | None]:
        conn = http.client.HTTPConnection("127.0.0.1", proxy.server_address[1], timeout=10)
        conn.request("GET", f"http://{upstream}{path}")
        resp = conn.getresponse()
        out = (resp.status, resp.read(), resp.getheader("X-Cache"))
        conn.close()
        return out

    try:
        pkg = "/debian/pool/main/x/x_1.0_amd64.deb"
        assert get(pkg) == (200, deb, None)  # a miss: fetched and kept
        # The proxy renames the copy into the cache once the client has the last byte.
        settled(lambda: any((tmp_path / "apt").rglob("x_1.0_amd64.deb")))
        assert get(pkg) == (200, deb, "HIT")  # from the cache: the mirror is not asked
        assert get("/debian/dists/bookworm/InRelease")[1] == b"index"
        assert get("/debian/dists/bookworm/InRelease")[1] == b"index"  # indexes: always fetched
        assert served == [pkg, "/debian/dists/bookworm/InRelease"] * 1 + [
            "/debian/dists/bookworm/InRelease"
        ]
        settled(lambda: stats.exists() and json.loads(stats.read_text()).get("hits") == 1)
        counts = json.loads(stats.read_text())
        assert counts == {
            "hits": 1,
            "misses": 1,
            "hit_bytes": len(deb),
            "miss_bytes": len(deb),
        }
        kept = list((tmp_path / "apt").rglob("*"))
        assert [p.name for p in kept if p.is_file()] == ["x_1.0_amd64.deb"]  # no partial file
    finally:
        proxy.shutdown()
        mirror.shutdown()
        proxy.server_close()
        mirror.server_close()
