"""`inv run`: one shell command on many hosts; formatting and input checks (no SSH)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from opskit.core.errors import ConfigError
from opskit.core.inventory import Inventory, SshSettings
from opskit.fleet import adhoc


def test_empty_command_is_refused_before_any_connection():
    inv = Inventory(Path("x.yml"), SshSettings(Path("/nonexistent")), (), {})
    with pytest.raises(ConfigError, match="the command is empty"):
        adhoc.run_command(inv, [], "   ")


def test_output_lines_and_summary():
    results = [
        adhoc.CommandResult("web1", 0, "a\nb\n"),
        adhoc.CommandResult("web2", 3, "", "boom\n"),
        adhoc.CommandResult("db1", error="db1 (deploy@10.0.0.9:22): unreachable", unreachable=True),
    ]
    text = "".join(adhoc.format_result(r) for r in results)
    assert text.splitlines() == [
        "[web1] a",
        "[web1] b",
        "[web2] ! boom",
        "[web2] exit 3",
        "[db1] UNREACHABLE db1 (deploy@10.0.0.9:22): unreachable",
    ]
    assert adhoc.summary(results) == "3 hosts: 1 ok, 1 failed, 1 unreachable or not run\n"
    hosts = json.loads(adhoc.to_json(results))["hosts"]
    assert [h["exited"] for h in hosts] == [0, 3, None] and hosts[2]["unreachable"] is True
