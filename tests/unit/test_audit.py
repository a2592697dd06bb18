"""`inv audit` (opskit/audit/, opskit/hostside/audit_probe.py): pure logic, the host program's
pure functions, the host program run locally against stand-in commands, and the outside probes
against a fake HTTP client."""

from __future__ import annotations

import ast
import datetime as dt
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from opskit.audit import findings, inside, keys, logins, output, outside, ports, tls
from opskit.audit.findings import Finding
from opskit.audit.http import Response, TlsVerdict
from opskit.audit.keys import KeyFile
from opskit.audit.logins import Bans, Source
from opskit.audit.outside import Site
from opskit.audit.ports import PortRule
from opskit.audit.reader import AuditReport, HostAudit
from opskit.audit.settings import Settings, expected_ports, host_settings
from opskit.checks.levels import Severity
from opskit.core.errors import ConfigError, ExitStatus
from opskit.core.output import use_color
from opskit.hostside import audit_probe
from tests.fakes import make_host

NOW = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)
ALICE = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHtoCHsJdtBjQLvSYKbYI2+M03zdpzRwSJi7y1qewGLJ alice@laptop"
)
ALICE_FP = "SHA256:kvvs8NjLjYCjH9+JIQ18GEdbTKFoygQpqDmIKQqJecQ"  # ssh-keygen -lf
OTHER = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAx8WE2Ia0WLUzfu2x6QBSHDwJ3VLuBOd+nOG9ahiQwN mallory"


def settings(**over: Any) -> Settings:
    base: dict[str, Any] = {
        "since_hours": 24.0,
        "failed_login_threshold": 5,
        "allowed_keys": {},
        "ports": (),
        "hsts_min_age": 15552000,
        "hsts_include_subdomains": False,
        "tls_ca_file": None,
        "extra_paths": ("/.htpasswd",),
        "listing_paths": ("/", "/static/"),
        "http_timeout": 1.0,
    }
    base.update(over)
    return Settings(**base)


def F(sev: Severity, check: str = "x") -> Finding:
    return Finding(check, sev, "title", "detail", "fix")


# --- failed SSH logins -----------------------------------------------------------------------


def _j(t: str, pid: int, msg: str) -> str:
    return f"{t} web1 sshd[{pid}]: {msg}"


JOURNAL = (
    "\n".join(
        [
            _j("1795400000.1", 11, "Invalid user nosuchuser from 10.213.0.12 port 40001"),
            _j(
                "1795400000.2",
                11,
                "Connection closed by invalid user nosuchuser 10.213.0.12 port 40001 [preauth]",
            ),
            _j("1795400001.1", 12, "Invalid user nosuchuser from 10.213.0.12 port 40002"),
            _j(
                "1795400001.2",
                12,
                "Connection closed by invalid user nosuchuser 10.213.0.12 port 40002 [preauth]",
            ),
            _j("1795400002.0", 13, "Failed password for root from 203.0.113.7 port 5555 ssh2"),
            _j("1795400002.5", 13, "Failed password for root from 203.0.113.7 port 5555 ssh2"),
            _j("1795400003.0", 13, "Failed password for root from 203.0.113.7 port 5555 ssh2"),
            _j(
                "1795400003.1",
                13,
                "error: maximum authentication attempts exceeded for root from "
                "203.0.113.7 port 5555 ssh2 [preauth]",
            ),
            _j(
                "1795400003.2",
                13,
                "Disconnecting authenticating user root 203.0.113.7 port 5555: "
                "Too many authentication failures [preauth]",
            ),
            _j(
                "1795400004.0",
                14,
                "Connection closed by authenticating user deploy 198.51.100.4 port 6000 [preauth]",
            ),
            _j("1795400005.0", 15, "Connection closed by 198.51.100.9 port 6001 [preauth]"),
            _j(
                "1795400006.0",
                16,
                "Accepted publickey for deploy from 10.213.0.1 port 7000 ssh2: ED25519 SHA256:x",
            ),
            _j(
                "1795400007.0",
                17,
                "Failed password for invalid user admin from 2001:db8::5 port 22 ssh2",
            ),
            _j("1795400008.0", 18, "pam_unix(sshd:session): session opened for user deploy"),
        ]
    )
    + "\n"
)


