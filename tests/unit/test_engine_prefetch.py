"""The engine reads the state of all files, directories and services in one process per kind
(prefetch_script); each probe must still print exactly what the direct commands print."""

from __future__ import annotations

import subprocess

import pytest

from opskit.core.engine import (
    PROBE_HELPERS,
    converge,
    prefetch_script,
    probe_script,
    split_sections,
)
from opskit.resources import Directory, File, Resource
from tests.fakes import LocalRemote

DIRECT = {  # what the probes printed before prefetching, read one command at a time
    "stat": 'if [ -e "$1" ] || [ -L "$1" ]; then stat -c \'%F|%a|%U|%G\' -- "$1"; '
    "else echo absent; fi",
}


def sections(resources: list[Resource]) -> list[str]:
    out = subprocess.run(
        ["bash", "-s"], input=probe_script(resources), capture_output=True, text=True, check=True
    ).stdout
    return split_sections(out, len(resources))


def direct_stat(path: str) -> str:
    return subprocess.run(
        ["bash", "-c", DIRECT["stat"], "x", path], capture_output=True, text=True, check=True
    ).stdout


@pytest.fixture
def tree(tmp_path):
    (tmp_path / "same").write_text("same\n")
    (tmp_path / "other").write_text("old\n")
    (tmp_path / "odd name|with spaces").write_text("x\n")
    (tmp_path / "dir").mkdir(mode=0o750)
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    (tmp_path / "dir" / "inner").write_text("x\n")
    return tmp_path


def test_probes_print_what_direct_reads_print(tree):
    paths = ["same", "other", "odd name|with spaces", "dir", "dangling", "absent"]
    files = [File(str(tree / p), "same\n") for p in paths if p != "dir"]
    resources: list[Resource] = [*files, Directory(str(tree / "dir"))]
    got = dict(zip([r.id for r in resources], sections(resources), strict=True))
    for p in paths:
        rid = f"directory:{tree / p}" if p == "dir" else f"file:{tree / p}"
        assert got[rid].splitlines()[0] == direct_stat(str(tree / p)).strip(), p
    same = got[f"file:{tree / 'same'}"].splitlines()
    assert same[1] == File(str(tree / "same"), "same\n").sha256 and len(same) == 2
    other = File.parse(got[f"file:{tree / 'other'}"])
    assert other is not None and other.old_text == "old\n"  # the diff still gets the old text
    assert got[f"file:{tree / 'absent'}"] == "absent\n"
    assert got[f"file:{tree / 'dangling'}"].startswith("symbolic link|")


def test_helpers_fall_back_when_nothing_was_prefetched(tree):
    script = PROBE_HELPERS + f"_opskit_stat {tree / 'same'}\n_opskit_stat {tree / 'nope'}\n"
    script += f'_opskit_sha256 {tree / "same"}; echo "$_opskit_s"\n'
    out = subprocess.run(
        ["bash", "-s"], input=script, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert out[0] == direct_stat(str(tree / "same")).strip()
    assert out[1] == "absent"
    assert out[2] == File(str(tree / "same"), "same\n").sha256


def test_prefetch_reads_each_kind_once():
    resources: list[Resource] = [File(f"/etc/x{i}", "") for i in range(5)]
    resources.append(Directory("/etc/d"))
    script = prefetch_script(resources)
    assert script.count("stat --printf") == 1 and script.count("sha256sum -z") == 1
    assert "systemctl" not in script.split("}\n")[-1]  # no unit asked, none read


def test_converge_with_prefetch_is_idempotent_in_one_round_trip(tree):
    target = tree / "new" / "f"
    resources: list[Resource] = [Directory(str(tree / "new"), 0o700), File(str(target), "a\n")]
    remote = LocalRemote()
    assert sum(c.changed for c in converge(remote, resources)) == 2
    remote.commands = 0
    assert not any(c.changed for c in converge(remote, resources))
    assert remote.commands == 1
