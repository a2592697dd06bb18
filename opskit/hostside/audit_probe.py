#!/usr/bin/python3
"""The inside of `inv audit`: a read-only program that runs on a host and prints one JSON object
(`ProbeOutput`) on stdout.

It is sent as the one remote command of the audit (`python3 - CONFIG <<MARKER`, its source read
from this file; see opskit/audit/inside.py), with its JSON config (`Config`) as argv[1]. Stdlib
only, Python 3.11 and 3.13, nothing of opskit. What it reads: sshd's journal over the window
(reduced here to counts per source address, so that only counts cross the wire), fail2ban's sshd
jail and its log, every authorized_keys file sshd would read, the listening sockets (`ss`),
sshd's effective settings (`sshd -T`) and nginx's `autoindex`/`server_tokens` lines (`nginx -T`).
The pure functions (sshd_event, reduce_journal, scan_fail2ban_log, key_file_patterns,
expand_key_path, parse_ss, filter_nginx_dump) are tested on the operator's machine.
"""

from __future__ import annotations

import datetime
import json
import os
import pwd
import re
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TypedDict

# The end marker of the heredoc that carries this source in the remote command (no line of this
# file is exactly this text).
MARKER = "OPSKIT_AUDIT_PY"
NO_PYTHON = 3  # exit code of the remote command when the host has no python3
USAGE = 2  # exit code of this program for a bad config
KEY_FILE_LIMIT = 262144  # bytes of an authorized_keys file read
MAX_USERS = 10  # user names kept per source address
JOURNAL_TAGS = ("sshd", "sshd-session")  # sshd-session: OpenSSH 9.8 and later
FAIL2BAN_LOGS = ("/var/log/fail2ban.log.1", "/var/log/fail2ban.log")  # oldest first
DEFAULT_KEY_FILES = (".ssh/authorized_keys", ".ssh/authorized_keys2")  # sshd's default

# --- the JSON this program reads and prints ------------------------------------------------


class Config(TypedDict):
    """argv[1]: what to read."""

    seconds: int  # the window of the journal and fail2ban's log


class SourceCounts(TypedDict):
    """Failed SSH logins from one source address (reduce_journal)."""

    failures: int
    accepted: int
    users: list[str]
    first: float  # unix time of its first and last line in the window
    last: float


class Journal(TypedDict):
    error: str  # why the journal could not be read ("" when it could)
    sources: dict[str, SourceCounts]
    lines: int


class Fail2ban(TypedDict):
    rc: int  # of `fail2ban-client status sshd`, with its output
    out: str
    err: str
    in_window: list[str]  # addresses banned by the sshd jail in the window
    ban_errors: list[list[str]]  # [action, address, why] of bans whose action failed


class KeyFileData(TypedDict):
    path: str
    owner: str
    mode: int
    text: str


class SocketData(TypedDict):
    proto: str  # tcp or udp
    address: str  # "0.0.0.0" for ss's "*"; IPv6 without brackets; may hold %interface
    port: int
    process: str  # the first process of the socket, "?" when ss shows none


class ProbeOutput(TypedDict):
    time: float
    journal: Journal
    fail2ban: Fail2ban
    sshd: str  # `sshd -T`
    keys: list[KeyFileData]
    sockets: list[SocketData]
    ss_error: str
    nginx: list[str] | None  # filter_nginx_dump of `nginx -T`; None: no nginx


# --- failed SSH logins ---------------------------------------------------------------------

_REST = r"(?P<user>.*?) from (?P<ip>\S+) port (?P<port>\d+)"
_SSHD_EVENTS = (
    ("failed", re.compile(r"^Failed (?!none )\S+ for (?:invalid user )?" + _REST)),
    ("invalid", re.compile(r"^Invalid user " + _REST)),
    (
        "maxauth",
        re.compile(r"^maximum authentication attempts exceeded for (?:invalid user )?" + _REST),
    ),
    (
        "closed",
        re.compile(
            r"^(?:Connection (?:closed|reset) by|Disconnect(?:ed from|ing)) "
            r"(?:authenticating|invalid) user (?P<user>.*?) (?P<ip>\S+) port (?P<port>\d+)"
        ),
    ),
    ("denied", re.compile(r"^User (?P<user>\S+) from (?P<ip>\S+) not allowed because()(?P<port>)")),
    ("accepted", re.compile(r"^Accepted \S+ for " + _REST)),
)