def test_journal_counts_one_failure_per_attempt_not_per_line() -> None:
    got = audit_probe.reduce_journal(JOURNAL.splitlines())
    counts = {ip: s["failures"] for ip, s in got.items()}
    assert counts == {
        "10.213.0.12": 2,  # two connections, two lines each
        "203.0.113.7": 3,  # three passwords in one connection, then "maximum ... exceeded"
        "198.51.100.4": 1,  # a key refused for a real user
        "10.213.0.1": 0,  # a good login
        "2001:db8::5": 1,
    }  # a bare "Connection closed by <ip>" (a port scan, no user) is no login attempt
    assert got["203.0.113.7"]["users"] == ["root"]
    assert got["10.213.0.1"]["accepted"] == 1
    assert got["10.213.0.12"]["first"] == 1795400000.1
    assert got["10.213.0.12"]["last"] == 1795400001.2


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        (
            "1 h sshd[1]: User bob from 10.0.0.1 not allowed because not listed in AllowUsers",
            "denied",
        ),
        (
            "1 h sshd[1]: Failed publickey for deploy from 10.0.0.1 port 2 ssh2: ED25519 SHA256:x",
            "failed",
        ),
        ("1 h sshd-session[1]: Invalid user  from 10.0.0.1 port 2", "invalid"),
        ("1 h sshd[1]: Failed none for invalid user x from 10.0.0.1 port 2 ssh2", None),
        ("1 h sshd[1]: Received disconnect from 10.0.0.1 port 2:11: Bye Bye [preauth]", None),
    ],
)
def test_sshd_event_kinds(line: str, kind: str | None) -> None:
    ev = audit_probe.sshd_event(line)
    assert (ev[0] if ev else None) == kind


def test_fail2ban_status_and_not_running() -> None:
    text = (
        "Status for the jail: sshd\n|- Filter\n|  |- Currently failed:\t1\n|  |- Total failed:\t8\n"
        "`- Actions\n   |- Currently banned:\t1\n   |- Total banned:\t4\n"
        "   `- Banned IP list:\t10.213.0.12\n"
    )
    b = logins.parse_fail2ban(0, text)
    assert (b.running, b.current, b.total) == (True, ("10.213.0.12",), 4)
    down = logins.parse_fail2ban(255, "", "ERROR   Failed to access socket path: /run/fail2ban")
    assert not down.running and "socket" in down.error
    [f] = logins.judge_logins([], down, settings(), "web1")
    assert (f.check, f.severity, "--roles base" in f.fix) == ("fail2ban", Severity.HIGH, True)


def test_login_findings_depend_on_bans_and_threshold() -> None:
    s = settings(failed_login_threshold=5)
    sources = [
        Source("10.0.0.9", 7, users=("root",)),
        Source("10.0.0.8", 9),
        Source("10.0.0.7", 4),  # under the threshold: counted, no finding
        Source("10.0.0.6", 6, accepted=1),
    ]
    bans = Bans(True, current=("10.0.0.9",))
    got = {
        f.title.split(" from ")[1].split()[0]: f for f in logins.judge_logins(sources, bans, s, "h")
    }
    assert got["10.0.0.9"].severity is Severity.INFO and "banned now" in got["10.0.0.9"].detail
    assert got["10.0.0.8"].severity is Severity.MEDIUM and "banip 10.0.0.8" in got["10.0.0.8"].fix
    assert got["10.0.0.6"].severity is Severity.MEDIUM and "successful" in got["10.0.0.6"].title
    assert "10.0.0.7" not in got


def test_a_ban_whose_action_fails_is_high() -> None:
    bans = Bans(
        True,
        ("10.0.0.9",),
        1,
        failed_actions=(("iptables-multiport", "10.0.0.9", "command not found"),),
    )
    [f] = [f for f in logins.judge_logins([], bans, settings(), "h") if f.check == "fail2ban"]
    assert f.severity is Severity.HIGH and "apt-get install iptables" in f.fix


# --- authorized_keys ----------------------------------------------------------------------


def test_key_parsing_and_fingerprint_match_ssh_keygen() -> None:
    key = keys.parse_key_line(f'from="10.0.0.0/8",command="echo a b" {ALICE}')
    assert key is not None and key.type == "ssh-ed25519" and key.comment == "alice@laptop"
    assert key.fingerprint == ALICE_FP
    assert keys.parse_key_line("ssh-ed25519 AAAAB3NzaC1yc2E= wrong-type-in-blob") is None


