"""A stand-in for UptimeRobot's API v3, keeping the monitors it is given (for the lab).

Run as
``python -m opskit.lab.standins.uptimerobot --listen ADDR --port N --dir DIR --secrets FILE``.
It speaks the subset of ``https://api.uptimerobot.com/v3`` that opskit uses, as UptimeRobot
documents it (https://uptimerobot.com/api/v3) and its official Terraform provider's client speaks
it (https://github.com/uptimerobot/terraform-provider-uptimerobot, ``internal/client/``):

* ``Authorization: Bearer <key>`` where the key is ``UPTIMEROBOT_API_KEY`` of the lab's secrets
  file; anything else gets 401.
* ``GET /v3/monitors`` (``name``, ``tags`` filters; cursor pagination: ``{"data": [...],
  "nextLink": "<url with cursor=<id>>" | null}``, ``--page-size`` monitors a page),
  ``POST /v3/monitors``, ``GET|PATCH|DELETE /v3/monitors/{id}`` (DELETE of a missing id: 404),
  ``GET /v3/user/alert-contacts`` (a JSON array), ``GET /v3/user/me``.
* Monitor JSON in camelCase: ``friendlyName``, ``type`` (HTTP, KEYWORD, PING, PORT, HEARTBEAT),
  ``url``, ``interval`` (seconds, >= 30), ``timeout``, ``keywordType`` (ALERT_EXISTS /
  ALERT_NOT_EXISTS) and ``keywordValue`` for KEYWORD, ``port`` for PORT, ``gracePeriod`` for
  HEARTBEAT, ``assignedAlertContacts`` (``[{alertContactId, threshold, recurrence}]``, ids must
  exist), ``tagNames`` in requests and ``tags: [{id, name}]`` in answers; ``type`` cannot change.
  A heartbeat monitor's ``url`` is its heartbeat URL on the lab's heartbeat stand-in.
* ``GET /v3/monitors/{id}/stats/uptime?from=ISO&to=ISO`` (both optional: the last 24 hours;
  at most 90 days; ``to`` after ``from``) answers ``{"uptime": <percent 0-100>,
  "total_downtime_seconds", "incident_count", "mtbf": <seconds> | null, "from", "to"}`` as the
  v3 OpenAPI document (``MonitorsController_getMonitorUptimeStats``, ``MonitorUptimeStatsDto``;
  https://github.com/uptimerobot/uptimerobot-cli/blob/main/openapi/openapi.yaml) describes it.
  The lab has no robot checking from outside: a monitor is up since it was created except for
  the downtimes a test or the demo writes to ``DIR/downtime.json`` =
  ``{"<monitor id>" | "*": [["<start ISO>", "<end ISO>"], ...]}``, read at every request.
* Errors: non-2xx with ``{"message", "code"}``.
* Rate limit as on the free plan (https://uptimerobot.com/api/v3, "Rate limits": FREE 10
  req/min, PRO monitor limit x 2 up to 5000): ``--rate`` requests (default 10) per ``--window``
  seconds (default 60), a fixed window from its first request. Every answer carries
  ``X-RateLimit-Limit``, ``X-RateLimit-Remaining`` and ``X-RateLimit-Reset`` (epoch seconds at
  which the window ends); a request over the limit gets 429 with ``Retry-After`` (seconds) and is
  not served. Tests may shorten the window (never the default) with ``DIR/limits.json`` =
  ``{"rate": 10, "window": 5}``, read at every request.
* Pages of ``--page-size`` monitors (default 50, the page size UptimeRobot's API has documented
  for monitor lists: v2 ``limit`` "default and max. is 50").

State: ``DIR/state.json`` (monitors, next id). Every change (create, update, delete) is appended
to ``DIR/inbox.jsonl`` so that ``inv lab.inbox`` shows what opskit did. Faults for tests:
like ``opskit.lab.standins.inbox``,
``DIR/faults.json`` = ``{"status": 429, "count": 2, "retry_after": 1}``
makes the next ``count`` requests fail with that status (and are not served).
"""

