"""requirements.lock holds every pin of requirements*.txt (edit those, then `inv dev.lock`)."""

from __future__ import annotations

import re

from opskit.core.roles import REPO


def _pins(name: str) -> dict[str, str]:
    pins = {}
    for line in (REPO / name).read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+)(?:\[[^]]*\])?==([^\s\\;]+)", line)
        if m:
            pins[m.group(1).lower().replace("_", "-")] = m.group(2)
    return pins


def test_lock_pins_what_the_requirements_pin() -> None:
    lock = _pins("requirements.lock")
    wanted = {**_pins("requirements.txt"), **_pins("requirements-dev.txt")}
    assert {k: lock.get(k) for k in wanted} == wanted


def test_every_locked_package_has_a_hash() -> None:
    text = (REPO / "requirements.lock").read_text()
    entries = re.split(r"\n(?=[A-Za-z0-9])", text.strip())
    packages = [e for e in entries if "==" in e.split("\n")[0]]
    assert len(packages) > 20
    assert all("--hash=sha256:" in e for e in packages)


def test_the_lab_and_tests_stay_out_of_the_runtime() -> None:
    assert not {"moto", "pytest", "responses"} & set(_pins("requirements.txt"))