def sshd_event(line: str) -> tuple[str, str, str, str, float] | None:
    """Classify a `journalctl -o short-unix` line of sshd: (kind, source, port, user, time).

    Kinds: "failed" (one failed attempt: password, key, ...), "invalid" (no such user),
    "closed" (closed before authentication by a user who tried), "maxauth", "denied" (user not
    allowed), "accepted". Anything else is None.

    >>> sshd_event("1795400000.5 web1 sshd[7]: Invalid user bob from 10.0.0.9 port 4022")
    ('invalid', '10.0.0.9', '4022', 'bob', 1795400000.5)
    >>> sshd_event("1795400000.5 web1 sshd[7]: Failed password for invalid user x from "
    ...            "203.0.113.5 port 22 ssh2")[:4]
    ('failed', '203.0.113.5', '22', 'x')
    >>> sshd_event("1795400000 web1 sshd[7]: Connection closed by authenticating user root "
    ...            "10.0.0.9 port 51 [preauth]")[:4]
    ('closed', '10.0.0.9', '51', 'root')
    >>> sshd_event("1795400000 web1 sshd[7]: Connection closed by 10.0.0.9 port 51 [preauth]")
    """
    m = re.match(r"^(\d+(?:\.\d+)?) \S+ [^:\s]+: (.*)$", line.rstrip("\n"))
    if not m:
        return None
    when, msg = float(m.group(1)), m.group(2)
    msg = re.sub(r"^(error|fatal): ", "", msg)
    for kind, pattern in _SSHD_EVENTS:
        hit = pattern.match(msg)
        if hit:
            return kind, hit.group("ip"), hit.group("port"), hit.group("user"), when
    return None


@dataclass
class _Connection:
    """One SSH connection (source address and port) in the journal."""

    first: float
    last: float
    failed: int = 0  # "Failed ..." lines
    tried: bool = False  # ended unauthenticated after naming a user
    accepted: bool = False
    users: set[str] = field(default_factory=set)


def reduce_journal(lines: Iterable[str]) -> dict[str, SourceCounts]:
    """Failed logins per source address from sshd's journal lines.

    A connection (source address and port) counts its "Failed ..." attempts, and at least one
    when it ended unauthenticated after naming a user (invalid user, closed by an
    authenticating user, too many attempts): sshd logs one attempt in several lines.

    >>> r = reduce_journal(["1 h sshd[1]: Invalid user a from 10.0.0.9 port 1",
    ...     "2 h sshd[1]: Connection closed by invalid user a 10.0.0.9 port 1 [preauth]",
    ...     "3 h sshd[2]: Failed password for root from 10.0.0.9 port 2 ssh2",
    ...     "4 h sshd[2]: Failed password for root from 10.0.0.9 port 2 ssh2",
    ...     "5 h sshd[3]: Accepted publickey for deploy from 10.0.0.1 port 3 ssh2: ED25519 x"])
    >>> r["10.0.0.9"]["failures"], r["10.0.0.9"]["users"], r["10.0.0.1"]["failures"]
    (3, ['a', 'root'], 0)
    """
    conns: dict[tuple[str, str], _Connection] = {}
    for line in lines:
        ev = sshd_event(line)
        if ev is None:
            continue
        kind, ip, port, user, when = ev
        c = conns.setdefault((ip, port or f"?{len(conns)}"), _Connection(when, when))
        c.first, c.last = min(c.first, when), max(c.last, when)
        if kind == "accepted":
            c.accepted = True
            continue
        c.users.add(user)
        if kind == "failed":
            c.failed += 1
        else:
            c.tried = True
    out: dict[str, SourceCounts] = {}
    users: dict[str, set[str]] = {}
    for (ip, _), c in conns.items():
        s = out.setdefault(
            ip, {"failures": 0, "accepted": 0, "users": [], "first": c.first, "last": c.last}
        )
        if c.accepted:
            s["accepted"] += 1
            s["failures"] += c.failed
        else:
            s["failures"] += max(c.failed, 1 if c.tried else 0)
        if c.failed or c.tried:
            users.setdefault(ip, set()).update(c.users)
        s["first"], s["last"] = min(s["first"], c.first), max(s["last"], c.last)
    for ip, s in out.items():
        s["users"] = sorted(users.get(ip, ()))[:MAX_USERS]
    return out


