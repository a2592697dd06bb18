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

With ``--cache DIR`` it keeps every package file it fetched (``.deb`` under a mirror's ``/pool/``:
Debian never changes a file of a given name there, a new version has a new name) and answers the
next request for it from DIR, so a second bare provision of the same release downloads no
package. Index files (``dists/...``) always go to the mirror. ``--stats FILE`` records the hits
and misses (JSON), which ``inv lab.status`` shows. Several labs' proxies can share one DIR: a
file appears there whole (written aside, then renamed) or not at all.
"""

from __future__ import annotations

import argparse
import http.client
import ipaddress
import json
import logging
import os
import sys
import tempfile
import threading
from collections.abc import Iterable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import BinaryIO
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


def cacheable(host: str, path: str) -> str | None:
    """The cache's file name for a package file of the mirror (None: not cached).

    >>> cacheable("deb.debian.org", "/debian/pool/main/n/nginx/nginx_1.22.1-9_amd64.deb")
    'deb.debian.org/debian/pool/main/n/nginx/nginx_1.22.1-9_amd64.deb'
    >>> cacheable("deb.debian.org", "/debian/dists/bookworm/InRelease") is None
    True
    >>> cacheable("deb.debian.org", "/debian/pool/../../etc/passwd.deb") is None
    True
    """
    parts = path.split("?", 1)[0].split("/")
    if "pool" not in parts or not parts[-1].endswith(".deb") or ".." in parts or "" in parts[1:]:
        return None
    return "/".join([host, *parts[1:]])


class Stats:
    """Hits and misses of the package cache, saved to `path` (JSON) after each change."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.counts = {"hits": 0, "misses": 0, "hit_bytes": 0, "miss_bytes": 0}

    def add(self, kind: str, size: int) -> None:
        """Count one "hit" or "miss" of `size` bytes."""
        with self.lock:
            self.counts["hits" if kind == "hit" else "misses"] += 1
            self.counts[f"{kind}_bytes"] += size
            if self.path is not None:
                tmp = self.path.with_name(self.path.name + ".tmp")
                tmp.write_text(json.dumps(self.counts))
                os.replace(tmp, self.path)


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

    def __init__(
        self,
        address: tuple[str, int],
        allowed: frozenset[tuple[str, int]],
        cache: Path | None = None,
        stats: Path | None = None,
    ) -> None:
        self.allowed = allowed
        self.cache = cache
        self.stats = Stats(stats)
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
        name = cacheable(host, path) if self.server.cache is not None else None
        cached = self.server.cache / name if self.server.cache is not None and name else None
        if cached is not None and not head and cached.is_file():
            self._send_cached(cached)
            return
        upstream = http.client.HTTPConnection(host, port, timeout=UPSTREAM_TIMEOUT)
        try:
            upstream.request(self.command, path, headers=headers)
            response = upstream.getresponse()
        except OSError as exc:
            upstream.close()
            self._refuse(502, f"upstream {host}:{port} failed: {exc}")
            return
        try:
            self._relay(response, head=head, keep=cached if response.status == 200 else None)
        finally:
            upstream.close()

    def _send_cached(self, cached: Path) -> None:
        size = cached.stat().st_size
        self.send_response(200)
        self.send_header("Content-Type", "application/vnd.debian.binary-package")
        self.send_header("Content-Length", str(size))
        self.send_header("X-Cache", "HIT")
        self.end_headers()
        with open(cached, "rb") as f:
            while chunk := f.read(CHUNK):
                self.wfile.write(chunk)
        self.server.stats.add("hit", size)

    def _relay(
        self, response: http.client.HTTPResponse, *, head: bool, keep: Path | None = None
    ) -> None:
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
        if keep is None or length is None:
            self._copy_body(response, None)
            return
        # Only a whole file enters the cache (apt checks its hash against the index anyway).
        keep.parent.mkdir(parents=True, exist_ok=True)
        fd, part = tempfile.mkstemp(dir=keep.parent, prefix=".part-")
        with os.fdopen(fd, "wb") as copy:
            written = self._copy_body(response, copy)
        if written == int(length):
            os.replace(part, keep)
            self.server.stats.add("miss", written)
        else:
            Path(part).unlink(missing_ok=True)

    def _copy_body(self, response: http.client.HTTPResponse, copy: BinaryIO | None) -> int:
        """Stream the body to the client (and `copy`); returns the bytes read from upstream."""
        written = 0
        try:
            while chunk := response.read(CHUNK):
                if copy is not None:
                    copy.write(chunk)
                written += len(chunk)
                self.wfile.write(chunk)
        except OSError as exc:
            # The client must not wait for bytes that will never come.
            log.warning("relay of %s aborted: %s", self.path, exc)
            self.close_connection = True
            return -1
        return written

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
    parser.add_argument("--cache", type=Path, help="keep package files here (shared is fine)")
    parser.add_argument("--stats", type=Path, help="write the cache's hits and misses here")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )
    server = ProxyServer((args.listen, args.port), parse_allow(args.allow), args.cache, args.stats)
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
