"""Stand-ins for Slack incoming webhooks and UptimeRobot heartbeat URLs, keeping what they get.

Run as
``python -m opskit.lab.standins.inbox --kind slack|heartbeat --listen ADDR --port N --dir DIR``.
Every accepted request is appended as one JSON line to ``DIR/inbox.jsonl`` (read it with
``opskit.lab.registry.read_inbox(spec, name)``), so a person or a test sees what a host sent.

Slack (``POST /services/T…/B…/<token>``) answers as Slack documents it
(https://api.slack.com/messaging/webhooks; errors:
https://api.slack.com/changelog/2016-05-17-changes-to-errors-for-incoming-webhooks; rate limits:
https://api.slack.com/docs/rate-limits): 200 ``ok``; 400
``invalid_payload`` (body not JSON or not an object), 400 ``no_text`` (none of text, blocks,
attachments), 400 ``too_many_attachments`` (more than 100), 404 ``no_service`` (path not a webhook
path), 429 with ``Retry-After`` over about one message per second (bursts of 5 tolerated).
Heartbeat (``GET|POST|HEAD /<token>``) answers 200.

What Slack would show is kept beside the payload (``rendered``: the text as a reader sees it, and
``mentions``: what would notify people), parsed as Slack parses message text
(https://api.slack.com/reference/surfaces/formatting): ``<!channel>``, ``<!here>``,
``<!everyone>`` ping, ``<@U…>`` mentions a user, ``<url|label>`` links, and only ``&amp;``,
``&lt;``, ``&gt;`` are entities. A text that arrives escaped renders as the plain characters and
pings nobody.

Faults for tests: if ``DIR/faults.json`` holds ``{"status": 429, "count": 2, "retry_after": 1}``,
the next ``count`` requests get that status (and ``Retry-After``) and are not kept.
"""

from __future__ import annotations

import argparse
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

SLACK_CONTROL = re.compile(r"<([^<>]*)>")
MAX_ATTACHMENTS = 100


def render_slack(text: str) -> tuple[str, list[str]]:
    """(what Slack shows for `text`, the mentions in it that notify people).

    >>> render_slack("<!channel> & <b>")
    ('@channel & ', ['@channel'])
    >>> render_slack("&lt;!channel&gt; &amp; &lt;b&gt;")
    ('<!channel> & <b>', [])
    >>> render_slack("see <https://x.example/a|the runbook>")
    ('see the runbook', [])
    """
    mentions: list[str] = []

    def control(m: re.Match[str]) -> str:
        inner = m.group(1)
        target, _, label = inner.partition("|")
        if target.startswith("!"):
            name = target[1:].split("^")[0]
            if name in ("channel", "here", "everyone"):
                mentions.append(f"@{name}")
                return f"@{name}"
            return label or ""
        if target.startswith(("@", "#")):
            if target.startswith("@"):
                mentions.append(target)
            return label or target
        if "://" in target or target.startswith("mailto:"):
            return label or target
        return ""  # not a control sequence Slack knows: dropped

    shown = SLACK_CONTROL.sub(control, text)
    shown = shown.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    return shown, mentions


def slack_texts(payload: dict[str, Any]) -> list[str]:
    """Every text of a payload Slack parses: text, and the attachments' text fields."""
    out = [str(payload.get("text") or "")]
    for a in payload.get("attachments") or []:
        if isinstance(a, dict):
            out += [str(a.get(k) or "") for k in ("pretext", "title", "text")]
            for f in a.get("fields") or []:
                if isinstance(f, dict):
                    out += [str(f.get("title") or ""), str(f.get("value") or "")]
    return [t for t in out if t]


SLACK_PATH = re.compile(r"^/services/T[A-Z0-9]+/B[A-Z0-9]+/[A-Za-z0-9]+$")
HEARTBEAT_PATH = re.compile(r"^/[A-Za-z0-9_-]+$")
BURST, RATE = 5, 1.0  # Slack: ~1 message per second per webhook, short bursts tolerated


def consume_fault(directory: Path) -> tuple[int, int] | None:
    """Take one fault from `directory/faults.json`: (status, retry_after), or None.

    Shared by every HTTP stand-in; the caller serialises calls.
    """
    path = directory / "faults.json"
    if not path.exists():
        return None
    spec = json.loads(path.read_text() or "{}")
    count = int(spec.get("count", 1))
    if count <= 1:
        path.unlink()
    else:
        path.write_text(json.dumps({**spec, "count": count - 1}))
    return int(spec.get("status", 500)), int(spec.get("retry_after", 1))


