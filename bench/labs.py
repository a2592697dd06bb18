"""The benchmark's own lab: bridge opskit8, 10.213.8.0/24, hosts b8h01..b8hNN.

It never touches the default lab or anyone else's: its own state dir, bridge, subnet, known_hosts
and key. The base image is the default lab's (same package list, read from inventories/lab.yml), so
nothing is built or downloaded for it. Hosts boot in batches (30 nspawn boots at once on 2 cores
can outlast the lab's 60 s boot timeout), then each is prepared once, without SSH:

* sshd logs every session at LogLevel VERBOSE ("Starting session: command for ..."): the remote
  commands are counted from the hosts' own journals, not from any tool's counters;
* postgresql, nginx and fail2ban are stopped and disabled (the slice does not use them; an idle
  host is an sshd, cron and rsyslog host, as the issue allows for large N);
* python3-apt is installed (through the lab's apt proxy), which Ansible's apt module needs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

from opskit.core.roles import REPO
from opskit.lab import lifecycle
from opskit.lab.nspawn import exec_in
from opskit.lab.spec import LabSpec, load_lab_spec

STATE_DIR = Path("/var/lib/opskit/lab-bench")
BRIDGE = "opskit8"
GATEWAY = "10.213.8.1/24"
PREFIX = "b8h"
FIRST_ADDRESS = 11  # b8h01 = 10.213.8.11
MAX_HOSTS = 60
BOOT_BATCH = 6  # hosts booted at once
SSHD_DROPIN = "/etc/ssh/sshd_config.d/00-opskit-bench.conf"
IDLE_SERVICES = ("postgresql", "nginx", "fail2ban")

Progress = Callable[[str], None]


def host_names(n: int) -> list[str]:
    """Names of the first `n` bench hosts.

    >>> host_names(2)
    ['b8h01', 'b8h02']
    """
    if not 1 <= n <= MAX_HOSTS:
        raise ValueError(f"the bench lab has 1..{MAX_HOSTS} hosts, not {n}")
    return [f"{PREFIX}{i:02d}" for i in range(1, n + 1)]


def address(i: int) -> str:
    """Address of host number `i` (1-based)."""
    return f"10.213.8.{FIRST_ADDRESS + i - 1}"


def inventory_data(n: int, roles: Sequence[str] = ("benchslice",)) -> dict[str, Any]:
    """An opskit inventory (with its `lab:` section) for the first `n` bench hosts."""
    default = yaml.safe_load((REPO / "inventories" / "lab.yml").read_text())
    return {
        "ssh": {
            "known_hosts": str(STATE_DIR / "known_hosts"),
            "identity": str(STATE_DIR / "id_ed25519"),
            "connect_timeout": 20,
        },
        "lab": {
            "state_dir": str(STATE_DIR),
            "cache_dir": default["lab"]["cache_dir"],
            "bridge": BRIDGE,
            "gateway": GATEWAY,
            # The default lab's list: same image, nothing built for the bench.
            "packages": default["lab"]["packages"],
        },
        "roles": list(roles),
        "vars": {"ssh_user": "deploy"},
        "groups": {
            "bench": {
                "hosts": {name: {"address": address(i)} for i, name in enumerate(host_names(n), 1)}
            }
        },
    }


# The roles the read-only fleet commands need (releases: app; certs.status: certbot;
# backup.list: backup), declared for the read-only step only and never converged: the hosts keep
# the slice alone, so the commands find no release, no certificate and no backup program, which
# they report (one connection and one remote command per host all the same).
READONLY_ROLES = ("app", "certbot", "backup")
# Secrets the backup role's S3 settings must name (`{secret: NAME}`); the values are set in the
# commands' environment (bench/tools.py) and reach nothing: the endpoint refuses at once.
READONLY_SECRETS = {
    "BENCH_S3_ACCESS_KEY_ID": "bench-not-a-key",
    "BENCH_S3_SECRET_ACCESS_KEY": "bench-not-a-secret",
}


def readonly_inventory_data(n: int) -> dict[str, Any]:
    """The inventory of the read-only step: the bench hosts with READONLY_ROLES and the
    variables those roles require (no S3 reachable: backup.list lists nothing)."""
    data = inventory_data(n, roles=READONLY_ROLES)
    data["vars"].update(
        {
            "app_name": "benchapp",
            "app_repo": str(REPO),
            "app_repo_path": "app/sample",
            "certbot_email": "ops@bench.invalid",
            "certbot_agree_tos": True,
            "certbot_certificates": [],
            "backup_database": "benchapp",
            "backup_database_owner": "benchapp",
            "backup_s3_bucket": "opskit-bench",
            "backup_s3_endpoint": "http://127.0.0.1:9",  # discard: refused at once
            "backup_s3_max_attempts": 1,
            "backup_s3_access_key_id": {"secret": "BENCH_S3_ACCESS_KEY_ID"},
            "backup_s3_secret_access_key": {"secret": "BENCH_S3_SECRET_ACCESS_KEY"},
        }
    )
    return data


def write_inventory(n: int, path: Path, *, readonly: bool = False) -> Path:
    data = readonly_inventory_data(n) if readonly else inventory_data(n)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "# Generated by bench/labs.py for the benchmark; do not edit.\n"
        + yaml.safe_dump(data, sort_keys=False)
    )
    return path


def spec_for(n: int) -> LabSpec:
    return load_lab_spec(write_inventory(n, STATE_DIR / f"lab-{n}.yml"))


def up(n: int, *, fresh: bool, progress: Progress) -> tuple[LabSpec, float]:
    """Boot (or keep) hosts b8h01..b8hNN in batches and prepare them; returns (spec, seconds)."""
    spec = spec_for(n)
    lifecycle.raise_limits(progress)
    started = time.monotonic()
    names = host_names(n)
    running = {s.name for s in lifecycle.status(spec) if s.state == "running" and s.ssh_ready}
    todo = names if fresh else [h for h in names if h not in running]
    for k in range(0, len(todo), BOOT_BATCH):
        batch = todo[k : k + BOOT_BATCH]
        progress(f"booting {', '.join(batch)}")
        lifecycle.up(spec, fresh=fresh, hosts=batch)
    if not todo:
        lifecycle.up(spec, hosts=names)  # network, services and known_hosts, all kept as they are
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda h: prepare(spec, h, progress), names))
    return spec, time.monotonic() - started


PREPARE = f"""set -e
if [ ! -f {SSHD_DROPIN} ]; then
  printf '# opskit bench: log every session (remote commands are counted from it)\\n' \\
    > {SSHD_DROPIN}
  echo 'LogLevel VERBOSE' >> {SSHD_DROPIN}
  sshd -t
  systemctl reload ssh
