"""`build --chart-images auto|off`: the images a chart deploys travel with it, end to end.

A real chart package (built in the test) in a classic repository served by http.server names
one image in values.yaml that sits on the real local registry, one in its artifacthub.io/images
annotation, and one the values cannot resolve; the built bundle must carry the first two for
every architecture, say which chart pulled them in, and warn about the third.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, List

import pytest

from k3bundle.bundler.spec import load_spec
from k3bundle.installer.errors import UsageError
from k3bundle.installer.format.verify import inspect_bundle
from tests.bundler.charts_fixtures import chart, classic_repo
from tests.bundler.conftest import VERSION, bundle_path
from tests.bundler.test_build_extras import build, images, logged
from tests.helpers import run_k3bundle
from tests.oci_registry import PushedImages
from tests.release_server import ReleaseServer

__all__ = ["images", "logged"]  # module fixtures shared with test_build_extras


@pytest.fixture(scope="module")
def chart_url(images: PushedImages, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A classic repository holding chart `shop` 2.0.0, served on 127.0.0.1."""
    root = tmp_path_factory.mktemp("chart-images-repo")
    repo, tag = images.index.rsplit(":", 1)
    data = chart(
        "shop",
        "2.0.0",
        app_version=tag,
        annotations={"artifacthub.io/images": f"- name: cart\n  image: {images.app_a}\n"},
        values={
            "image": {"repository": repo, "tag": ""},  # the tag is the chart's appVersion
            "metrics": {"image": {"repository": "acme/exporter", "tag": "{{ .Values.tag }}"}},
        },
    )
    with classic_repo(root, {"shop-2.0.0": data}) as url:
        yield url


def chart_build(
    server: ReleaseServer, images: PushedImages, url: str, tmp_path: Path, *args: str
) -> str:
    (tmp_path / "home").mkdir(exist_ok=True)
    code, output = build(
        server, tmp_path / "home", tmp_path / "cache", tmp_path / "dist",
        "--version", VERSION, "--arch", "amd64", "--arch", "arm64",
        "--chart", f"{url}/shop:2.0.0", "--insecure-registry", images.host, *args,
    )  # fmt: skip
    assert code == 0, output
    return output


def test_auto_bundles_the_charts_images_for_every_arch_and_says_which_chart_wanted_them(
    release_server: ReleaseServer, images: PushedImages, chart_url: str, tmp_path: Path
) -> None:
    output = chart_build(release_server, images, chart_url, tmp_path)
    summary = inspect_bundle(str(bundle_path(tmp_path / "dist")))
    found = {item["name"]: item for item in summary["images"]}
    assert sorted(found) == sorted([images.index, images.app_a])
    for item in found.values():
        assert item["charts"] == ["shop"]
        assert sorted(item["arches"]) == ["amd64", "arm64"]
    kinds: List[str] = [f["kind"] for f in summary["files"]]
    assert kinds.count("images") == 2  # one archive per architecture
    assert "values.metrics.image" in output and "add it with --image" in output
    shown = run_k3bundle("inspect", str(bundle_path(tmp_path / "dist")))
    assert shown.returncode == 0, shown.stderr
    assert "for chart shop" in shown.stdout


def test_off_bundles_only_the_images_asked_for(
    release_server: ReleaseServer, images: PushedImages, chart_url: str, tmp_path: Path
) -> None:
    output = chart_build(
        release_server, images, chart_url, tmp_path, "--chart-images", "off", "--image",
        images.docker_list,
    )  # fmt: skip
    summary = inspect_bundle(str(bundle_path(tmp_path / "dist")))
    assert [item["name"] for item in summary["images"]] == [images.docker_list]
    assert "charts" not in summary["images"][0]
    assert "values.metrics.image" not in output


def test_an_image_given_and_found_in_the_chart_is_bundled_once(
    release_server: ReleaseServer, images: PushedImages, chart_url: str, tmp_path: Path
) -> None:
    chart_build(release_server, images, chart_url, tmp_path, "--image", images.app_a)
    summary = inspect_bundle(str(bundle_path(tmp_path / "dist")))
    names = [item["name"] for item in summary["images"]]
    assert sorted(names) == sorted([images.index, images.app_a])


@pytest.mark.parametrize(
    ("given", "read"), [("auto", "auto"), ("off", "off"), ("'off'", "off"), ("false", "off")]
)
def test_the_spec_sets_chart_images(given: str, read: str, tmp_path: Path) -> None:
    path = tmp_path / "bundle.yaml"
    text = f"apiVersion: k3bundle/v1\nkind: Bundle\nk3s: {{version: {VERSION}}}\n"
    path.write_text(f"{text}chartImages: {given}\n")
    assert load_spec(path).chart_images == read


def test_a_spec_with_another_chart_images_value_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bundle.yaml"
    text = f"apiVersion: k3bundle/v1\nkind: Bundle\nk3s: {{version: {VERSION}}}\n"
    path.write_text(f"{text}chartImages: maybe\n")
    with pytest.raises(UsageError) as caught:
        load_spec(path)
    assert "chartImages" in caught.value.message