def journal_argv(seconds: int) -> list[str]:
    """The journalctl command that prints sshd's lines of the last `seconds`."""
    argv = ["journalctl", "-q", "--no-pager", "-o", "short-unix", "--since", f"-{seconds}s"]
    for tag in JOURNAL_TAGS:
        argv += ["-t", tag]
    return argv


def read_journal(seconds: int) -> Journal:
    """sshd's journal over the window, reduced as it streams (the lines never pile up)."""
    try:
        p = subprocess.Popen(
            journal_argv(seconds),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
        )
    except FileNotFoundError:
        return {"error": "journalctl: not found", "sources": {}, "lines": 0}
    count = 0

    def lines(stream: Iterable[str]) -> Iterator[str]:
        nonlocal count
        for line in stream:
            count += 1
            yield line

    assert p.stdout is not None and p.stderr is not None  # both are pipes
    sources = reduce_journal(lines(p.stdout))
    err = p.stderr.read()
    rc = p.wait()
    error = (err.strip() or f"journalctl: exit {rc}") if rc else ""
    return {"error": error, "sources": sources, "lines": count}


# --- fail2ban -----------------------------------------------------------------------------

_BAN = re.compile(r"\[sshd\] Ban (\S+)")
_BAN_FAILED = re.compile(r"Failed to execute ban jail 'sshd' action '([^']+)'.*'ip': '([^']+)'")


def scan_fail2ban_log(lines: Iterable[str], cutoff: str) -> tuple[list[str], list[list[str]]]:
    """Addresses the sshd jail banned at or after `cutoff` (fail2ban's "%Y-%m-%d %H:%M:%S"
    local time), and the bans whose action failed: [action, address, why].

    fail2ban logs a failed command's exit code (127: not found) before the failure itself.

    >>> scan_fail2ban_log([
    ...     "2026-01-01 09:00:00,1 fail2ban.actions [1]: NOTICE [sshd] Ban 10.0.0.1",
    ...     "2026-01-01 11:00:00,1 fail2ban.actions [1]: NOTICE [sshd] Ban 10.0.0.9",
    ...     "2026-01-01 11:00:00,2 fail2ban.utils [1]: ERROR 7f -- returned 127",
    ...     "2026-01-01 11:00:00,3 fail2ban.actions [1]: ERROR Failed to execute ban jail "
    ...     "'sshd' action 'iptables-multiport' info 'ActionInfo({'ip': '10.0.0.9'})'"],
    ...     "2026-01-01 10:00:00")
    (['10.0.0.9'], [['iptables-multiport', '10.0.0.9', 'command not found']])
    """
    bans: list[str] = []
    failed: list[list[str]] = []
    missing = False
    for line in lines:
        if line[:19] < cutoff:
            continue
        m = _BAN.search(line)
        if m:
            bans.append(m.group(1))
        if "returned 127" in line:
            missing = True
        m = _BAN_FAILED.search(line)
        if m:
            why = "command not found" if missing else "script error"
            failed.append([m.group(1), m.group(2), why])
            missing = False
    return sorted(set(bans)), failed


def _read_lines(paths: Sequence[str]) -> Iterator[str]:
    """The lines of the files of `paths` that can be read, one file after the other."""
    for path in paths:
        try:
            with open(path, errors="replace") as f:
                yield from f
        except OSError:
            pass


