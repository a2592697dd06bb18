"""Stand-in for an SMTP server (the health check's alert e-mail): aiosmtpd's server, keeping
every message it accepts.

Run as ``python -m opskit.lab.standins.smtp --listen ADDR --port N --dir DIR``. Each accepted
message is appended as one JSON line to ``DIR/inbox.jsonl``: the envelope (``mail_from``,
``rcpt_tos``), the client's address, the headers a reader sees (``subject``, ``from_header``,
``to_header``) and the text body. The SMTP dialogue itself is aiosmtpd's
(https://aiosmtpd.aio-libs.org/en/latest/controller.html, RFC 5321), not written here; no
STARTTLS and no AUTH in the lab (the inventory's `starttls`/`username` are for real servers).
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
import time
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller


class Keeper:
    """aiosmtpd's handler: keep the message, answer 250."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = message_from_bytes(
            envelope.original_content or envelope.content, policy=policy.default
        )
        body = msg.get_body(preferencelist=("plain",)) if msg.is_multipart() else msg
        record = {
            "time": time.time(),
            "from": session.peer[0] if session.peer else None,
            "mail_from": envelope.mail_from,
            "rcpt_tos": list(envelope.rcpt_tos),
            "subject": str(msg.get("Subject", "")).strip(),  # unfolded, as a reader sees it
            "from_header": str(msg.get("From", "")),
            "to_header": str(msg.get("To", "")),
            "body": body.get_content() if body is not None else "",
        }
        with self.lock, (self.dir / "inbox.jsonl").open("a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
        return "250 Message accepted for delivery"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="address (the bridge's or 127.0.0.1)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", type=Path, required=True, help="where inbox.jsonl is kept")
    args = parser.parse_args(argv)
    if args.listen in ("0.0.0.0", "::", ""):
        parser.error("refusing to listen on a wildcard address")
    controller = Controller(Keeper(args.dir), hostname=args.listen, port=args.port)
    controller.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    controller.stop()


if __name__ == "__main__":
    main()
