"""What the nginx role promises (roles/nginx/README.md), checked on the host itself."""

from __future__ import annotations

ROLE = "nginx"


def test_nginx_runs_with_a_valid_config(host):
    assert host.service("nginx").is_running and host.service("nginx").is_enabled
    assert host.run("nginx -t").rc == 0


def test_site_replaces_the_default(host, hostvars):
    site = host.file(f"/etc/nginx/conf.d/opskit-{hostvars.get('app_name', 'app')}.conf")
    assert site.exists and site.user == "root"
    if hostvars["nginx_remove_default_site"]:
        assert not host.file("/etc/nginx/sites-enabled/default").exists


def test_maintenance_switch_is_off(host, hostvars):
    # `inv backup.restore --replace` turns it on while the app is stopped, and off again
    flags = host.file("/var/lib/opskit/maintenance")
    assert flags.is_directory and flags.mode == 0o755
    assert not host.file(f"/var/lib/opskit/maintenance/{hostvars.get('app_name', 'app')}").exists


def test_dot_files_are_not_served(host):
    for path in ("/.env", "/.git/config", "/.git/HEAD", "/app/.env", "/.htpasswd"):
        out = host.check_output(f"curl -s -w '\\n%{{http_code}}' http://127.0.0.1{path}")
        body, code = out.rsplit("\n", 1)
        assert code == "404", path
        assert "nginx" in body, f"{path} reached the app instead of nginx's 404"


def test_access_log_ends_with_the_request_time(host):
    # A request of ours, then the last line of the log: its last field is $request_time.
    host.run("curl -s -o /dev/null -A opskit-verify-log http://127.0.0.1/")
    lines = host.check_output("tail -n 50 /var/log/nginx/access.log").splitlines()
    ours = [line for line in lines if '"opskit-verify-log"' in line]
    assert ours, "our request is not in /var/log/nginx/access.log"
    last = ours[-1].rsplit(" ", 1)[1]
    assert last.replace(".", "", 1).isdigit() and "." in last, ours[-1]


def test_security_headers(host, hostvars):
    headers = host.check_output("curl -s -o /dev/null -D - http://127.0.0.1/").lower()
    for name, value in hostvars["nginx_security_headers"].items():
        if value:
            assert f"{name.lower()}: {value.lower()}" in headers
    assert "server: nginx\r\n" in headers  # no version (server_tokens off)


def test_websocket_friendly_proxy(host, hostvars):
    conf = host.check_output("nginx -T 2>/dev/null")
    assert f"proxy_read_timeout {hostvars['nginx_proxy_read_timeout']}s;" in conf
    assert "proxy_set_header Upgrade $http_upgrade;" in conf
