"""The collection itself, without hosts: it builds, installs offline, its playbooks parse, and every
option of `k3bundle install` is reachable as a role variable of the same name."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest
import yaml

from tests.fleet.fleet import COLLECTION, VENV_BIN, install_collection

PLAYBOOKS = ("site", "upgrade", "rollback", "reset")
# Options the role sets itself, or maps onto one variable with another name.
HANDLED = {"help": "", "quiet": "", "token": "k3bundle_token", "no_wait": "k3bundle_wait",
           "no_sync": "k3bundle_sync"}  # fmt: skip

needs_ansible = pytest.mark.skipif(
    not (VENV_BIN / "ansible-playbook").exists(), reason="ansible-core is in the test extras"
)


def install_options() -> List[str]:
    """The long options of `k3bundle install --help`, as variable suffixes (dashes: _)."""
    command = [sys.executable, "-m", "k3bundle.installer", "install", "--help"]
    text = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    found = re.findall(r"^  (?:-\w, )?--([a-z][a-z-]+)", text, re.M)  # option lines only
    return sorted({name.replace("-", "_") for name in found})


@needs_ansible
def test_collection_builds_installs_offline_and_its_playbooks_parse(tmp_path: Path) -> None:
    collections = install_collection(tmp_path)
    installed = collections / "ansible_collections" / "k3bundle" / "airgap"
    assert (installed / "MANIFEST.json").is_file()
    env = {"PATH": f"{VENV_BIN}:/usr/bin:/bin", "ANSIBLE_HOME": str(tmp_path / "home"),
           "ANSIBLE_COLLECTIONS_PATH": str(collections), "HOME": str(tmp_path)}  # fmt: skip
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(yaml.safe_dump({"server": {"hosts": {"s1": None}}, "agent": {}}))
    for name in PLAYBOOKS:
        command = [str(VENV_BIN / "ansible-playbook"), "--syntax-check", "-i", str(inventory)]
        done = subprocess.run([*command, f"k3bundle.airgap.{name}"], capture_output=True,
                              text=True, env=env, check=False)  # fmt: skip
        assert done.returncode == 0, f"{name}: {done.stdout}\n{done.stderr}"


def test_every_install_option_is_a_role_variable_of_the_same_name() -> None:
    defaults = yaml.safe_load((COLLECTION / "roles/node/defaults/main.yml").read_text())
    options = install_options()
    assert {"node_label", "exec", "cluster_init", "tls_san", "image_cache"} <= set(options)
    missing = []
    for option in options:
        variable = HANDLED.get(option, f"k3bundle_{option}")
        if variable and variable not in defaults:
            missing.append(option)
    assert missing == []


def test_no_task_uses_a_module_outside_ansible_builtin() -> None:
    modules = set()
    for path in COLLECTION.rglob("*.yml"):
        for line in path.read_text().splitlines():
            found = re.match(r"\s*-?\s*([a-z_]+\.[a-z_]+\.[a-z_]+):", line)
            if found and not found[1].startswith("k3bundle.airgap."):
                modules.add(found[1])
    assert modules and all(name.startswith("ansible.builtin.") for name in modules), modules
