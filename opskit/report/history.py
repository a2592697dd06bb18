"""The host's own history in the report: nginx's access log aggregated per hour or day and the
health check's runs, read on the host by the host program opskit/hostside/report_history.py,
whose source goes in one remote command (no file is installed for it)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

from opskit.core.inventory import Host
from opskit.hostside import report_history
from opskit.hostside.report_history import DAY, HOUR, Params

HISTORY_PROGRAM = Path(report_history.__file__)
_END = "OPSKIT_REPORT_PY"  # the here-document's end marker


def params_for(host: Host, kind: str, since: float, until: float) -> Params:
    """What the host program reads on `host` for a `kind` report over [since, until]."""
    return {
        "since": since,
        "until": until,
        "bucket": HOUR if kind == "daily" else DAY,
        "access_log": access_log_of(host),
    }


def history_command(params: Params) -> str:
    """The one remote command that reads the host's access logs and health-check journal: the
    host program's source on python3's stdin, the parameters as its argument."""
    code = HISTORY_PROGRAM.read_text()
    if f"\n{_END}\n" in f"\n{code}\n":
        raise ValueError(f"{HISTORY_PROGRAM} holds the line {_END}: it would end the command")
    return f"python3 - {shlex.quote(json.dumps(params))} <<'{_END}'\n{code}\n{_END}\n"


def parse_history(stdout: str) -> dict[str, Any]:
    """The JSON the history program printed (its last line).

    >>> parse_history('{"nginx": null, "alerts": {"runs": []}}\\n')["alerts"]
    {'runs': []}
    """
    lines = [x for x in stdout.strip().splitlines() if x.startswith("{")]
    if not lines:
        raise ValueError("the history program printed no JSON")
    data = json.loads(lines[-1])
    if not isinstance(data, dict):
        raise ValueError("the history program printed no JSON object")
    return data


def access_log_of(host: Host) -> str | None:
    """The access log to aggregate: report_access_log, else the health check's, else nginx's."""
    v = host.vars
    if v.get("report_access_log"):
        return str(v["report_access_log"])
    if v.get("healthcheck_access_log"):
        return str(v["healthcheck_access_log"])
    return "/var/log/nginx/access.log" if "nginx" in host.roles else None
