"""The repo is self-contained: nothing in it points at files outside it."""

from __future__ import annotations

import subprocess

from opskit.core.roles import REPO

OUTSIDE = "../" + "shared"  # spelled in two parts so that this file does not match itself


def test_nothing_refers_to_files_outside_the_repo() -> None:
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    found = []
    for name in files:
        path = REPO / name
        if not path.is_file() or path.suffix in (".png", ".gz", ".json"):
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        found += [f"{name}:{i}" for i, line in enumerate(text.splitlines(), 1) if OUTSIDE in line]
    assert found == []


def test_the_docs_a_user_needs_are_in_the_repo() -> None:
    for doc in ("architecture.md", "lab.md", "DEVELOPING.md"):
        assert (REPO / "docs" / doc).is_file(), doc
