"""Bundle specs: the examples build, install defaults reach the host, errors name field and line."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import pytest
import yaml

import k3bundle.manifests
from k3bundle.bundler.spec import Spec, load_spec
from k3bundle.installer.errors import UsageError
from tests.helpers import KeyFiles, run_k3bundle
from tests.oci_registry import PushedImages
from tests.release_server import ReleaseServer

VERSION = "v1.31.4+k3s1"
RC_VERSION = "v1.32.4-rc1+k3s1"
EXAMPLES = Path(k3bundle.manifests.__file__).parent
BuildRun = Callable[..., Tuple[int, str]]
ManifestOf = Callable[[Path], Dict[str, Any]]
FindBundle = Callable[[Path], Path]
HEADER = "apiVersion: k3bundle/v1\nkind: Bundle\n"


def example_names() -> List[str]:
    """Every shipped example spec."""
    return sorted(p.name for p in EXAMPLES.glob("*.yaml"))


def write(tmp_path: Path, text: str) -> Path:
    """A spec file holding `text`."""
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return path


def test_the_shipped_examples_are_the_three_documented_ones() -> None:
    assert example_names() == ["minimal.yaml", "multi-arch.yaml", "with-install-defaults.yaml"]


@pytest.mark.parametrize("example", example_names())
def test_every_example_builds_against_the_local_server(
    run_build: BuildRun, manifest_of: ManifestOf, tmp_path: Path, example: str
) -> None:
    doc = yaml.safe_load((EXAMPLES / example).read_text())
    code, output = run_build("-f", str(EXAMPLES / example))
    assert code == 0, output
    manifest = manifest_of(tmp_path / "dist")
    assert manifest["k3s_version"] == VERSION  # pinned, or what "stable" resolves to here
    assert manifest["architectures"] == doc["k3s"]["arches"]
    name = (doc.get("metadata") or {}).get("name")
    if name:
        assert (tmp_path / "dist" / f"{name}.tar").is_file()


@pytest.mark.parametrize(
    ("example", "expected"),
    [
        ("minimal.yaml", Spec(version=VERSION, arches=("amd64",))),
        (
            "multi-arch.yaml",
            Spec(
                channel="stable",
                arches=("amd64", "arm64", "arm"),
                images_format="zst",
                name="fleet",
            ),
        ),
    ],
)
def test_examples_load_into_the_expected_spec(example: str, expected: Spec) -> None:
    assert load_spec(EXAMPLES / example) == replace(expected, base_dir=EXAMPLES)


def test_install_defaults_reach_the_manifest_and_then_the_hosts_config_files(
    run_build: BuildRun,
    manifest_of: ManifestOf,
    find_bundle: FindBundle,
    signer: KeyFiles,
    tmp_path: Path,
) -> None:
    spec = EXAMPLES / "with-install-defaults.yaml"
    install = yaml.safe_load(spec.read_text())["install"]
    code, output = run_build("-f", str(spec), "--sign-key", str(signer.private))
    assert code == 0, output
    dist = tmp_path / "dist"
    assert manifest_of(dist)["install"] == install
    root = tmp_path / "root"
    done = run_k3bundle(
        *("install", str(find_bundle(dist)), "--root", str(root), "--arch", "amd64"),
        *("--pubkey", str(signer.public)),
    )
    assert done.returncode == 0, done.stderr
    config = root / "etc/rancher/k3s/config.yaml"
    registries = root / "etc/rancher/k3s/registries.yaml"
    assert yaml.safe_load(config.read_text()) == install["config"]
    assert yaml.safe_load(registries.read_text()) == install["registries"]
    assert config.stat().st_mode & 0o777 == 0o600


def test_command_line_flags_override_the_spec(
    run_build: BuildRun, manifest_of: ManifestOf, server: ReleaseServer, tmp_path: Path
) -> None:
    spec = EXAMPLES / "minimal.yaml"
    code, output = run_build("-f", str(spec), "--arch", "arm64", "--images-format", "gz")
    assert code == 0, output
    manifest = manifest_of(tmp_path / "dist")
    assert manifest["architectures"] == ["arm64"]
    assert sorted(f["path"] for f in manifest["files"]) == [
        "arm64/k3s-airgap-images-arm64.tar.gz",
        "arm64/k3s-arm64",
    ]
    assert server.hits_for("sha256sum-amd64.txt") == []


def test_channel_flag_replaces_the_specs_pinned_version(
    run_build: BuildRun, manifest_of: ManifestOf, tmp_path: Path
) -> None:
    code, output = run_build("-f", str(EXAMPLES / "minimal.yaml"), "--channel", "testing")
    assert code == 0, output
    assert manifest_of(tmp_path / "dist")["k3s_version"] == RC_VERSION


def test_name_flag_overrides_the_specs_name(run_build: BuildRun, tmp_path: Path) -> None:
    spec = EXAMPLES / "multi-arch.yaml"
    code, output = run_build("-f", str(spec), "--arch", "amd64", "--name", "site-a")
    assert code == 0, output
    assert (tmp_path / "dist" / "site-a.tar").is_file()
    assert not (tmp_path / "dist" / "fleet.tar").exists()


INVALID: List[Tuple[str, str, str]] = [
    # (spec text, what the message must name, the line it must give)
    (HEADER + "k3s:\n  version: v1.31.4+k3s1\nmirror: https://x\n", "mirror", "line 5"),
    (HEADER + "k3s:\n  version: v1.31.4+k3s1\n  colour: blue\n", "colour", "line 5"),
    (
        HEADER + "k3s:\n  version: v1.31.4+k3s1\n  arches: [amd64, s390x]\n",
        "k3s.arches[1]",
        "line 5",
    ),
    (
        HEADER + "k3s:\n  version: v1.31.4+k3s1\n  channel: stable\n",
        "give either 'version' or 'channel', not both",
        "line 3",
    ),
    (
        "apiVersion: k3bundle/v2\nkind: Bundle\nk3s: {version: v1.31.4+k3s1}\n",
        "apiVersion",
        "line 1",
    ),
    (HEADER + "k3s:\n  version: 1.31.4\n", "k3s.version", "line 4"),
    (HEADER + "k3s:\n  images: xz\n", "k3s.images", "line 4"),
    (HEADER + "k3s: {version: v1.31.4+k3s1\n", "is not valid YAML", "line 4"),
]


@pytest.mark.parametrize(("text", "field", "line"), INVALID)
def test_invalid_spec_exits_2_naming_the_field_and_line(
    run_build: BuildRun, server: ReleaseServer, tmp_path: Path, text: str, field: str, line: str
) -> None:
    code, output = run_build("-f", str(write(tmp_path, text)))
    assert code == 2
    assert field in output and line in output
    assert server.log == []


def test_unknown_field_error_points_at_the_field_itself(tmp_path: Path) -> None:
    text = HEADER + "metadata:\n  name: a\nk3s:\n  version: v1.31.4+k3s1\n  imagez: zst\n"
    with pytest.raises(UsageError) as caught:
        load_spec(write(tmp_path, text))
    assert "k3s.imagez (line 7): unknown field(s) ('imagez' was unexpected)" in str(caught.value)


def test_spec_without_required_sections_names_them(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="'k3s' is a required property"):
        load_spec(write(tmp_path, HEADER))


def test_empty_or_non_mapping_spec_is_refused(tmp_path: Path) -> None:
    for text in ("", "- just\n- a list\n"):
        with pytest.raises(UsageError, match="the document"):
            load_spec(write(tmp_path, text))


def test_spec_images_are_accepted_and_bundled(
    run_build: BuildRun,
    pushed_images: PushedImages,
    docker_home: Path,
    manifest_of: ManifestOf,
    tmp_path: Path,
) -> None:
    text = HEADER + f"k3s:\n  version: v1.31.4+k3s1\nimages: [{pushed_images.index}]\n"
    spec = write(tmp_path, text)
    insecure = ["--insecure-registry", pushed_images.host]
    code, output = run_build("-f", str(spec), "--arch", "amd64", *insecure)
    assert code == 0, output
    summary = manifest_of(tmp_path / "dist")
    assert [image["name"] for image in summary["images"]] == [pushed_images.index]
    assert "amd64/k3bundle-images-amd64.tar.zst" in {f["path"] for f in summary["files"]}


def test_subprocess_reports_a_bad_spec_on_one_error_line(tmp_path: Path) -> None:
    path = write(tmp_path, HEADER + "k3s:\n  version: v1.31.4+k3s1\n  arches: [x86]\n")
    done = run_k3bundle("build", "-f", str(path), "--release-url", "http://127.0.0.1:9")
    assert done.returncode == 2
    first = done.stderr.splitlines()[0]
    assert first.startswith(f"Error: {path}: k3s.arches[0] (line 5): 'x86' is not one of")
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            "k3s:\n  version: 2024-01-01\n",
            "k3s.version (line 4): YAML reads '2024-01-01' as a date",
        ),
        ("k3s:\n  arches: !!set {amd64: null}\n", "k3s.arches (line 4): YAML reads"),
        ("k3s: {}\nimages: [!!binary aGVsbG8=]\n", "images[0] (line 4): YAML reads"),
        ("k3s: {}\ninstall:\n  config:\n    1: x\n", "install.config (line 5): the key '1' is not"),
        ('k3s:\n  version: "v1.31.4+k3s1\\n"\n', "k3s.version (line 4): 'v1.31.4+k3s1\\n' is not"),
        ('k3s: {}\nmetadata:\n  name: "site\\n"\n', "metadata.name (line 5): 'site\\n' is not"),
        ("k3s: {}\ninstall:\n  config: " + "[" * 40 + "]" * 40 + "\n", "nests deeper than 32"),
        ("k3s: {}\ninstall:\n  config: " + "[" * 5000 + "]" * 5000 + "\n", "nests deeper than 32"),
    ],
)
def test_spec_values_json_cannot_hold_are_refused_naming_the_key(
    tmp_path: Path, body: str, expected: str
) -> None:
    with pytest.raises(UsageError) as caught:
        load_spec(write(tmp_path, HEADER + body))
    assert expected in caught.value.message and caught.value.exit_code == 2
    assert "\n" not in caught.value.message


def test_a_version_with_a_trailing_newline_is_not_a_k3s_version() -> None:
    from k3bundle.bundler.payloads.release import check_version, parse_checksums

    with pytest.raises(UsageError, match="is not a k3s version"):
        check_version("v1.31.4+k3s1\n")
    assert parse_checksums(f"{'a' * 64}  k3s\n", "sums") == {"k3s": "a" * 64}