def test_keys_compare_by_key_not_comment() -> None:
    renamed = ALICE.replace("alice@laptop", "alice@new-laptop")
    s = settings(allowed_keys={tuple(ALICE.split()[:2]): "base_deploy_authorized_keys"})
    files = [
        KeyFile(
            "/home/deploy/.ssh/authorized_keys", "deploy", 0o600, f"{renamed}\n# note\n{OTHER}\n"
        ),
        KeyFile("/root/.ssh/authorized_keys", "root", 0o600, f"{OTHER}\nnot a key\n"),
    ]
    found = keys.judge_keys(files, s.allowed_keys, "web1")
    assert [(f.severity, f.title) for f in found] == [
        (Severity.HIGH, "unknown key in /home/deploy/.ssh/authorized_keys"),
        (Severity.CRITICAL, "unknown key in /root/.ssh/authorized_keys"),
        (Severity.LOW, "unreadable line in /root/.ssh/authorized_keys"),
    ]
    other = keys.parse_key_line(OTHER)
    assert other is not None and other.fingerprint in found[0].detail
    assert "line 3" in found[0].detail and "mallory" in found[0].detail
    assert "base_deploy_authorized_keys" in found[0].fix


def test_host_settings_allow_the_inventory_keys(tmp_path: Path) -> None:
    host = make_host(base_deploy_authorized_keys=[ALICE], audit_allowed_keys=[OTHER])
    inv = type("Inv", (), {"path": tmp_path / "inv.yml"})()
    s = host_settings(host, inv, identity_key=("ssh-rsa", "AAAA", "/k.pub"))
    assert set(s.allowed_keys) == {
        tuple(ALICE.split()[:2]),
        tuple(OTHER.split()[:2]),
        ("ssh-rsa", "AAAA"),
    }
    bad = make_host(audit_allowed_keys=["not a key"])
    with pytest.raises(ConfigError, match=r"audit_allowed_keys\[0\]"):
        host_settings(bad, inv)
    with pytest.raises(ConfigError, match="audit_ports: 'tcp:22'"):
        host_settings(make_host(audit_ports=["tcp:22"]), inv)
    with pytest.raises(ConfigError, match="audit_tls_ca_file"):
        host_settings(make_host(audit_tls_ca_file="missing.pem"), inv)


def test_identity_public_key_reads_the_pub_file(tmp_path: Path) -> None:
    key = tmp_path / "id"
    key.write_text("private")
    (tmp_path / "id.pub").write_text(ALICE + "\n")
    got = keys.identity_public_key(key)
    assert got is not None and got[:2] == tuple(ALICE.split()[:2])
    assert keys.identity_public_key(None) is None


# --- ports ----------------------------------------------------------------------------------

SS = """\
tcp LISTEN 0 128 0.0.0.0:22 0.0.0.0:* users:(("sshd",pid=46,fd=3))
tcp LISTEN 0 128 [::]:22 [::]:* users:(("sshd",pid=46,fd=4))
tcp LISTEN 0 511 0.0.0.0:80 0.0.0.0:* users:(("nginx",pid=2,fd=5),("nginx",pid=3,fd=5))
tcp LISTEN 0 511 0.0.0.0:3000 0.0.0.0:* users:(("node",pid=9,fd=3))
tcp LISTEN 0 244 0.0.0.0:5432 0.0.0.0:* users:(("postgres",pid=57,fd=6))
tcp LISTEN 0 244 [::1]:6000 [::]:* users:(("x11",pid=5,fd=6))
tcp LISTEN 0 10 10.0.0.5:8080 0.0.0.0:* users:(("python3",pid=5,fd=6))
udp UNCONN 0 0 127.0.0.53%lo:53 0.0.0.0:* users:(("systemd-resolve",pid=1,fd=1))
"""


def test_ports_expected_from_roles_and_the_rest_is_found() -> None:
    rules = expected_ports({"ssh_port": 22, "app_port": 3000}, ["app", "nginx"])
    found = ports.judge_ports(ports.sockets_of(audit_probe.parse_ss(SS)), rules, "web1")
    got = {f.title: f.severity for f in found}
    assert got == {
        "tcp/3000 listens on a public address": Severity.HIGH,  # the app bypasses nginx
        "unexpected database port tcp/5432 open to the network": Severity.HIGH,
        "unexpected local service tcp/6000": Severity.LOW,
        "unexpected port tcp/8080 open to the network": Severity.MEDIUM,
        "unexpected local service udp/53": Severity.LOW,
    }
    assert "python3" in next(f.detail for f in found if "8080" in f.title)