class StandInHandler(BaseHTTPRequestHandler):
    """What every HTTP stand-in shares: a quiet log, the request body, a reply, and the faults a
    test injected (``faults.json``), answered before anything else."""

    content_type = "text/plain; charset=utf-8"

    def log_message(self, fmt: str, *args: Any) -> None:  # keep the log short
        pass

    def body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def send(self, status: int, data: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", self.content_type)
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def fault_answered(self, fault: tuple[int, int] | None, body: bytes) -> bool:
        """Answer an injected fault (status, retry_after) with `body`; False when none."""
        if fault is None:
            return False
        status, retry = fault
        self.send(status, body, {"Retry-After": str(retry)} if status == 429 else None)
        return True


class JsonStandInHandler(StandInHandler):
    content_type = "application/json"

    def reply(self, status: int, data: Any, headers: dict[str, str] | None = None) -> None:
        self.send(status, b"" if data is None else json.dumps(data).encode(), headers)


class Inbox:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        self.tokens: dict[str, float] = {}
        self.stamp: dict[str, float] = {}

    def keep(self, record: dict[str, Any]) -> None:
        with self.lock, (self.dir / "inbox.jsonl").open("a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")

    def fault(self) -> tuple[int, int] | None:
        """Consume one injected fault: (status, retry_after), or None."""
        with self.lock:
            return consume_fault(self.dir)

    def allow(self, key: str) -> bool:
        """Token bucket per webhook."""
        now = time.monotonic()
        with self.lock:
            tokens = self.tokens.get(key, BURST)
            tokens = min(BURST, tokens + (now - self.stamp.get(key, now)) * RATE)
            self.stamp[key] = now
            if tokens < 1:
                self.tokens[key] = tokens
                return False
            self.tokens[key] = tokens - 1
            return True


def make_handler(kind: str, inbox: Inbox) -> type[BaseHTTPRequestHandler]:
    class Handler(StandInHandler):
        server_version = "opskit-lab-inbox"

        def reply(self, status: int, body: str, headers: dict[str, str] | None = None) -> None:
            self.send(status, body.encode(), headers)

        def handle_any(self) -> None:
            raw = self.body()
            fault = inbox.fault()
            if self.fault_answered(
                fault, b"rate_limited" if fault and fault[0] == 429 else b"fault"
            ):
                return
            if kind == "heartbeat":
                if not HEARTBEAT_PATH.match(self.path):
                    self.reply(404, "not found")
                    return
                inbox.keep(
                    {
                        "time": time.time(),
                        "token": self.path[1:],
                        "method": self.command,
                        "from": self.client_address[0],
                    }
                )
                self.reply(200, "OK")
                return
            if self.command != "POST" or not SLACK_PATH.match(self.path):
                self.reply(404, "no_service")
                return
            if not inbox.allow(self.path):
                self.reply(429, "rate_limited", {"Retry-After": "1"})
                return
            try:
                payload = json.loads(raw)
            except ValueError:
                self.reply(400, "invalid_payload")
                return
            if not isinstance(payload, dict):
                self.reply(400, "invalid_payload")
                return
            if not any(payload.get(k) for k in ("text", "blocks", "attachments")):
                self.reply(400, "no_text")
                return
            attachments = payload.get("attachments") or []
            if not isinstance(attachments, list) or len(attachments) > MAX_ATTACHMENTS:
                self.reply(400, "too_many_attachments")
                return
            rendered, mentions = render_slack(str(payload.get("text") or ""))
            for other in slack_texts(payload)[1:]:
                mentions += render_slack(other)[1]
            inbox.keep(
                {
                    "time": time.time(),
                    "webhook": self.path.rsplit("/", 1)[0],
                    "payload": payload,
                    "rendered": rendered,
                    "mentions": mentions,
                    "from": self.client_address[0],
                }
            )
            self.reply(200, "ok")

        do_GET = do_POST = do_HEAD = handle_any

    return Handler


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=["slack", "heartbeat"], required=True)
    parser.add_argument("--listen", required=True, help="address (the bridge's or 127.0.0.1)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", type=Path, required=True, help="where inbox.jsonl is kept")
    args = parser.parse_args(argv)
    if args.listen in ("0.0.0.0", "::", ""):
        parser.error("refusing to listen on a wildcard address")
    inbox = Inbox(args.dir)
    server = ThreadingHTTPServer((args.listen, args.port), make_handler(args.kind, inbox))
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
