"""A stand-in for Sentry's web API and event ingestion, keeping what it gets (for the lab).

Run as ``python -m opskit.lab.standins.sentry --listen ADDR --port N --dir DIR --secrets FILE``. One
organization (``--org``) with one project (``--project``, id 1) whose DSN is ``SENTRY_DSN`` of
the lab's secrets file. As Sentry documents it: the web API at https://docs.sentry.io/api/
(releases, deploys; issue alert rules:
https://docs.sentry.io/api/alerts/create-an-issue-alert-rule-for-a-project/), ingestion and its
authentication at https://develop.sentry.dev/sdk/overview/ and envelopes at
https://develop.sentry.dev/sdk/data-model/envelopes/:

Web API (``Authorization: Bearer <SENTRY_AUTH_TOKEN>``, else 401 ``{"detail": ...}``):

* ``POST /api/0/organizations/{org}/releases/`` ``{version, projects, ref?, url?,
  dateReleased?}``: 201 when new, 208 when the version exists (projects are added);
  ``GET /api/0/organizations/{org}/releases/`` and ``.../releases/{version}/``.
* ``POST /api/0/organizations/{org}/releases/{version}/deploys/`` ``{environment, name?, url?,
  dateStarted?, dateFinished?}``: 201; 404 when the release does not exist.
* ``GET|POST /api/0/projects/{org}/{project}/rules/``, ``GET|PUT|DELETE .../rules/{id}/`` (issue
  alert rules; ``name``, ``frequency`` 5-43200, ``actionMatch`` all/any/none, ``conditions`` and
  ``actions`` lists of objects with an ``id``; DELETE answers 202). As real Sentry does it
  (getsentry/sentry ``src/sentry/api/endpoints/project_rules.py``,
  ``src/sentry/api/serializers/models/rule.py``; https://docs.sentry.io/api/pagination/):

  - every condition, filter and action comes back with a ``name`` label added (its rendered
    text), every action with a ``uuid``; what was posted is compared without them;
  - the list is newest first (``order_by="-id"``) and paginated: ``--page-size`` rules a page
    (Sentry: 100; small here so that tests cross pages), with a
    ``Link: <...>; rel="previous"; results="..."; cursor="...", <...>; rel="next";
    results="true|false"; cursor="..."`` header and ``?cursor=0:<offset>:0``;
  - a new rule (or a changed one) that equals an existing rule in everything but its name is
    refused with 400 ``{"name": ["This rule is an exact duplicate of '<name>' in this project and
    may not be created."], "ruleId": [<id>]}`` (``DuplicateRuleEvaluator``).
* Unknown organization or project: 404.

Ingestion: ``POST /api/1/envelope/`` and ``/api/1/store/`` with the DSN's public key in
``X-Sentry-Auth: Sentry sentry_key=…, sentry_version=7`` or ``?sentry_key=…`` (missing or wrong:
403 with ``X-Sentry-Error``); answers 200 ``{"id": event_id}``.

Everything accepted is appended to ``DIR/inbox.jsonl`` (``kind``: release, deploy, rule, event);
faults for tests as in ``opskit.lab.standins.inbox`` (``DIR/faults.json``).
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import threading
import time
import uuid
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from opskit.core.secrets import read_secrets_file
from opskit.lab.standins.inbox import JsonStandInHandler, consume_fault

PROJECT_ID = "1"
VERSION_RE = re.compile(r"^(?!\.{1,2}$)[^/\r\n\t\x0c\x0b]{1,200}$")


class ApiError(Exception):
    def __init__(self, status: int, detail: Any) -> None:
        super().__init__(str(detail))
        self.status, self.detail = status, detail


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())


def parse_auth_header(value: str) -> dict[str, str]:
    """Parse ``Sentry sentry_key=abc, sentry_version=7``.

    >>> parse_auth_header("Sentry sentry_key=abc, sentry_version=7")["sentry_key"]
    'abc'
    """
    value = value.strip()
    if value.lower().startswith("sentry "):
        value = value[7:]
    out = {}
    for part in value.split(","):
        key, _, val = part.strip().partition("=")
        if key:
            out[key.strip()] = val.strip()
    return out


def parse_envelope(data: bytes) -> tuple[dict[str, Any], list[tuple[dict[str, Any], bytes]]]:
    """Split an envelope into its header and (item header, payload) pairs.

    >>> h, items = parse_envelope(b'{"event_id":"x"}\\n{"type":"event","length":2}\\n{}\\n')
    >>> h["event_id"], items[0][0]["type"], items[0][1]
    ('x', 'event', b'{}')
    """
    header_line, _, rest = data.partition(b"\n")
    header = json.loads(header_line)
    items = []
    while rest.strip():
        item_line, _, rest = rest.partition(b"\n")
        item = json.loads(item_line)
        length = item.get("length")
        if length is not None:
            payload, rest = rest[:length], rest[length:]
            rest = rest[1:] if rest.startswith(b"\n") else rest
        else:
            payload, _, rest = rest.partition(b"\n")
        items.append((item, payload))
    return header, items


# The labels real Sentry renders for the conditions and actions opskit uses (rule classes'
# ``label``; src/sentry/rules/conditions/*.py, src/sentry/mail/actions.py).
LABELS = {
    "sentry.rules.conditions.first_seen_event.FirstSeenEventCondition": "A new issue is created",
    "sentry.rules.conditions.event_frequency.EventFrequencyCondition": (
        "The issue is seen more than {value} times in {interval}"
    ),
    "sentry.mail.actions.NotifyEmailAction": "Send a notification to {targetType}",
}
PAGE_SIZE = 3


def label(node: dict[str, Any]) -> str:
    """The ``name`` Sentry adds to a rule node.

    >>> label({"id": "sentry.rules.conditions.event_frequency.EventFrequencyCondition",
    ...        "value": 10, "interval": "5m"})
    'The issue is seen more than 10 times in 5m'
    """
    text = LABELS.get(str(node.get("id")), str(node.get("id", "")).rsplit(".", 1)[-1])
    try:
        return text.format(**node)
    except (KeyError, IndexError, ValueError):
        return text


def link_header(base: str, offset: int, size: int, total: int) -> str:
    """Sentry's ``Link`` header for the page at ``offset``.

    >>> link_header("http://s/r/", 3, 3, 7).split(", ")[1]
    '<http://s/r/?&cursor=0:6:0>; rel="next"; results="true"; cursor="0:6:0"'
    """
    prev_c, next_c = f"0:{max(0, offset - size)}:1", f"0:{offset + size}:0"
    return (
        f'<{base}?&cursor={prev_c}>; rel="previous"; results="{str(offset > 0).lower()}"; '
        f'cursor="{prev_c}", '
        f'<{base}?&cursor={next_c}>; rel="next"; results="{str(offset + size < total).lower()}"; '
        f'cursor="{next_c}"'
    )


def _bare(nodes: list[dict[str, Any]], drop: tuple[str, ...]) -> list[dict[str, Any]]:
    return [{k: v for k, v in n.items() if k not in drop} for n in nodes]


class Store:
    def __init__(self, directory: Path, org: str, project: str) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.org, self.project = org, project
        self.lock = threading.Lock()
        path = self.dir / "state.json"
        state = json.loads(path.read_text()) if path.exists() else {}
        self.releases: dict[str, dict[str, Any]] = state.get("releases", {})
        self.rules: dict[str, dict[str, Any]] = state.get("rules", {})
        self.next_id = int(state.get("next_id", 1))

    def save(self) -> None:
        path = self.dir / "state.json"
        tmp = path.with_suffix(".tmp")
        state = {"releases": self.releases, "rules": self.rules, "next_id": self.next_id}
        tmp.write_text(json.dumps(state, indent=1))
        tmp.replace(path)

    def keep(self, record: dict[str, Any]) -> None:
        with (self.dir / "inbox.jsonl").open("a") as f:
            f.write(json.dumps({"time": time.time(), **record}, sort_keys=True) + "\n")

    def fault(self) -> tuple[int, int] | None:
        return consume_fault(self.dir)

    def new_id(self) -> str:
        self.next_id += 1
        self.save()
        return str(self.next_id - 1)

    # --- releases and deploys -------------------------------------------------------------

    def create_release(self, body: Any) -> tuple[int, dict[str, Any]]:
        if not isinstance(body, dict):
            raise ApiError(400, {"detail": "expected a JSON object"})
        version = body.get("version")
        if not isinstance(version, str) or not VERSION_RE.match(version):
            raise ApiError(
                400, {"version": ["This field is required and must be a valid version."]}
            )
        projects = body.get("projects")
        if (
            not isinstance(projects, list)
            or not projects
            or any(p not in (self.project, PROJECT_ID) for p in projects)
        ):
            raise ApiError(400, {"projects": ["Invalid project ids or slugs"]})
        existing = self.releases.get(version)
        if existing is not None:
            return 208, existing
        release = {
            "version": version,
            "shortVersion": version[:12],
            "ref": body.get("ref"),
            "url": body.get("url"),
            "dateCreated": now_iso(),
            "dateReleased": body.get("dateReleased"),
            "projects": [{"slug": self.project, "name": self.project}],
            "deployCount": 0,
            "lastDeploy": None,
            "deploys": [],
        }
        self.releases[version] = release
        self.save()
        self.keep({"kind": "release", "version": version, "ref": body.get("ref")})
        return 201, release

    def create_deploy(self, version: str, body: Any) -> dict[str, Any]:
        release = self.releases.get(version)
        if release is None:
            raise ApiError(404, {"detail": "The requested resource does not exist"})
        if not isinstance(body, dict) or not isinstance(body.get("environment"), str):
            raise ApiError(400, {"environment": ["This field is required."]})
        env = body["environment"]
        if not re.fullmatch(r"[^\s/]{1,64}", env):
            raise ApiError(400, {"environment": ["Invalid environment name."]})
        deploy = {
            "id": self.new_id(),
            "environment": env,
            "name": body.get("name"),
            "url": body.get("url"),
            "dateStarted": body.get("dateStarted"),
            "dateFinished": body.get("dateFinished") or now_iso(),
        }
        release["deploys"].append(deploy)
        release["deployCount"] = len(release["deploys"])
        release["lastDeploy"] = deploy
        self.save()
        self.keep({"kind": "deploy", "version": version, "environment": env})
        return deploy

    # --- issue alert rules ----------------------------------------------------------------

    def validate_rule(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise ApiError(400, {"detail": "expected a JSON object"})
        errors: dict[str, list[str]] = {}
        if not isinstance(body.get("name"), str) or not body["name"].strip():
            errors["name"] = ["This field is required."]
        freq = body.get("frequency")
        if isinstance(freq, bool) or not isinstance(freq, int) or not 5 <= freq <= 43200:
            errors["frequency"] = ["Ensure this value is between 5 and 43200."]
        for key in ("actionMatch", "filterMatch"):
            if key in body and body[key] not in ("all", "any", "none"):
                errors[key] = ['Must be "all", "any" or "none".']
        if "actionMatch" not in body:
            errors["actionMatch"] = ["This field is required."]
        for key in ("conditions", "actions", "filters"):
            value = body.get(key, [] if key == "filters" else None)
            if not isinstance(value, list) or not all(
                isinstance(x, dict) and isinstance(x.get("id"), str) for x in value
            ):
                errors[key] = ["Must be a list of objects each with an 'id'."]
        if not errors and not body["actions"]:
            errors["actions"] = ["You must add an action for this alert to fire."]
        if errors:
            raise ApiError(400, errors)
        keys = ("name", "frequency", "actionMatch", "filterMatch", "conditions", "actions")
        rule = {k: body[k] for k in (*keys, "filters", "environment") if k in body}
        rule.setdefault("filterMatch", "all")
        rule.setdefault("filters", [])
        rule.setdefault("environment", None)
        # Stored as Sentry stores it (pre_save drops labels), answered with labels and uuids.
        for key in ("conditions", "filters"):
            rule[key] = [{**n, "name": label(n)} for n in _bare(rule[key], ("name",))]
        rule["actions"] = [
            {**n, "name": label(n), "uuid": str(uuid.uuid4())}
            for n in _bare(rule["actions"], ("name", "uuid"))
        ]
        return rule

    def duplicate_of(self, rule: dict[str, Any], rule_id: str | None = None) -> None:
        """400 when another rule equals `rule` in everything but the name (as Sentry does)."""

        def key(r: dict[str, Any]) -> Any:
            return (
                r["frequency"],
                r["actionMatch"],
                r.get("filterMatch") or "all",
                r.get("environment"),
                _bare(r["conditions"], ("name",)),
                _bare(r.get("filters") or [], ("name",)),
                _bare(r["actions"], ("name", "uuid")),
            )

        for other_id, other in self.rules.items():
            if other_id != rule_id and key(other) == key(rule):
                raise ApiError(
                    400,
                    {
                        "name": [
                            f"This rule is an exact duplicate of '{other['name']}' in this "
                            "project and may not be created."
                        ],
                        "ruleId": [int(other_id)],
                    },
                )

    def rule_page(self, cursor: str | None, size: int) -> tuple[list[dict[str, Any]], int, int]:
        """(rules at the cursor, newest first; offset; total)."""
        offset = 0
        if cursor:
            try:
                offset = max(0, int(cursor.split(":")[1]))
            except (IndexError, ValueError):
                raise ApiError(400, {"detail": "Invalid cursor parameter."}) from None
        rules = sorted(self.rules.values(), key=lambda r: -int(r["id"]))
        return rules[offset : offset + size], offset, len(rules)

    def rule(self, rule_id: str) -> dict[str, Any]:
        if rule_id not in self.rules:
            raise ApiError(404, {"detail": "The requested resource does not exist"})
        return self.rules[rule_id]

    def create_rule(self, body: Any) -> dict[str, Any]:
        rule = self.validate_rule(body)
        self.duplicate_of(rule)
        rule.update(id=self.new_id(), dateCreated=now_iso(), projects=[self.project])
        self.rules[rule["id"]] = rule
        self.save()
        self.keep({"kind": "rule", "action": "create", "name": rule["name"]})
        return rule

    def update_rule(self, rule_id: str, body: Any) -> dict[str, Any]:
        old = self.rule(rule_id)
        rule = self.validate_rule(body)  # PUT overwrites the whole rule
        self.duplicate_of(rule, rule_id)
        rule.update(id=rule_id, dateCreated=old["dateCreated"], projects=old["projects"])
        self.rules[rule_id] = rule
        self.save()
        self.keep({"kind": "rule", "action": "update", "name": rule["name"]})
        return rule

    def delete_rule(self, rule_id: str) -> None:
        rule = self.rule(rule_id)
        del self.rules[rule_id]
        self.save()
        self.keep({"kind": "rule", "action": "delete", "name": rule["name"]})

    # --- events ---------------------------------------------------------------------------

    def event(self, payload: dict[str, Any], source: str, default_id: str = "") -> str:
        event_id = str(payload.get("event_id") or default_id or uuid.uuid4().hex)
        message = payload.get("message")
        if isinstance(message, dict):
            message = message.get("formatted") or message.get("message")
        if not message and isinstance(payload.get("exception"), dict):
            values = payload["exception"].get("values") or [{}]
            message = f"{values[-1].get('type', '')}: {values[-1].get('value', '')}"
        self.keep(
            {
                "kind": "event",
                "event_id": event_id,
                "level": payload.get("level", "error"),
                "message": str(message or "")[:500],
                "environment": payload.get("environment", "production"),
                "release": payload.get("release"),
                "server_name": payload.get("server_name"),
                "from": source,
            }
        )
        return event_id


def make_handler(
    store: Store, token: str, public_key: str, page_size: int = PAGE_SIZE
) -> type[BaseHTTPRequestHandler]:
    class Handler(JsonStandInHandler):
        server_version = "opskit-lab-sentry"

        def handle_any(self) -> None:
            raw = self.body()
            with store.lock:
                if self.fault_answered(store.fault(), b'{"detail": "injected fault"}'):
                    return
                parts = urlsplit(self.path)
                try:
                    if parts.path.startswith("/api/0/"):
                        if self.headers.get("Authorization") != f"Bearer {token}":
                            raise ApiError(401, {"detail": "Invalid token"})
                        body = json.loads(raw) if raw else None
                        status, data = self.api(unquote(parts.path))
                        if status == 0:
                            status, data = self.api_with_body(unquote(parts.path), body)
                        if status == -1:  # the paginated rule list
                            self.rule_list(parts.path, parse_qs(parts.query))
                        else:
                            self.reply(status, data)
                    elif re.fullmatch(r"/api/\d+/(envelope|store)/?", parts.path):
                        self.ingest(parts.path, parse_qs(parts.query), raw)
                    else:
                        raise ApiError(404, {"detail": "Not found"})
                except ValueError:
                    self.reply(400, {"detail": "Malformed JSON"})
                except ApiError as exc:
                    self.reply(exc.status, exc.detail)

        def api(self, path: str) -> tuple[int, Any]:
            """GET and DELETE routes; (0, None) when the route needs the body."""
            org_prefix = f"/api/0/organizations/{store.org}/releases/"
            rules_prefix = f"/api/0/projects/{store.org}/{store.project}/rules/"
            if self.command == "GET" and path == org_prefix:
                return 200, list(store.releases.values())
            if self.command == "GET" and path.startswith(org_prefix):
                version = path[len(org_prefix) :].rstrip("/")
                if version in store.releases:
                    return 200, store.releases[version]
                raise ApiError(404, {"detail": "The requested resource does not exist"})
            if self.command == "GET" and path == rules_prefix:
                return -1, None
            if path.startswith(rules_prefix) and path != rules_prefix:
                rule_id = path[len(rules_prefix) :].rstrip("/")
                if self.command == "GET":
                    return 200, store.rule(rule_id)
                if self.command == "DELETE":
                    store.delete_rule(rule_id)
                    return 202, None
            return 0, None

        def rule_list(self, path: str, query: dict[str, list[str]]) -> None:
            cursor = (query.get("cursor") or [""])[0]
            rules, offset, total = store.rule_page(cursor, page_size)
            host = self.headers.get("Host") or "localhost"
            base = f"http://{host}{path}"
            self.reply(200, rules, {"Link": link_header(base, offset, page_size, total)})

        def api_with_body(self, path: str, body: Any) -> tuple[int, Any]:
            org_prefix = f"/api/0/organizations/{store.org}/releases/"
            rules_prefix = f"/api/0/projects/{store.org}/{store.project}/rules/"
            if self.command == "POST" and path == org_prefix:
                return store.create_release(body)
            m = re.fullmatch(re.escape(org_prefix) + r"(.+)/deploys/", path)
            if self.command == "POST" and m:
                return 201, store.create_deploy(m.group(1), body)
            if self.command == "POST" and path == rules_prefix:
                return 201, store.create_rule(body)
            if self.command == "PUT" and path.startswith(rules_prefix):
                return 200, store.update_rule(path[len(rules_prefix) :].rstrip("/"), body)
            raise ApiError(404, {"detail": "The requested resource does not exist"})

        def ingest(self, path: str, query: dict[str, list[str]], raw: bytes) -> None:
            project_id = path.split("/")[2]
            auth = parse_auth_header(self.headers.get("X-Sentry-Auth", ""))
            key = auth.get("sentry_key") or (query.get("sentry_key") or [""])[0]
            encoding = (self.headers.get("Content-Encoding") or "").lower()
            if encoding == "gzip":
                raw = gzip.decompress(raw)
            elif encoding == "deflate":
                raw = zlib.decompress(raw)
            if path.rstrip("/").endswith("envelope") and not key:
                try:
                    dsn = json.loads(raw.partition(b"\n")[0]).get("dsn", "")
                    key = urlsplit(dsn).username or ""
                except ValueError:
                    key = ""
            if project_id != PROJECT_ID or key != public_key:
                why = "missing authorization" if not key else "invalid public key or project"
                self.reply(403, {"detail": why}, {"X-Sentry-Error": why})
                return
            source = self.client_address[0]
            try:
                if path.rstrip("/").endswith("store"):
                    event_id = store.event(json.loads(raw), source)
                else:
                    header, items = parse_envelope(raw)
                    event_id = str(header.get("event_id") or "")
                    for item, payload in items:
                        if item.get("type") in ("event", "transaction"):
                            event_id = store.event(json.loads(payload), source, event_id)
            except (ValueError, AttributeError):
                self.reply(400, {"detail": "invalid envelope"}, {"X-Sentry-Error": "invalid"})
                return
            self.reply(200, {"id": event_id})

        do_GET = do_POST = do_PUT = do_DELETE = handle_any

    return Handler


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--listen", required=True, help="address (the bridge's or 127.0.0.1)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", type=Path, required=True, help="state.json and inbox.jsonl")
    parser.add_argument("--secrets", type=Path, required=True, help="the lab's secrets.env")
    parser.add_argument("--org", default="opskit-lab", help="organization slug")
    parser.add_argument("--project", default="app", help="project slug (id 1)")
    parser.add_argument("--page-size", type=int, default=PAGE_SIZE, help="rules per page")
    args = parser.parse_args(argv)
    if args.listen in ("0.0.0.0", "::", ""):
        parser.error("refusing to listen on a wildcard address")
    values = read_secrets_file(args.secrets)
    public_key = urlsplit(values["SENTRY_DSN"]).username or ""
    store = Store(args.dir, args.org, args.project)
    handler = make_handler(store, values["SENTRY_AUTH_TOKEN"], public_key, args.page_size)
    server = ThreadingHTTPServer((args.listen, args.port), handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