def test_ports_a_public_database_the_inventory_opens_is_fine() -> None:
    v = {"postgresql_listen_addresses": "*", "audit_ports_extra": ["udp/53@loopback", "tcp/6000"]}
    rules = expected_ports(v, ["postgresql"])
    assert PortRule("tcp", 5432, False) in [PortRule(r.proto, r.port, r.loopback) for r in rules]
    left = ports.judge_ports(ports.sockets_of(audit_probe.parse_ss(SS)), rules, "db1")
    assert {f.title.split()[-1] if "local" in f.title else f.title for f in left} == {
        "tcp/80 open to the network".join(["unexpected port ", ""]),
        "tcp/3000 open to the network".join(["unexpected port ", ""]),
        "tcp/8080 open to the network".join(["unexpected port ", ""]),
    }
    only = expected_ports({"audit_ports": ["tcp/2222"]}, ["nginx"])
    assert [str(r) for r in only] == ["tcp/2222"]


# --- HTTP: what is served --------------------------------------------------------------------


class FakeWeb:
    """Answers probes from a table: path -> (status, headers, body); records what was asked."""

    def __init__(self, table: dict[str, tuple[int, dict[str, str], bytes]], default: Any = None):
        self.table, self.default = table, default or (404, {}, b"<html>404</html>")
        self.asked: list[tuple[str, str, str]] = []

    def __call__(
        self, address: str, site: str, path: str, *, scheme: str, timeout: float
    ) -> Response:
        self.asked.append((scheme, site, path))
        status, headers, body = self.table.get(path, self.default)
        url = f"{scheme}://{site}{path}"
        return Response(url, status, {k.lower(): v for k, v in headers.items()}, body, len(body))


def ok_tls(*a: Any, **k: Any) -> TlsVerdict:
    return TlsVerdict(True)


SECRET_ENV = b"# prod\nDATABASE_URL=postgres://app:hunter2@db/app\nSECRET_KEY=s3cr3t-v4lue\n"


def test_exposed_env_and_git_are_critical_and_never_show_values() -> None:
    web = FakeWeb(
        {
            "/": (200, {"Server": "nginx"}, b"hi"),
            "/.env": (200, {}, SECRET_ENV),
            "/.git/HEAD": (200, {}, b"ref: refs/heads/main\n"),
            "/.git/config": (200, {}, b"<html>app page</html>"),  # not the file
        }
    )
    res = outside.probe_site("10.0.0.5", Site("http", "10.0.0.5"), settings(), "web1", get=web)
    crit = [f for f in res.findings if f.severity is Severity.CRITICAL]
    assert [f.title for f in crit] == [
        "/.env is served on http://10.0.0.5/.env",
        "/.git/HEAD is served on http://10.0.0.5/.git/HEAD",
    ]
    text = json.dumps([f.to_dict() for f in res.findings])
    assert "DATABASE_URL, SECRET_KEY" in text and "values not shown" in text
    assert "hunter2" not in text and "s3cr3t" not in text
    assert "inv provision --hosts web1 --roles nginx" in crit[0].fix and "rotate" in crit[0].fix


def test_an_app_that_answers_200_everywhere_is_not_a_finding() -> None:
    page = (200, {"Content-Type": "text/html"}, b"<!doctype html><div id=app></div>")
    web = FakeWeb({}, default=page)
    res = outside.probe_site("10.0.0.5", Site("http", "a.example"), settings(), "web1", get=web)
    assert res.findings == [] and res.errors == []
    assert ("http", "a.example", "/.htpasswd") in web.asked  # extra paths probed too


def test_extra_path_listing_and_version_leak() -> None:
    web = FakeWeb(
        {
            "/": (200, {"Server": "nginx/1.22.1", "X-Powered-By": "Express"}, b"app"),
            "/.htpasswd": (200, {}, b"admin:$apr1$x"),
            "/static/": (200, {}, b"<html><head><title>Index of /static/</title>"),
        }
    )
    res = outside.probe_site("10.0.0.5", Site("http", "10.0.0.5"), settings(), "web1", get=web)
    got = {(f.check, f.severity) for f in res.findings}
    assert got == {
        ("exposed-files", Severity.HIGH),
        ("directory-listing", Severity.MEDIUM),
        ("server-header", Severity.LOW),
    }
    assert sum(f.check == "server-header" for f in res.findings) == 2
    assert "$apr1" not in json.dumps([f.to_dict() for f in res.findings])


