"""A small HTTP forward proxy for apt on the lab hosts (stdlib only).

The lab hosts have no route out of this machine. Their apt is configured with
``Acquire::http::Proxy "http://<gateway>:3142"`` and sends plain-HTTP requests with an absolute
URI (``GET http://deb.debian.org/debian/dists/... HTTP/1.1``). This proxy forwards such requests to
the mirror hosts named with ``--allow`` (the machine's own apt mirrors) and streams the answer back.
Anything else is refused: other hosts get 403, ``CONNECT`` (https tunnels) and other methods 405.

Requests in absolute form are what an HTTP client sends to a proxy (RFC 9112 §3.2.2,
https://www.rfc-editor.org/rfc/rfc9112#section-3.2.2); apt's proxy setting: apt.conf(5),
https://manpages.debian.org/bookworm/apt/apt.conf.5.en.html.

Run by ``opskit.lab.lifecycle.up`` (see ``opskit.lab.registry``)::

    python -m opskit.lab.standins.aptproxy --listen 10.213.0.1 --port 3142 --allow deb.debian.org

It never listens on a wildcard address: ``--listen`` must be a concrete address (the bridge's).
"""

from __future__ import annotations

import argparse
import http.client
import ipaddress
import logging
import sys
from collections.abc import Iterable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

PORT = 3142
UPSTREAM_TIMEOUT = 60.0
CHUNK = 64 * 1024

log = logging.getLogger("opskit.lab.standins.aptproxy")

# RFC 9110 7.6.1: connection-specific header fields a proxy must not forward.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)


def parse_allow(entries: Iterable[str]) -> frozenset[tuple[str, int]]:
    """Turn ``host`` / ``host:port`` entries into (lowercase host, port) pairs; port 80 by default.

    >>> sorted(parse_allow(["deb.debian.org", "Mirror.example:8080"]))
    [('deb.debian.org', 80), ('mirror.example', 8080)]
    """
    allowed: set[tuple[str, int]] = set()
    for entry in entries:
        host, sep, port = entry.strip().rpartition(":")
        if not sep or not port.isdigit():
            host, port = entry.strip(), "80"
        if not host:
            raise ValueError(f"empty host in allow entry {entry!r}")
        allowed.add((host.lower(), int(port)))
    return frozenset(allowed)


def parse_target(request_target: str) -> tuple[str, int, str] | None:
    """Split an absolute ``http://`` request target into (host, port, path?query).

    Returns None for anything that is not an absolute plain-HTTP URI (origin-form, https, ...).

    >>> parse_target("http://deb.debian.org/debian/dists/bookworm/InRelease")
    ('deb.debian.org', 80, '/debian/dists/bookworm/InRelease')
    >>> parse_target("/debian/dists/bookworm/InRelease") is None
    True
    """
    try:
        parts = urlsplit(request_target)
        port = parts.port or 80
    except ValueError:
        return None
    if parts.scheme.lower() != "http" or not parts.hostname:
        return None
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    return parts.hostname.lower(), port, path


class ProxyServer(ThreadingHTTPServer):
    """A threading HTTP server that knows which upstream hosts it may reach."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], allowed: frozenset[tuple[str, int]]) -> None:
        self.allowed = allowed
        super().__init__(address, ProxyHandler)


class ProxyHandler(BaseHTTPRequestHandler):
    """Forward GET/HEAD for allowed hosts; refuse everything else."""

    protocol_version = "HTTP/1.1"
    server: ProxyServer

    def do_GET(self) -> None:
        self._forward(head=False)

    def do_HEAD(self) -> None:
        self._forward(head=True)

    def do_CONNECT(self) -> None:
        self._refuse(405, "CONNECT is not supported: the lab apt proxy forwards plain http only")

    def do_POST(self) -> None:
        self._refuse(405, f"{self.command} is not supported: the lab apt proxy forwards GET/HEAD")

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_POST

    def _refuse(self, code: int, message: str) -> None:
        self.send_error(code, message)

    def _forward(self, *, head: bool) -> None:
        target = parse_target(self.path)
        if target is None:
            self._refuse(400, "expected an absolute http:// URI (configure apt's http proxy)")
            return
        host, port, path = target
        if (host, port) not in self.server.allowed:
            self._refuse(403, f"{host}:{port} is not an allowed apt mirror of this lab")
            return
        headers = {
            k: v
            for k, v in self.headers.items()
            if k.lower() not in HOP_BY_HOP and k.lower() != "host"
        }
        headers["Host"] = host if port == 80 else f"{host}:{port}"
        upstream = http.client.HTTPConnection(host, port, timeout=UPSTREAM_TIMEOUT)
        try:
            upstream.request(self.command, path, headers=headers)
            response = upstream.getresponse()
        except OSError as exc:
            upstream.close()
            self._refuse(502, f"upstream {host}:{port} failed: {exc}")
            return
        try:
            self._relay(response, head=head)
        finally:
            upstream.close()

    def _relay(self, response: http.client.HTTPResponse, *, head: bool) -> None:
        has_body = not head and response.status not in (204, 304) and response.status >= 200
        length = response.getheader("Content-Length")
        self.send_response(response.status, response.reason)
        for key, value in response.getheaders():
            if key.lower() not in HOP_BY_HOP:
                self.send_header(key, value)
        if has_body and length is None:
            # Unknown length (upstream used chunked): delimit the body by closing the connection.
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if not has_body:
            return
        try:
            while chunk := response.read(CHUNK):
                self.wfile.write(chunk)
        except OSError as exc:
            # The client must not wait for bytes that will never come.
            log.warning("relay of %s aborted: %s", self.path, exc)
            self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:
        log.info("%s %s", self.address_string(), format % args)


def _listen_address(value: str) -> str:
    try:
        address = ipaddress.ip_address(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an IP address: {value!r}") from exc
    if address.is_unspecified:
        raise argparse.ArgumentTypeError("refusing a wildcard address; listen on the bridge's")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Run the proxy until killed."""
    parser = argparse.ArgumentParser(
        prog="python -m opskit.lab.standins.aptproxy", description=__doc__
    )
    parser.add_argument("--listen", required=True, type=_listen_address, help="address to bind")
    parser.add_argument("--port", type=int, default=PORT)
    parser.add_argument("--allow", nargs="+", required=True, metavar="HOST[:PORT]")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )
    server = ProxyServer((args.listen, args.port), parse_allow(args.allow))
    log.info(
        "apt proxy on %s:%d for %s",
        args.listen,
        args.port,
        ", ".join(f"{h}:{p}" for h, p in sorted(server.allowed)),
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
