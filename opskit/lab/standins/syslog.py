"""A TLS syslog receiver standing in for Papertrail, keeping every line it gets (for the lab).

Run as ``python -m opskit.lab.standins.syslog --listen ADDR --port N --dir DIR --cert C --key K``.
It accepts TCP connections, does the TLS handshake with the given certificate, and reads syslog
messages framed as Papertrail accepts them (newline-terminated, or RFC 6587 octet-counted), in
RFC 5424 or RFC 3164 form, both of which Papertrail detects (http://help.papertrailapp.com/kb/
configuration/configuring-remote-syslog-from-embedded-or-proprietary-systems/; the framing:
https://www.rfc-editor.org/rfc/rfc6587). Each message becomes one JSON line in
``DIR/inbox.jsonl`` (``host``, ``app``, ``msg``, ``raw``, ``from``); a failed handshake (a client
that does not trust our certificate, or does not speak TLS) is written to ``DIR/errors.jsonl``
instead, so the inbox only ever holds what arrived over TLS.

The lab runs two: ``syslog`` with a certificate from the lab's CA (the one the hosts are told to
trust, ``DIR/pki/ca.pem``), and ``syslog-wrongcert`` with a certificate of the same name from
another CA, which a correctly configured host must refuse. ``ensure_pki`` makes both.
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import ssl
import threading
import time
from pathlib import Path
from socketserver import BaseRequestHandler, ThreadingTCPServer
from typing import Any

from opskit.lab.standins.pki import make_pki

SERVER_NAME = "syslog.opskit.lab"  # the name the hosts check (rsyslog permitted peer)
HANDSHAKE_TIMEOUT = 10.0
_RFC5424 = re.compile(
    r"^<(?P<pri>\d{1,3})>1 (?P<ts>\S+) (?P<host>\S+) (?P<app>\S+) (?P<procid>\S+) "
    r"(?P<msgid>\S+) (?P<sd>-|(?:\[.*?\])+) ?(?P<msg>.*)$",
    re.S,
)
_RFC3164 = re.compile(
    r"^<(?P<pri>\d{1,3})>(?P<ts>[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d) (?P<host>\S+) "
    r"(?P<app>[^:\[\s]+)(?:\[\d+\])?: ?(?P<msg>.*)$",
    re.S,
)


def parse_message(raw: str) -> dict[str, Any]:
    """Split a syslog line into host, app and message (RFC 5424 or 3164).

    >>> parse_message("<14>1 2026-01-01T00:00:00Z web1 app - - - hello")["msg"]
    'hello'
    >>> parse_message("<14>Jan  1 00:00:00 web1 app[12]: hi")["app"]
    'app'
    """
    for pattern in (_RFC5424, _RFC3164):
        m = pattern.match(raw)
        if m:
            pri = int(m.group("pri"))
            msg = m.group("msg")
            msg = msg.lstrip(" ").removeprefix("\ufeff")
            return {
                "facility": pri // 8,
                "severity": pri % 8,
                "host": m.group("host"),
                "app": m.group("app"),
                "msg": msg,
            }
    return {"host": None, "app": None, "msg": raw}


def split_frames(buffer: bytes) -> tuple[list[bytes], bytes]:
    """Take complete messages off `buffer`: octet-counted (``LEN SP MSG``) or newline-framed.

    >>> split_frames(b"5 hello<13>x\\nrest")
    ([b'hello', b'<13>x'], b'rest')
    """
    out = []
    while buffer:
        m = re.match(rb"^(\d{1,6}) ", buffer)
        if m and not buffer.startswith(b"<"):
            size = int(m.group(1))
            start = m.end()
            if len(buffer) < start + size:
                break
            out.append(buffer[start : start + size])
            buffer = buffer[start + size :]
            continue
        line, sep, rest = buffer.partition(b"\n")
        if not sep:
            break
        if line.strip():
            out.append(line.rstrip(b"\r"))
        buffer = rest
    return out, buffer


class Receiver:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()

    def keep(self, name: str, record: dict[str, Any]) -> None:
        with self.lock, (self.dir / name).open("a") as f:
            f.write(json.dumps({"time": time.time(), **record}, sort_keys=True) + "\n")


def make_handler(receiver: Receiver, context: ssl.SSLContext) -> type[BaseRequestHandler]:
    class Handler(BaseRequestHandler):
        def handle(self) -> None:
            peer = self.client_address[0]
            sock: socket.socket = self.request
            sock.settimeout(HANDSHAKE_TIMEOUT)
            try:
                tls = context.wrap_socket(sock, server_side=True)
            except (ssl.SSLError, OSError) as exc:
                receiver.keep("errors.jsonl", {"from": peer, "error": f"TLS handshake: {exc}"})
                return
            tls.settimeout(None)
            buffer = b""
            received = 0
            try:
                while True:
                    chunk = tls.recv(65536)
                    if not chunk:
                        break
                    frames, buffer = split_frames(buffer + chunk)
                    for frame in frames:
                        raw = frame.decode("utf-8", errors="replace")
                        received += 1
                        receiver.keep(
                            "inbox.jsonl", {"from": peer, "raw": raw, **parse_message(raw)}
                        )
            except (ssl.SSLError, OSError) as exc:
                receiver.keep("errors.jsonl", {"from": peer, "error": f"connection: {exc}"})
                return
            finally:
                tls.close()
            if not received:
                # TLS 1.3: our side of the handshake ends before the client has checked our
                # certificate; a client that refuses it just closes. Say so.
                why = "closed after the handshake, no message (our certificate refused?)"
                receiver.keep("errors.jsonl", {"from": peer, "error": why})

    return Handler


class Server(ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


# --- certificates --------------------------------------------------------------------------


def ensure_pki(directory: Path, *, ca_name: str, address: str) -> Path:
    """Make ``directory/{ca.pem,ca.key,server.pem,server.key}`` once; return the directory.

    The server certificate names SERVER_NAME and `address` and is signed by a CA called
    `ca_name` that exists only here (the lab's own CA, or another one for the wrong receiver).
    """
    server_pem = directory / "server.pem"
    if server_pem.exists() and (directory / "server.key").exists():
        return directory
    return make_pki(directory, ca_name=ca_name, server_name=SERVER_NAME, address=address)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--listen", required=True, help="address (the bridge's or 127.0.0.1)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", type=Path, required=True, help="inbox.jsonl and errors.jsonl")
    parser.add_argument("--cert", type=Path, required=True, help="server certificate (PEM)")
    parser.add_argument("--key", type=Path, required=True, help="its private key (PEM)")
    args = parser.parse_args(argv)
    if args.listen in ("0.0.0.0", "::", ""):
        parser.error("refusing to listen on a wildcard address")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(args.cert, args.key)
    server = Server((args.listen, args.port), make_handler(Receiver(args.dir), context))
    server.serve_forever()


if __name__ == "__main__":
    main()
