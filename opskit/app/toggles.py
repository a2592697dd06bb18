"""Feature toggles and the killswitch: `inv app.toggle NAME on|off`, `inv app.killswitch on|off`.

The app's admin endpoints (app/sample/admin.js is the reference) are called on every app host
through that host's own SSH connection, on ``127.0.0.1:<app_port><app_admin_path>`` (nginx
answers 404 there), with ``Authorization: Bearer <app_admin_token>``:

    POST <path>/killswitch       {"on": bool, "by": operator}  -> {"changed": bool, ...state}
    POST <path>/toggles/<NAME>   {"on": bool, "by": operator}  -> {"changed": bool, ...state}

One remote command per host: the call (the token goes to curl in its config on stdin, never on a
command line), and, when the app says the flag changed, a line in the deploy journal
(``/srv/<app>/.opskit/journal.jsonl``: action ``toggle`` or ``killswitch``, who, what). A flag
already so changes nothing, journals nothing and says so.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from opskit.app.spec import AppLayout
from opskit.clients.http import JsonApi
from opskit.core.errors import ConfigError, OpsError
from opskit.core.remote import Remote
from opskit.core.result import Change
from opskit.core.runner import RunContext

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class ToggleError(OpsError):
    """The app refused or did not answer the admin call."""


def on_off(word: str, what: str = "state") -> bool:
    """`on` / `off` (also true/false, 1/0, yes/no) as a bool; ConfigError otherwise.

    >>> on_off("on"), on_off("OFF")
    (True, False)
    >>> on_off("maybe")
    Traceback (most recent call last):
    ...
    opskit.core.errors.ConfigError: state: expected on or off, got 'maybe'
    """
    w = str(word).strip().lower()
    if w in ("on", "true", "1", "yes"):
        return True
    if w in ("off", "false", "0", "no"):
        return False
    raise ConfigError(f"{what}: expected on or off, got {word!r}")


@dataclass(frozen=True)
class Flip:
    """What the operator asked: the killswitch (name None) or a toggle, on or off."""

    name: str | None
    on: bool
    operator: str
    message: str = ""

    def __post_init__(self) -> None:
        if self.name is not None and not NAME_RE.fullmatch(self.name):
            raise ConfigError(
                f"NAME: {self.name!r}: a toggle name is letters, digits, '.', '_', '-' (up to 64)"
            )

    @property
    def action(self) -> str:
        return "killswitch" if self.name is None else "toggle"

    @property
    def describe(self) -> str:
        """`killswitch on`, `toggle new-checkout off`."""
        what = "killswitch" if self.name is None else f"toggle {self.name}"
        return f"{what} {'on' if self.on else 'off'}"


@dataclass(frozen=True)
class AdminSettings:
    layout: AppLayout
    path: str
    token: str

    @classmethod
    def from_vars(cls, v: Mapping[str, Any], host: str) -> AdminSettings:
        """The host's admin endpoint; ConfigError (nothing called) when the token is missing."""
        token = v.get("app_admin_token") or ""
        if not token:
            raise ConfigError(
                f"{host}: app_admin_token: not set: the app's admin endpoints need a token "
                "(e.g. `app_admin_token: {secret: APP_ADMIN_TOKEN}`) and `inv provision`"
            )
        return cls(AppLayout.from_vars(v), str(v.get("app_admin_path") or "/ops"), str(token))


def _curl_quote(text: str) -> str:
    """A curl config value in double quotes (curl unescapes \\\\ and \\")."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def flip_script(s: AdminSettings, flip: Flip, *, now: datetime | None = None) -> str:
    """The one remote command of a flip: call the endpoint, journal a real change."""
    url = f"http://127.0.0.1:{s.layout.port}{s.path}/" + (
        "killswitch" if flip.name is None else f"toggles/{flip.name}"
    )
    body = json.dumps({"on": flip.on, "by": flip.operator})
    config = "\n".join(
        (
            f"url = {_curl_quote(url)}",
            'request = "POST"',
            f"header = {_curl_quote('Authorization: Bearer ' + s.token)}",
            'header = "Content-Type: application/json"',
            f"data = {_curl_quote(body)}",
        )
    )
    entry = json.dumps(
        {
            "time": (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "action": flip.action,
            "operator": flip.operator,
            "release": "",
            "result": "ok",
            "detail": flip.describe,
            "message": flip.message,
        },
        sort_keys=True,
    )
    d = shlex.quote(s.layout.state_dir)
    return f"""set -u
out=$(mktemp); trap 'rm -f "$out"' EXIT
code=$(curl -sS -m 10 -o "$out" -w '%{{http_code}}' -K - 2>&1 <<'OPSKIT_CURL_CONFIG'
{config}
OPSKIT_CURL_CONFIG
) || {{ echo "@@error $(printf '%s\\n' "$code" | head -n1)"; exit 0; }}
echo "@@code $code"
if [ "$code" = 200 ] && grep -q '"changed": *true' "$out" && [ -d {d} ]; then
  printf '%s\\n' {shlex.quote(entry)} >> {d}/journal.jsonl && echo "@@journaled"
