"""Stand-in for PagerDuty's Events API v2 (``POST /v2/enqueue``), keeping what it gets.

Run as ``python -m opskit.lab.standins.pagerduty --listen ADDR --port N --dir DIR [--secrets F]``.
Every accepted event is appended as one JSON line to ``DIR/inbox.jsonl`` (the routing key itself
is never kept: ``routing_key_ok`` says whether it is the lab's ``PAGERDUTY_ROUTING_KEY``), and
the alerts it opened are in ``DIR/alerts.json`` ({dedup_key: "triggered" | "acknowledged" |
"resolved"}).

As PagerDuty documents it
(https://developer.pagerduty.com/docs/events-api-v2/trigger-events/,
https://developer.pagerduty.com/docs/events-api-v2/resolve-events/, and the overview's
"Response Codes & Retry Logic" and the rate-limit page of
https://github.com/PagerDuty/developer-docs/tree/main/docs/events-API-v2):

* ``routing_key`` and ``event_action`` (``trigger``, ``acknowledge`` or ``resolve``) are
  required; a trigger needs ``payload.summary`` (at most 1024 characters), ``payload.source``
  and ``payload.severity`` (``critical``, ``error``, ``warning`` or ``info``); acknowledge and
  resolve need ``dedup_key`` (at most 255 characters); a body that is not a JSON object, or
  larger than 512 KB, is refused: 400 ``{"status": "invalid event", "message": "Event object
  is invalid", "errors": [...]}``;
* accepted: 202 ``{"status": "success", "message": "Event processed", "dedup_key": ...}``; a
  trigger without ``dedup_key`` gets a fresh one; a trigger for an open alert is added to it;
  an acknowledge or resolve for no open alert is accepted and dropped (kept with ``dropped``);
* about 120 events a minute per routing key, over a 60 s window looking back: past it 429
  ``Request Limit Exceeded`` and the event is not ingested.

Faults for tests: ``DIR/faults.json`` as in the Slack stand-in (opskit.lab.standins.inbox).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import threading
import time
import uuid
from collections import deque
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

from opskit.core.secrets import read_secrets_file
from opskit.lab.standins.inbox import JsonStandInHandler, consume_fault

ACTIONS = ("trigger", "acknowledge", "resolve")
SEVERITIES = ("critical", "error", "warning", "info")
RATE_PER_MINUTE = 120
MAX_BODY = 512 * 1024


def problems(event: Any) -> list[str]:
    """Why PagerDuty would refuse `event` (empty: it is valid).

    >>> problems({"routing_key": "k", "event_action": "trigger", "payload": {"summary": "s",
    ...     "source": "web1", "severity": "critical"}})
    []
    >>> problems({"routing_key": "k", "event_action": "resolve"})
    ["'dedup_key' is required for resolve"]
    >>> bad = {"event_action": "trigger", "payload": {"summary": "s", "severity": "x"}}
    >>> for p in problems(bad):
    ...     print(p)
    'routing_key' is missing
    'payload.source' is missing
    'payload.severity' is invalid (x)
    """
    if not isinstance(event, dict):
        return ["the body is not a JSON object"]
    out = []
    if not isinstance(event.get("routing_key"), str) or not event.get("routing_key"):
        out.append("'routing_key' is missing")
    action = event.get("event_action")
    if action not in ACTIONS:
        out.append(f"'event_action' is invalid ({action})")
    dedup = event.get("dedup_key")
    if dedup is not None and (not isinstance(dedup, str) or len(dedup) > 255):
        out.append("'dedup_key' must be a string of at most 255 characters")
    if action in ("acknowledge", "resolve") and not dedup:
        out.append(f"'dedup_key' is required for {action}")
    if action == "trigger":
        payload = event.get("payload")
        if not isinstance(payload, dict):
            return [*out, "'payload' is missing"]
        summary = payload.get("summary")
        if not isinstance(summary, str) or not summary:
            out.append("'payload.summary' is missing")
        elif len(summary) > 1024:
            out.append("'payload.summary' is longer than 1024 characters")
        if not isinstance(payload.get("source"), str) or not payload.get("source"):
            out.append("'payload.source' is missing")
        if payload.get("severity") not in SEVERITIES:
            out.append(f"'payload.severity' is invalid ({payload.get('severity')})")
    return out


class Events:
    """What the stand-in keeps: the inbox, the alerts' states, the rate window per key."""

    def __init__(self, directory: Path, known_key: str | None) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.known_key = known_key
        self.lock = threading.Lock()
        self.windows: dict[str, deque[float]] = {}
        path = self.dir / "alerts.json"
        self.alerts: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}

    def allow(self, key: str) -> bool:
        now = time.monotonic()
        with self.lock:
            window = self.windows.setdefault(hashlib.sha256(key.encode()).hexdigest(), deque())
            while window and now - window[0] >= 60:
                window.popleft()
            if len(window) >= RATE_PER_MINUTE:
                return False
            window.append(now)
            return True

    def ingest(self, event: dict[str, Any], sender: str) -> str:
        """Apply a valid event; its dedup_key."""
        with self.lock:
            action = event["event_action"]
            dedup = event.get("dedup_key") or uuid.uuid4().hex
            open_ = self.alerts.get(dedup) in ("triggered", "acknowledged")
            dropped = action != "trigger" and not open_
            if action == "trigger":
                self.alerts[dedup] = "triggered" if not open_ else self.alerts[dedup]
            elif not dropped:
                self.alerts[dedup] = "acknowledged" if action == "acknowledge" else "resolved"
            payload = event.get("payload") or {}
            record = {
                "time": time.time(),
                "from": sender,
                "event_action": action,
                "dedup_key": dedup,
                "routing_key_ok": self.known_key is None or event["routing_key"] == self.known_key,
                "summary": payload.get("summary"),
                "source": payload.get("source"),
                "severity": payload.get("severity"),
                "custom_details": payload.get("custom_details"),
                "dropped": dropped,
            }
            with (self.dir / "inbox.jsonl").open("a") as f:
                f.write(json.dumps(record, sort_keys=True) + "\n")
            (self.dir / "alerts.json").write_text(json.dumps(self.alerts, sort_keys=True))
            return dedup