def test_tls_name_on_port_80_must_redirect() -> None:
    good = FakeWeb({"/": (301, {"Location": "https://a.example/"}, b"")})
    res = outside.probe_site("h", Site("http", "a.example", True), settings(), "web1", get=good)
    assert res.findings == [] and good.asked == [("http", "a.example", "/")]
    bad = FakeWeb({"/": (200, {}, b"app")})
    [f] = outside.probe_site(
        "h", Site("http", "a.example", True), settings(), "web1", get=bad
    ).findings
    assert f.check == "https-redirect" and f.severity is Severity.MEDIUM


def test_unreachable_site_is_an_error_not_a_finding() -> None:
    def refused(address: str, site: str, path: str, **k: Any) -> Response:
        return Response(f"http://{site}{path}", error="Connection refused")

    res = outside.probe_site("10.0.0.5", Site("http", "10.0.0.5"), settings(), "w", get=refused)
    assert res.findings == [] and res.errors == [
        "http://10.0.0.5/ (at 10.0.0.5): Connection refused"
    ]


# --- HSTS and certificates ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("max-age=31536000; includeSubDomains; preload", []),
        ("max-age=31536000", [("info", "HSTS without includeSubDomains")]),
        (None, [("high", "no HSTS header")]),
        ("max-age=0", [("high", "HSTS header without effect"), ("info", "HSTS without")]),
        ("max-age=86400; includeSubDomains", [("medium", "HSTS max-age too short")]),
    ],
)
def test_hsts(value: str | None, expected: list[tuple[str, str]]) -> None:
    got = outside.judge_hsts(value, "https://a/", settings(), "web1")
    assert [
        (f.severity.label, f.title[: len(t)]) for f, (_, t) in zip(got, expected, strict=False)
    ] == expected
    assert len(got) == len(expected)


def test_hsts_subdomains_required_is_low() -> None:
    [f] = outside.judge_hsts(
        "max-age=31536000", "https://a/", settings(hsts_include_subdomains=True), "h"
    )
    assert f.severity is Severity.LOW


def test_https_site_checks_hsts_and_certificate(monkeypatch: pytest.MonkeyPatch) -> None:
    web = FakeWeb({"/": (200, {"Server": "nginx"}, b"app")})

    def untrusted(address: str, site: str, **k: Any) -> TlsVerdict:
        return TlsVerdict(False, 20, "unable to get local issuer certificate")

    res = outside.probe_site(
        "10.0.0.5",
        Site("https", "a.example"),
        settings(),
        "web1",
        get=web,
        verify=untrusted,
        now=NOW,
    )
    titles = {f.title: f.severity for f in res.findings}
    assert titles == {
        "no HSTS header on https://a.example/": Severity.HIGH,
        "certificate for a.example is not trusted": Severity.HIGH,
    }
    assert {"hsts", "certificate"} <= res.checks
    fix = next(f.fix for f in res.findings if f.check == "certificate")
    assert "audit_tls_ca_file" in fix


@pytest.mark.parametrize(
    ("code", "severity", "title"),
    [
        (10, Severity.CRITICAL, "certificate for a.example has expired"),
        (62, Severity.HIGH, "certificate served for a.example does not name it"),
    ],
)
def test_certificate_verdicts(code: int, severity: Severity, title: str) -> None:
    def verdict(*a: Any, **k: Any) -> TlsVerdict:
        return TlsVerdict(False, code, "x")

    [f] = tls.judge_certificate("h", "a.example", None, settings(), "web1", verify=verdict)
    assert (f.severity, f.title) == (severity, title)


# --- the remote program, run here against stand-in commands ---------------------------------