fi
echo "@@body"; head -c 4000 "$out"; echo
"""


@dataclass(frozen=True)
class Answer:
    code: int | None
    body: Mapping[str, Any]
    journaled: bool
    error: str = ""


def parse_answer(out: str) -> Answer:
    """Read flip_script's output.

    >>> a = parse_answer('@@code 200\\n@@journaled\\n@@body\\n{"changed": true}\\n')
    >>> a.code, a.body["changed"], a.journaled
    (200, True, True)
    >>> parse_answer("@@error curl: (7) Failed to connect\\n").error
    'curl: (7) Failed to connect'
    """
    code: int | None = None
    journaled = False
    error = ""
    lines = out.splitlines()
    body: Mapping[str, Any] = {}
    for i, line in enumerate(lines):
        if line.startswith("@@error"):
            error = line[len("@@error") :].strip() or "curl failed"
        elif line.startswith("@@code "):
            code = int(line.split()[1]) if line.split()[1].isdigit() else None
        elif line == "@@journaled":
            journaled = True
        elif line == "@@body":
            text = "\n".join(lines[i + 1 :]).strip()
            try:
                parsed = json.loads(text) if text else {}
            except json.JSONDecodeError:
                parsed = {"raw": text[:200]}
            body = parsed if isinstance(parsed, dict) else {"raw": text[:200]}
            break
    return Answer(code, body, journaled, error)


def judge(host: str, flip: Flip, answer: Answer) -> Change:
    """A Change (changed or already so), or ToggleError naming what the app said."""
    if answer.error:
        raise ToggleError(f"the app's admin endpoint did not answer: {answer.error}")
    if answer.code == 401:
        raise ToggleError("the app refused the token (401): provision the app with app_admin_token")
    if answer.code == 404:
        raise ToggleError(
            "the app has no admin endpoint there (404): does the deployed release implement it, "
            "and does the app have ADMIN_TOKEN (`inv provision`, then a reload)?"
        )
    if answer.code != 200:
        detail = answer.body.get("error") or answer.body.get("raw") or ""
        raise ToggleError(f"the app answered {answer.code}: {detail}".rstrip(": "))
    resource = f"app:{flip.action}" + (f":{flip.name}" if flip.name else "")
    if not answer.body.get("changed"):
        return Change.ok(host, resource)
    return Change.made(host, resource, f"{flip.describe} (journaled)" if answer.journaled else "")


def flip_work(flip: Flip, done: dict[str, bool]) -> Callable[[Remote, RunContext], list[Change]]:
    """The runner's work for one host; `done[host]` is whether the flag changed there."""

    def work(remote: Remote, ctx: RunContext) -> list[Change]:
        s = AdminSettings.from_vars(remote.host.vars, remote.name)
        res = remote.run(flip_script(s, flip), what=f"{flip.describe} via {s.path}")
        change = judge(remote.name, flip, parse_answer(res.stdout))
        done[remote.name] = change.changed
        return [change]

    return work


def check_settings(hosts: Sequence[Any]) -> None:
    """Every host's settings before any is called (bad input: nothing changed anywhere)."""
    for h in hosts:
        AdminSettings.from_vars(h.vars, h.name)


def slack_text(flip: Flip, changed: Sequence[str], unchanged: Sequence[str], failed: int) -> str:
    """The Slack line: who flipped what where (`&`, `<`, `>` escaped).

    >>> print(slack_text(Flip(None, True, "ann@lap", "5xx storm"), ["web1"], ["web2"], 0))
    :rotating_light: *killswitch on* by ann@lap on web1 (already so on web2): 5xx storm
    """

    def esc(t: str) -> str:
        return t.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")

    icon = ":rotating_light:" if flip.name is None and flip.on else ":twisted_rightwards_arrows:"
    text = f"{icon} *{flip.describe}* by {esc(flip.operator)} on {', '.join(changed) or 'no host'}"
    if unchanged:
        text += f" (already so on {', '.join(unchanged)})"
    if failed:
        text += f"; {failed} host(s) FAILED"
    if flip.message:
        text += f": {esc(flip.message)}"
    return text


def slack_webhook(hosts: Sequence[Any]) -> str:
    """Where flips are announced: the first host's `healthcheck_slack_webhook_url` ('' none)."""
    for h in hosts:
        url = h.vars.get("healthcheck_slack_webhook_url")
        if url:
            return str(url)
    return ""


def post_slack(webhook: str, text: str) -> None:
    """Send `text` to the webhook; ApiError (URL redacted) when Slack refuses it."""
    api = JsonApi("Slack", webhook, secrets=[webhook], attempts=3)
    api.request("POST", webhook, json={"text": text}, ok=(200,), what="POST webhook")