def read_fail2ban(seconds: int) -> Fail2ban:
    rc, out, err = _sh(["fail2ban-client", "status", "sshd"])
    since = datetime.datetime.now() - datetime.timedelta(seconds=seconds)  # the log's local time
    in_window, ban_errors = scan_fail2ban_log(
        _read_lines(FAIL2BAN_LOGS), since.strftime("%Y-%m-%d %H:%M:%S")
    )
    return {"rc": rc, "out": out, "err": err, "in_window": in_window, "ban_errors": ban_errors}


# --- authorized_keys ---------------------------------------------------------------------


def key_file_patterns(sshd_conf: str) -> list[str]:
    """AuthorizedKeysFile of `sshd -T` (its last line wins), else sshd's default.

    >>> key_file_patterns("port 22\\nauthorizedkeysfile .ssh/authorized_keys /etc/keys/%u\\n")
    ['.ssh/authorized_keys', '/etc/keys/%u']
    >>> key_file_patterns("")
    ['.ssh/authorized_keys', '.ssh/authorized_keys2']
    """
    patterns = list(DEFAULT_KEY_FILES)
    for line in sshd_conf.splitlines():
        if line.lower().startswith("authorizedkeysfile "):
            patterns = line.split()[1:]
    return patterns


def expand_key_path(pattern: str, home: str, user: str, uid: int) -> str | None:
    """A user's file of an AuthorizedKeysFile pattern (%h, %u, %U, %%; relative to the home
    directory), or None for `none`.

    >>> expand_key_path("%h/.ssh/keys_%u_%U_100%%", "/home/bob", "bob", 1001)
    '/home/bob/.ssh/keys_bob_1001_100%'
    >>> expand_key_path(".ssh/authorized_keys", "/root", "root", 0)
    '/root/.ssh/authorized_keys'
    >>> expand_key_path("none", "/", "x", 1) is None
    True
    """
    if pattern.lower() == "none":
        return None
    p = pattern.replace("%%", "\0").replace("%h", home).replace("%u", user)
    p = p.replace("%U", str(uid)).replace("\0", "%")
    return p if p.startswith("/") else os.path.join(home, p)


def read_key_files(sshd_conf: str) -> list[KeyFileData]:
    """Every authorized_keys file sshd would read for any user of the host."""
    patterns = key_file_patterns(sshd_conf)
    seen: set[str] = set()
    out: list[KeyFileData] = []
    for pw in pwd.getpwall():
        home = pw.pw_dir or "/"
        for pattern in patterns:
            p = expand_key_path(pattern, home, pw.pw_name, pw.pw_uid)
            if p is None or p in seen or not os.path.isfile(p):
                continue
            seen.add(p)
            st = os.stat(p)
            try:
                owner = pwd.getpwuid(st.st_uid).pw_name
            except KeyError:
                owner = str(st.st_uid)
            with open(p, errors="replace") as f:
                text = f.read(KEY_FILE_LIMIT)
            out.append({"path": p, "owner": owner, "mode": st.st_mode & 0o7777, "text": text})
    return out


# --- listening sockets, nginx -------------------------------------------------------------

_PROCESS = re.compile(r'\("([^"]*)",pid')


