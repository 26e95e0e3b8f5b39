"""One site's life on a real fleet: site.yml, again, a failing upgrade, rollback, upgrade, reset.

The tests share one booted fleet (three servers, two agents, amd64 and arm64) and run in file
order, each starting from the state the previous one left: that is the point (a second run of
the same playbook must find nothing to do). The token comes from an Ansible Vault file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping

import pytest

from tests.fleet.conftest import FIRST, SECOND, FleetBundles
from tests.fleet.fleet import AGENTS, SERVERS, Fleet, Run, active, env_file, status
from tests.fleet.network import PREFIX, routes
from tests.helpers import KeyFiles

pytestmark = [pytest.mark.fleet, pytest.mark.slow]

TOKEN = "k3b-fleet-token-5f0c2d"  # must never appear in Ansible's output
ARM: Dict[str, Dict[str, Any]] = {
    "s2": {"k3bundle_arch": "arm64"},
    "a2": {"k3bundle_arch": "arm64"},
}
ALL = (*SERVERS, *AGENTS)
DIST = "/var/lib/k3bundle-ansible"


@pytest.fixture(scope="module")
def vault(fleet: Fleet) -> Iterator[List[str]]:
    """ansible-playbook arguments that load the token from a Vault-encrypted vars file."""
    secrets, password = fleet.folder / "secrets.yml", fleet.folder / "vault-password"
    secrets.write_text(f"k3bundle_token: {TOKEN}\n")
    password.write_text("k3b-vault-password\n")
    done = fleet.network.run(
        ["ansible-vault", "encrypt", "--vault-password-file", str(password), str(secrets)],
        fleet.environment(),
    )
    assert done.returncode == 0 and TOKEN not in secrets.read_text(), done.stderr
    yield ["-e", f"@{secrets}", "--vault-password-file", str(password)]


def run(
    fleet: Fleet, name: str, bundle: Path, zipapp: Path, signer: KeyFiles, *args: str,
    per_host: Mapping[str, Dict[str, Any]] = ARM,
) -> Run:  # fmt: skip
    """Run playbook `name` with `bundle` over the whole fleet (the arm64 hosts say so)."""
    common = {
        "k3bundle_bundle": str(bundle), "k3bundle_zipapp": str(zipapp),
        "k3bundle_pubkey": str(signer.public), "k3bundle_health_retries": 8,
        "k3bundle_health_delay": 1, "k3bundle_node_label": ["k3bundle.io/fleet=test"],
    }  # fmt: skip
    done = fleet.playbook(name, fleet.inventory(common, per_host), *args)
    assert TOKEN not in done.output
    return done


def versions(fleet: Fleet) -> Dict[str, str]:
    """k3s version per host, from `status --json` ('' when nothing is installed)."""
    return {name: status(host).get("k3s_version", "") for name, host in fleet.hosts.items()}


def held(fleet: Fleet, name: str) -> Dict[str, Any]:
    """The bundles the role copied to host `name`: file names, and k3s version and arches held."""
    host = fleet.hosts[name]
    names = sorted(p.name for p in (host.root / DIST.lstrip("/")).glob("bundle*.tar"))
    inspect = [f"{DIST}/{names[0]}", "--json"] if names else ["--help"]
    shown = host.run("python3", f"{DIST}/k3bundle-install.pyz", "inspect", *inspect).stdout
    found = json.loads(shown) if names else {}
    holds = found.get("slice", {}).get("holds", found.get("architectures"))
    return {"files": names, "version": found.get("k3s_version"), "holds": holds}


def arch_of(name: str) -> str:
    """The architecture host `name` installs."""
    return "arm64" if name in ARM else "amd64"


def test_the_fleet_network_has_no_way_out(fleet: Fleet) -> None:
    only_route = f"{PREFIX}.0/24 dev br0 proto kernel scope link src {PREFIX}.1"
    assert routes(fleet.network).split() == only_route.split()  # no default route, no uplink
    assert "default" not in routes(fleet.network, "6")  # at most link-local fe80::/64
    for host in fleet.hosts.values():
        assert "default" not in host.run("ip", "route").stdout
    assert sorted(fleet.address.values()) == [f"{PREFIX}.{11 + i}" for i in range(len(ALL))]


def test_check_mode_changes_nothing_on_any_host(
    fleet: Fleet, fleet_bundles: FleetBundles, host_zipapp: Path, host_signer: KeyFiles,
    vault: List[str],
) -> None:  # fmt: skip
    done = run(fleet, "site", fleet_bundles.first, host_zipapp, host_signer, *vault, "--check")
    assert done.returncode == 0, done.output[-3000:]
    assert sorted(done.recap) == sorted(ALL)
    for host in fleet.hosts.values():
        assert host.run("test", "-e", "/var/lib/k3bundle", check=False).returncode == 1
        assert host.run("test", "-e", DIST, check=False).returncode == 1
    assert done.output.count("would copy ") == len(ALL)


def test_site_builds_the_cluster_first_server_then_joins(
    fleet: Fleet, fleet_bundles: FleetBundles, host_zipapp: Path, host_signer: KeyFiles,
    vault: List[str],
) -> None:  # fmt: skip
    done = run(fleet, "site", fleet_bundles.first, host_zipapp, host_signer, *vault)
    assert done.returncode == 0, done.output[-3000:]
    assert all(done.changed()[name] > 0 for name in ALL)
    first_url = f"https://{fleet.address['s1']}:6443"
    for name, host in fleet.hosts.items():
        record = status(host)
        role = "server" if name in SERVERS else "agent"
        unit = "k3s" if role == "server" else "k3s-agent"
        assert (record["role"], record["k3s_version"]) == (role, FIRST)
        assert record["arch"] == arch_of(name)
        assert record["intact"] and active(host, unit) == "active"
        assert env_file(host, unit).get("K3S_URL") == (None if name == "s1" else first_url)
        assert (
            host.run("stat", "-c", "%a", "/var/lib/k3bundle-ansible/cluster-token").stdout
            == "600\n"
        )
        assert host.run("cat", "/var/lib/k3bundle-ansible/cluster-token").stdout == TOKEN + "\n"
    standin = json.loads(
        fleet.hosts["s1"].run("cat", "/var/lib/rancher/k3s/standin/state.json").stdout
    )
    assert standin["config"]["cluster-init"] == "true" and standin["version"] == FIRST
    assert (
        "cluster-init" not in fleet.hosts["s2"].run("cat", "/etc/systemd/system/k3s.service").stdout
    )
    assert done.output.count("copied ") == len(ALL)
    for name in ALL:  # each host received only its architecture's slice of the bundle
        slice_name = f"bundle-{arch_of(name)}.tar"
        assert held(fleet, name) == {
            "files": [slice_name],
            "version": FIRST,
            "holds": [arch_of(name)],
        }


def test_site_again_reports_changed_0_and_moves_no_bytes(
    fleet: Fleet, fleet_bundles: FleetBundles, host_zipapp: Path, host_signer: KeyFiles,
    vault: List[str],
) -> None:  # fmt: skip
    starts = {name: fleet.hosts[name].run("systemctl", "show", "-p", "ExecMainPID").stdout
              for name in SERVERS}  # fmt: skip
    done = run(fleet, "site", fleet_bundles.first, host_zipapp, host_signer, *vault)
    assert done.returncode == 0, done.output[-3000:]
    assert done.changed() == {name: 0 for name in ALL}
    assert done.output.count("copied 0 bytes (nothing); 3 of 3 files already on the host") == 5
    assert {n: fleet.hosts[n].run("systemctl", "show", "-p", "ExecMainPID").stdout
            for n in SERVERS} == starts  # fmt: skip


def test_upgrade_stops_at_the_failing_host_rolls_it_back_and_leaves_the_rest(
    fleet: Fleet, fleet_bundles: FleetBundles, host_zipapp: Path, host_signer: KeyFiles,
    vault: List[str],
) -> None:  # fmt: skip
    untouched = ("s3", *AGENTS)
    pids = {name: _main_pid(fleet, name) for name in untouched}
    # s2's upgrade also brings a config k3s refuses: its unit never comes back up.
    bad: Dict[str, Dict[str, Any]] = {
        **ARM,
        "s2": {**ARM["s2"], "k3bundle_config": {"selinux": "maybe"}},
    }
    done = run(fleet, "upgrade", fleet_bundles.second, host_zipapp, host_signer, *vault,
               per_host=bad)  # fmt: skip
    assert done.returncode != 0
    assert done.recap["s2"]["failed"] == 1 and done.recap["s2"]["rescued"] == 1
    assert "s2 failed" in done.output and "rolled back to k3s " + FIRST in done.output
    assert versions(fleet) == {"s1": SECOND, "s2": FIRST, "s3": FIRST, "a1": FIRST, "a2": FIRST}
    assert active(fleet.hosts["s2"], "k3s") == "active" and status(fleet.hosts["s2"])["intact"]
    assert {name: done.changed()[name] for name in untouched} == {n: 0 for n in untouched}
    assert {name: _main_pid(fleet, name) for name in untouched} == pids
    assert [held(fleet, name)["version"] for name in untouched] == [FIRST] * len(untouched)
    assert held(fleet, "s1")["version"] == SECOND


def _main_pid(fleet: Fleet, name: str) -> str:
    unit = "k3s" if name in SERVERS else "k3s-agent"
    return fleet.hosts[name].run("systemctl", "show", "-p", "ExecMainPID", "--value", unit).stdout


def test_rollback_returns_the_upgraded_host_and_a_second_run_changes_nothing(
    fleet: Fleet, fleet_bundles: FleetBundles, host_zipapp: Path, host_signer: KeyFiles,
    vault: List[str],
) -> None:  # fmt: skip
    done = run(fleet, "rollback", fleet_bundles.second, host_zipapp, host_signer, *vault)
    assert done.returncode == 0, done.output[-3000:]
    assert {name for name, count in done.changed().items() if count} == {"s1"}
    assert set(versions(fleet).values()) == {FIRST}
    assert active(fleet.hosts["s1"], "k3s") == "active"
    again = run(fleet, "rollback", fleet_bundles.second, host_zipapp, host_signer, *vault)
    assert again.returncode == 0 and again.changed() == {name: 0 for name in ALL}


def test_upgrade_moves_every_host_to_the_new_version(
    fleet: Fleet, fleet_bundles: FleetBundles, host_zipapp: Path, host_signer: KeyFiles,
    vault: List[str],
) -> None:  # fmt: skip
    done = run(fleet, "upgrade", fleet_bundles.second, host_zipapp, host_signer, *vault)
    assert done.returncode == 0, done.output[-3000:]
    assert set(versions(fleet).values()) == {SECOND}
    for name, host in fleet.hosts.items():
        unit = "k3s" if name in SERVERS else "k3s-agent"
        assert active(host, unit) == "active", name
        assert status(host)["arch"] == arch_of(name)
    # s1 already held the new bundle from the failed rollout: nothing was copied there.
    assert "copied 0 bytes (nothing)" in done.output


def test_reset_uninstalls_every_host_and_a_second_run_changes_nothing(
    fleet: Fleet, fleet_bundles: FleetBundles, host_zipapp: Path, host_signer: KeyFiles,
    vault: List[str],
) -> None:  # fmt: skip
    done = run(fleet, "reset", fleet_bundles.second, host_zipapp, host_signer, *vault)
    assert done.returncode == 0, done.output[-3000:]
    for name, host in fleet.hosts.items():
        unit = "k3s" if name in SERVERS else "k3s-agent"
        load = host.run("systemctl", "show", "-p", "LoadState", "--value", unit).stdout.strip()
        assert load == "not-found", name
        assert host.run("test", "-e", "/var/lib/k3bundle/record.json", check=False).returncode == 1
        assert host.run("test", "-e", DIST, check=False).returncode == 1
        assert (
            host.run(
                "test", "-e", "/var/lib/k3bundle-ansible/cluster-token", check=False
            ).returncode
            == 1
        )
    again = run(fleet, "reset", fleet_bundles.second, host_zipapp, host_signer, *vault)
    assert again.returncode == 0 and again.changed() == {name: 0 for name in ALL}