def make_handler(events: Events) -> type[JsonStandInHandler]:
    class Handler(JsonStandInHandler):
        server_version = "opskit-lab-pagerduty"

        def do_POST(self) -> None:
            raw = self.body()
            with events.lock:
                fault = consume_fault(events.dir)
            if self.fault_answered(fault, b'{"status": "fault"}'):
                return
            if self.path.split("?")[0] != "/v2/enqueue":
                self.reply(404, {"status": "not found"})
                return
            try:
                event = json.loads(raw) if len(raw) <= MAX_BODY else None
            except ValueError:
                event = None
            errors = problems(event) if event is not None else ["the body is not valid JSON"]
            if errors or not isinstance(event, dict):
                invalid = {"status": "invalid event", "message": "Event object is invalid"}
                self.reply(400, {**invalid, "errors": errors})
                return
            if not events.allow(event["routing_key"]):
                self.reply(429, {"status": "throttle event", "message": "Request Limit Exceeded"})
                return
            dedup = events.ingest(event, self.client_address[0])
            self.reply(202, {"status": "success", "message": "Event processed", "dedup_key": dedup})

    return Handler


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="address (the bridge's or 127.0.0.1)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", type=Path, required=True, help="where inbox.jsonl is kept")
    parser.add_argument("--secrets", type=Path, help="the lab's secrets (PAGERDUTY_ROUTING_KEY)")
    args = parser.parse_args(argv)
    if args.listen in ("0.0.0.0", "::", ""):
        parser.error("refusing to listen on a wildcard address")
    key = read_secrets_file(args.secrets).get("PAGERDUTY_ROUTING_KEY") if args.secrets else None
    server = ThreadingHTTPServer((args.listen, args.port), make_handler(Events(args.dir, key)))
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
