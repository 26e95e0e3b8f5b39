"""The k3s stand-in reads its config as k3s does and refuses what k3s refuses (on this machine)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.hosts import standin_k3s as standin

pytestmark = pytest.mark.hosts


def write(path: Path, text: str) -> None:
    """Write `text`, making the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_drop_ins_override_in_lexical_order_and_plus_keys_append(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    write(config, "node-label: [a=1]\ntoken: base\nselinux: no\n")
    write(tmp_path / "config.yaml.d/20-b.yaml", "token: twenty\nnode-label+: [c=3]\n")
    write(tmp_path / "config.yaml.d/10-a.yml", "token: ten\nnode-label+: b=2\n")
    write(tmp_path / "config.yaml.d/30-c.txt", "token: ignored\n")
    values = standin.read_config(str(config))
    assert values == {"node-label": ["a=1", "b=2", "c=3"], "token": "twenty", "selinux": False}


def test_command_line_beats_config_and_config_beats_environment(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    write(config, "node-label: [a=1, b=2]\nnode-name: from-file\n")
    args = ["--config", str(config), "--node-label=x=9", "--cluster-init", "--tls-san", "n1"]
    env = {"K3S_NODE_NAME": "from-env", "K3S_TOKEN": "env-token"}
    values = standin.effective(args, env)
    assert values["node-label"] == "x=9" and values["cluster-init"] == "true"
    assert (values["node-name"], values["token"], values["tls-san"]) == (
        "from-file",
        "env-token",
        "n1",
    )


@pytest.mark.parametrize("value", ['"maybe"', "[true]", '"yes"', "2"])
def test_non_boolean_selinux_is_refused_as_k3s_refuses_it(tmp_path: Path, value: str) -> None:
    write(tmp_path / "config.yaml", f"selinux: {value}\n")
    with pytest.raises(standin.Refused, match=r"invalid value .* for flag -selinux"):
        standin.effective(["--config", str(tmp_path / "config.yaml")], {})


@pytest.mark.parametrize("value", ["true", "no", '"false"', "1", '"T"'])
def test_boolean_selinux_values_go_run_accepts_are_accepted(tmp_path: Path, value: str) -> None:
    write(tmp_path / "config.yaml", f"selinux: {value}\n")
    values = standin.effective(["--config", str(tmp_path / "config.yaml")], {})
    assert "selinux" in values


def test_agent_needs_a_server_and_a_token_and_urls_are_https() -> None:
    with pytest.raises(standin.Refused, match="--server is required"):
        standin.check_role("agent", {"token": "t"})
    with pytest.raises(standin.Refused, match="--token is required"):
        standin.check_role("agent", {"server": "https://10.0.0.1:6443"})
    with pytest.raises(standin.Refused, match="https://"):
        standin.check_role("server", {"server": "http://10.0.0.1:6443"})
    standin.check_role("agent", {"server": "https://10.0.0.1:6443", "token": "t"})


def test_only_regular_archives_directly_in_agent_images_are_imported(tmp_path: Path) -> None:
    images = tmp_path / "agent/images"
    for name in ("b.tar.zst", "a.TAR", "c.tgz", "d.tar.gz", "e.tzst", "list.txt", ".cache.json"):
        write(images / name, "x")
    (images / "sub.tar").mkdir()
    os.symlink(images / "a.TAR", images / "link.tar")
    found = [p.name for p in standin.image_archives(str(tmp_path))]
    assert found == ["a.TAR", "b.tar.zst", "c.tgz", "d.tar.gz", "e.tzst"]


def test_version_and_label_say_it_is_a_stand_in() -> None:
    done = subprocess.run(
        [sys.executable, standin.__file__, "--version"], capture_output=True, text=True, check=True
    )
    assert done.stdout.startswith(f"k3s version {standin.VERSION} (")
    assert "k3bundle test stand-in for k3s, not k3s" in done.stdout
    assert Path(standin.__file__).read_text().startswith("#!/usr/bin/python3\n")