from __future__ import annotations

import argparse
import json
import math
import secrets
import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from opskit.core.secrets import read_secrets_file
from opskit.lab.standins.inbox import JsonStandInHandler, consume_fault

TYPES = ("HTTP", "KEYWORD", "PING", "PORT", "HEARTBEAT", "DNS", "API", "UDP")
KEYWORD_TYPES = ("ALERT_EXISTS", "ALERT_NOT_EXISTS")
UPDATABLE = {
    "friendlyName",
    "url",
    "type",
    "interval",
    "timeout",
    "keywordType",
    "keywordValue",
    "keywordCaseType",
    "port",
    "gracePeriod",
    "assignedAlertContacts",
    "tagNames",
    "httpMethodType",
    "followRedirections",
    "sslExpirationReminder",
    "domainExpirationReminder",
    "checkSSLErrors",
    "successHttpResponseCodes",
    "customHttpHeaders",
}
# The lab's account has these alert contacts (UptimeRobot creates contacts in its web UI).
DEFAULT_CONTACTS = (
    {"id": 100001, "friendlyName": "ops-slack", "type": "Slack", "status": "Active"},
    {"id": 100002, "friendlyName": "ops@example.com", "type": "Email", "status": "Active"},
)


class ApiError(Exception):
    def __init__(self, status: int, message: str, code: str = "VALIDATION_ERROR") -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


