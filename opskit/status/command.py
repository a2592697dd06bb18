"""The one remote command that reads everything of a host, and splitting what it printed.

The command runs, in this order and each behind a marked header line: the certificates
(opskit.certs `collect_script`) and the releases (opskit.app `state_script`) in subshells, then
the status probe, opskit/hostside/status_probe.py, whose source is sent verbatim as a
here-document to the host's python3 with its config (`probe_config`) as a JSON argument.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opskit.app import deploy
from opskit.certs import read as certs_read
from opskit.core.errors import OpsError
from opskit.core.remote import Remote
from opskit.hostside import healthcheck, status_probe
from opskit.hostside.status_probe import MARK, ProbeConfig
from opskit.status.settings import Settings

q = shlex.quote

PROBE_SOURCE = Path(status_probe.__file__).read_text()
HEREDOC = "OPSKIT_STATUS_PROBE"  # ends the probe's source in the command (never a line of it)
PYTHON_MISSING_EXIT = 3


def probe_config(s: Settings) -> ProbeConfig:
    """What the host-side probe needs (no secret ever goes in here)."""
    return {
        "timeout": s.timeout,
        "cpu_seconds": s.cpu_seconds,
        "disk_paths": list(s.disk_paths),
        "samples": s.samples,
        "health_url": s.health_url,
        "health_keyword": s.health_keyword,
        "db": s.db is not None,
        "pm2_user": s.pm2_user,
        "app_current": s.app.current if s.app else None,
        "healthcheck": (
            {"status_file": healthcheck.STATUS_FILE, "state_file": healthcheck.STATE_FILE}
            if s.healthcheck is not None
            else None
        ),
        "pm2_search_path": healthcheck.PM2_SEARCH_PATH,
        "backup": (
            {"local_dir": s.backup.local_dir, "database": s.backup.database} if s.backup else None
        ),
        "updates": True,
        "node_bin": s.node_bin,
    }


def remote_script(s: Settings) -> str:
    """The one command that reads everything of a host; its sections are marked (MARK)."""
    parts = []
    if s.cert_specs is not None:
        parts.append(f'echo "{MARK} certs"\n( {certs_read.collect_script(s.cert_specs)} )')
    if s.app is not None:
        parts.append(
            f'echo "{MARK} release"\n( {deploy.state_script(s.app)} )\n'
            f'echo "{MARK} release-exit $?"'
        )
    config = json.dumps(probe_config(s))
    parts.append(
        f'echo "{MARK} probe"\n'
        "command -v python3 >/dev/null || "
        f"{{ echo 'python3 is missing on the host' >&2; exit {PYTHON_MISSING_EXIT}; }}\n"
        f"python3 - {q(config)} <<'{HEREDOC}'\n{PROBE_SOURCE.rstrip()}\n{HEREDOC}"
    )
    return "\n".join(parts) + "\n"


@dataclass(frozen=True)
class Raw:
    """What the remote command printed, split by section."""

    probe: Mapping[str, Any]
    certs: str = ""
    release: str = ""
    release_exit: int = 0


def parse_output(stdout: str) -> Raw:
    """Split the remote command's output into its sections (ValueError when the probe is missing).

    >>> r = parse_output('@@@opskit-status release\\n@@current releases/a\\n'
    ...                  '@@@opskit-status release-exit 0\\n@@@opskit-status probe\\n{"now": 1}\\n')
    >>> r.release, r.release_exit, r.probe
    ('@@current releases/a\\n', 0, {'now': 1})
    """
    sections: dict[str, list[str]] = {}
    current = ""
    release_exit = 0
    for line in stdout.splitlines(keepends=True):
        if line.startswith(MARK + " "):
            word = line[len(MARK) + 1 :].strip()
            if word.startswith("release-exit"):
                release_exit = int(word.split()[-1])
                current = ""
            else:
                current = word
                sections.setdefault(current, [])
            continue
        if current:
            sections[current].append(line)
    probe_text = "".join(sections.get("probe", [])).strip()
    start = probe_text.find("{")
    if start < 0:
        raise ValueError("the status probe printed nothing")
    probe = json.loads(probe_text[start:])
    if not isinstance(probe, dict):
        raise ValueError("the status probe printed no JSON object")
    return Raw(
        probe,
        "".join(sections.get("certs", [])),
        "".join(sections.get("release", [])),
        release_exit,
    )


def read_host(remote: Remote, s: Settings) -> Raw:
    """Read everything of one host in one remote command."""
    res = remote.run(remote_script(s), what="read status", timeout=120 + s.samples * s.timeout)
    try:
        return parse_output(res.stdout)
    except ValueError as exc:
        raise OpsError(f"the status probe's output was not understood: {exc}") from None