def test_collect_script_runs_and_reduces_the_journal_on_the_host(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    journal = tmp_path / "journal.txt"
    journal.write_text(JOURNAL)
    stand_ins = {
        "journalctl": f'[ "$5 $6" = "--since -7200s" ] || exit 9; cat {journal}',
        "fail2ban-client": "printf 'Status for the jail: sshd\\n   |- Total banned:\\t2\\n"
        "   `- Banned IP list:\\t203.0.113.7\\n'",
        "ss": "printf '%s\\n' 'tcp LISTEN 0 1 0.0.0.0:22 0.0.0.0:* users:((\"sshd\",pid=1,fd=3))'",
        "sshd": "echo 'passwordauthentication yes'; echo 'authorizedkeysfile none'",
        "nginx": "printf '# configuration file /etc/nginx/x.conf:\\nserver {\\n"
        " autoindex on;\\n}\\n'",
    }
    for name, body in stand_ins.items():
        (bin_dir / name).write_text(f"#!/bin/bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    script = inside.collect_script(2)
    p = subprocess.run(
        ["bash", "-s"],
        input=script,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": f"{bin_dir}:/usr/bin:/bin"},
    )
    assert p.returncode == 0, p.stderr
    read = inside.parse_inside(p.stdout)
    assert {s.address: s.failures for s in read.sources}["203.0.113.7"] == 3
    assert read.bans.current == ("203.0.113.7",) and read.bans.total == 2
    assert [(s.port, s.process) for s in read.sockets] == [(22, "sshd")]
    assert read.keys == ()  # AuthorizedKeysFile none
    found = inside.judge_inside(read, settings(ports=(PortRule("tcp", 22),)), "web1")
    assert {f.check for f in found} == {"sshd-config", "directory-listing"}
    assert "line 2" in next(f.detail for f in found if f.check == "directory-listing")


def test_remote_command_is_one_heredoc_of_the_host_programs_source() -> None:
    script = inside.collect_script(1.5)
    source = inside.PROBE_FILE.read_text()
    assert inside.PROBE_FILE.name == "audit_probe.py"
    first, second, rest = script.split("\n", 2)
    assert first.startswith("command -v python3 >/dev/null ||") and "exit 3;" in first
    assert second == f"exec python3 - '{{\"seconds\": 5400}}' <<'{audit_probe.MARKER}'"
    assert rest == source.rstrip() + f"\n{audit_probe.MARKER}\n"  # verbatim, then the marker
    assert audit_probe.MARKER not in source.splitlines()  # the heredoc cannot end early


def test_remote_command_without_python3_exits_3(tmp_path: Path) -> None:
    (tmp_path / "bash").symlink_to("/bin/bash")  # a PATH with bash and nothing else
    p = subprocess.run(
        [str(tmp_path / "bash"), "-s"],
        input=inside.collect_script(1),
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": str(tmp_path)},
    )
    assert (p.returncode, p.stdout, p.stderr) == (3, "", "python3 is missing on this host\n")


def test_host_program_imports_the_standard_library_only() -> None:
    tree = ast.parse(inside.PROBE_FILE.read_text())
    imported = {
        (n.module or "") if isinstance(n, ast.ImportFrom) else a.name
        for n in ast.walk(tree)
        if isinstance(n, ast.Import | ast.ImportFrom)
        for a in n.names
    }
    tops = {name.split(".")[0] for name in imported}
    assert "subprocess" in tops and "pwd" in tops  # the walk sees the imports
    assert tops <= set(sys.stdlib_module_names), tops - set(sys.stdlib_module_names)


def test_host_program_rejects_a_bad_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert audit_probe.parse_config(["-", '{"seconds": 60}']) == {"seconds": 60}
    for bad in ([], ["-", "60"], ["-", '{"seconds": -1}'], ["-", '{"seconds": true}']):
        assert audit_probe.main(bad) == audit_probe.USAGE
    out, err = capsys.readouterr()
    assert out == "" and err.count("audit_probe: config: expected") == 4


def test_host_program_scans_fail2bans_log_within_the_window() -> None:
    log = [
        "2026-11-23 09:59:59,9 fail2ban.actions [7]: NOTICE  [sshd] Ban 192.0.2.1",  # before
        "2026-11-23 09:59:59,9 fail2ban.utils [7]: ERROR 7f -- returned 127",  # before: ignored
        "2026-11-23 10:00:00,0 fail2ban.actions [7]: NOTICE  [sshd] Ban 10.0.0.9",
        "2026-11-23 10:00:01,0 fail2ban.actions [7]: ERROR Failed to execute ban jail 'sshd' "
        "action 'iptables-multiport' info 'CallingMap({'ip': '10.0.0.9'})': Error banning",
        "2026-11-23 10:05:00,0 fail2ban.actions [7]: NOTICE  [nginx] Ban 10.0.0.5",  # other jail
        "2026-11-23 10:06:00,0 fail2ban.actions [7]: NOTICE  [sshd] Ban 10.0.0.8",
        "2026-11-23 10:06:00,1 fail2ban.utils [7]: ERROR 7f -- returned 127",
        "2026-11-23 10:06:00,2 fail2ban.actions [7]: ERROR Failed to execute ban jail 'sshd' "
        "action 'iptables-multiport' info 'CallingMap({'ip': '10.0.0.8'})': Error banning",
        "2026-11-23 10:07:00,0 fail2ban.actions [7]: NOTICE  [sshd] Ban 10.0.0.9",  # again
    ]
    bans, failed = audit_probe.scan_fail2ban_log(log, "2026-11-23 10:00:00")
    assert bans == ["10.0.0.8", "10.0.0.9"]
    assert failed == [
        ["iptables-multiport", "10.0.0.9", "script error"],
        ["iptables-multiport", "10.0.0.8", "command not found"],
    ]
    f2b: audit_probe.Fail2ban = {
        "rc": 0,
        "out": "   |- Total banned:\t3\n   `- Banned IP list:\t\n",
        "err": "",
        "in_window": bans,
        "ban_errors": failed,
    }
    got = logins.bans_of(f2b)
    assert (got.running, got.current, got.total, got.in_window) == (True, (), 3, tuple(bans))
    assert got.failed_actions[1] == ("iptables-multiport", "10.0.0.8", "command not found")


def test_host_program_finds_key_files_as_sshd_does() -> None:
    conf = "authorizedkeysfile .ssh/a\nport 22\nauthorizedkeysfile %h/.ssh/k /etc/ssh/keys/%u\n"
    patterns = audit_probe.key_file_patterns(conf)
    assert patterns == ["%h/.ssh/k", "/etc/ssh/keys/%u"]  # the last line wins, every file of it
    assert [audit_probe.expand_key_path(p, "/home/bob", "bob", 1001) for p in patterns] == [
        "/home/bob/.ssh/k",
        "/etc/ssh/keys/bob",
    ]
    assert audit_probe.expand_key_path("keys/%U%%u", "/srv", "x", 7) == "/srv/keys/7%u"
    assert audit_probe.expand_key_path("None", "/", "x", 1) is None
    assert audit_probe.key_file_patterns("port 22\n") == list(audit_probe.DEFAULT_KEY_FILES)


def test_host_program_parses_sockets() -> None:
    text = (
        "Netid State Recv-Q Send-Q Local Address:Port Peer Address:Port Process\n"
        'tcp LISTEN 0 128 [fe80::1%eth0]:8443 [::]:* users:(("app",pid=3,fd=4))\n'
        "tcp LISTEN 0 128 *:9100 *:*\n"
        'tcp LISTEN 0 128 [::ffff:127.0.0.1]:7000 [::]:* users:(("x",pid=4,fd=5))\n'
        "u_str LISTEN 0 5 /run/x.sock 1 * 0\n"
        "udp UNCONN 0 0 0.0.0.0:notaport 0.0.0.0:*\n"
    )
    records = audit_probe.parse_ss(text)
    assert [(r["address"], r["port"], r["process"]) for r in records] == [
        ("fe80::1%eth0", 8443, "app"),
        ("0.0.0.0", 9100, "?"),
        ("::ffff:127.0.0.1", 7000, "x"),
    ]
    assert [s.loopback for s in ports.sockets_of(records)] == [False, False, True]


def test_host_program_keeps_nginx_lines_with_their_line_numbers() -> None:
    dump = (
        "nginx: the configuration file /etc/nginx/nginx.conf syntax is ok\n"
        "# configuration file /etc/nginx/nginx.conf:\n"
        "http {\n"
        "    server_tokens off;\n"
        "}\n"
        "# configuration file /etc/nginx/conf.d/files.conf:\n"
        "server {\n"
        "  location /files/ {\n"
        "    autoindex on;\n"
        "  }\n"
        "}\n"
    )
    kept = audit_probe.filter_nginx_dump(dump)
    assert kept == [
        "# configuration file /etc/nginx/nginx.conf:",
        "2:    server_tokens off;",
        "# configuration file /etc/nginx/conf.d/files.conf:",
        "3:    autoindex on;",
    ]
    [f] = inside.judge_nginx_dump(kept, "web1")
    assert f.detail.startswith("autoindex on in /etc/nginx/conf.d/files.conf, line 3:")


def test_host_program_counts_a_denied_user_once_per_line() -> None:
    got = audit_probe.reduce_journal(
        [
            "1 h sshd[1]: User bob from 10.0.0.1 not allowed because not listed in AllowUsers",
            "2 h sshd[2]: User bob from 10.0.0.1 not allowed because not listed in AllowUsers",
        ]
    )
    assert got == {
        "10.0.0.1": {"failures": 2, "accepted": 0, "users": ["bob"], "first": 1.0, "last": 2.0}
    }


# --- severities, exit codes, output, JSON ---------------------------------------------------


@pytest.mark.parametrize(
    ("severities", "failed", "code"),
    [
        ([], False, ExitStatus.OK),
        ([Severity.INFO], False, ExitStatus.OK),
        ([Severity.LOW, Severity.MEDIUM], False, ExitStatus.WARNING),
        ([Severity.MEDIUM], True, ExitStatus.HOST_FAILED),
        ([Severity.HIGH], True, ExitStatus.CRITICAL),
        ([Severity.CRITICAL, Severity.INFO], False, ExitStatus.CRITICAL),
        ([], True, ExitStatus.HOST_FAILED),
    ],
)
def test_exit_codes(severities: list[Severity], failed: bool, code: ExitStatus) -> None:
    assert findings.exit_code([F(s) for s in severities], failed) is code


def report() -> AuditReport:
    web = HostAudit(
        "web1",
        "10.0.0.11",
        None,
        False,
        ("exposed-files", "hsts"),
        findings.sort_findings(
            [
                F(Severity.LOW, "ports"),
                F(Severity.CRITICAL, "exposed-files"),
                F(Severity.INFO, "hsts"),
            ]
        ),
        (Source("10.0.0.12", 8, users=("nosuchuser",)), Source("10.0.0.1", 0, accepted=3)),
        Bans(True, ("10.0.0.12",), 1),
        commands=1,
    )
    db = HostAudit("db1", "10.0.0.21", "db1 (deploy@10.0.0.21:22): unreachable", True)
    return AuditReport(NOW, 24.0, (web, db))


def test_json_shape_is_what_the_reports_code_against() -> None:
    d = report().to_dict()
    assert d["generated_at"] == "2026-11-23T12:00:00Z" and d["since_hours"] == 24.0
    assert d["worst"] == "critical"
    web, db = d["hosts"]
    assert {
        "host",
        "address",
        "error",
        "unreachable",
        "checks",
        "findings",
        "failed_logins",
        "bans",
    } <= set(web)
    assert web["findings"][0] == {
        "check": "exposed-files",
        "severity": "critical",
        "title": "title",
        "detail": "detail",
        "fix": "fix",
    }
    assert [f["severity"] for f in web["findings"]] == ["critical", "low", "info"]
    assert web["failed_logins"]["total"] == 8
    assert web["failed_logins"]["by_source"] == {"10.0.0.12": 8}
    assert web["bans"]["current"] == ["10.0.0.12"] and web["bans"]["total"] == 1
    assert db["unreachable"] is True and db["error"] and db["failed_logins"]["by_source"] == {}
    json.dumps(d)  # serialisable as is


def test_format_plain_and_coloured() -> None:
    r = report()
    plain = output.format_report(r)
    assert "\x1b[" not in plain
    lines = plain.splitlines()
    assert lines[0].startswith(
        "[web1] CRITICAL  10.0.0.11  3 finding(s): 1 critical, 1 low, 1 info"
    )
    assert lines[1].split()[:2] == ["critical", "exposed-files"]  # worst first
    assert "fix: fix" in plain
    assert "failed SSH logins: 8 (10.0.0.12 8 (banned)); fail2ban: 1 banned now" in plain
    assert "[db1] UNREACHABLE" in plain and "  ! db1 (deploy@10.0.0.21:22): unreachable" in plain
    assert lines[-1].endswith("1 host(s) not fully read (exit 5)")
    assert "\x1b[1;31mcritical" in output.format_report(r, colour=True)
    assert use_color(True, {"NO_COLOR": ""}) and not use_color(True, {"NO_COLOR": "1"})
