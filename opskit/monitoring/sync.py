"""`inv monitoring.sync`: read what UptimeRobot and Sentry have, plan against what the inventory
declares (monitors.py, rules.py), and with `apply` carry the plan out; what a person reads.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import requests

from opskit.clients.sentry import SentryClient
from opskit.clients.uptimerobot import UptimeRobotClient
from opskit.core.errors import ConfigError
from opskit.monitoring.declared import Declared
from opskit.monitoring.monitors import plan_monitors
from opskit.monitoring.plan import Action
from opskit.monitoring.rules import plan_rules

PAST = {"create": "created", "update": "updated", "replace": "replaced", "delete": "deleted"}


@dataclass
class SyncResult:
    actions: list[Action]
    applied: bool
    notes: list[str] = field(default_factory=list)
    done: list[str] = field(default_factory=list)  # what was changed, in order

    @property
    def conflicts(self) -> list[Action]:
        return [a for a in self.actions if a.kind == "conflict"]

    @property
    def pending(self) -> list[Action]:
        return [a for a in self.actions if a.changes]


def resolve_contacts(names: Sequence[str], contacts: Sequence[Mapping[str, Any]]) -> list[str]:
    by_name = {str(c.get("friendlyName")): str(c.get("id")) for c in contacts}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise ConfigError(
            f"healthcheck_uptimerobot_alert_contacts: {', '.join(map(repr, missing))} not found "
            f"in UptimeRobot (its alert contacts: {', '.join(sorted(by_name)) or 'none'})"
        )
    return [by_name[n] for n in names]


def sync(
    decl: Declared,
    *,
    apply: bool = False,
    session: requests.Session | None = None,
    retry: Mapping[str, Any] | None = None,
) -> SyncResult:
    """Read both services, plan, and (with `apply`) carry out the plan; ApiError on failure."""
    retry = dict(retry or {})
    result = SyncResult([], apply)
    up_client = sentry_client = None
    if decl.uptimerobot is None:
        result.notes.append("UptimeRobot: no healthcheck_uptimerobot_api_key; skipped")
    else:
        s = decl.uptimerobot
        up_client = UptimeRobotClient(s.api_key, base_url=s.api_url, session=session, **retry)
        ids = resolve_contacts(s.contacts, up_client.alert_contacts())
        result.actions += plan_monitors(s, up_client.monitors(), ids)
        if not apply:
            _note_waits(result, up_client)
    if decl.sentry is None:
        result.notes.append("Sentry: no healthcheck_sentry_auth_token; skipped")
    else:
        t = decl.sentry
        sentry_client = SentryClient(
            t.token, t.org, t.project, base_url=t.api_url, session=session, **retry
        )
        result.actions += plan_rules(t, sentry_client.rules())
    if not apply:
        return result
    for a in result.pending:
        if a.service == "uptimerobot" and up_client is not None:
            if a.kind in ("delete", "replace") and a.ident:
                up_client.delete_monitor(int(a.ident))
            if a.kind in ("create", "replace"):
                created = up_client.create_monitor(dict(a.body or {}))
                a_detail = f" (id {created.get('id')})"
                if created.get("type") == "HEARTBEAT" and created.get("url"):
                    result.notes.append(
                        f"{a.what}: heartbeat URL {created['url']} (give it to the backups, "
                        "e.g. as {secret: BACKUP_HEARTBEAT_URL})"
                    )
            elif a.kind == "update" and a.ident:
                up_client.update_monitor(int(a.ident), dict(a.body or {}))
                a_detail = ""
            else:
                a_detail = ""
        elif a.service == "sentry" and sentry_client is not None:
            a_detail = ""
            if a.kind == "create":
                a_detail = f" (id {sentry_client.create_rule(dict(a.body or {})).get('id')})"
            elif a.kind == "update" and a.ident:
                sentry_client.update_rule(a.ident, dict(a.body or {}))
            elif a.kind == "delete" and a.ident:
                sentry_client.delete_rule(a.ident)
        else:  # pragma: no cover
            continue
        result.done.append(f"[{a.service}] {PAST[a.kind]} {a.what}{a_detail}")
    _note_waits(result, up_client)
    return result


def _note_waits(result: SyncResult, client: UptimeRobotClient | None) -> None:
    """Say how long the sync waited for UptimeRobot's rate limit (and that it did)."""
    if client is None or not client.api.waits:
        return
    api = client.api
    limit = f"{api.limit} requests a window" if api.limit else "its rate limit"
    result.notes.append(
        f"UptimeRobot: paced by its rate limit ({limit}): waited {len(api.waits)} time(s), "
        f"{api.waited:.1f} s in all"
    )


def format_sync(result: SyncResult, *, verbose: bool = False) -> str:
    """What a person reads: one line per action (unchanged ones with verbose), then totals."""
    lines = []
    for a in result.actions:
        if a.kind == "ok" and not verbose and "adopted" not in a.detail:
            continue
        label = "CONFLICT" if a.kind == "conflict" else a.kind
        detail = f"  {a.detail}" if a.detail else ""
        lines.append(f"[{a.service}] {label:<8} {a.what}{detail}")
    lines += [f"note: {n}" for n in result.notes]
    counts = {
        k: sum(1 for a in result.actions if a.kind == k)
        for k in ("create", "update", "replace", "delete", "ok", "conflict")
    }
    verb = "done" if result.applied else "planned (apply with --apply)"
    if not result.pending:
        verb = "nothing to change"
    total = ", ".join(f"{n} {k}" for k, n in counts.items() if n) or "nothing declared"
    lines.append(f"monitoring: {total}; {verb}")
    return "\n".join(lines) + "\n"


def sync_json(result: SyncResult) -> str:
    actions = [{k: v for k, v in asdict(a).items() if k != "body"} for a in result.actions]
    return (
        json.dumps(
            {
                "applied": result.applied,
                "actions": actions,
                "done": result.done,
                "notes": result.notes,
            },
            indent=2,
        )
        + "\n"
    )