class Store:
    """Monitors and what was done to them; one lock, state saved after every change."""

    def __init__(
        self, directory: Path, heartbeat_base: str, rate: int, period: float = 60.0
    ) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        self.heartbeat_base = heartbeat_base.rstrip("/")
        self.rate, self.period = rate, period
        self.window: list[float] = []  # the current window's requests
        path = self.dir / "state.json"
        state = json.loads(path.read_text()) if path.exists() else {}
        self.monitors: dict[int, dict[str, Any]] = {
            int(k): v for k, v in state.get("monitors", {}).items()
        }
        self.next_id = int(state.get("next_id", 800001))
        self.contacts = [dict(c, value="") for c in DEFAULT_CONTACTS]

    def save(self) -> None:
        path = self.dir / "state.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"monitors": self.monitors, "next_id": self.next_id}, indent=1))
        tmp.replace(path)

    def keep(self, record: dict[str, Any]) -> None:
        with (self.dir / "inbox.jsonl").open("a") as f:
            f.write(json.dumps({"time": time.time(), **record}, sort_keys=True) + "\n")

    def fault(self) -> tuple[int, int] | None:
        return consume_fault(self.dir)

    def limits(self) -> tuple[int, float]:
        """(requests, window seconds): the defaults, or what ``limits.json`` says (tests)."""
        path = self.dir / "limits.json"
        if path.exists():
            spec = json.loads(path.read_text() or "{}")
            return int(spec.get("rate", self.rate)), float(spec.get("window", self.period))
        return self.rate, self.period

    def rate_limited(self) -> tuple[int | None, dict[str, str]]:
        """(seconds to wait when over the limit, else None; the X-RateLimit-* headers); a
        request within the limit is counted."""
        rate, period = self.limits()
        now = time.time()
        if not self.window or now >= self.window[0] + period:
            self.window = [now]  # a new fixed window starts with this request
            wait = None
        elif len(self.window) >= rate:
            wait = max(1, math.ceil(self.window[0] + period - now))
        else:
            self.window.append(now)
            wait = None
        headers = {
            "X-RateLimit-Limit": str(rate),
            "X-RateLimit-Remaining": str(max(0, rate - len(self.window))),
            "X-RateLimit-Reset": str(math.ceil(self.window[0] + period)),
        }
        if wait is not None:
            headers["Retry-After"] = str(wait)
        return wait, headers

    # --- monitors ------------------------------------------------------------------------

    def validate(self, body: Any, current: dict[str, Any] | None) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise ApiError(400, "request body must be a JSON object")
        unknown = set(body) - UPDATABLE
        if unknown:
            raise ApiError(400, f"unknown properties: {', '.join(sorted(unknown))}")
        merged = {**(current or {}), **body}
        if "tagNames" in body:
            tags = body["tagNames"]
            if not isinstance(tags, list) or not all(isinstance(t, str) and t for t in tags):
                raise ApiError(400, "tagNames must be a list of non-empty strings")
            merged["tags"] = [{"id": _tag_id(t), "name": t} for t in tags]
            del merged["tagNames"]
        name = merged.get("friendlyName")
        if not isinstance(name, str) or not name.strip():
            raise ApiError(400, "friendlyName is required")
        kind = merged.get("type")
        if kind not in TYPES:
            raise ApiError(400, f"type must be one of {', '.join(TYPES)}")
        if current is not None and kind != current["type"]:
            raise ApiError(400, "type cannot be changed; delete the monitor and create it again")
        interval = merged.get("interval")
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 30:
            raise ApiError(400, "interval must be an integer number of seconds, at least 30")
        timeout = merged.get("timeout", 30)
        if isinstance(timeout, bool) or not isinstance(timeout, int) or not 0 <= timeout <= 60:
            raise ApiError(400, "timeout must be 0-60 seconds")
        if kind in ("HTTP", "KEYWORD"):
            url = merged.get("url")
            if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https"):
                raise ApiError(400, "url must be an http(s) URL")
        if kind == "KEYWORD":
            if merged.get("keywordType") not in KEYWORD_TYPES:
                raise ApiError(400, f"keywordType must be one of {', '.join(KEYWORD_TYPES)}")
            if not isinstance(merged.get("keywordValue"), str) or not merged["keywordValue"]:
                raise ApiError(400, "keywordValue is required for KEYWORD monitors")
        if kind in ("PORT", "PING"):
            host = merged.get("url")
            if not isinstance(host, str) or not host or "/" in host:
                raise ApiError(400, "url must be a host name or IP address for PORT/PING monitors")
        if kind == "PORT":
            port = merged.get("port")
            if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
                raise ApiError(400, "port must be 1-65535 for PORT monitors")
        if kind == "HEARTBEAT":
            grace = merged.get("gracePeriod", 0)
            if isinstance(grace, bool) or not isinstance(grace, int) or not 0 <= grace <= 86400:
                raise ApiError(400, "gracePeriod must be 0-86400 seconds")
        contacts = merged.get("assignedAlertContacts", [])
        if not isinstance(contacts, list):
            raise ApiError(400, "assignedAlertContacts must be a list")
        known = {str(c["id"]) for c in self.contacts}
        normalized = []
        for c in contacts:
            if not isinstance(c, dict) or str(c.get("alertContactId", "")) not in known:
                raise ApiError(400, f"unknown alert contact {c!r}")
            normalized.append(
                {
                    "alertContactId": str(c["alertContactId"]),
                    "threshold": int(c.get("threshold", 0)),
                    "recurrence": int(c.get("recurrence", 0)),
                }
            )
        merged["assignedAlertContacts"] = normalized
        merged.setdefault("timeout", timeout)
        merged.setdefault("tags", [])
        return merged

    def create(self, body: Any) -> dict[str, Any]:
        monitor = self.validate(body, None)
        monitor_id = self.next_id
        self.next_id += 1
        if monitor["type"] == "HEARTBEAT":
            monitor["url"] = f"{self.heartbeat_base}/m{monitor_id}-{secrets.token_hex(12)}"
        monitor.update(
            id=monitor_id,
            status="NOT_CHECKED",
            createDateTime=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        )
        self.monitors[monitor_id] = monitor
        self.save()
        self.keep({"action": "create", "monitor": _summary(monitor)})
        return monitor

    def get(self, monitor_id: int) -> dict[str, Any]:
        if monitor_id not in self.monitors:
            raise ApiError(404, f"monitor {monitor_id} not found", "NOT_FOUND")
        return self.monitors[monitor_id]

    def update(self, monitor_id: int, body: Any) -> dict[str, Any]:
        current = self.get(monitor_id)
        if isinstance(body, dict) and current["type"] == "HEARTBEAT":
            body = {k: v for k, v in body.items() if k != "url"}  # heartbeat URLs are ours
        monitor = self.validate(body, current)
        changed = sorted(k for k in monitor if monitor.get(k) != current.get(k))
        self.monitors[monitor_id] = monitor
        self.save()
        self.keep({"action": "update", "monitor": _summary(monitor), "fields": changed})
        return monitor

    def delete(self, monitor_id: int) -> dict[str, Any]:
        monitor = self.get(monitor_id)
        del self.monitors[monitor_id]
        self.save()
        self.keep({"action": "delete", "monitor": _summary(monitor)})
        return monitor

    def uptime_stats(self, monitor_id: int, query: dict[str, list[str]]) -> dict[str, Any]:
        """The monitor's uptime over [from, to] (default: the last 24 hours; at most 90 days)."""
        monitor = self.get(monitor_id)
        now = time.time()

        def when(name: str, default: float) -> float:
            if name not in query:
                return default
            text = query[name][0]
            try:
                return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
            except ValueError:
                raise ApiError(400, f"{name} must be an ISO 8601 date, got {text!r}") from None

        start, end = when("from", now - 86400), when("to", now)
        if end <= start:
            raise ApiError(400, "to must be after from")
        if end - start > 90 * 86400:
            raise ApiError(400, "the date range may be at most 90 days")
        created = datetime.fromisoformat(monitor["createDateTime"].replace("Z", "+00:00"))
        observed_from = max(start, created.timestamp())
        observed = max(0.0, end - observed_from)
        path = self.dir / "downtime.json"
        spec = json.loads(path.read_text() or "{}") if path.exists() else {}
        down, incidents = 0.0, 0
        for a, b in [*spec.get(str(monitor_id), []), *spec.get("*", [])]:
            lo = max(observed_from, datetime.fromisoformat(a.replace("Z", "+00:00")).timestamp())
            hi = min(end, datetime.fromisoformat(b.replace("Z", "+00:00")).timestamp())
            if hi > lo:
                down += hi - lo
                incidents += 1

        def iso(t: float) -> str:
            return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))

        return {
            "uptime": round(100.0 * (1 - down / observed), 4) if observed else 100.0,
            "total_downtime_seconds": round(down),
            "incident_count": incidents,
            "mtbf": round((observed - down) / incidents) if incidents else None,
            "from": iso(start),
            "to": iso(end),
        }

    def page(self, query: dict[str, list[str]], size: int, base: str) -> dict[str, Any]:
        items = sorted(self.monitors.values(), key=lambda m: m["id"])
        if "name" in query:
            needle = query["name"][0].lower()
            items = [m for m in items if needle in m["friendlyName"].lower()]
        if "tags" in query:
            wanted = set(query["tags"][0].split(","))
            items = [m for m in items if wanted & {t["name"] for t in m["tags"]}]
        if "cursor" in query:
            try:
                cursor = int(query["cursor"][0])
            except ValueError:
                raise ApiError(400, "cursor must be a monitor id") from None
            items = [m for m in items if m["id"] > cursor]
        data, rest = items[:size], items[size:]
        next_link = None
        if rest:
            params = {k: v[0] for k, v in query.items() if k != "cursor"}
            next_link = f"{base}/v3/monitors?{urlencode({**params, 'cursor': data[-1]['id']})}"
        return {"data": data, "nextLink": next_link}


