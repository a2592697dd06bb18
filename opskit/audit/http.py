"""HTTP(S) probes of `inv audit`, from the operator's machine: one GET with a chosen Host header
and SNI, and a verifying TLS handshake.

The probes go to the host's address but name a site (Host header, SNI), as a browser reaching
that name would; `requests` cannot send an SNI other than the URL's host, so this uses
http.client over a socket wrapped by hand.
"""

from __future__ import annotations

import functools
import http.client
import socket
import ssl
from dataclasses import dataclass, field

BODY_LIMIT = 65536  # bytes of a body kept: enough to recognise a file, never a whole dump
USER_AGENT = "opskit-audit"


@dataclass(frozen=True)
class Response:
    """What one GET got: status, headers (lower-case names), the start of the body, or why none."""

    url: str
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    length: int = 0  # bytes received (the body is cut at BODY_LIMIT)
    peer_der: bytes | None = None  # the server's certificate (HTTPS)
    error: str | None = None

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


def url_of(scheme: str, site: str, port: int, path: str) -> str:
    """The URL a person would type for a probe.

    >>> url_of("https", "a.example", 443, "/.env"), url_of("http", "10.0.0.1", 8080, "/")
    ('https://a.example/.env', 'http://10.0.0.1:8080/')
    """
    default = 443 if scheme == "https" else 80
    return f"{scheme}://{site}{'' if port == default else f':{port}'}{path}"


@functools.cache
def _unverified() -> ssl.SSLContext:
    # The probes must see what is served even when the certificate is bad: the certificate is
    # judged separately (verify_tls). Made once: loading CAs per request costs more than the
    # handshake, and this context needs none.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def get(
    address: str,
    site: str,
    path: str,
    *,
    scheme: str = "http",
    port: int | None = None,
    timeout: float = 5.0,
) -> Response:
    """GET `path` from `address` as site `site` (Host header; SNI for HTTPS); never raises."""
    port = port or (443 if scheme == "https" else 80)
    url = url_of(scheme, site, port, path)
    conn = http.client.HTTPConnection(address, port, timeout=timeout)
    der = None
    try:
        sock = socket.create_connection((address, port), timeout=timeout)
        if scheme == "https":
            sock = _unverified().wrap_socket(sock, server_hostname=site)
            der = sock.getpeercert(binary_form=True)
        conn.sock = sock  # http.client uses a socket that is already there
        conn.request("GET", path, headers={"Host": site, "User-Agent": USER_AGENT})
        resp = conn.getresponse()
        body = resp.read(BODY_LIMIT)
        length = len(body)
        headers: dict[str, str] = {}
        for name, value in resp.getheaders():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        return Response(url, resp.status, headers, body, length, der)
    except (OSError, http.client.HTTPException) as exc:
        return Response(url, peer_der=der, error=_reason(exc))
    finally:
        conn.close()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | socket.timeout):
        return "no answer (timed out)"
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return str(text)


@dataclass(frozen=True)
class TlsVerdict:
    """A verifying handshake: ok, or the reason it failed (OpenSSL's code and message)."""

    ok: bool
    code: int = 0  # X509_V_ERR_*: 10 expired, 62 hostname mismatch, 20/19/2 untrusted
    message: str = ""
    connect_error: str | None = None


def verify_tls(
    address: str, site: str, *, ca_file: str | None = None, port: int = 443, timeout: float = 5.0
) -> TlsVerdict:
    """Verify the chain `address` serves for `site` against `ca_file` (else the system's CAs),
    its names and its dates, with a real handshake. Certificates in `ca_file` are trust anchors
    even when they are not roots (an intermediate is enough)."""
    ctx = ssl.create_default_context(cafile=ca_file or None)
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    try:
        with (
            socket.create_connection((address, port), timeout=timeout) as sock,
            ctx.wrap_socket(sock, server_hostname=site),
        ):
            return TlsVerdict(True)
    except ssl.SSLCertVerificationError as exc:
        return TlsVerdict(False, exc.verify_code or 0, exc.verify_message or str(exc))
    except (OSError, ssl.SSLError) as exc:
        return TlsVerdict(False, connect_error=_reason(exc))
