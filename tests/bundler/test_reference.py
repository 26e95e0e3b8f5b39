"""Image references are normalised the way Docker does it, and bad ones are refused clearly."""

from __future__ import annotations

from typing import Optional

import pytest

from k3bundle.bundler.oci.reference import Reference, parse_reference
from k3bundle.installer.errors import UsageError

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest"),
    [
        ("nginx", "docker.io", "library/nginx", "latest", None),
        ("nginx:1.25", "docker.io", "library/nginx", "1.25", None),
        ("user/app:1", "docker.io", "user/app", "1", None),
        ("docker.io/nginx", "docker.io", "library/nginx", "latest", None),
        ("index.docker.io/user/app:2", "docker.io", "user/app", "2", None),
        (f"ghcr.io/x/y@{DIGEST}", "ghcr.io", "x/y", None, DIGEST),
        (f"ghcr.io/x/y:1.0@{DIGEST}", "ghcr.io", "x/y", "1.0", DIGEST),
        ("127.0.0.1:5000/test/hello:1.0", "127.0.0.1:5000", "test/hello", "1.0", None),
        ("localhost:5000/x", "localhost:5000", "x", "latest", None),
        ("localhost/x:1", "localhost", "x", "1", None),
        ("Quay.IO/org/a.b_c__d-e--f:v1_2-3.4", "quay.io", "org/a.b_c__d-e--f", "v1_2-3.4", None),
        ("  registry.k8s.io/pause:3.9\n", "registry.k8s.io", "pause", "3.9", None),
    ],
)
def test_parse_reference_normalises_like_docker(
    text: str, registry: str, repository: str, tag: Optional[str], digest: Optional[str]
) -> None:
    ref = parse_reference(text)
    expected = (registry, repository, tag, digest)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == expected


def test_implicit_latest_is_flagged_so_the_caller_can_warn() -> None:
    assert parse_reference("nginx").implicit_latest
    assert not parse_reference("nginx:latest").implicit_latest
    assert not parse_reference(f"nginx@{DIGEST}").implicit_latest


def test_name_endpoint_and_reference_of_a_hub_image() -> None:
    ref = parse_reference("nginx")
    assert ref.name == "docker.io/library/nginx:latest"
    assert str(ref) == ref.name
    assert ref.endpoint == "registry-1.docker.io"
    assert ref.reference == "latest"


def test_digest_wins_as_the_manifest_reference_and_both_stay_in_the_name() -> None:
    both = parse_reference(f"nginx:1.25@{DIGEST}")
    assert both.name == f"docker.io/library/nginx:1.25@{DIGEST}"
    assert both.reference == DIGEST
    only = parse_reference(f"ghcr.io/x/y@{DIGEST}")
    assert only.name == f"ghcr.io/x/y@{DIGEST}"
    assert only.endpoint == "ghcr.io"


def test_a_first_component_without_dot_colon_or_localhost_is_a_namespace() -> None:
    ref = parse_reference("myregistry/app:1")
    assert (ref.registry, ref.repository) == ("docker.io", "myregistry/app")


def test_reference_is_frozen_and_comparable() -> None:
    assert parse_reference("nginx") == Reference("docker.io", "library/nginx", "latest", None, True)
    with pytest.raises(AttributeError):
        parse_reference("nginx").tag = "x"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "not an image reference"),
        ("docker://nginx", "not an image reference"),
        ("ngi nx", "not an image reference"),
        ("Nginx", "must be lowercase"),
        ("ghcr.io/Org/App:1", "must be lowercase"),
        ("nginx:", "bad tag"),
        ("nginx:-x", "bad tag"),
        ("nginx:" + "a" * 129, "bad tag"),
        ("nginx@sha256:abc", "bad digest"),
        ("nginx@md5:" + "a" * 32, "bad digest"),
        ("a//b", "bad repository"),
        ("x/-y", "bad repository"),
        ("@" + DIGEST, "bad repository"),
        ("bad_host.io/x", "bad registry host"),
        ("ghcr.io/" + "a" * 250, "longer than 255"),
    ],
)
def test_invalid_references_are_refused_with_a_usage_error(text: str, says: str) -> None:
    with pytest.raises(UsageError) as raised:
        parse_reference(text)
    assert says in raised.value.diagnostics()
    assert raised.value.hint