fi
for s in {" ".join(IDLE_SERVICES)}; do
  if systemctl is-enabled -q "$s" 2>/dev/null || systemctl is-active -q "$s"; then
    systemctl disable -q --now "$s"
  fi
done
if ! dpkg-query -W -f='${{db:Status-Abbrev}}' python3-apt 2>/dev/null | grep -q '^ii'; then
  export DEBIAN_FRONTEND=noninteractive
  install() {{
    apt-get install -y -q --no-install-recommends python3-apt >/tmp/.bench-apt.log 2>&1
  }}
  install || {{ apt-get update -q >/dev/null 2>&1; install; }} \\
    || {{ tail -n 20 /tmp/.bench-apt.log >&2; exit 1; }}
fi
"""


def prepare(spec: LabSpec, name: str, progress: Progress) -> None:
    """Make one host ready for the benchmark (idempotent, no SSH)."""
    run_in(spec, name, PREPARE, what="prepare")


def run_in(spec: LabSpec, name: str, script: str, *, what: str) -> str:
    """Run a bash script as root inside a host (nsenter: no sshd session, nothing counted)."""
    res = exec_in(spec, name, ["bash", "-c", script], timeout=300)
    if res.returncode != 0:
        raise RuntimeError(f"[{name}] {what} failed (exit {res.returncode}):\n{res.stderr[-2000:]}")
    return res.stdout


def down(n: int) -> None:
    lifecycle.down(spec_for(n))
