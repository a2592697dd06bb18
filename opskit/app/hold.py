"""The alert hold of a switch: while a deploy or rollback switches a host, its health check
sends nothing (a maintenance window), so a deploy does not page.

Contract with the health check (opskit/hostside/healthcheck.py reads it): the file
``<healthcheck state dir>/hold.json`` = ``{"until": <unix seconds>, "reason": "deploy <release>"}``,
root's, written just before the switch and removed once that host's switch is done (success or
failure). A deploy killed midway leaves it; it simply expires at ``until``. Only hosts with the
healthcheck role get it. Both halves are lines of the activation's one remote command (no extra
round trip).
"""

from __future__ import annotations

import json
import shlex

from opskit.hostside.healthcheck import STATE_DIR

HOLD_NAME = "hold.json"
HOLD_FILE = f"{STATE_DIR}/{HOLD_NAME}"
HOLD_MARGIN = 60  # seconds after the longest the switch may take


def hold_script(seconds: float, reason: str, path: str = HOLD_FILE) -> str:
    """Bash lines that write the hold for `seconds` from now (the host's clock), atomically.

    >>> print(hold_script(90, "deploy r1", "/s/h.json").replace(" && ", "\\n"))
    install -d -m 0755 /s
    printf '{"until": %s, "reason": %s}\\n' "$(( $(date +%s) + 90 ))" '"deploy r1"' > /s/h.json.new
    mv -f /s/h.json.new /s/h.json
    """
    d = shlex.quote(path.rsplit("/", 1)[0] or "/")
    p = shlex.quote(path)
    tmp = shlex.quote(path + ".new")
    return (
        f'install -d -m 0755 {d} && printf \'{{"until": %s, "reason": %s}}\\n\' '
        f'"$(( $(date +%s) + {int(seconds)} ))" {shlex.quote(json.dumps(reason))} > {tmp} '
        f"&& mv -f {tmp} {p}"
    )


def release_script(path: str = HOLD_FILE) -> str:
    """
    >>> release_script("/s/hold.json")
    'rm -f /s/hold.json'
    """
    return f"rm -f {shlex.quote(path)}"