def _tag_id(name: str) -> int:
    return 1000 + sum(ord(c) * (i + 1) for i, c in enumerate(name)) % 100000


def _summary(monitor: dict[str, Any]) -> dict[str, Any]:
    keys = ("id", "friendlyName", "type", "url", "port", "keywordValue", "interval")
    out = {k: monitor[k] for k in keys if k in monitor}
    out["tags"] = [t["name"] for t in monitor.get("tags", [])]
    return out


def make_handler(store: Store, api_key: str, page_size: int) -> type[BaseHTTPRequestHandler]:
    class Handler(JsonStandInHandler):
        server_version = "opskit-lab-uptimerobot"

        def handle_any(self) -> None:
            raw = self.body()
            with store.lock:
                fault = b'{"message": "injected fault", "code": "FAULT"}'
                if self.fault_answered(store.fault(), fault):
                    return
                if self.headers.get("Authorization") != f"Bearer {api_key}":
                    self.reply(401, {"message": "Unauthorized", "code": "UNAUTHORIZED"})
                    return
                wait, limit = store.rate_limited()
                if wait is not None:
                    self.reply(429, {"message": "Too Many Requests", "code": "RATE_LIMITED"}, limit)
                    return
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    self.reply(
                        400, {"message": "request body is not JSON", "code": "BAD_JSON"}, limit
                    )
                    return
                try:
                    status, data = self.route(body)
                except ApiError as exc:
                    self.reply(exc.status, {"message": exc.message, "code": exc.code}, limit)
                    return
                self.reply(status, data, limit)

        def route(self, body: Any) -> tuple[int, Any]:
            parts = urlsplit(self.path)
            path = parts.path.rstrip("/")
            query = parse_qs(parts.query)
            host = self.headers.get("Host") or "localhost"
            base = f"http://{host}"
            segments = path.split("/")[1:]
            if segments[:1] != ["v3"]:
                raise ApiError(404, "not found", "NOT_FOUND")
            rest = segments[1:]
            if rest == ["user", "alert-contacts"] and self.command == "GET":
                return 200, store.contacts
            if rest == ["user", "me"] and self.command == "GET":
                return 200, {"email": "ops@example.com", "monitorLimit": 50, "plan": "FREE"}
            if rest == ["monitors"]:
                if self.command == "GET":
                    return 200, store.page(query, page_size, base)
                if self.command == "POST":
                    return 201, store.create(body)
            stats = len(rest) == 4 and rest[0] == "monitors" and rest[2:] == ["stats", "uptime"]
            if stats and self.command == "GET" and rest[1].isdigit():
                return 200, store.uptime_stats(int(rest[1]), query)
            if len(rest) == 2 and rest[0] == "monitors":
                try:
                    monitor_id = int(rest[1])
                except ValueError:
                    raise ApiError(404, "not found", "NOT_FOUND") from None
                if self.command == "GET":
                    return 200, store.get(monitor_id)
                if self.command == "PATCH":
                    return 200, store.update(monitor_id, body)
                if self.command == "DELETE":
                    return 200, store.delete(monitor_id)
            raise ApiError(404 if self.command == "GET" else 405, "not found", "NOT_FOUND")

        do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = handle_any

    return Handler


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--listen", required=True, help="address (the bridge's or 127.0.0.1)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", type=Path, required=True, help="state.json and inbox.jsonl")
    parser.add_argument("--secrets", type=Path, required=True, help="the lab's secrets.env")
    parser.add_argument("--heartbeat-base", required=True, help="base URL of heartbeat URLs")
    parser.add_argument("--page-size", type=int, default=50, help="monitors per page")
    parser.add_argument("--rate", type=int, default=10, help="requests per window (free: 10)")
    parser.add_argument("--window", type=float, default=60.0, help="window in seconds (60)")
    args = parser.parse_args(argv)
    if args.listen in ("0.0.0.0", "::", ""):
        parser.error("refusing to listen on a wildcard address")
    api_key = read_secrets_file(args.secrets)["UPTIMEROBOT_API_KEY"]
    store = Store(args.dir, args.heartbeat_base, args.rate, args.window)
    handler = make_handler(store, api_key, args.page_size)
    server = ThreadingHTTPServer((args.listen, args.port), handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
