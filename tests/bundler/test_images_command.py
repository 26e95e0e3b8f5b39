"""`k3bundle images`: the images charts deploy, listed from a real chart repository on
127.0.0.1 (index.yaml and .tgz served by http.server), without building anything."""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, Iterator

import pytest

from k3bundle.bundler.cli import main
from tests.bundler.charts_fixtures import chart, classic_repo
from tests.bundler.test_charts import push_chart
from tests.oci_registry import PASSWORD, USER, LocalRegistry


@pytest.fixture(autouse=True)
def own_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No site config of this machine's user, no K3BUNDLE_* variable of the shell running us."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    for name in [n for n in os.environ if n.startswith("K3BUNDLE_")]:
        monkeypatch.delenv(name)


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[str]:
    """A classic chart repository holding chart `web` 1.0.0 (an annotation, values images and
    one image the values cannot resolve)."""
    root = tmp_path / "repo"
    data = chart(
        "web",
        "1.0.0",
        app_version="2.4.1",
        annotations={"artifacthub.io/images": "- name: proxy\n  image: ghcr.io/acme/proxy:0.9\n"},
        values={
            "image": {"repository": "acme/web", "tag": ""},
            "sidecar": {"image": "busybox:1.36"},
            "broken": {"image": {"repository": "acme/x", "tag": "{{ .Values.tag }}"}},
        },
    )
    with classic_repo(root, {"web-1.0.0": data}) as url:
        yield url


class Done:
    def __init__(self, exit_code: int, stdout: str, stderr: str) -> None:
        self.exit_code, self.stdout, self.output = exit_code, stdout, stdout + stderr


def run(*args: str) -> Done:
    """`k3bundle ARGS` through the real edge (bundler.cli.main), in-process."""
    with pytest.MonkeyPatch.context() as patch:
        out, err = io.StringIO(), io.StringIO()
        patch.setattr(sys, "stdout", out)
        patch.setattr(sys, "stderr", err)
        try:
            main(list(args))
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
    return Done(code, out.getvalue(), err.getvalue())


def test_images_lists_each_image_with_the_sources_that_found_it(repo: str, tmp_path: Path) -> None:
    done = run(
        "images", "--chart", f"{repo}/web:1.0.0", "--cache-dir", str(tmp_path / "c"), "--no-helm"
    )
    assert done.exit_code == 0, done.output
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["IMAGE", "CHART", "FOUND", "BY"]
    rows = {line.split()[0]: line.split(None, 2)[2] for line in lines[1:4]}
    assert rows == {
        "docker.io/acme/web:2.4.1": "values",
        "docker.io/library/busybox:1.36": "values",
        "ghcr.io/acme/proxy:0.9": "annotation",
    }
    assert "values.broken.image" in done.stdout and "template expression" in done.stdout


def test_images_json_applies_the_values_file_and_names_what_it_could_not_resolve(
    repo: str, tmp_path: Path
) -> None:
    values = tmp_path / "site.yaml"
    values.write_text("image:\n  tag: 2.5.0\n  registry: registry.local:5000\nbroken: null\n")
    done = run(
        "images", "--chart", f"{repo}/web:1.0.0", "--values", str(values),
        "--cache-dir", str(tmp_path / "c"), "--no-helm", "--json",
    )  # fmt: skip
    assert done.exit_code == 0, done.output
    [found] = json.loads(done.stdout)["charts"]
    images: Dict[str, Any] = {i["reference"]: i["sources"] for i in found["images"]}
    assert images == {
        "registry.local:5000/acme/web:2.5.0": ["values"],
        "docker.io/library/busybox:1.36": ["values"],
        "ghcr.io/acme/proxy:0.9": ["annotation"],
    }
    assert found["unresolved"] == []
    assert found["sources_not_used"] == [{"source": "helm-template", "why": "turned off"}]


def test_images_without_a_chart_is_a_usage_error(tmp_path: Path) -> None:
    done = run("images", "--cache-dir", str(tmp_path / "c"))
    assert done.exit_code == 2
    assert "Error: no chart to look into" in done.output
    assert not (tmp_path / "c").exists()


def test_images_of_a_missing_chart_version_names_the_versions_there(
    repo: str, tmp_path: Path
) -> None:
    done = run("images", "--chart", f"{repo}/web:9.9.9", "--cache-dir", str(tmp_path / "c"))
    assert done.exit_code != 0
    assert "1.0.0" in done.output and "Traceback" not in done.output


# --- the build's registry settings: credentials, the site config, K3BUNDLE_* -------------------


@pytest.fixture
def private_chart(
    basic_registry: LocalRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> str:
    """`oci://HOST/charts/private:1.0.0`, pushed to a registry behind HTTP Basic auth; HOME in
    tmp_path, so no docker login of this machine answers for it."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DOCKER_CONFIG", raising=False)
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    push_chart(basic_registry.host, "private", "1.0.0", credentials=(USER, PASSWORD))
    return f"oci://{basic_registry.host}/charts/private:1.0.0"


def test_images_reaches_a_private_chart_with_the_builds_credentials_flags(
    private_chart: str, basic_registry: LocalRegistry, tmp_path: Path
) -> None:
    host = basic_registry.host
    base = ["images", "--chart", private_chart, "--insecure-registry", host, "--no-helm"]
    base += ["--config-file", os.devnull, "--cache-dir", str(tmp_path / "c")]
    refused = run(*base)
    assert refused.exit_code != 0
    assert "Traceback" not in refused.output and PASSWORD not in refused.output
    assert refused.output.count("Error:") == 1 and host in refused.output
    done = run(*base, "--registry-auth", f"{host}={USER}:{PASSWORD}")
    assert done.exit_code == 0, done.output
    assert "(no images found)" in done.stdout and PASSWORD not in done.output


def test_images_reads_the_site_config_as_build_does(
    private_chart: str, basic_registry: LocalRegistry, tmp_path: Path
) -> None:
    config = tmp_path / "config.yaml"
    cache = tmp_path / "site-cache"
    config.write_text(
        f"cache_dir: {cache}\n"
        f"registries:\n  {basic_registry.host}:\n    auth: {USER}:{PASSWORD}\n    insecure: true\n"
    )
    done = run("images", "--chart", private_chart, "--no-helm", "--config-file", str(config))
    assert done.exit_code == 0, done.output
    assert (cache / "index").is_dir()  # the site config's cache, where `build` would look too


def test_images_options_are_k3bundle_variables_too(
    private_chart: str,
    basic_registry: LocalRegistry,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    host = basic_registry.host
    monkeypatch.setenv("K3BUNDLE_REGISTRY_AUTH", f"{host}={USER}:{PASSWORD}")
    monkeypatch.setenv("K3BUNDLE_INSECURE_REGISTRY", host)
    monkeypatch.setenv("K3BUNDLE_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("K3BUNDLE_CACHE_DIR", str(tmp_path / "c"))
    done = run("images", "--chart", private_chart, "--no-helm", "--json")
    assert done.exit_code == 0, done.output
    assert [c["chart"] for c in json.loads(done.stdout)["charts"]] == ["private"]