def parse_ss(text: str) -> list[SocketData]:
    """Parse `ss -Hltnup` (listening TCP, bound UDP, with processes).

    >>> parse_ss('tcp LISTEN 0 511 [::]:80 [::]:* users:(("nginx",pid=47,fd=6))\\n'
    ...          'udp UNCONN 0 0 127.0.0.53%lo:53 0.0.0.0:* users:(("systemd-resolve",pid=1))\\n'
    ...          'tcp LISTEN 0 5 *:8080 *:*')  # doctest: +NORMALIZE_WHITESPACE
    [{'proto': 'tcp', 'address': '::', 'port': 80, 'process': 'nginx'},
     {'proto': 'udp', 'address': '127.0.0.53%lo', 'port': 53, 'process': 'systemd-resolve'},
     {'proto': 'tcp', 'address': '0.0.0.0', 'port': 8080, 'process': '?'}]
    """
    out: list[SocketData] = []
    for line in text.splitlines():
        f = line.split()
        if len(f) < 5 or f[0] not in ("tcp", "udp"):
            continue
        addr, _, port = f[4].rpartition(":")
        if not port.isdigit():
            continue
        addr = addr.strip("[]")
        procs = _PROCESS.findall(line)
        out.append(
            {
                "proto": f[0],
                "address": "0.0.0.0" if addr == "*" else addr,
                "port": int(port),
                "process": procs[0] if procs else "?",
            }
        )
    return out


def filter_nginx_dump(text: str) -> list[str]:
    """The lines of `nginx -T` the audit judges: each file's header, and its `autoindex` and
    `server_tokens` lines prefixed by their line number in that file.

    >>> filter_nginx_dump("# configuration file /etc/nginx/a.conf:\\nserver {\\n"
    ...                   "  autoindex on;\\n}\\n# configuration file /etc/nginx/b.conf:\\n")
    ['# configuration file /etc/nginx/a.conf:', '2:  autoindex on;', \
'# configuration file /etc/nginx/b.conf:']
    """
    keep: list[str] = []
    n = 0
    for line in text.splitlines():
        if line.startswith("# configuration file "):
            keep.append(line)
            n = 0
            continue
        n += 1
        if re.match(r"^\s*(autoindex|server_tokens)\s", line):
            keep.append(f"{n}:{line}")
    return keep


# --- the program ----------------------------------------------------------------------------


def _sh(argv: list[str], timeout: float = 60) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of a command; 127 when it is missing, 124 when it hangs."""
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        return 127, "", argv[0] + ": not found"
    except subprocess.TimeoutExpired:
        return 124, "", argv[0] + ": timed out"
    return p.returncode, p.stdout, p.stderr


def collect(config: Config) -> ProbeOutput:
    """Read everything the audit judges on this host (nothing is changed)."""
    seconds = config["seconds"]
    fail2ban = read_fail2ban(seconds)
    _, sshd, _ = _sh(["sshd", "-T"])
    ss_rc, ss, ss_err = _sh(["ss", "-Hltnup"])
    nginx_rc, nginx, _ = _sh(["nginx", "-T"])
    return {
        "time": time.time(),
        "journal": read_journal(seconds),
        "fail2ban": fail2ban,
        "sshd": sshd,
        "keys": read_key_files(sshd),
        "sockets": parse_ss(ss) if ss_rc == 0 else [],
        "ss_error": ss_err.strip() if ss_rc else "",
        "nginx": None if nginx_rc == 127 else filter_nginx_dump(nginx),
    }


def parse_config(argv: Sequence[str]) -> Config:
    """The config of argv[1] (JSON); ValueError says what is wrong.

    >>> parse_config(["-", '{"seconds": 7200}'])
    {'seconds': 7200}
    >>> parse_config(["-", '{"seconds": "1"}'])
    Traceback (most recent call last):
    ...
    ValueError: config: expected {"seconds": <int >= 0>}, got '{"seconds": "1"}'
    """
    text = argv[1] if len(argv) > 1 else ""
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    seconds = data.get("seconds") if isinstance(data, dict) else None
    if isinstance(seconds, bool) or not isinstance(seconds, int) or seconds < 0:
        raise ValueError(f'config: expected {{"seconds": <int >= 0>}}, got {text!r}')
    return {"seconds": seconds}


def main(argv: Sequence[str] | None = None) -> int:
    """Print the JSON of `collect` for the config of argv[1]; 2 for a bad config."""
    try:
        config = parse_config(sys.argv if argv is None else argv)
    except ValueError as exc:
        print(f"audit_probe: {exc}", file=sys.stderr)
        return USAGE
    print(json.dumps(collect(config)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
