"""What the slice leaves on a host, read without SSH, and how to take it away again.

`snapshot()` reads every path of the slice (type, mode, owner, group, sha256), the packages and
the services through nsenter (opskit.lab.nspawn.exec_in), so reading it sends no SSH session and is
not counted. `reset()` removes what the slice manages (files, directories, cron entries) and
disables and stops cron: the next converge starts from the state a fresh host has.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from functools import cache
from typing import Any

import yaml

from bench import labs
from opskit.core.roles import REPO
from opskit.lab.spec import LabSpec

DEFAULTS = REPO / "bench" / "roles" / "benchslice" / "defaults.yml"


@cache
def slice_vars() -> Mapping[str, Any]:
    return yaml.safe_load(DEFAULTS.read_text())


def paths() -> list[str]:
    v = slice_vars()
    out = [d["path"] for d in v["benchslice_directories"]]
    out += [f["path"] for f in v["benchslice_files"]]
    out.append(v["benchslice_rsyslog_conf"])
    out += [f"/etc/cron.d/{c['name']}" for c in v["benchslice_cron"]]
    return out


def snapshot_script() -> str:
    v = slice_vars()
    lines = []
    for p in paths():
        q = shlex.quote(p)
        lines.append(
            f"if [ -e {q} ]; then s=$(stat -c '%F %a %U %G' -- {q}); "
            f"if [ -f {q} ]; then h=$(sha256sum < {q} | cut -c1-16); else h=-; fi; "
            f'echo "{p} $s $h"; else echo "{p} absent"; fi'
        )
    pkgs = " ".join(shlex.quote(n) for n in v["benchslice_packages"])
    lines.append(f"dpkg-query -W -f='package ${{Package}} ${{db:Status-Abbrev}}\\n' {pkgs}")
    for s in v["benchslice_services"]:
        q = shlex.quote(s)
        lines.append(
            f'echo "service {s} $(systemctl is-enabled {q} 2>&1) $(systemctl is-active {q})"'
        )
    return "\n".join(lines) + "\n"


def snapshot(spec: LabSpec, name: str) -> list[str]:
    """One line per path, package and service of the slice, as the host has them now."""
    out = labs.run_in(spec, name, snapshot_script(), what="snapshot")
    return [" ".join(line.split()) for line in out.splitlines() if line.strip()]


def reset_script() -> str:
    quoted = " ".join(shlex.quote(p) for p in paths())
    return f"set -e\nrm -rf -- {quoted}\nsystemctl disable -q --now cron\n"


def reset(spec: LabSpec, name: str) -> None:
    labs.run_in(spec, name, reset_script(), what="reset")
