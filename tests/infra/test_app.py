"""What the app role promises (roles/app/README.md), checked on the host itself."""

from __future__ import annotations

import json

ROLE = "app"
PM2 = "/opt/opskit/pm2/node_modules/pm2/bin/pm2"


def _node(hostvars):
    if hostvars.get("app_node_source", "official") == "distro":
        return "/usr/bin/node"
    return f"/opt/opskit/node-{hostvars['app_node_version']}/bin/node"


def test_node_and_pinned_pm2(host, hostvars):
    node = _node(hostvars)
    version = host.check_output(f"{node} --version").lstrip("v")
    if hostvars.get("app_node_source", "official") == "official":
        assert version == hostvars["app_node_version"]
        assert host.file(f"{node.rsplit('/bin/', 1)[0]}/.opskit-sha256").exists
    assert int(version.split(".")[0]) >= 18
    path = f"PATH={node.rsplit('/', 1)[0]}:/usr/bin:/bin"  # PM2's CLI: #!/usr/bin/env node
    assert host.check_output(f"{path} {PM2} --version").strip().splitlines()[-1] == str(
        hostvars["app_pm2_version"]
    )
    assert host.file("/opt/opskit/pm2/.opskit-sha256").exists
    assert host.file("/usr/local/bin/pm2").linked_to == PM2


def test_pm2_and_the_app_run_the_hosts_node(host, hostvars):
    """The PM2 daemon and every process of the app run the node of app_node_source."""
    user = hostvars["app_user"]
    app = hostvars["app_name"]
    pids = host.check_output(f"pgrep -u {user} -f 'God Daemon|/srv/{app}/' || true").split()
    exes = {host.check_output(f"readlink /proc/{p}/exe || true").strip() for p in pids}
    exes.discard("")
    assert exes, f"no process of {user} runs"
    assert exes == {_node(hostvars)}, exes


def test_app_user_cannot_log_in(host, hostvars):
    user = host.user(hostvars["app_user"])
    assert user.exists
    assert user.shell in ("/usr/sbin/nologin", "/sbin/nologin")


def test_release_layout(host, hostvars):
    base = f"/srv/{hostvars['app_name']}"
    assert host.file(f"{base}/releases").is_directory
    shared = host.file(f"{base}/shared")
    assert shared.is_directory and shared.mode == 0o750 and shared.user == hostvars["app_user"]
    state = host.file(f"{base}/.opskit")
    assert state.mode == 0o700 and state.user == "root"
    # A deploy prunes to app_keep_releases when it succeeds; one that failed leaves its release,
    # marked bad, until the next good deploy prunes it first.
    releases = host.check_output(f"ls -1 {base}/releases").split()
    bad = host.run(f"ls -1d {base}/releases/*/.opskit-bad 2>/dev/null").stdout.split()
    assert len(releases) - len(bad) <= hostvars["app_keep_releases"], (releases, bad)


def test_ecosystem_file_is_private_and_loads(host, hostvars):
    path = f"/srv/{hostvars['app_name']}/shared/ecosystem.config.js"
    eco = host.file(path)
    assert eco.mode == 0o600 and eco.user == hostvars["app_user"]
    node = _node(hostvars)
    out = host.check_output(f"{node} -e 'console.log(JSON.stringify(require(\"{path}\")))'")
    [app] = json.loads(out)["apps"]
    assert app["name"] == hostvars["app_name"]
    assert app["cwd"] == f"/srv/{hostvars['app_name']}/current"
    env = app["env"]
    assert env["PORT"] == str(hostvars["app_port"]) and env["HOST"] == "127.0.0.1"
    assert env["NODE_ENV"] == hostvars["app_node_env"]
    assert env["SENTRY_ENVIRONMENT"] == hostvars["app_sentry_environment"]
    assert "SENTRY_RELEASE" in env
    assert ("SENTRY_DSN" in env) == bool(hostvars["app_sentry_dsn"])


def test_pm2_home_is_private(host, hostvars):
    # dump.pm2 (and its .bak) hold the app's environment, secrets included
    user = hostvars["app_user"]
    home = host.file(f"/home/{user}/.pm2")
    assert home.is_directory and home.user == user and home.mode == 0o700
    assert host.run(f"runuser -u nobody -- ls /home/{user}/.pm2").rc != 0
    for name in ("dump.pm2", "dump.pm2.bak"):
        f = host.file(f"/home/{user}/.pm2/{name}")
        assert not f.exists or f.mode & 0o077 == 0, name


def test_no_candidate_left_between_deploys(host, hostvars):
    # a deploy starts the new release beside the live app, then removes it
    assert not host.socket(f"tcp://127.0.0.1:{hostvars['app_candidate_port']}").is_listening


def test_pm2_runs_under_systemd_at_boot(host, hostvars):
    service = host.service(f"pm2-{hostvars['app_user']}")
    assert service.is_enabled and service.is_running


def test_pm2_logs_rotate(host, hostvars):
    conf = f"/etc/logrotate.d/pm2-{hostvars['app_name']}"
    assert host.file(conf).contains(f"/var/log/{hostvars['app_name']}/\\*.log")
    assert host.run(f"logrotate -d {conf}").rc == 0


def test_current_release_is_healthy(host, hostvars):
    current = host.file(f"/srv/{hostvars['app_name']}/current")
    if not current.exists:
        return  # provisioned, never deployed: nothing to serve yet
    assert current.is_symlink and current.linked_to.startswith(
        f"/srv/{hostvars['app_name']}/releases/"
    )
    url = f"http://127.0.0.1:{hostvars['app_port']}{hostvars['app_health_path']}"
    assert '"healthy"' in host.check_output(f"curl -sf {url}")


def test_shared_paths_are_linked_into_the_current_release(host, hostvars):
    base = f"/srv/{hostvars['app_name']}"
    if not host.file(f"{base}/current").exists:
        return  # provisioned, never deployed: a deploy makes and links them
    for path in hostvars["app_shared_paths"]:
        name = path.rstrip("/")
        shared = host.file(f"{base}/shared/{name}")
        assert shared.exists and shared.is_directory == path.endswith("/"), path
        assert shared.user == hostvars["app_user"], path
        link = host.file(f"{base}/current/{name}")
        assert link.is_symlink and link.linked_to == f"{base}/shared/{name}", path
